//! Helpers for tests that run real criu against real processes.
#![allow(dead_code)]

pub mod fixtures;
pub mod net;
pub mod runc;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use workload::Info;

/// The sample workload (shared with the CLI's demo), included whole.
#[path = "../../src/bin/criu-swrk/workload.rs"]
pub mod workload;

/// The workload program: the `workload` example, which `cargo test` and `cargo build
/// --examples` build beside the test binaries (target/<profile>/examples); `cargo test
/// --all-targets` builds examples as test harnesses only (scripts/test builds it first).
pub static WORKLOAD: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let path = profile.join("examples").join("workload");
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --examples` (scripts/test does)",
        path.display()
    );
    path.display().to_string()
});

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
///
/// Real-criu tests are `#[ignore]`d, so a plain `cargo test` counts them as ignored;
/// `scripts/test` (and CI) runs them with `--include-ignored`. A test that runs
/// without root or criu fails: it never passes without having run.
pub fn env() -> Env {
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
        panic!("this real-criu test cannot run: {problem}");
    }
    let dir = tempfile::Builder::new()
        .prefix("criu-swrk-test-")
        .disable_cleanup(std::env::var_os("CRIU_SWRK_KEEP_TEST_DIRS").is_some())
        .tempdir()
        .expect("tempdir");
    Env {
        _serial: serial,
        criu: criu_swrk::Criu::new(),
        dir,
    }
}

impl Env {
    /// A fresh subdirectory of the test's directory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("mkdir");
        p
    }

    /// A fresh info file path for the next workload.
    fn next_info_path(&self) -> PathBuf {
        let n = std::fs::read_dir(self.dir.path())
            .map(|d| d.count())
            .unwrap_or(0);
        self.dir.path().join(format!("workload-{n}.info"))
    }

    /// Starts a workload of `mib` MiB in its own session, stdio on /dev/null.
    pub fn workload(&self, mib: usize) -> Target {
        self.workload_with_stdio(mib, Stdio::null(), Stdio::null(), Stdio::null())
    }

    /// Starts a workload of `mib` MiB in its own session with the given stdio; a
    /// terminal as stdin becomes its controlling terminal.
    pub fn workload_with_stdio(
        &self,
        mib: usize,
        stdin: Stdio,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Target {
        let info_path = self.next_info_path();
        let mib_s = mib.to_string();
        let (child, info) = workload::start_with_stdio(
            Path::new(WORKLOAD.as_str()),
            &[&mib_s, info_path.to_str().unwrap()],
            &info_path,
            stdin,
            stdout,
            stderr,
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

    /// Starts a workload of `mib` MiB as the init of its own PID namespace:
    /// `unshare --pid --fork setsid WORKLOAD ...` (stdio on /dev/null). The target's
    /// pid is the namespace's init (the child of `unshare`), as seen from here.
    pub fn ns_workload(&self, mib: usize) -> NsTarget {
        let before = workload_pids();
        let info_path = self.next_info_path();
        let mib_s = mib.to_string();
        let (unshare, info) = workload::start(
            Path::new("unshare"),
            &[
                "--pid",
                "--fork",
                "setsid",
                WORKLOAD.as_str(),
                &mib_s,
                info_path.to_str().unwrap(),
            ],
            &info_path,
        )
        .expect("starting the workload under unshare");
        let mut target = NsTarget {
            unshare: Some(unshare),
            pid: 0,
            info,
            before,
        };
        let unshare_pid = target.unshare.as_ref().unwrap().id() as i32;
        let children = children_of(unshare_pid);
        assert_eq!(
            children.len(),
            1,
            "unshare {unshare_pid} should have one child, the namespace's init: {children:?}"
        );
        target.pid = children[0];
        assert_eq!(
            ns_pids(target.pid).last().copied(),
            Some(1),
            "pid {} should be init (pid 1) of its PID namespace",
            target.pid
        );
        target.assert_alive_and_intact();
        target
    }
}

/// The children of `pid` (every thread's), from `/proc/<pid>/task/<tid>/children`.
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    out
}

/// `pid`'s pid in each PID namespace it is in, outermost first (`NSpid` in
/// `/proc/<pid>/status`).
pub fn ns_pids(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The controlling terminal of `pid` (`tty_nr` in `/proc/<pid>/stat`; 0 for none).
pub fn tty_nr(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading stat");
    let (_, rest) = stat.rsplit_once(") ").expect("stat format");
    // After the command: state ppid pgrp session tty_nr ...
    rest.split_whitespace().nth(4).unwrap().parse().unwrap()
}

/// Where fd `fd` of `pid` points (`/proc/<pid>/fd/<fd>`), e.g. `pipe:[1234]`.
pub fn fd_link(pid: i32, fd: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/{fd}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd/{fd}: {e}"))
        .to_string_lossy()
        .into_owned()
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

    /// Whether the target is gone: waits up to `within` for it to exit and reaps it.
    pub async fn gone_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.child.as_mut().map(Child::try_wait) {
                None => return true,
                Some(Ok(Some(_))) => {
                    self.child = None;
                    return true;
                }
                Some(_) if Instant::now() >= deadline => return false,
                Some(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Whether the target runs on with its memory intact, and if not, why.
    pub fn check_alive_and_intact(&self) -> Result<(), String> {
        workload::assert_alive_and_intact(self.pid, &self.info)
            .map(drop)
            .map_err(|e| e.to_string())
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

/// A workload running as the init of its own PID namespace, under `unshare`. Both
/// are killed and reaped on drop.
pub struct NsTarget {
    unshare: Option<Child>,
    /// The namespace's init (the workload), as seen from here.
    pub pid: i32,
    pub info: Info,
    /// Workload processes that were there before it (see [`NsTarget::copies`]).
    before: Vec<i32>,
}

impl NsTarget {
    /// Workload processes that appeared since this one started, other than it: its
    /// restored copies (tests run one at a time). Read from /proc/PID/stat only: a
    /// copy restored with lazy memory would stall a read of its command line until
    /// that page arrived.
    pub fn copies(&self) -> Vec<i32> {
        workload_pids()
            .into_iter()
            .filter(|pid| *pid != self.pid && !self.before.contains(pid))
            .collect()
    }
}

/// Live processes named `workload` (the kernel's comm, not their memory).
fn workload_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                let state = stat
                    .rfind(')')
                    .and_then(|i| stat[i + 1..].split_whitespace().next());
                stat.contains("(workload)") && state != Some("Z")
            })
        })
        .collect()
}

impl NsTarget {
    /// Asserts the target runs on (counter moving) with its memory intact.
    pub fn assert_alive_and_intact(&self) {
        workload::assert_alive_and_intact(self.pid, &self.info)
            .unwrap_or_else(|e| panic!("namespace init {}: {e}", self.pid));
    }

    /// Reaps `unshare` after criu killed the init (a dump without leave_running).
    pub fn reap_dumped(&mut self) {
        let mut unshare = self.unshare.take().expect("target already reaped");
        let status = unshare.wait().expect("waitpid");
        assert!(
            !status.success(),
            "unshare should report its killed child: {status}"
        );
        // unshare reaped the init, or the init was re-parented to us: either way it
        // must be gone now.
        let _ = waitpid(Pid::from_raw(self.pid), None);
        assert!(!exists(self.pid), "init {} still exists", self.pid);
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

impl Drop for NsTarget {
    fn drop(&mut self) {
        if let Some(mut unshare) = self.unshare.take() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = unshare.kill();
            let _ = unshare.wait();
            // If unshare died before reaping the init, the init is ours now.
            let _ = waitpid(Pid::from_raw(self.pid), None);
        }
    }
}

/// Reads the `tick <counter>` lines a workload writes, from a pipe's read end or a
/// pty master (which it keeps open: closing a master hangs up its terminal).
pub struct TickReader {
    fd: AsyncFd<OwnedFd>,
    pending: Vec<u8>,
}

impl TickReader {
    pub fn new(fd: impl Into<OwnedFd>) -> Self {
        let fd = fd.into();
        let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL).expect("F_GETFL"));
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).expect("F_SETFL");
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).expect("F_SETFD");
        // SAFETY: an OwnedFd is open and keeps its number until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register(fd) }
            .unwrap_or_else(|e| panic!("registering the fd with tokio: {e}"));
        TickReader {
            fd,
            pending: Vec::new(),
        }
    }

    /// The next line (without its line ending), within `timeout`.
    pub async fn line(&mut self, timeout: Duration) -> io::Result<String> {
        tokio::time::timeout(timeout, self.line_inner())
            .await
            .map_err(|_| io::Error::other(format!("no line within {timeout:?}")))?
    }

    async fn line_inner(&mut self) -> io::Result<String> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
            }
            let mut guard = self.fd.readable().await?;
            let mut buf = [0u8; 4096];
            match guard.try_io(|fd| {
                nix::unistd::read(fd.get_ref().as_fd(), &mut buf).map_err(io::Error::from)
            }) {
                Ok(Ok(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Ok(n)) => self.pending.extend_from_slice(&buf[..n]),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// The counters of the next `n` tick lines, each within `timeout`; any other line
    /// is an error.
    pub async fn ticks(&mut self, n: usize, timeout: Duration) -> io::Result<Vec<u64>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let line = self.line(timeout).await?;
            let tick = workload::parse_tick(&line)
                .ok_or_else(|| io::Error::other(format!("not a tick line: {line:?}")))?;
            out.push(tick);
        }
        Ok(out)
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
    criu_children_of(std::process::id())
}

/// The pids of `parent`'s children named criu (alive or zombie).
pub fn criu_children_of(parent: u32) -> Vec<i32> {
    let me = parent.to_string();
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
pub fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// [`reap_orphaned_criu`] for tests without a runtime (the CLI's tests): criu's helpers
/// that outlived a criu the tool killed come to us, the subreaper, to be reaped.
pub fn reap_orphaned_criu_blocking() {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(reap_orphaned_criu());
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

const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

/// Sets `fs.pipe-max-size` for the life of the guard (a lazy dump needs 4 MiB
/// pipes; see the notes). Tests hold [`env`]'s lock, so none races another here.
pub struct PipeMaxSize(String);

impl PipeMaxSize {
    pub fn set(value: u64) -> Self {
        let old = std::fs::read_to_string(PIPE_MAX_SIZE).expect("reading pipe-max-size");
        std::fs::write(PIPE_MAX_SIZE, value.to_string()).expect("setting pipe-max-size");
        PipeMaxSize(old.trim().to_owned())
    }
}

impl Drop for PipeMaxSize {
    fn drop(&mut self) {
        let _ = std::fs::write(PIPE_MAX_SIZE, &self.0);
    }
}
