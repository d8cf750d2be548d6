//! Finding criu, starting `criu swrk`, and supervising the child until it is reaped.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::pipe::Receiver;
use tokio_seqpacket::UnixSeqpacket;

use crate::error::{Error, Result};
use crate::process::{self, Child};

/// The fd number of the RPC socket in criu's table.
pub(crate) const SOCKET_FD: RawFd = 3;
/// The first fd number handed to fds passed to criu on purpose (`inherit_fd`, `ps.fd`).
pub(crate) const FIRST_PASSED_FD: RawFd = 4;

/// How much of criu's stderr is kept for error messages.
const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// How many of the error lines in criu's stderr (its log, by default) are kept, however
/// much else it writes after them.
const STDERR_ERROR_LINES: usize = 64;

/// Resolves the criu binary: `explicit`, else `$CRIU_BIN`, else `criu` on `$PATH`, else
/// the usual sbin directories (which a non-root `$PATH` often lacks).
///
/// An explicit path or `$CRIU_BIN` that does not work is an error, not a reason to fall
/// back: the caller asked for that binary.
pub(crate) fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    let mut tried = Vec::new();
    if let Some(p) = explicit {
        return check_candidate(p, &mut tried).ok_or(Error::NotFound { tried });
    }
    if let Some(env) = std::env::var_os("CRIU_BIN").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(env);
        return check_candidate(&p, &mut tried).ok_or_else(|| {
            tried[0].1.push_str(" [from CRIU_BIN]");
            Error::NotFound { tried }
        });
    }
    let path_var = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/bin:/bin"));
    let dirs = std::env::split_paths(&path_var)
        .chain([PathBuf::from("/usr/local/sbin"), PathBuf::from("/usr/sbin")]);
    let mut seen = Vec::new();
    for dir in dirs {
        if dir.as_os_str().is_empty() || seen.contains(&dir) {
            continue;
        }
        let cand = dir.join("criu");
        seen.push(dir);
        if !cand.exists() {
            continue;
        }
        if let Some(p) = check_candidate(&cand, &mut tried) {
            return Ok(p);
        }
    }
    if tried.is_empty() {
        tried.push((
            PathBuf::from("criu"),
            format!(
                "not on PATH ({}) nor in /usr/local/sbin, /usr/sbin; set CRIU_BIN",
                path_var.to_string_lossy()
            ),
        ));
    }
    Err(Error::NotFound { tried })
}

fn check_candidate(p: &Path, tried: &mut Vec<(PathBuf, String)>) -> Option<PathBuf> {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Some(p.to_path_buf()),
        Ok(m) if m.is_file() => {
            tried.push((p.into(), "not executable".into()));
            None
        }
        Ok(_) => {
            tried.push((p.into(), "not a file".into()));
            None
        }
        Err(e) => {
            tried.push((p.into(), e.to_string()));
            None
        }
    }
}

/// A running criu child: reaped by [`Supervised::finish`] or [`Supervised::wait`];
/// dropped before that (runtime gone, or a panic), it is killed and reaped in the
/// background so it never outlives us unreaped.
#[derive(Debug)]
pub(crate) struct Supervised {
    child: Child,
    pid: Option<i32>,
    stderr: StderrTail,
}

/// Our end of a connection to criu, non-blocking and registered with the runtime.
/// Refuses anything but a Unix `SOCK_SEQPACKET` socket: criu's protocol is one
/// message per datagram, which a stream socket would run together.
pub(crate) fn register(fd: OwnedFd) -> Result<UnixSeqpacket> {
    use nix::sys::socket::{UnixAddr, getsockname, getsockopt, sockopt};
    let not_ours = |what: String| {
        Error::io(
            "taking the connection to criu",
            io::Error::new(io::ErrorKind::InvalidInput, what),
        )
    };
    match getsockopt(&fd, sockopt::SockType) {
        Ok(SockType::SeqPacket) => {}
        Ok(other) => return Err(not_ours(format!("a {other:?} socket, not SOCK_SEQPACKET"))),
        Err(e) => return Err(not_ours(format!("not a socket ({e})"))),
    }
    if getsockname::<UnixAddr>(fd.as_raw_fd()).is_err() {
        return Err(not_ours("not a Unix socket".into()));
    }
    let err = |e: nix::Error| Error::io("making the criu socket non-blocking", e.into());
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(err)?;
    fcntl(
        &fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(err)?;
    UnixSeqpacket::try_from(fd).map_err(|e| Error::io("registering the criu socket", e))
}

/// Starts `criu swrk 3` with our socket end at fd 3 and `passed` at fds 4, 5, ...
pub(crate) fn spawn(path: &Path, passed: Vec<OwnedFd>) -> Result<(Supervised, UnixSeqpacket)> {
    let pair_err = |e: nix::Error| Error::io("creating the criu socketpair", e.into());
    // Only our end is non-blocking and registered with the runtime; criu does
    // blocking recv() on its end.
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(pair_err)?;
    let ours = register(ours)?;

    let mut fds = Vec::with_capacity(passed.len() + 1);
    fds.push(theirs);
    fds.extend(passed);
    let args = ["swrk".to_string(), SOCKET_FD.to_string()];
    let child = spawn_criu(path, &args, fds)?;
    Ok((child, ours))
}

/// Starts `criu args...` with `fds` at 3, 4, ... in its table and nothing else of
/// ours (no other fd reaches criu, whatever its flags here, not even fds a concurrent
/// spawn just created). criu gets its own process group so a terminal's Ctrl-C reaches
/// us, not criu.
pub(crate) fn spawn_criu(path: &Path, args: &[String], fds: Vec<OwnedFd>) -> Result<Supervised> {
    let spawn_err = |source| Error::Spawn {
        path: path.to_path_buf(),
        source,
    };
    let (stderr_rx, stderr_tx) = std::io::pipe().map_err(spawn_err)?;
    let plan = process::FdPlan {
        stderr: stderr_tx.into(),
        first_mapped: SOCKET_FD,
        mapped: fds,
    };
    // `plan` (our copies of criu's fds, its socket end among them) is dropped by
    // `start`: end-of-stream on our end is exactly "criu (and its children) went away".
    let child = process::start(path, args, plan).map_err(spawn_err)?;
    let pid = child.id();
    tracing::debug!(criu.pid = pid, criu.path = %path.display(), ?args, "spawned criu");
    let stderr = StderrTail::start(
        tokio::net::unix::pipe::Receiver::from_owned_fd(stderr_rx.into()).ok(),
        pid,
    );
    Ok(Supervised {
        child,
        pid: Some(pid),
        stderr,
    })
}

impl Supervised {
    /// criu's pid, while it has not been reaped.
    pub(crate) fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// A handle on criu's stderr tail, readable after the child is reaped.
    pub(crate) fn stderr_tail(&self) -> StderrTail {
        self.stderr.clone()
    }

    /// Waits up to `grace` for criu to exit, then kills it; always reaps it.
    pub(crate) async fn finish(mut self, grace: Duration) -> Option<ExitStatus> {
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            Ok(Err(e)) => {
                tracing::warn!(criu.pid = self.pid, error = %e, "waiting for criu failed");
                None
            }
            Err(_) => {
                tracing::warn!(
                    criu.pid = self.pid,
                    ?grace,
                    "criu did not exit in time: killing it"
                );
                let _ = self.child.start_kill();
                self.child.wait().await.ok()
            }
        };
        tracing::debug!(criu.pid = self.pid, ?status, "reaped criu");
        // Give the stderr reader a moment to collect criu's last words.
        self.stderr.settle().await;
        status
    }

    /// Waits for criu to exit on its own, however long that takes, and reaps it.
    pub(crate) async fn wait(mut self) -> Option<ExitStatus> {
        let status = self.child.wait().await.ok();
        tracing::debug!(criu.pid = self.pid, ?status, "reaped criu");
        self.stderr.settle().await;
        status
    }

    /// Completes once criu has exited (it is reaped later, by `finish` or `wait`).
    pub(crate) async fn exited(&self) {
        self.child.exited().await;
    }

    /// criu is still running (it has not exited, or been reaped).
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGKILL now; [`finish`](Self::finish) still has to reap.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The tail of criu's stderr, collected by a background task (criu would block on a
/// full pipe otherwise).
#[derive(Debug, Clone)]
pub(crate) struct StderrTail {
    buf: Arc<Mutex<VecDeque<u8>>>,
    errors: Arc<Mutex<VecDeque<String>>>,
    done: Arc<tokio::sync::Notify>,
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl StderrTail {
    fn start(stderr: Option<Receiver>, pid: i32) -> Self {
        let tail = StderrTail {
            buf: Arc::default(),
            errors: Arc::default(),
            done: Arc::default(),
            finished: Arc::default(),
        };
        let Some(stderr) = stderr else {
            tail.finished
                .store(true, std::sync::atomic::Ordering::SeqCst);
            return tail;
        };
        let t = tail.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::debug!(target: "criu_swrk::criu_stderr", criu_pid = pid, "{}", line);
                if crate::log::is_cause(&line) {
                    let mut errors = t.errors.lock().unwrap_or_else(|e| e.into_inner());
                    if errors.len() == STDERR_ERROR_LINES {
                        errors.pop_front();
                    }
                    errors.push_back(line.clone());
                }
                let mut buf = t.buf.lock().unwrap_or_else(|e| e.into_inner());
                buf.extend(line.as_bytes());
                buf.push_back(b'\n');
                let excess = buf.len().saturating_sub(STDERR_TAIL_BYTES);
                buf.drain(..excess);
            }
            t.finished.store(true, std::sync::atomic::Ordering::SeqCst);
            t.done.notify_waiters();
        });
        tail
    }

    /// The error lines criu wrote to stderr (the last [`STDERR_ERROR_LINES`]), one per
    /// line.
    pub(crate) fn error_text(&self) -> String {
        let errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.iter().map(|l| format!("{l}\n")).collect()
    }

    pub(crate) fn snapshot(&self) -> String {
        let buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = buf.as_slices();
        let mut v = a.to_vec();
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).into_owned()
    }

    /// Waits briefly for the reader to reach end-of-file. Children of criu (a page
    /// server) may keep the pipe open, so this is bounded.
    async fn settle(&self) {
        let notified = self.done.notified();
        if self.finished.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
    }
}
