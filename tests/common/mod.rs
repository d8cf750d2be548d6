//! Helpers for tests that run real criu against real processes.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use criu_swrk::workload::{self, Info};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

pub const WORKLOAD: &str = env!("CARGO_BIN_EXE_criu-swrk-workload");

/// Whether a test that needs real criu may skip: never in CI.
fn may_skip() -> bool {
    std::env::var("CI")
        .map(|v| v != "true" && v != "1")
        .unwrap_or(true)
}

/// Serializes the real-criu tests of one test binary: they watch this process's
/// children (criu, restored trees), which parallel tests would muddle.
static SERIAL: Mutex<()> = Mutex::new(());

/// What a real-criu test holds while it runs.
pub struct Env {
    _serial: MutexGuard<'static, ()>,
    pub criu: criu_swrk::Criu,
    pub dir: tempfile::TempDir,
}

/// Sets up a real-criu test: root, a working criu, this process a child subreaper.
/// Returns `None` (the test skips) outside CI when root or criu is missing; in CI
/// (`CI=true`) that is a failure.
pub fn env() -> Option<Env> {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        // Restored trees are re-parented to us when criu exits, so we can reap them.
        nix::sys::prctl::set_child_subreaper(true).expect("PR_SET_CHILD_SUBREAPER");
    });
    let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let problem = if !nix::unistd::Uid::effective().is_root() {
        Some("not root".to_string())
    } else {
        match criu_swrk::Criu::new().binary() {
            Ok(_) => None,
            Err(e) => Some(format!("{e}; run scripts/install-criu")),
        }
    };
    if let Some(problem) = problem {
        if may_skip() {
            eprintln!("SKIPPED (real criu needed): {problem}");
            return None;
        }
        panic!("real-criu test cannot run in CI: {problem}");
    }
    let dir = tempfile::Builder::new()
        .prefix("criu-swrk-test-")
        .disable_cleanup(std::env::var_os("CRIU_SWRK_KEEP_TEST_DIRS").is_some())
        .tempdir()
        .expect("tempdir");
    Some(Env {
        _serial: serial,
        criu: criu_swrk::Criu::new(),
        dir,
    })
}

impl Env {
    /// A fresh subdirectory of the test's directory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// Starts a workload of `mib` MiB in its own session, stdio on /dev/null.
    pub fn workload(&self, mib: usize) -> Target {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let info_path = self.dir.path().join(format!("workload-{n}.info"));
        let mib_s = mib.to_string();
        let (child, info) = workload::start(
            Path::new(WORKLOAD),
            &[&mib_s, info_path.to_str().unwrap()],
            &info_path,
        )
        .expect("starting the workload");
        let pid = child.id() as i32;
        workload::assert_alive_and_intact(pid, &info).expect("fresh workload");
        Target {
            child: Some(child),
            pid,
            info,
        }
    }
}

/// A workload process of this test. Killed and reaped on drop.
pub struct Target {
    child: Option<Child>,
    pub pid: i32,
    pub info: Info,
}

impl Target {
    /// Asserts the target runs on (counter moving) with its memory intact.
    pub fn assert_alive_and_intact(&self) {
        workload::assert_alive_and_intact(self.pid, &self.info)
            .unwrap_or_else(|e| panic!("target {}: {e}", self.pid));
    }

    /// Reaps the original process after criu killed it (a dump without
    /// leave_running), so its pid is free for a restore.
    pub fn reap_dumped(&mut self) {
        let mut child = self.child.take().expect("target already reaped");
        let status = child.wait().expect("waitpid");
        assert!(
            !status.success(),
            "the dumped target should have been killed: {status}"
        );
    }

    /// A restored copy of this target, running as `pid` (our child through the
    /// subreaper).
    pub fn restored(&self, pid: i32) -> Restored {
        Restored {
            pid,
            info: self.info,
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A restored tree's root, re-parented to us. Killed and reaped on drop.
pub struct Restored {
    pub pid: i32,
    pub info: Info,
}

impl Restored {
    pub fn assert_alive_and_intact(&self) {
        workload::assert_alive_and_intact(self.pid, &self.info)
            .unwrap_or_else(|e| panic!("restored {}: {e}", self.pid));
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGKILL);
        // By pid, never -1: tokio reaps its own children (criu).
        let _ = waitpid(pid, None);
    }
}

/// The pids of this process's children named criu (alive or zombie).
pub fn criu_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let comm = head.split_once(" (").map(|(_, c)| c).unwrap_or("");
        let ppid = rest.split_whitespace().nth(1).unwrap_or("");
        if comm == "criu" && ppid == me {
            out.push(pid);
        }
    }
    out
}

/// Waits until this process has no criu child left (alive or zombie).
pub async fn assert_no_criu_left() {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let left = criu_children();
        if left.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("criu processes left behind: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether `pid` exists (as anything, zombie included).
pub fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reaps criu processes re-parented to us (daemons criu started and lost track of,
/// like a daemon page server), waiting up to 30 s for each to exit.
pub async fn reap_orphaned_criu() {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = criu_children();
        if left.is_empty() {
            return;
        }
        for pid in &left {
            let pid = Pid::from_raw(*pid);
            let _ = waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
        }
        if Instant::now() > deadline {
            panic!("criu processes still running: {left:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
