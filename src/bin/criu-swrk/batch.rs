//! Runs a fleet batch to its end: its events drive the progress output, each finished
//! target is reported, and Ctrl-C (or SIGTERM) cancels the batch.

use std::path::PathBuf;

use criu_swrk::fleet::{Batch, Event};
use futures::StreamExt;
use tokio::signal::unix::{SignalKind, signal};

use crate::progress::Progress;
use crate::report::{Outcome, Printer, Report};

/// One target of a batch, as the user named it.
#[derive(Debug)]
pub struct Target {
    /// How reports name it (the pid or directory as given).
    pub name: String,
    /// The pid it is about, when known before the request (dumps).
    pub pid: Option<i32>,
    /// Its images directory.
    pub images_dir: PathBuf,
}

/// Drives `batch` (over `targets`, in order) to its end; `verb` names the work for
/// the progress bars. Returns whether every target succeeded.
///
/// The first SIGINT or SIGTERM cancels the batch: every request in flight is stopped or
/// rolled back (dumped trees keep running; one already past its commit point finishes
/// and is reported as done) and queued ones never start; the batch still runs to its
/// end so that every target is reported. A second one exits at once (status
/// 130): criu then sees its client gone and rolls back by itself.
pub async fn run<T: Outcome>(
    mut batch: Batch<T>,
    targets: &[Target],
    printer: Printer,
    verb: &str,
) -> bool {
    let mut sigint = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    let mut sigterm = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut progress = Progress::new(targets.len(), verb, printer.plain_progress);
    let mut interrupted = false;
    let mut all_ok = true;
    loop {
        let event = tokio::select! {
            event = batch.next() => match event {
                Some(event) => event,
                None => break,
            },
            _ = sigint.recv() => { on_signal(&batch, &progress, &mut interrupted); continue }
            _ = sigterm.recv() => { on_signal(&batch, &progress, &mut interrupted); continue }
        };
        let index = event.target();
        let target = &targets[index];
        match event {
            Event::Started { criu_pid, .. } => progress.started(index, &target.name, criu_pid),
            Event::Hook { name, .. } => progress.hook(index, &target.name, &name),
            Event::Finished { result, .. } => {
                let mut report = Report {
                    target: target.name.clone(),
                    pid: target.pid,
                    images_dir: Some(target.images_dir.clone()),
                    summary: String::new(),
                    error: None,
                    stats: None,
                };
                match result {
                    Ok(outcome) => outcome.fill(&mut report),
                    Err(e) => report.error = Some(crate::report::chain(&e)),
                }
                all_ok &= report.ok();
                progress.finished(index, || printer.print(&report));
            }
            // Queued, and whatever later versions add.
            _ => {}
        }
    }
    progress.done();
    all_ok
}

fn on_signal<T>(batch: &Batch<T>, progress: &Progress, interrupted: &mut bool) {
    if *interrupted {
        progress.note(
            "interrupted again: quitting; criu rolls back what it was doing (a dump already \
             committed leaves its images in its hidden .DIR.partial-* staging directory)",
        );
        std::process::exit(130);
    }
    *interrupted = true;
    batch.cancel();
    progress.note(
        "interrupted: rolling back the requests in flight (their targets keep running); \
         interrupt again to quit at once",
    );
}
