//! The `criu-swrk` command-line tool against real criu and real processes (root):
//! batches of dumps and restores, a failing target among good ones, a batch rolled back
//! by its timeout, the bound on criu processes, usage errors and the one-object
//! answers.
//!
//! Outside CI the real-criu tests skip when root or criu is missing; with `CI=true`
//! they fail. Restored trees are re-parented to this process (a child subreaper, see
//! `common::env`) when the tool's criu exits; each test kills and reaps them.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

const CLI: &str = env!("CARGO_BIN_EXE_criu-swrk");

/// Runs the tool with `args`, stdin on /dev/null, output captured.
fn cli<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(CLI)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running criu-swrk")
}

/// The tool's exit code, with its output in the panic message when it is not `want`.
fn assert_exit(out: &Output, want: i32) {
    assert_eq!(
        out.status.code(),
        Some(want),
        "exit status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON lines of the tool's stdout, by their `target`.
fn json_by_target(out: &Output) -> HashMap<String, Value> {
    let stdout = String::from_utf8(out.stdout.clone()).expect("UTF-8 stdout");
    let mut by_target = HashMap::new();
    for line in stdout.lines() {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let target = v["target"].as_str().expect("a target").to_owned();
        assert!(
            by_target.insert(target, v).is_none(),
            "a target reported twice:\n{stdout}"
        );
    }
    by_target
}

/// `dump-many --json` of `pids` into `root`, plus `extra` arguments.
fn dump_many(root: &Path, jobs: u32, extra: &[&str], pids: &[i32]) -> Output {
    let mut args = vec![
        "--json".to_owned(),
        "dump-many".into(),
        "--images-root".into(),
        root.display().to_string(),
        "--jobs".into(),
        jobs.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(pids.iter().map(i32::to_string));
    cli(args)
}

/// Checks a successful dump's JSON line for `target` (dumped into `root`).
fn assert_dumped(line: &Value, target: &common::Target, root: &Path) {
    let dir = std::fs::canonicalize(root.join(target.pid.to_string())).unwrap();
    assert_eq!(line["ok"], true, "{line}");
    assert_eq!(line["pid"], target.pid, "{line}");
    assert_eq!(line["images_dir"], dir.to_str().unwrap(), "{line}");
    assert!(line["error"].is_null(), "{line}");
    let written = line["stats"]["pages_written"].as_u64().expect("stats");
    assert!(written >= target.info.len / 4096, "{line}");
    assert!(dir.join("inventory.img").exists());
}

/// `restore-many --json` of the images of `targets` (dumped into `root`, reaped),
/// checking each restored tree's memory; returns them (killed and reaped on drop).
fn restore_all(root: &Path, targets: &[common::Target]) -> Vec<common::Restored> {
    let dirs: Vec<PathBuf> = targets
        .iter()
        .map(|t| root.join(t.pid.to_string()))
        .collect();
    let mut args = vec![
        "--json".into(),
        "restore-many".into(),
        "--jobs".into(),
        "3".into(),
    ];
    args.extend(dirs.iter().map(|d| d.display().to_string()));
    let out = cli(args);
    // Whatever the tool says, everything it restored is ours to kill and reap.
    let lines = json_by_target(&out);
    let restored: Vec<common::Restored> = lines
        .values()
        .filter_map(|l| l["pid"].as_i64())
        .filter_map(|pid| {
            let t = targets.iter().find(|t| i64::from(t.pid) == pid)?;
            Some(t.restored(t.pid))
        })
        .collect();
    assert_exit(&out, 0);
    assert_eq!(lines.len(), targets.len());
    for (target, dir) in targets.iter().zip(&dirs) {
        let line = &lines[dir.to_str().unwrap()];
        assert_eq!(line["ok"], true, "{line}");
        // criu gives the tree its pid back.
        assert_eq!(line["pid"], target.pid, "{line}");
        let pages = line["stats"]["pages_restored"].as_u64().expect("stats");
        assert!(pages >= target.info.len / 4096, "{line}");
    }
    for r in &restored {
        r.assert_alive_and_intact();
    }
    restored
}

/// A pid no process has, below `pid_max`.
fn free_pid() -> i32 {
    let max: i32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    (300..max)
        .rev()
        .find(|p| !common::exists(*p))
        .expect("a free pid")
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn dump_many_then_restore_many_keeps_every_target_intact() {
    let env = common::env();
    let mut targets: Vec<_> = (0..8).map(|_| env.workload(16)).collect();
    let root = env.dir.path().join("images");
    let pids: Vec<i32> = targets.iter().map(|t| t.pid).collect();

    let out = dump_many(&root, 3, &[], &pids);
    assert_exit(&out, 0);
    let lines = json_by_target(&out);
    assert_eq!(lines.len(), 8, "{lines:?}");
    for t in &targets {
        assert_dumped(&lines[&t.pid.to_string()], t, &root);
    }
    for t in &mut targets {
        t.reap_dumped();
    }

    let restored = restore_all(&root, &targets);
    assert_eq!(restored.len(), 8);
    common::reap_orphaned_criu_blocking();
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn a_nonexistent_pid_fails_alone() {
    let env = common::env();
    let mut targets: Vec<_> = (0..5).map(|_| env.workload(16)).collect();
    let root = env.dir.path().join("images");
    let missing = free_pid();
    let mut pids: Vec<i32> = targets.iter().map(|t| t.pid).collect();
    pids.insert(2, missing);

    let out = dump_many(&root, 3, &[], &pids);
    assert_exit(&out, 1);
    let lines = json_by_target(&out);
    assert_eq!(lines.len(), 6, "{lines:?}");
    let bad = &lines[&missing.to_string()];
    assert_eq!(bad["ok"], false, "{bad}");
    assert_eq!(bad["pid"], missing, "{bad}");
    assert!(bad["stats"].is_null(), "{bad}");
    let error = bad["error"].as_str().expect("an error");
    // criu's own reason, for the right pid.
    assert!(
        error.contains(&format!("criu refused the dump request for pid {missing}"))
            && error.contains("No such process"),
        "{error}"
    );
    // The error also reaches stderr, naming the target.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("criu-swrk: {missing}: criu refused")),
        "{stderr}"
    );
    for t in &targets {
        assert_dumped(&lines[&t.pid.to_string()], t, &root);
        // criu logged to the tool's pipe, not into the images.
        assert!(!root.join(t.pid.to_string()).join("dump.log").exists());
    }
    for t in &mut targets {
        t.reap_dumped();
    }

    // Asked for, criu's log lands in the images directory and the error names it.
    let dir = root.join(missing.to_string());
    let pid = missing.to_string();
    let dir_arg = dir.display().to_string();
    let out = cli([
        "--log-file",
        "dump.log",
        "dump",
        "--pid",
        pid.as_str(),
        "--images-dir",
        dir_arg.as_str(),
    ]);
    assert_exit(&out, 1);
    let log = std::fs::canonicalize(&dir).unwrap().join("dump.log");
    assert!(log.exists());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&log.display().to_string()), "{stderr}");

    restore_all(&root, &targets);
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn a_batch_past_its_timeout_leaves_every_target_running() {
    let env = common::env();
    // 256 MiB take criu far longer than 50 ms to dump; the third target waits for a
    // slot and times out on its own.
    let targets: Vec<_> = (0..3).map(|_| env.workload(256)).collect();
    let root = env.dir.path().join("images");
    let pids: Vec<i32> = targets.iter().map(|t| t.pid).collect();

    // No --leave-running: a dump that went through would kill its target.
    let out = dump_many(&root, 2, &["--timeout", "0.05"], &pids);
    assert_exit(&out, 1);
    let lines = json_by_target(&out);
    assert_eq!(lines.len(), 3, "{lines:?}");
    for t in &targets {
        let line = &lines[&t.pid.to_string()];
        assert_eq!(line["ok"], false, "{line}");
        let error = line["error"].as_str().expect("an error");
        assert!(error.contains("timed out after 50ms"), "{error}");
        t.assert_alive_and_intact();
    }
    common::reap_orphaned_criu_blocking();
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn jobs_bound_the_criu_processes_alive_at_once() {
    let env = common::env();
    let targets: Vec<_> = (0..8).map(|_| env.workload(32)).collect();
    let root = env.dir.path().join("images");
    let mut args = vec![
        "dump-many".to_owned(),
        "--leave-running".into(),
        "--jobs".into(),
        "2".into(),
        "--images-root".into(),
        root.display().to_string(),
    ];
    args.extend(targets.iter().map(|t| t.pid.to_string()));
    let child = Command::new(CLI)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running criu-swrk");

    // Count the tool's criu children (zombies included: the tool reaps each criu
    // before its slot frees) as fast as /proc can be read, until the tool exits.
    let cli_pid = child.id();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let (mut most, mut samples) = (0, 0u64);
            while !stop.load(Ordering::Relaxed) {
                most = most.max(common::criu_children_of(cli_pid).len());
                samples += 1;
            }
            (most, samples)
        }
    });
    let out = child.wait_with_output().expect("waiting for criu-swrk");
    stop.store(true, Ordering::Relaxed);
    let (most, samples) = watcher.join().expect("the watcher");

    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 8, "{stdout}");
    assert!(samples > 20, "only {samples} looks at /proc");
    assert_eq!(
        most, 2,
        "with --jobs 2, at most 2 criu processes should run and 2 should overlap"
    );
    for t in &targets {
        t.assert_alive_and_intact();
    }
    // The plain (non-terminal) progress: a line per start and per hook.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches(": started (criu pid").count(), 8, "{stderr}");
    assert_eq!(stderr.matches(": post-dump").count(), 8, "{stderr}");
}

#[test]
fn usage_errors_exit_2_naming_what_was_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (
            &["no-such-command"],
            "unrecognized subcommand 'no-such-command'",
        ),
        (&["dump", "--images-dir", "/tmp"], "--pid"),
        (
            &["dump", "--pid", "0", "--images-dir", "/tmp"],
            "invalid value '0' for '--pid <PID>'",
        ),
        // `=`: clap would otherwise take `-1` for a flag and never check the value.
        (
            &["dump", "--pid", "1", "--images-dir", "/tmp", "--timeout=-1"],
            "'-1' is not a positive number of seconds",
        ),
        (
            &[
                "dump",
                "--pid",
                "1",
                "--images-dir",
                "/tmp",
                "--timeout=soon",
            ],
            "invalid value 'soon' for '--timeout <SECS>'",
        ),
        (&["dump-many", "--images-root", "/tmp"], "PID"),
        (
            &["dump-many", "--images-root", "/tmp", "--jobs", "0", "1"],
            "invalid value '0' for '--jobs <N>'",
        ),
        (
            &["dump-many", "--images-root", "/tmp", "not-a-pid"],
            "invalid value 'not-a-pid'",
        ),
        (&["restore"], "--images-dir"),
        (&["restore-many"], "DIR"),
    ];
    for (args, why) in cases {
        let out = cli(*args);
        assert_eq!(out.status.code(), Some(2), "criu-swrk {args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "criu-swrk {args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(why),
            "criu-swrk {args:?}: no {why:?} in {stderr}"
        );
    }
}

/// The one JSON object `criu-swrk --json ARGS` prints, and its exit code.
fn one_object(args: &[&str]) -> (Value, Option<i32>) {
    let out = cli(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    let v = serde_json::from_str(lines.next().expect("a line")).expect("JSON");
    assert!(lines.next().is_none(), "one line: {stdout}");
    (v, out.status.code())
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn version_features_and_check_answer_with_one_json_object() {
    let env = common::env();
    let binary = env.criu.binary().unwrap();

    let (v, code) = one_object(&["--json", "version"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["ok"], true);
    assert!(v["error"].is_null());
    assert_eq!(v["target"], binary.to_str().unwrap());
    let major = v["major"].as_u64().expect("major");
    assert!(major >= 4, "{v}");
    let version = v["version"].as_str().expect("version");
    assert!(
        version.starts_with(&format!("{major}.{}", v["minor"])),
        "{v}"
    );

    let (f, code) = one_object(&["features", "--json"]);
    assert_eq!(code, Some(0), "{f}");
    assert_eq!(f["ok"], true);
    for key in ["mem_track", "lazy_pages", "pidfd_store"] {
        assert!(f["features"][key].is_boolean(), "{key}: {f}");
    }

    let (c, code) = one_object(&["--json", "check"]);
    assert_eq!(code, Some(0), "{c}");
    assert_eq!(c["ok"], true);

    // A criu that is not there: exit 1, the error names it.
    let (e, code) = one_object(&["--json", "--criu", "/nonexistent/criu", "version"]);
    assert_eq!(code, Some(1), "{e}");
    assert_eq!(e["ok"], false);
    assert_eq!(e["target"], "/nonexistent/criu");
    assert!(
        e["error"].as_str().unwrap().contains("/nonexistent/criu"),
        "{e}"
    );
}

/// A regression test for `Fleet`: a batch larger than the fd limit. Each target holds
/// its images directory open while its request runs; preparing every target up front
/// made each one past `RLIMIT_NOFILE` fail with EMFILE instead of being tried.
#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn a_batch_larger_than_the_fd_limit_tries_every_target() {
    let env = common::env();
    let root = env.dir.path().join("images");
    // 50 pids no process has: each is tried, and criu refuses it.
    let pids: Vec<String> = (3_000_000..)
        .filter(|p| !common::exists(*p))
        .take(50)
        .map(|p| p.to_string())
        .collect();
    let mut cmd = Command::new(CLI);
    cmd.args(["--json", "dump-many", "--jobs", "4", "--images-root"])
        .arg(&root)
        .args(&pids)
        .stdin(Stdio::null());
    // SAFETY: setrlimit is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            let limit = nix::libc::rlimit {
                rlim_cur: 40,
                rlim_max: 40,
            };
            if nix::libc::setrlimit(nix::libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("running criu-swrk");
    assert_exit(&out, 1);
    let lines = json_by_target(&out);
    assert_eq!(lines.len(), pids.len());
    for line in lines.values() {
        let error = line["error"].as_str().expect("an error");
        assert!(error.contains("No such process"), "{error}");
    }
}

#[test]
fn a_hung_criu_is_given_up_on_within_the_timeout_whatever_the_grace() {
    // No root, no criu: a script stands in for a criu that never answers.
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let criu = dir.path().join("criu-hangs");
    std::fs::write(&criu, "#!/bin/sh\nexec sleep 3600\n").unwrap();
    std::fs::set_permissions(&criu, std::fs::Permissions::from_mode(0o755)).unwrap();
    let images = dir.path().join("images");
    let started = std::time::Instant::now();
    let out = cli([
        "--criu".as_ref(),
        criu.as_os_str(),
        "dump".as_ref(),
        "--pid".as_ref(),
        "1".as_ref(),
        "--images-dir".as_ref(),
        images.as_os_str(),
        "--timeout".as_ref(),
        "1".as_ref(),
        "--grace".as_ref(),
        "3600".as_ref(),
    ]);
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("timed out after 1s"), "{stderr}");
    assert!(
        stderr.contains("stopped before criu touched the target"),
        "{stderr}"
    );
    assert!(
        !images.exists(),
        "no images directory for a dump that never was"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["criu-hangs"], "no staging directory left");
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn a_bare_restore_brings_back_what_the_dump_recorded() {
    let env = common::env();
    // A shell job: the workload runs in the session of a shell outside the tree.
    let info_path = env.dir.path().join("job.info");
    let script = format!("{} 16 {} & wait", &*common::WORKLOAD, info_path.display());
    let (mut shell, info) =
        common::workload::start(Path::new("/bin/sh"), &["-c", &script], &info_path)
            .expect("the shell job");
    let pid = common::children_of(shell.id() as i32)[0];
    common::workload::assert_alive_and_intact(pid, &info).unwrap();
    let images = env.dir.path().join("job");
    let pid_arg = pid.to_string();
    let images_arg = images.display().to_string();
    let out = cli([
        "dump",
        "--pid",
        &pid_arg,
        "--images-dir",
        &images_arg,
        "--shell-job",
    ]);
    assert_exit(&out, 0);
    shell.wait().unwrap();
    let record: Value =
        serde_json::from_str(&std::fs::read_to_string(images.join("criu-swrk.json")).unwrap())
            .unwrap();
    assert_eq!(record["format"], 1, "{record}");
    assert_eq!(record["shell_job"], true, "{record}");
    assert_eq!(record["pid"], pid, "{record}");
    assert!(
        record["criu_version"].as_str().unwrap().starts_with('4'),
        "{record}"
    );

    // No --shell-job: the record says it.
    let out = cli(["restore", "--images-dir", &images_arg]);
    assert_exit(&out, 0);
    let restored: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let restored = common::Restored {
        pid: restored,
        info,
    };
    restored.assert_alive_and_intact();
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn an_established_connection_survives_a_cli_dump_and_a_bare_restore() {
    use common::net::{self, CounterClient, NftLock};
    let _env = common::env();
    let images = _env.dir.path().join("tcp");
    let port = net::free_port();
    let mut server = net::counter_server(port);
    let mut client = CounterClient::connect(port, std::time::Duration::from_secs(10));
    for want in 1..=3 {
        assert_eq!(client.next().unwrap(), want);
    }
    let client_port = client.local_port();
    let (pid, dir) = (server.pid.to_string(), images.display().to_string());
    let out = cli([
        "dump",
        "--pid",
        &pid,
        "--images-dir",
        &dir,
        "--tcp-established",
        "--network-lock",
        "nftables",
    ]);
    assert_exit(&out, 0);
    let lock = NftLock::of_dump(&images);
    server.reap_dumped();
    let record = std::fs::read_to_string(images.join("criu-swrk.json")).unwrap();
    assert!(record.contains("\"tcp_established\": true"), "{record}");
    assert!(
        record.contains("\"network_lock\": \"nftables\""),
        "{record}"
    );

    // The record brings tcp_established back; nothing else is said.
    let out = cli(["restore", "--images-dir", &dir]);
    assert_exit(&out, 0);
    let restored: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let _restored = net::RestoredTree { pid: restored };
    assert!(!lock.exists(), "the restore unlocks the connection");
    assert_eq!(client.local_port(), client_port, "the same connection");
    for want in 4..=6 {
        assert_eq!(client.next().unwrap(), want, "the counter goes on");
    }
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn redis_comes_back_with_its_data_through_the_cli() {
    use common::net::{self, Redis, Reply};
    let env = common::env();
    let port = net::free_port();
    let mut server = net::redis_server(port);
    let digest = |r: &mut Redis| match r.cmd(&["DEBUG", "DIGEST"]).unwrap() {
        Reply::Status(d) => d,
        other => panic!("DEBUG DIGEST: {other:?}"),
    };
    let before = {
        let mut r = Redis::connect(port).unwrap();
        r.set_many(100_000).unwrap();
        digest(&mut r)
    };
    net::wait_only_listeners(server.pid);
    let images = env.dir.path().join("redis");
    let (pid, dir) = (server.pid.to_string(), images.display().to_string());
    assert_exit(&cli(["dump", "--pid", &pid, "--images-dir", &dir]), 0);
    server.reap_dumped();
    let out = cli(["--json", "restore", "--images-dir", &dir]);
    assert_exit(&out, 0);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let _restored = net::RestoredTree {
        pid: line["pid"].as_i64().unwrap() as i32,
    };
    let mut r = Redis::connect(port).unwrap();
    assert_eq!(digest(&mut r), before, "the restored data set differs");
    assert_eq!(r.cmd(&["DBSIZE"]).unwrap(), Reply::Int(100_000));
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn doctor_passes_here_and_reports_an_old_criu_with_the_fix() {
    let _env = common::env();
    let out = cli(["--json", "doctor"]);
    assert_exit(&out, 0);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let old = std::env::var("CRIU_41_BIN").unwrap_or_else(|_| "/opt/criu-4.1.1/sbin/criu".into());
    assert!(
        Path::new(&old).exists(),
        "{old} is missing: scripts/test builds it"
    );
    let out = cli(["--criu", old.as_str(), "doctor"]);
    assert_exit(&out, 1);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL  inet sockets: criu 4.1.1 cannot dump inet sockets"),
        "{text}"
    );
    assert!(text.contains("fix: install criu 4.2 or later"), "{text}");
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn a_pivot_rooted_tree_comes_back_with_a_bare_restore_of_its_cli_dump() {
    use common::fixtures::{self, NsTree};
    let env = common::env();
    let rootfs = fixtures::build_rootfs(env.dir.path());
    let hostname = fixtures::unique_name("criu-cli-ns");
    let mut tree = NsTree::start(&rootfs, &hostname);
    let before = fixtures::counter(tree.pid).unwrap();
    let images = env.dir.path().join("ns");
    let (pid, dir) = (tree.pid.to_string(), images.display().to_string());
    let out = cli([
        "dump",
        "--pid",
        &pid,
        "--images-dir",
        &dir,
        "--network-lock",
        "nftables",
    ]);
    assert_exit(&out, 0);
    tree.reap_dumped();
    let record = std::fs::read_to_string(images.join("criu-swrk.json")).unwrap();
    let root = std::fs::canonicalize(&rootfs).unwrap();
    assert!(
        record.contains(&format!("\"root\": \"{}\"", root.display())),
        "the record names the tree's root: {record}"
    );
    let out = cli(["restore", "--images-dir", &dir]);
    assert_exit(&out, 0);
    let restored: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let _restored = fixtures::RestoredTree { pid: restored };
    assert_eq!(common::ns_pids(restored).last().copied(), Some(1));
    assert_eq!(fixtures::hostname_of(restored), hostname);
    assert!(fixtures::counter_above(restored, before, std::time::Duration::from_secs(10)) > before);
}

#[test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
fn a_workload_in_cgroups_comes_back_into_them_through_the_cli() {
    use common::fixtures::{self, Cgroup};
    let env = common::env();
    let name = fixtures::unique_name("criu-swrk-cli");
    let freezer = Cgroup::create("freezer", &name);
    let memory = Cgroup::create("memory", &name);
    memory.write("memory.limit_in_bytes", "536870912");
    let mut target = env.workload(16);
    freezer.add(target.pid);
    memory.add(target.pid);
    let images = env.dir.path().join("cg");
    let (pid, dir) = (target.pid.to_string(), images.display().to_string());
    let freezer_path = freezer.path.display().to_string();
    let out = cli([
        "dump",
        "--pid",
        &pid,
        "--images-dir",
        &dir,
        "--freeze-cgroup",
        &freezer_path,
        "--manage-cgroups",
        "soft",
    ]);
    assert_exit(&out, 0);
    target.reap_dumped();
    freezer.remove().unwrap();
    memory.remove().unwrap();
    // --manage-cgroups soft comes back from the record.
    let out = cli(["restore", "--images-dir", &dir]);
    assert_exit(&out, 0);
    let restored: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let restored = target.restored(restored);
    let want = format!("/{name}");
    assert_eq!(
        fixtures::cgroup_of(restored.pid, "freezer").as_deref(),
        Some(want.as_str())
    );
    assert_eq!(
        fixtures::cgroup_of(restored.pid, "memory").as_deref(),
        Some(want.as_str())
    );
    assert_eq!(memory.read("memory.limit_in_bytes"), "536870912");
    restored.assert_alive_and_intact();
    drop(restored);
    freezer.remove().unwrap();
    memory.remove().unwrap();
}

/// The counter a runc fixture container writes into its volume.
fn volume_counter(volume: &Path) -> Option<u64> {
    let line = std::fs::read_to_string(volume.join(common::runc::COUNTER_FILE)).ok()?;
    common::workload::parse_tick(&line)
}

/// Waits up to 5 s for the volume's counter to pass `than`.
fn counts_past(volume: &Path, than: u64) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        if volume_counter(volume).is_some_and(|n| n > than) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    false
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn six_containers_dumped_and_restored_three_at_a_time() {
    use common::runc::{Bundle, BundleSpec, Container, default_loop, unique_id};
    let env = common::env();
    let mut containers = Vec::new();
    for i in 0..6 {
        let volume = env.subdir(&format!("volume-{i}"));
        let spec = BundleSpec {
            volume: Some(volume.clone()),
            args: Some(default_loop(true, false)),
            ..Default::default()
        };
        let bundle = Bundle::build(&env.subdir(&format!("bundle-{i}")), spec);
        let id = unique_id(&format!("six-{i}"));
        let container = Container::run(&bundle, &id);
        containers.push((id, volume, container));
    }
    for (_, volume, _) in &containers {
        assert!(counts_past(volume, 0), "container counting");
    }
    let root = env.dir.path().join("images");
    let mut args = vec![
        "--json".to_owned(),
        "dump-many".into(),
        "--jobs".into(),
        "3".into(),
    ];
    args.extend(["--images-root".into(), root.display().to_string()]);
    for (id, _, _) in &containers {
        args.extend(["--runc".into(), id.clone()]);
    }
    let out = cli(&args);
    assert_exit(&out, 0);
    let lines = json_by_target(&out);
    assert_eq!(lines.len(), 6, "{lines:?}");
    let mut last = Vec::new();
    for (id, volume, _) in &containers {
        assert_eq!(lines[id]["ok"], true, "{}", lines[id]);
        let _ = Command::new("runc").args(["delete", "-f", id]).output();
        last.push(volume_counter(volume).unwrap());
    }

    let mut args = vec![
        "--json".to_owned(),
        "restore-many".into(),
        "--jobs".into(),
        "3".into(),
    ];
    args.extend(
        containers
            .iter()
            .map(|(id, _, _)| root.join(id).display().to_string()),
    );
    let out = cli(&args);
    assert_exit(&out, 0);
    let lines = json_by_target(&out);
    let mut restored = Vec::new();
    for ((id, volume, _), before) in containers.iter().zip(&last) {
        let line = &lines[&root.join(id).display().to_string()];
        assert_eq!(line["ok"], true, "{line}");
        let pid = line["pid"].as_i64().unwrap() as i32;
        restored.push(common::fixtures::RestoredTree { pid });
        assert_eq!(common::ns_pids(pid).last().copied(), Some(1));
        assert!(counts_past(volume, *before), "{id} counts on from {before}");
    }
    drop(restored);
    common::reap_orphaned_criu().await;
    for (id, _, _) in &containers {
        for c in [
            "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio", "pids", "systemd",
        ] {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}/{id}"));
        }
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_container_dumped_from_its_bundle_comes_back_with_restore_bundle() {
    use common::runc::{Bundle, BundleSpec, Container, default_loop, unique_id};
    let env = common::env();
    let volume = env.subdir("volume");
    let spec = BundleSpec {
        volume: Some(volume.clone()),
        args: Some(default_loop(true, false)),
        ..Default::default()
    };
    let bundle = Bundle::build(&env.subdir("bundle"), spec);
    let id = unique_id("cli-bundle");
    let container = Container::run(&bundle, &id);
    assert!(counts_past(&volume, 0));
    let images = env.dir.path().join("images");
    let (pid, dir) = (container.pid().to_string(), images.display().to_string());
    let bundle_dir = bundle.dir.display().to_string();
    let out = cli([
        "dump",
        "--bundle",
        &bundle_dir,
        "--pid",
        &pid,
        "--images-dir",
        &dir,
    ]);
    assert_exit(&out, 0);
    let _ = Command::new("runc").args(["delete", "-f", &id]).output();
    let before = volume_counter(&volume).unwrap();
    let out = cli([
        "--json",
        "restore",
        "--bundle",
        &bundle_dir,
        "--images-dir",
        &dir,
    ]);
    assert_exit(&out, 0);
    let line: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pid = line["pid"].as_i64().unwrap() as i32;
    let _restored = common::fixtures::RestoredTree { pid };
    assert!(counts_past(&volume, before));
    assert_eq!(common::ns_pids(pid).last().copied(), Some(1));
    drop(_restored);
    for c in [
        "cpu", "cpuacct", "cpuset", "devices", "freezer", "blkio", "pids", "systemd",
    ] {
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{c}/{id}"));
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_container_with_a_ramfs_mount_is_refused_by_the_cli_and_runs_on() {
    use common::runc::{Bundle, BundleSpec, Container, default_loop, unique_id};
    let env = common::env();
    let volume = env.subdir("volume");
    let spec = BundleSpec {
        volume: Some(volume.clone()),
        args: Some(default_loop(true, false)),
        extra_mount: Some(serde_json::json!({
            "destination": "/cache", "type": "ramfs", "source": "ramfs", "options": []
        })),
        ..Default::default()
    };
    let bundle = Bundle::build(&env.subdir("bundle"), spec);
    let id = unique_id("cli-ramfs");
    let container = Container::run(&bundle, &id);
    assert!(counts_past(&volume, 0));
    let images = env.dir.path().join("images");
    let out = cli([
        "dump",
        "--runc",
        &id,
        "--images-dir",
        &images.display().to_string(),
    ]);
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("mount /cache (type ramfs)"), "{stderr}");
    assert!(!images.exists(), "nothing was written");
    let now = volume_counter(&volume).unwrap();
    assert!(counts_past(&volume, now), "the container runs on");
    drop(container);
}
