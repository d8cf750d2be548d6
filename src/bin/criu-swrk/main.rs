//! `criu-swrk`: checkpoint and restore processes with criu from the command line.
//!
//! ```text
//! criu-swrk [--criu PATH] [--json] [--log-file NAME] [-v] COMMAND
//!   version | features | check
//!   dump --pid PID --images-dir DIR [--leave-running] [--shell-job] [--tcp-established]
//!        [--ext-unix-sk] [--file-locks] [--timeout SECS]
//!   restore --images-dir DIR
//!   dump-many --images-root DIR [--jobs N] [--leave-running] [--timeout SECS] PID...
//!   restore-many [--jobs N] DIR...
//!   demo
//! ```
//!
//! Exit status: 0 when every target succeeded, 1 when any failed, 2 on usage errors.
//! Built with the `cli` feature.

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use criu_swrk::fleet::Fleet;
use criu_swrk::{Criu, DumpOptions, RestoreOptions};
use serde_json::{Value, json};

mod args;
mod batch;
mod demo;
mod progress;
mod report;

use args::{Cli, Command, DumpCommon, Limits};
use batch::Target;
use report::Printer;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Workload { mib, info_file } = &cli.command {
        criu_swrk::workload::run(*mib, info_file);
    }
    init_tracing(cli.verbose);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the Tokio runtime");
    if runtime.block_on(run(cli)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Tracing logs on stderr for `-v` (info), `-vv` (debug), `-vvv` (trace); `$RUST_LOG`
/// overrides the level.
fn init_tracing(verbose: u8) {
    if verbose == 0 {
        return;
    }
    let level = match verbose {
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Runs the command; returns whether every target succeeded.
async fn run(cli: Cli) -> bool {
    let criu = match &cli.criu {
        Some(path) => Criu::new().with_path(path),
        None => Criu::new(),
    };
    let asked = cli.criu.as_deref();
    let log_file = cli.log_file.clone();
    let printer = Printer {
        json: cli.json,
        pid_only: matches!(cli.command, Command::Restore { .. }),
        plain_progress: cli.verbose > 0,
    };
    match cli.command {
        Command::Version => about_criu(&criu, asked, printer, Query::Version).await,
        Command::Features => about_criu(&criu, asked, printer, Query::Features).await,
        Command::Check => about_criu(&criu, asked, printer, Query::Check).await,
        Command::Dump(a) => {
            let opts = DumpOptions::new(a.pid)
                .images_dir(&a.images_dir)
                .shell_job(a.shell_job)
                .tcp_established(a.tcp_established)
                .ext_unix_sk(a.ext_unix_sk)
                .file_locks(a.file_locks);
            let target = Target {
                name: a.pid.to_string(),
                pid: Some(a.pid),
                images_dir: std::fs::canonicalize(&a.images_dir).unwrap_or(a.images_dir),
            };
            dump(&criu, 1, &a.common, log_file, vec![(target, opts)], printer).await
        }
        Command::DumpMany(a) => {
            let targets = a
                .pids
                .iter()
                .map(|&pid| {
                    // A staged dump creates DIR/P when it commits; a root that cannot
                    // be made is reported by each target's own request.
                    let _ = std::fs::create_dir_all(&a.images_root);
                    let root = std::fs::canonicalize(&a.images_root)
                        .unwrap_or_else(|_| a.images_root.clone());
                    let dir = root.join(pid.to_string());
                    let opts = DumpOptions::new(pid).images_dir(&dir);
                    let target = Target {
                        name: pid.to_string(),
                        pid: Some(pid),
                        images_dir: dir,
                    };
                    (target, opts)
                })
                .collect();
            dump(&criu, a.jobs.into(), &a.common, log_file, targets, printer).await
        }
        Command::Restore { images_dir, limits } => {
            restore(&criu, 1, &limits, log_file, vec![images_dir], printer).await
        }
        Command::RestoreMany { jobs, limits, dirs } => {
            restore(&criu, jobs.into(), &limits, log_file, dirs, printer).await
        }
        Command::Demo => match demo::run(&criu).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("criu-swrk: demo: {e}");
                false
            }
        },
        Command::Workload { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// Dumps `targets`, `jobs` at a time.
async fn dump(
    criu: &Criu,
    jobs: usize,
    common: &DumpCommon,
    log_file: Option<String>,
    targets: Vec<(Target, DumpOptions)>,
    printer: Printer,
) -> bool {
    let fleet = limited(Fleet::new(criu.clone()).jobs(jobs), &common.limits);
    let (targets, opts): (Vec<_>, Vec<_>) = targets.into_iter().unzip();
    let batch = fleet.dump(opts.into_iter().map(|o| {
        // Staged: an images directory holds a complete dump or nothing, even if this
        // process is killed mid-way.
        let o = o.leave_running(common.leave_running).staged(true);
        match &log_file {
            Some(name) => o.log_file(name.clone()),
            None => o,
        }
    }));
    batch::run(batch, &targets, printer, "dump").await
}

/// A fleet with the command line's timeout and grace.
fn limited(mut fleet: Fleet, limits: &Limits) -> Fleet {
    if let Some(t) = limits.timeout {
        fleet = fleet.timeout(t);
    }
    if let Some(g) = limits.grace {
        fleet = fleet.grace(g);
    }
    fleet
}

/// Restores the trees in `dirs`, `jobs` at a time.
async fn restore(
    criu: &Criu,
    jobs: usize,
    limits: &Limits,
    log_file: Option<String>,
    dirs: Vec<std::path::PathBuf>,
    printer: Printer,
) -> bool {
    let batch =
        limited(Fleet::new(criu.clone()).jobs(jobs), limits).restore(dirs.iter().map(|d| {
            let o = RestoreOptions::new().images_dir(d);
            match &log_file {
                Some(name) => o.log_file(name.clone()),
                None => o,
            }
        }));
    let targets: Vec<Target> = dirs
        .into_iter()
        .map(|dir| Target {
            name: dir.display().to_string(),
            pid: None,
            images_dir: std::fs::canonicalize(&dir).unwrap_or(dir),
        })
        .collect();
    batch::run(batch, &targets, printer, "restore").await
}

/// A question about criu itself.
#[derive(Debug, Clone, Copy)]
enum Query {
    Version,
    Features,
    Check,
}

/// Answers `version`, `features` or `check`: one JSON object (`target` is the criu
/// binary, `ok`, `error`, and the answer's own fields) or a few lines for a person.
async fn about_criu(criu: &Criu, asked: Option<&Path>, printer: Printer, query: Query) -> bool {
    let (target, answer) = match criu.binary() {
        Ok(path) => (path.display().to_string(), ask(criu, &path, query).await),
        Err(e) => {
            let asked = asked.map(|p| p.display().to_string());
            let target = asked
                .or_else(|| std::env::var("CRIU_BIN").ok())
                .unwrap_or_else(|| "criu".to_owned());
            (target, Err(e))
        }
    };
    let (mut value, human, error) = match answer {
        Ok((value, human)) => (value, human, None),
        Err(e) => (json!({}), String::new(), Some(e.to_string())),
    };
    let ok = error.is_none();
    let obj = value.as_object_mut().expect("a JSON object");
    obj.insert("target".into(), json!(target));
    obj.insert("ok".into(), json!(ok));
    obj.insert("error".into(), json!(error));
    printer.single(value, &human, error.as_deref());
    ok
}

/// Asks criu at `path`: the answer's JSON fields and its lines for a person.
async fn ask(criu: &Criu, path: &Path, query: Query) -> criu_swrk::Result<(Value, String)> {
    Ok(match query {
        Query::Version => {
            let v = criu.version().await?;
            let value = json!({
                "version": v.to_string(),
                "major": v.major,
                "minor": v.minor,
                "sublevel": v.sublevel,
                "gitid": v.gitid,
            });
            (value, format!("criu {v} at {}", path.display()))
        }
        Query::Features => {
            let f = criu.features().await?;
            let value = json!({"features": {
                "mem_track": f.mem_track,
                "lazy_pages": f.lazy_pages,
                "pidfd_store": f.pidfd_store,
            }});
            let yes = |b: bool| if b { "yes" } else { "no" };
            let human = format!(
                "mem_track: {}\nlazy_pages: {}\npidfd_store: {}",
                yes(f.mem_track),
                yes(f.lazy_pages),
                yes(f.pidfd_store)
            );
            (value, human)
        }
        Query::Check => {
            criu.check().await?;
            (json!({}), format!("criu check passed ({})", path.display()))
        }
    })
}
