//! The canaries: small processes the doctor starts, dumps and restores, and talks to
//! afterwards to see that they came back working.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use super::{ANSWER, CANARY_TIMEOUT, on_path};
use crate::criu::Criu;
use crate::error::Error;
use crate::options::{DumpOptions, NetworkLock, RestoreOptions};

/// Why a canary did not come back.
pub(super) enum Failure {
    Skipped(String),
    Failed { detail: String, fix: Option<String> },
}

impl Failure {
    fn of(step: &str, e: Error) -> Self {
        let fix = hint_of(&e);
        // The hint goes in `fix`, not twice.
        let detail: Vec<String> = e
            .to_string()
            .lines()
            .filter(|l| !l.trim_start().starts_with("hint: "))
            .map(str::to_owned)
            .collect();
        Failure::Failed {
            detail: format!("{step}: {}", detail.join("\n")),
            fix,
        }
    }

    fn io(step: &str, e: io::Error) -> Self {
        Failure::Failed {
            detail: format!("{step}: {e}"),
            fix: None,
        }
    }
}

pub(super) fn hint_of(e: &Error) -> Option<String> {
    let lines: &[String] = match e {
        Error::Refused(r) => &r.log_errors,
        Error::Exited { log_errors, .. } => log_errors,
        _ => &[],
    };
    crate::log::hint(lines).map(str::to_owned)
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Canary {
    /// `cat` between two pipes, holding a deleted file and a unix socket pair.
    Process,
    /// `cat` on an established loopback TCP connection, holding its listener.
    Tcp,
    /// `cat` between two pipes as the init of its own pid, mount, net, uts and ipc
    /// namespaces.
    Namespaces,
}

impl Canary {
    pub(super) async fn run(
        self,
        criu: &Criu,
        lock: Option<NetworkLock>,
    ) -> Result<&'static str, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("criu-swrk-doctor-")
            .tempdir()
            .map_err(|e| Failure::io("making a scratch directory", e))?;
        let images = dir.path().join("images");
        std::fs::create_dir(&images).map_err(|e| Failure::io("making the images directory", e))?;
        match self {
            Canary::Process | Canary::Namespaces => {
                self.run_piped(criu, lock, dir.path(), &images).await
            }
            Canary::Tcp => run_tcp(criu, lock, &images).await,
        }
    }

    async fn run_piped(
        self,
        criu: &Criu,
        lock: Option<NetworkLock>,
        scratch: &std::path::Path,
        images: &std::path::Path,
    ) -> Result<&'static str, Failure> {
        let (in_r, in_w) = std::io::pipe().map_err(|e| Failure::io("making a pipe", e))?;
        let (out_r, out_w) = std::io::pipe().map_err(|e| Failure::io("making a pipe", e))?;
        let keys = (pipe_key(&in_r), pipe_key(&out_w));
        let (what, mut child, pid) = match self {
            Canary::Process => {
                let ghost_path = scratch.join("deleted");
                let ghost = std::fs::File::create(&ghost_path)
                    .map_err(|e| Failure::io("making a file", e))?;
                std::fs::remove_file(&ghost_path).map_err(|e| Failure::io("deleting a file", e))?;
                let (a, b) = std::os::unix::net::UnixStream::pair()
                    .map_err(|e| Failure::io("making a unix socket pair", e))?;
                let extra = vec![OwnedFd::from(ghost), OwnedFd::from(a), OwnedFd::from(b)];
                let child = spawn("cat", &[], in_r.into(), out_w.into(), extra)
                    .map_err(|e| Failure::io("starting the canary (cat)", e))?;
                let pid = child.id() as i32;
                (
                    "a process with pipes, a deleted file and a unix socket pair",
                    child,
                    pid,
                )
            }
            _ => {
                if !on_path("unshare") {
                    return Err(Failure::Skipped(
                        "unshare (util-linux) is not installed".into(),
                    ));
                }
                let args = [
                    "--pid", "--mount", "--net", "--uts", "--ipc", "--fork", "setsid", "cat",
                ];
                let child = spawn("unshare", &args, in_r.into(), out_w.into(), Vec::new())
                    .map_err(|e| Failure::io("starting the canary (unshare)", e))?;
                let init = wait_for_init(child.id() as i32).await.ok_or_else(|| {
                    Failure::io(
                        "starting the canary",
                        io::Error::other("no namespace init appeared"),
                    )
                })?;
                (
                    "a tree in its own pid, mount, net, uts and ipc namespaces",
                    child,
                    init,
                )
            }
        };
        let mut to = tokio::net::unix::pipe::Sender::from_owned_fd(in_w.into())
            .map_err(|e| Failure::io("watching the pipe", e))?;
        let mut from = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r.into())
            .map_err(|e| Failure::io("watching the pipe", e))?;
        ping(&mut to, &mut from)
            .await
            .map_err(|e| Failure::io("the canary did not answer before the dump", e))?;

        let mut dump = DumpOptions::new(pid)
            .images_dir(images)
            .timeout(CANARY_TIMEOUT);
        if let Some(lock) = lock {
            dump = dump.network_lock(lock);
        }
        let dumped = criu.dump(dump).await;
        drop((to, from));
        let _ = child.kill();
        reap(&mut child).await;
        dumped.map_err(|e| Failure::of("dump", e))?;

        let (in_r, in_w) = std::io::pipe().map_err(|e| Failure::io("making a pipe", e))?;
        let (out_r, out_w) = std::io::pipe().map_err(|e| Failure::io("making a pipe", e))?;
        let mut restore = RestoreOptions::new()
            .images_dir(images)
            .rst_sibling(true)
            .timeout(CANARY_TIMEOUT)
            .inherit_fd(keys.0, in_r)
            .inherit_fd(keys.1, out_w);
        if matches!(self, Canary::Namespaces) {
            // Its mount namespace copied ours: its root is our /.
            restore = restore.root("/");
        }
        let restored = criu
            .restore(restore)
            .await
            .map_err(|e| Failure::of("restore", e))?;
        let _guard = RestoredChild(restored.pid);
        let mut to = tokio::net::unix::pipe::Sender::from_owned_fd(in_w.into())
            .map_err(|e| Failure::io("watching the pipe", e))?;
        let mut from = tokio::net::unix::pipe::Receiver::from_owned_fd(out_r.into())
            .map_err(|e| Failure::io("watching the pipe", e))?;
        ping(&mut to, &mut from)
            .await
            .map_err(|e| Failure::io("restored, but the canary does not answer", e))?;
        Ok(what)
    }
}

async fn run_tcp(
    criu: &Criu,
    lock: Option<NetworkLock>,
    images: &std::path::Path,
) -> Result<&'static str, Failure> {
    let step = |what: &'static str| move |e| Failure::io(what, e);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(step("listening"))?;
    let client = std::net::TcpStream::connect(listener.local_addr().map_err(step("listening"))?)
        .map_err(step("connecting"))?;
    let (server, _) = listener.accept().map_err(step("accepting"))?;
    let server_out = server.try_clone().map_err(step("duplicating a socket"))?;
    let mut child = spawn(
        "cat",
        &[],
        server.into(),
        server_out.into(),
        vec![OwnedFd::from(listener)],
    )
    .map_err(step("starting the canary (cat)"))?;
    client.set_nonblocking(true).map_err(step("connecting"))?;
    let client =
        tokio::net::TcpStream::from_std(client).map_err(step("watching the connection"))?;
    let (read, mut write) = client.into_split();
    let mut read = tokio::io::BufReader::new(read);
    ping_tcp(&mut write, &mut read)
        .await
        .map_err(step("the canary did not answer before the dump"))?;

    let mut dump = DumpOptions::new(child.id() as i32)
        .images_dir(images)
        .tcp_established(true)
        .timeout(CANARY_TIMEOUT);
    if let Some(lock) = lock {
        dump = dump.network_lock(lock);
    }
    let dumped = criu.dump(dump).await;
    let _ = child.kill();
    reap(&mut child).await;
    dumped.map_err(|e| Failure::of("dump", e))?;
    let restored = criu
        .restore(
            RestoreOptions::new()
                .images_dir(images)
                .tcp_established(true)
                .rst_sibling(true)
                .timeout(CANARY_TIMEOUT),
        )
        .await
        .map_err(|e| Failure::of("restore", e))?;
    let _guard = RestoredChild(restored.pid);
    ping_tcp(&mut write, &mut read)
        .await
        .map_err(step("restored, but the connection does not answer"))?;
    Ok("a listening TCP socket and an established loopback connection")
}

/// Starts `program args...` in its own session with `stdin`, `stdout` and `extra`
/// (at 3, 4, ...) and nothing else of ours; stderr shares stdout (a path-opened
/// /dev/null would be on a mount a namespaced canary does not see).
fn spawn(
    program: &str,
    args: &[&str],
    stdin: OwnedFd,
    stdout: OwnedFd,
    extra: Vec<OwnedFd>,
) -> io::Result<Child> {
    use command_fds::{CommandFdExt, FdMapping};
    use std::os::unix::process::CommandExt;
    let n = extra.len() as i32;
    let mappings = extra
        .into_iter()
        .enumerate()
        .map(|(i, fd)| FdMapping {
            parent_fd: fd,
            child_fd: 3 + i as i32,
        })
        .collect();
    let stderr = stdout.try_clone()?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr))
        .fd_mappings(mappings)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            use nix::libc;
            // A canary holds what the doctor gave it and nothing else of ours: a dump
            // must not meet our other files.
            libc::syscall(libc::SYS_close_range, (3 + n) as u32, u32::MAX, 0u32);
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// criu's key for a pipe end: `pipe:[INODE]`.
fn pipe_key(fd: &impl AsRawFd) -> String {
    let ino = nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd.as_raw_fd()) })
        .map(|s| s.st_ino)
        .unwrap_or(0);
    format!("pipe:[{ino}]")
}

async fn ping(
    to: &mut tokio::net::unix::pipe::Sender,
    from: &mut tokio::net::unix::pipe::Receiver,
) -> io::Result<()> {
    let mut reader = tokio::io::BufReader::new(from);
    tokio::time::timeout(ANSWER, async {
        to.write_all(b"criu-swrk\n").await?;
        let mut line = String::new();
        reader.read_line(&mut line).await?;
        if line == "criu-swrk\n" {
            Ok(())
        } else {
            Err(io::Error::other(format!("answered {line:?}")))
        }
    })
    .await
    .map_err(|_| io::Error::other(format!("no answer within {ANSWER:?}")))?
}

async fn ping_tcp(
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    from: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> io::Result<()> {
    tokio::time::timeout(ANSWER, async {
        to.write_all(b"criu-swrk\n").await?;
        let mut line = String::new();
        from.read_line(&mut line).await?;
        if line == "criu-swrk\n" {
            Ok(())
        } else {
            Err(io::Error::other(format!("answered {line:?}")))
        }
    })
    .await
    .map_err(|_| io::Error::other(format!("no answer within {ANSWER:?}")))?
}

/// Reaps a canary of ours without blocking the runtime for long.
async fn reap(child: &mut Child) {
    for _ in 0..500 {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The init of the namespaces `unshare` made: its child, once it is `cat`.
async fn wait_for_init(unshare: i32) -> Option<i32> {
    for _ in 0..500 {
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "cat" {
                return Some(pid);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

/// A restored canary (our child: restored with `rst_sibling`), killed and reaped when
/// the check is over.
struct RestoredChild(i32);

impl Drop for RestoredChild {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        // By pid: tokio reaps its own children.
        let _ = nix::sys::wait::waitpid(pid, None);
    }
}
