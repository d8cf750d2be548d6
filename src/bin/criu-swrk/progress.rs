//! Progress on stderr, driven by a batch's events: bars on a terminal, plain lines
//! otherwise.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Where progress goes.
pub enum Progress {
    /// stderr is a terminal: an overall bar and a spinner per target in flight.
    Bars {
        multi: MultiProgress,
        overall: ProgressBar,
        in_flight: HashMap<usize, ProgressBar>,
    },
    /// stderr is a file or a pipe: a line per event.
    Lines { done: usize, total: usize },
}

impl Progress {
    /// Progress for `total` targets; `verb` names the work ("dump", "restore").
    /// Bars only when stderr is a terminal and `plain` is false.
    pub fn new(total: usize, verb: &str, plain: bool) -> Self {
        if plain || !std::io::stderr().is_terminal() {
            return Progress::Lines { done: 0, total };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(total as u64));
        overall.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {elapsed}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        overall.set_prefix(verb.to_owned());
        overall.enable_steady_tick(Duration::from_millis(250));
        Progress::Bars {
            multi,
            overall,
            in_flight: HashMap::new(),
        }
    }

    /// Target `index` (named `name`) got its criu.
    pub fn started(&mut self, index: usize, name: &str, criu_pid: Option<i32>) {
        let criu = criu_pid
            .map(|p| format!(" (criu pid {p})"))
            .unwrap_or_default();
        match self {
            Progress::Bars {
                multi, in_flight, ..
            } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("  {spinner} {prefix}: {msg} {elapsed}")
                        .expect("a valid template"),
                );
                bar.set_prefix(name.to_owned());
                bar.set_message(format!("started{criu}"));
                bar.enable_steady_tick(Duration::from_millis(100));
                in_flight.insert(index, bar);
            }
            Progress::Lines { done, total } => {
                line(format!("[{done}/{total} done] {name}: started{criu}"));
            }
        }
    }

    /// criu reached hook `hook` for target `index`.
    pub fn hook(&mut self, index: usize, name: &str, hook: &str) {
        match self {
            Progress::Bars { in_flight, .. } => {
                if let Some(bar) = in_flight.get(&index) {
                    bar.set_message(hook.to_owned());
                }
            }
            Progress::Lines { .. } => line(format!("{name}: {hook}")),
        }
    }

    /// Target `index` finished; `print` writes its result without tearing the bars.
    pub fn finished(&mut self, index: usize, print: impl FnOnce()) {
        match self {
            Progress::Bars {
                multi,
                overall,
                in_flight,
            } => {
                if let Some(bar) = in_flight.remove(&index) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                multi.suspend(print);
                overall.inc(1);
            }
            Progress::Lines { done, .. } => {
                *done += 1;
                print();
            }
        }
    }

    /// A note for the person watching (e.g. after Ctrl-C).
    pub fn note(&self, msg: &str) {
        match self {
            Progress::Bars { multi, .. } => multi.suspend(|| eprintln!("criu-swrk: {msg}")),
            Progress::Lines { .. } => line(format!("criu-swrk: {msg}")),
        }
    }

    /// Clears the bars at the end.
    pub fn done(self) {
        if let Progress::Bars { overall, .. } = self {
            overall.finish_and_clear();
        }
    }
}

/// One progress line in one write (`eprintln!` writes each formatted piece separately,
/// several syscalls per hook of every target).
fn line(mut text: String) {
    use std::io::Write as _;
    text.push('\n');
    let _ = std::io::stderr().write_all(text.as_bytes());
}
