//! criu as a process: one that hangs, one that forks helpers, one that dies by a signal.
//! Shell scripts stand in for criu (they get `swrk 3` and the socket at fd 3, and never
//! answer), so this needs neither root nor criu. The test process is a child
//! subreaper, as container runtimes are: criu's orphaned helpers come to it.

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use criu_swrk::{Criu, DumpOptions, Error, RequestState};

/// A fake criu running `body` (a shell script) in `dir`.
fn fake_criu(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Makes this process a subreaper and serializes the tests: each counts the
/// processes and zombies of this process, which the others would muddle.
async fn setup() -> tokio::sync::MutexGuard<'static, ()> {
    static ONCE: Once = Once::new();
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ONCE.call_once(|| nix::sys::prctl::set_child_subreaper(true).expect("subreaper"));
    SERIAL.lock().await
}

/// Every test is bounded: a hang fails it rather than stalling CI.
async fn bounded<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .expect("the test hung")
}

/// `(pid, state)` of every process in process group `pgid`.
fn group(pgid: i32) -> Vec<(u32, char)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = rest.next()?.chars().next()?;
            let _ppid = rest.next()?;
            let pgrp: i32 = rest.next()?.parse().ok()?;
            (pgrp == pgid).then_some((pid, state))
        })
        .collect()
}

/// Our zombie children: processes whose parent is us, in state Z.
fn our_zombies() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = rest.next()?;
            let ppid = rest.next()?;
            (state == "Z" && ppid == me).then_some(pid)
        })
        .collect()
}

/// Waits up to 2 s for group `pgid` to be empty; returns what is left.
async fn group_gone(pgid: i32) -> Vec<(u32, char)> {
    for _ in 0..200 {
        let left = group(pgid);
        if left.is_empty() {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    group(pgid)
}

#[tokio::test]
async fn a_hung_criu_is_stopped_within_the_timeout_whatever_the_grace() {
    let _serial = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let criu = fake_criu(dir.path(), "criu-hangs", "exec sleep 3600");
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let criu = Criu::new()
        .with_path(&criu)
        .grace(Duration::from_secs(3600));
    let session = criu.session().unwrap();
    let criu_pid = session.criu_pid().unwrap();
    let started = Instant::now();
    let err = bounded(
        session.dump(
            DumpOptions::new(1)
                .images_dir(&images)
                .timeout(Duration::from_secs(1)),
        ),
    )
    .await
    .unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    match &err {
        Error::Timeout { at, .. } => assert_eq!(at.state, RequestState::Untouched),
        other => panic!("{other:?}"),
    }
    assert!(group_gone(criu_pid).await.is_empty());
    assert!(
        !Path::new(&format!("/proc/{criu_pid}")).exists(),
        "criu reaped"
    );
}

#[tokio::test]
async fn killing_criu_kills_and_reaps_the_helpers_it_forked() {
    let _serial = setup().await;
    let dir = tempfile::tempdir().unwrap();
    // Like criu's kernel probe running `iptables -L -n`: helpers in criu's group.
    let criu = fake_criu(
        dir.path(),
        "criu-with-helpers",
        "sleep 3600 & sleep 3600 & (sleep 3600; true) & exec sleep 3600",
    );
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let zombies_before = our_zombies();
    for _ in 0..5 {
        let session = Criu::new().with_path(&criu).session().unwrap();
        let criu_pid = session.criu_pid().unwrap();
        // Let the helpers start.
        for _ in 0..200 {
            if group(criu_pid).len() >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(group(criu_pid).len() >= 4, "{:?}", group(criu_pid));
        let err = bounded(
            session.dump(
                DumpOptions::new(1)
                    .images_dir(&images)
                    .timeout(Duration::from_millis(100)),
            ),
        )
        .await
        .unwrap_err();
        assert!(err.is_timeout(), "{err:?}");
        let left = group_gone(criu_pid).await;
        assert!(left.is_empty(), "criu's helpers left: {left:?}");
    }
    let zombies: Vec<_> = our_zombies()
        .into_iter()
        .filter(|z| !zombies_before.contains(z))
        .collect();
    assert!(zombies.is_empty(), "zombies: {zombies:?}");
}

#[tokio::test]
async fn a_criu_dying_by_a_signal_takes_its_helpers_along() {
    let _serial = setup().await;
    let dir = tempfile::tempdir().unwrap();
    // criu crashes, leaving a helper that would otherwise run on, orphaned.
    let criu = fake_criu(
        dir.path(),
        "criu-crashes",
        "sleep 3600 & sleep 0.2; kill -SEGV $$",
    );
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let session = Criu::new().with_path(&criu).session().unwrap();
    let criu_pid = session.criu_pid().unwrap();
    // No timeout: criu's death alone must end the request, although its helper
    // holds criu's end of the socket open.
    let err = bounded(session.dump(DumpOptions::new(1).images_dir(&images)))
        .await
        .unwrap_err();
    match &err {
        Error::Exited { status, at, .. } => {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.and_then(|s| s.signal()), Some(nix::libc::SIGSEGV));
            assert_eq!(at.state, RequestState::Untouched);
        }
        other => panic!("{other:?}"),
    }
    let left = group_gone(criu_pid).await;
    assert!(left.is_empty(), "left: {left:?}");
    assert!(our_zombies().is_empty(), "zombies: {:?}", our_zombies());
}
