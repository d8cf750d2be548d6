//! Can criu checkpoint and restore on this machine? [`Criu::self_test`] asks criu, the
//! kernel and the machine, then dumps and restores small canary processes the crate
//! starts, and reports each capability as working or not, with the reason and the fix.
//!
//! `criu check` alone is not enough: criu 4.1 passes it on Linux 6.16 and later and
//! then fails every dump of a process holding an inet socket. So the canaries hold
//! what real services hold: pipes, a deleted file, a unix socket pair, a listening
//! TCP socket with an established loopback connection, and a tree in its own pid,
//! mount, net, uts and ipc namespaces. Each canary is `cat` echoing what it reads (from
//! coreutils), so after the restore the doctor writes to it and reads the answer back.
//!
//! # Example
//! ```no_run
//! # async fn run() {
//! let report = criu_swrk::Criu::new().self_test().await;
//! for check in &report.checks {
//!     println!("{:?} {}: {}", check.status, check.name, check.detail);
//! }
//! assert!(report.can_checkpoint());
//! # }
//! ```

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::criu::Criu;
use crate::error::Error;
use crate::info::Version;
use crate::options::{DumpOptions, NetworkLock, RestoreOptions};

/// How long each canary's dump and restore may take.
const CANARY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a canary has to answer.
const ANSWER: Duration = Duration::from_secs(5);

/// The outcome of [`Criu::self_test`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// The criu binary tested, when one was found.
    pub criu: Option<PathBuf>,
    /// Its version, when it answered.
    pub version: Option<Version>,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// Each check, in the order run.
    pub checks: Vec<Check>,
}

/// One check of a [`Report`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Check {
    /// What was checked, e.g. `canary: tcp`.
    pub name: &'static str,
    /// How it went.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to change, when something should be.
    pub fix: Option<String>,
}

/// How a [`Check`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Works.
    Ok,
    /// Works, with a limit worth knowing (a feature unavailable, a slower path).
    Warning,
    /// Does not work.
    Failed,
    /// Could not be tried (a tool missing, an earlier failure).
    Skipped,
}

impl Status {
    /// A short lowercase word for the status: `ok`, `warning`, `failed`, `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

impl Report {
    /// Whether criu can checkpoint and restore here: it answered, `criu check` passed
    /// and the process and TCP canaries came back working. The namespace canary and
    /// the warnings do not count.
    pub fn can_checkpoint(&self) -> bool {
        let ok = |name: &str| {
            self.checks
                .iter()
                .any(|c| c.name == name && c.status == Status::Ok)
        };
        ok("criu") && ok("criu check") && ok(PROCESS) && ok(TCP)
    }

    fn push(&mut self, name: &'static str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            name,
            status,
            detail,
            fix,
        });
    }
}

const PROCESS: &str = "canary: process";
const TCP: &str = "canary: tcp";
const NAMESPACES: &str = "canary: namespaces";

impl Criu {
    /// Tests whether this criu can checkpoint and restore here (see the
    /// [`doctor`](crate::doctor) module): criu's version and `criu check`, kernel
    /// facts that limit what works (network lock without iptables, pipe sizes for
    /// lazy dumps, memory tracking for pre-dumps, criu's kernel probe cache), and a dump
    /// and restore of three canaries. Needs root (as criu does).
    ///
    /// # Errors
    /// None: what did not work (criu missing included) is a finding in the report.
    ///
    /// # Cancel safety
    /// Dropping the future mid-way kills the canary in flight (the canaries are its
    /// children, killed on drop) and winds criu down as any dropped request does.
    pub async fn self_test(&self) -> Report {
        let mut r = Report {
            criu: None,
            version: None,
            kernel: kernel_release(),
            checks: Vec::new(),
        };
        let path = match self.binary() {
            Ok(p) => p,
            Err(e) => {
                r.push(
                    "criu",
                    Status::Failed,
                    e.to_string(),
                    Some(
                        "install criu 4.2 or later (scripts/install-criu), or set CRIU_BIN".into(),
                    ),
                );
                return r;
            }
        };
        r.criu = Some(path.clone());
        let version = match self.version().await {
            Ok(v) => v,
            Err(e) => {
                r.push("criu", Status::Failed, e.to_string(), None);
                return r;
            }
        };
        r.version = Some(version.clone());
        r.push(
            "criu",
            Status::Ok,
            format!("criu {version} at {}", path.display()),
            None,
        );
        match self.check(crate::options::CheckOptions::new()).await {
            Ok(()) => r.push("criu check", Status::Ok, "passed".into(), None),
            Err(e) => {
                let fix = hint_of(&e);
                r.push("criu check", Status::Failed, e.to_string(), fix);
            }
        }

        let kernel = kernel_version(&r.kernel);
        if kernel >= (6, 16) && !version.at_least(4, 2) {
            r.push(
                "inet sockets",
                Status::Failed,
                format!(
                    "criu {version} cannot dump inet sockets on Linux {} (Linux 6.16 restricted \
                     SO_PASSCRED and SO_PASSSEC, which criu before 4.2 reads on every socket)",
                    r.kernel
                ),
                Some("install criu 4.2 or later".into()),
            );
        }

        let iptables = on_path("iptables-restore") || on_path("iptables");
        let lock = if iptables {
            r.push(
                "network lock",
                Status::Ok,
                "iptables found: criu's default lock works".into(),
                None,
            );
            None
        } else {
            r.push(
                "network lock",
                Status::Warning,
                "no iptables here: criu's default network lock fails for established TCP \
                 connections and trees in their own net namespace"
                    .into(),
                Some(
                    "use network_lock(NetworkLock::Nftables) (criu-swrk --network-lock nftables)"
                        .into(),
                ),
            );
            Some(NetworkLock::Nftables)
        };
        match self.features().await {
            Ok(f) if f.mem_track => r.push(
                "memory tracking",
                Status::Ok,
                "soft-dirty tracking: pre-dumps work".into(),
                None,
            ),
            Ok(_) => r.push(
                "memory tracking",
                Status::Warning,
                "no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY): pre-dumps and pre-copy \
                 migration are unavailable; criu would crash on a pre-dump, so the crate \
                 refuses them"
                    .into(),
                None,
            ),
            Err(e) => r.push("memory tracking", Status::Skipped, e.to_string(), None),
        }
        match crate::preflight::lazy_dump() {
            Ok(()) => r.push(
                "pipe size",
                Status::Ok,
                "criu can grow its page pipes to 4 MiB: lazy dumps work".into(),
                None,
            ),
            Err(e) => r.push(
                "pipe size",
                Status::Warning,
                "fs.pipe-max-size is below 4 MiB and CAP_SYS_RESOURCE is missing: lazy \
                 (post-copy) dumps fail"
                    .into(),
                Some(match e {
                    Error::Unsupported { reason, .. } => reason,
                    other => other.to_string(),
                }),
            ),
        }
        if run_is_tmpfs() {
            r.push(
                "kernel probe cache",
                Status::Ok,
                "/run is a tmpfs: criu caches its kernel probe".into(),
                None,
            );
        } else {
            r.push(
                "kernel probe cache",
                Status::Warning,
                "/run is not a tmpfs: criu cannot keep its kernel probe (/run/criu.kdat) and \
                 re-probes the kernel on every request, about 25 ms each"
                    .into(),
                Some("mount a tmpfs on /run, as systemd machines have".into()),
            );
        }

        let canaries: [(&'static str, Canary); 3] = [
            (PROCESS, Canary::Process),
            (TCP, Canary::Tcp),
            (NAMESPACES, Canary::Namespaces),
        ];
        for (name, canary) in canaries {
            let started = Instant::now();
            match canary.run(self, lock).await {
                Ok(what) => r.push(
                    name,
                    Status::Ok,
                    format!(
                        "{what}: dumped and restored, working ({} ms)",
                        started.elapsed().as_millis()
                    ),
                    None,
                ),
                Err(Failure::Skipped(why)) => r.push(name, Status::Skipped, why, None),
                Err(Failure::Failed { detail, fix }) => r.push(name, Status::Failed, detail, fix),
            }
        }
        r
    }
}

/// Why a canary did not come back.
enum Failure {
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

fn hint_of(e: &Error) -> Option<String> {
    let lines: &[String] = match e {
        Error::Refused(r) => &r.log_errors,
        Error::Exited { log_errors, .. } => log_errors,
        _ => &[],
    };
    crate::log::hint(lines).map(str::to_owned)
}

#[derive(Debug, Clone, Copy)]
enum Canary {
    /// `cat` between two pipes, holding a deleted file and a unix socket pair.
    Process,
    /// `cat` on an established loopback TCP connection, holding its listener.
    Tcp,
    /// `cat` between two pipes as the init of its own pid, mount, net, uts and ipc
    /// namespaces.
    Namespaces,
}

impl Canary {
    async fn run(self, criu: &Criu, lock: Option<NetworkLock>) -> Result<&'static str, Failure> {
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

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `major.minor` of a kernel release such as `6.18.44-fc`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|dir| dir.join(program).is_file())
        })
        .unwrap_or(false)
}

fn run_is_tmpfs() -> bool {
    nix::sys::statfs::statfs("/run")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v857"), (6, 18));
        assert_eq!(kernel_version("5.10.0-28-amd64"), (5, 10));
        assert_eq!(kernel_version(""), (0, 0));
    }
}
