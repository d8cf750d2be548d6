//! `criu-swrk`: checkpoint and restore processes with criu from the command line.
//!
//! ```text
//! criu-swrk [--criu PATH] [--json] [--log-file NAME] [-v] COMMAND
//!   version | features | check
//!   dump --pid PID --images-dir DIR [--leave-running] [--shell-job] [--tcp-established]
//!        [--ext-unix-sk] [--file-locks] [--timeout SECS]
//!   restore --images-dir DIR
//!   dump-many --images-root DIR [--jobs N] [--order largest|given] [--leave-running] [--timeout SECS] PID...
//!   restore-many [--jobs N] [--order largest|given] DIR...
//!   demo
//! ```
//!
//! Exit status: 0 when every target succeeded, 1 when any failed, 2 on usage errors.
//! Built with the `cli` feature.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use criu_swrk::fleet::{Fleet, Order};
use criu_swrk::oci::{Container, ContainerRestore};
use criu_swrk::record::DumpRecord;
use criu_swrk::{CgroupMode, Criu, DumpOptions, NetworkLock, RestoreOptions};
use serde_json::{Value, json};

mod args;
mod batch;
mod console;
mod demo;
mod migrate;
mod progress;
mod report;
#[allow(dead_code)] // Shared with the tests, which use more of it.
mod workload;

use args::{
    BatchArgs, CgroupArg, Cli, Command, DumpCommon, Limits, LockArg, OrderArg, RestoreCommon,
    TreeArgs,
};
use batch::Target;
use report::Printer;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::Workload { mib, info_file } = &cli.command {
        workload::run(*mib, info_file);
    }
    init_tracing(cli.verbose);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building the Tokio runtime");
    let ok = runtime.block_on(run(cli));
    // Tasks still winding criu down end with the runtime; what they leave, and what
    // was dropped, is reaped before we go, or it would outlive us as a zombie.
    drop(runtime);
    criu_swrk::reap_dropped(std::time::Duration::from_secs(2));
    if ok {
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
        pid_only: matches!(cli.command, Command::Restore(_)),
        plain_progress: cli.verbose > 0,
    };
    match cli.command {
        Command::Version => about_criu(&criu, asked, printer, Query::Version).await,
        Command::Features => about_criu(&criu, asked, printer, Query::Features).await,
        Command::Check => about_criu(&criu, asked, printer, Query::Check).await,
        Command::Doctor => doctor(&criu, printer).await,
        Command::Serve(a) => migrate::serve(&criu, a, printer.json).await,
        Command::Migrate(a) => migrate::migrate(&criu, a, printer.json).await,
        Command::Dump(a) => {
            let images_dir = absolute(&a.images_dir);
            let (name, pid, opts) = match dump_source(a.pid, a.bundle.as_deref(), a.runc.as_deref())
            {
                Ok(found) => found,
                Err((name, e)) => {
                    let target = Target {
                        name,
                        pid: a.pid,
                        images_dir,
                    };
                    printer.print(&report::Report::failed(&target, e.to_string()));
                    return false;
                }
            };
            let mut opts = opts.images_dir(&a.images_dir);
            if let Some(cg) = &a.freeze_cgroup {
                opts = opts.freeze_cgroup(cg.clone());
            }
            let target = Target {
                name,
                pid: Some(pid),
                images_dir,
            };
            dump(
                &criu,
                None,
                &a.common,
                log_file,
                vec![(target, opts)],
                printer,
            )
            .await
        }
        Command::DumpMany(a) => {
            // A staged dump creates DIR/P when it commits; a root that cannot be made
            // is reported by each target's own request.
            let _ = std::fs::create_dir_all(&a.images_root);
            let root = absolute(&a.images_root);
            let mut targets = Vec::new();
            let mut all_ok = true;
            let sources = a
                .pids
                .iter()
                .map(|&pid| dump_source(Some(pid), None, None))
                .chain(
                    a.containers
                        .iter()
                        .map(|id| dump_source(None, None, Some(id))),
                );
            for source in sources {
                match source {
                    Ok((name, pid, opts)) => {
                        let dir = root.join(&name);
                        let target = Target {
                            name,
                            pid: Some(pid),
                            images_dir: dir.clone(),
                        };
                        targets.push((target, opts.images_dir(&dir)));
                    }
                    Err((name, e)) => {
                        all_ok = false;
                        let target = Target {
                            images_dir: root.join(&name),
                            name,
                            pid: None,
                        };
                        printer.print(&report::Report::failed(&target, e));
                    }
                }
            }
            dump(&criu, Some(&a.batch), &a.common, log_file, targets, printer).await && all_ok
        }
        Command::Restore(a) => {
            restore(
                &criu,
                None,
                &a.restore,
                log_file,
                vec![a.images_dir],
                printer,
            )
            .await
        }
        Command::RestoreMany(a) => {
            restore(&criu, Some(&a.batch), &a.restore, log_file, a.dirs, printer).await
        }
        Command::Demo => match demo::run(&criu).await {
            Ok(()) => true,
            Err(e) => {
                eprintln!("criu-swrk: demo: {}", report::chain(&*e));
                false
            }
        },
        Command::Workload { .. } => unreachable!("handled before the runtime starts"),
    }
}

/// A fleet scheduled as `batch` says (one at a time without it).
fn fleet(criu: &Criu, batch: Option<&BatchArgs>, limits: &Limits) -> Fleet {
    let Some(b) = batch else {
        return limited(Fleet::new(criu.clone()).jobs(1), limits);
    };
    let fleet = Fleet::new(criu.clone()).order(match b.order {
        OrderArg::Largest => Order::LargestFirst,
        OrderArg::Given => Order::AsGiven,
    });
    let fleet = match b.jobs {
        Some(n) => fleet.jobs(n.into()),
        None => fleet,
    };
    limited(fleet, limits)
}

/// Dumps `targets` as `batch` schedules them. Every dump is staged (its directory
/// holds a complete dump or nothing) and records what its restore needs.
async fn dump(
    criu: &Criu,
    batch: Option<&BatchArgs>,
    common: &DumpCommon,
    log_file: Option<String>,
    targets: Vec<(Target, DumpOptions)>,
    printer: Printer,
) -> bool {
    let fleet = fleet(criu, batch, &common.tree.limits);
    let (targets, opts): (Vec<_>, Vec<_>) = targets.into_iter().unzip();
    let batch = fleet.dump(opts.into_iter().map(|o| {
        let mut o = dump_tree(o, &common.tree)
            .leave_running(common.leave_running)
            .staged(true)
            .record(true);
        if let Some(name) = &log_file {
            o = o.log_file(name.clone());
        }
        o
    }));
    batch::run(batch, &targets, printer, "dump").await
}

/// What to dump: a plain tree (`pid`), the container of a bundle (`bundle` and
/// `pid`), or runc's container `runc`. Returns the target's name, its pid and the
/// options derived for it, or its name and why it cannot be dumped.
fn dump_source(
    pid: Option<i32>,
    bundle: Option<&Path>,
    runc: Option<&str>,
) -> Result<(String, i32, DumpOptions), (String, String)> {
    let container = match (runc, bundle, pid) {
        (Some(id), _, _) => {
            Container::from_runc(id).map_err(|e| (id.to_owned(), report::chain(&e)))?
        }
        (None, Some(b), Some(pid)) => {
            Container::from_bundle(b, pid).map_err(|e| (pid.to_string(), report::chain(&e)))?
        }
        (None, _, Some(pid)) => return Ok((pid.to_string(), pid, DumpOptions::new(pid))),
        (None, _, None) => unreachable!("clap requires --pid or --runc"),
    };
    let name = container
        .id()
        .map(str::to_owned)
        .unwrap_or_else(|| container.pid().to_string());
    let opts = container
        .dump_options()
        .map_err(|e| (name.clone(), report::chain(&e)))?;
    Ok((name, container.pid(), opts))
}

/// The dump side of the tree flags.
fn dump_tree(mut o: DumpOptions, t: &TreeArgs) -> DumpOptions {
    o = o
        .shell_job(t.shell_job)
        .tcp_established(t.tcp_established)
        .ext_unix_sk(t.ext_unix_sk)
        .file_locks(t.file_locks);
    for spec in &t.external {
        o = o.external(spec.clone());
    }
    if let Some(lock) = t.network_lock {
        o = o.network_lock(lock.into());
    }
    if let Some(mode) = t.manage_cgroups {
        o = o.manage_cgroups(mode.into());
    }
    if t.empty_ns.is_some() {
        o = o.empty_ns(nix::libc::CLONE_NEWNET as u32);
    }
    if let Some(level) = t.log_level {
        o = o.log_level(level);
    }
    o
}

/// The restore side of the tree flags, over what the dump recorded: a flag given
/// adds to or replaces the record's.
fn restore_tree(mut o: RestoreOptions, t: &TreeArgs) -> RestoreOptions {
    let flags = [
        (
            t.shell_job,
            RestoreOptions::shell_job as fn(RestoreOptions, bool) -> RestoreOptions,
        ),
        (t.tcp_established, RestoreOptions::tcp_established),
        (t.ext_unix_sk, RestoreOptions::ext_unix_sk),
        (t.file_locks, RestoreOptions::file_locks),
    ];
    for (on, set) in flags {
        if on {
            o = set(o, true);
        }
    }
    for spec in &t.external {
        o = o.external(spec.clone());
    }
    if let Some(lock) = t.network_lock {
        o = o.network_lock(lock.into());
    }
    if let Some(mode) = t.manage_cgroups {
        o = o.manage_cgroups(mode.into());
    }
    if t.empty_ns.is_some() {
        o = o.empty_ns(nix::libc::CLONE_NEWNET as u32);
    }
    if let Some(level) = t.log_level {
        o = o.log_level(level);
    }
    o
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

/// The restore options for the images in `dir`: what their dump recorded, then the
/// command line's flags. An unreadable record is an error of that target.
fn restore_options(
    dir: &Path,
    common: &RestoreCommon,
    log_file: &Option<String>,
) -> Result<RestoreOptions, String> {
    let record = DumpRecord::read(dir).map_err(|e| report::chain(&e))?;
    let bundle = common.bundle.clone().or_else(|| {
        record
            .as_ref()
            .and_then(|r| r.container.as_ref())
            .map(|c| c.bundle.clone())
    });
    let mut inherit = Vec::new();
    for (key, path) in &common.inherit_fd {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("--inherit-fd {key}: {}: {e}", path.display()))?;
        inherit.push((key.clone(), file));
    }
    let mut o = match (bundle, record) {
        (Some(bundle), _) => {
            let mut restore = ContainerRestore::new(bundle, dir);
            for (key, file) in inherit {
                restore = restore.inherit_fd(key, file);
            }
            restore.options().map_err(|e| report::chain(&e))?
        }
        (None, record) => {
            let mut o = match record {
                Some(r) => RestoreOptions::from_record(&r),
                None => RestoreOptions::new(),
            }
            .images_dir(dir);
            for (key, file) in inherit {
                o = o.inherit_fd(key, file);
            }
            o
        }
    };
    o = restore_tree(o, &common.tree);
    if let Some(root) = &common.root {
        o = o.root(root.display().to_string());
    }
    if let Some(name) = log_file {
        o = o.log_file(name.clone());
    }
    Ok(o)
}

/// Restores the trees in `dirs` as `batch` schedules them.
async fn restore(
    criu: &Criu,
    batch: Option<&BatchArgs>,
    common: &RestoreCommon,
    log_file: Option<String>,
    dirs: Vec<std::path::PathBuf>,
    printer: Printer,
) -> bool {
    let mut targets = Vec::new();
    let mut opts = Vec::new();
    let mut all_ok = true;
    for dir in dirs {
        let target = Target {
            name: dir.display().to_string(),
            pid: None,
            images_dir: absolute(&dir),
        };
        match restore_options(&dir, common, &log_file) {
            Ok(o) => {
                targets.push(target);
                opts.push(o);
            }
            Err(e) => {
                all_ok = false;
                printer.print(&report::Report::failed(&target, e));
            }
        }
    }
    let socket = common.console_socket.clone();
    let batch = fleet(criu, batch, &common.tree.limits).restore_with(
        opts.into_iter()
            .map(|o| (o, console::Forward::to(socket.clone()))),
    );
    batch::run(batch, &targets, printer, "restore").await && all_ok
}

/// `path` made absolute (resolved if it exists), for reports.
fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| std::path::absolute(path).unwrap_or(path.into()))
}

/// `doctor`: criu's self-test, a line per check (or one JSON object).
async fn doctor(criu: &Criu, printer: Printer) -> bool {
    let report = criu.self_test().await;
    let ok = report.can_checkpoint();
    let target = report
        .criu
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "criu".into());
    if printer.json {
        let checks: Vec<Value> = report
            .checks
            .iter()
            .map(|c| {
                json!({"name": c.name, "status": c.status.as_str(), "detail": c.detail, "fix": c.fix})
            })
            .collect();
        let value = json!({
            "target": target,
            "ok": ok,
            "criu_version": report.version.as_ref().map(ToString::to_string),
            "kernel": report.kernel,
            "checks": checks,
        });
        println!("{value}");
        return ok;
    }
    println!("criu-swrk doctor: {target}, Linux {}", report.kernel);
    for c in &report.checks {
        let word = match c.status {
            criu_swrk::doctor::Status::Ok => "ok",
            criu_swrk::doctor::Status::Warning => "warn",
            criu_swrk::doctor::Status::Failed => "FAIL",
            _ => "skip",
        };
        println!(
            "  {word:<5} {}: {}",
            c.name,
            c.detail.replace('\n', "\n        ")
        );
        if let Some(fix) = &c.fix {
            println!("        fix: {fix}");
        }
    }
    if ok {
        println!("criu can checkpoint and restore here");
    } else {
        println!("criu cannot checkpoint and restore here: see FAIL above");
    }
    ok
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
        Err(e) => (json!({}), String::new(), Some(report::chain(&e))),
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
            criu.check(criu_swrk::CheckOptions::new()).await?;
            (json!({}), format!("criu check passed ({})", path.display()))
        }
    })
}

impl From<LockArg> for NetworkLock {
    fn from(a: LockArg) -> Self {
        match a {
            LockArg::Iptables => NetworkLock::Iptables,
            LockArg::Nftables => NetworkLock::Nftables,
            LockArg::Skip => NetworkLock::Skip,
        }
    }
}

impl From<CgroupArg> for CgroupMode {
    fn from(a: CgroupArg) -> Self {
        match a {
            CgroupArg::Ignore => CgroupMode::Ignore,
            CgroupArg::None => CgroupMode::None,
            CgroupArg::Props => CgroupMode::Props,
            CgroupArg::Soft => CgroupMode::Soft,
            CgroupArg::Full => CgroupMode::Full,
            CgroupArg::Strict => CgroupMode::Strict,
        }
    }
}
