//! Typed builders for the options of each request.
//!
//! Each builder starts from criu's own defaults, adds this crate's (a log file per
//! request, criu's log level 2), and catches contradictions before criu is started. Every
//! `criu_opts` field without a typed setter is still reachable through `raw`.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::codec::RequestKind;
use crate::error::{Error, Result};
use crate::proto::{
    CgroupRoot, CriuCgMode, CriuNetworkLockMethod, CriuOpts, CriuPageServerInfo, CriuPreDumpMode,
    CriuVethPair, ExtMountMap, InheritFd, JoinNamespace, UnixSk,
};
use crate::publish::{Scrub, Staging};
use crate::spawn::FIRST_PASSED_FD;
use tokio_util::sync::CancellationToken;

/// The log level this crate asks for unless told otherwise: criu's own default (2,
/// errors only), which is all a refusal's [`log_errors`](crate::Refusal::log_errors)
/// need. Level 4 (debug) tells more about a failure but costs about 8% of a small
/// dump's time (measured with `scripts/bench`).
pub const DEFAULT_LOG_LEVEL: u8 = 2;

/// An fd handed to criu: owned (moved in) or borrowed (duplicated on the spot).
///
/// Built with `From`: `OwnedFd`, `BorrowedFd`, `File`, `UnixStream`, `PipeReader`,
/// `PipeWriter`, `TcpStream` all convert. A failed duplication of a borrowed fd is
/// reported when the request starts.
#[derive(Debug)]
pub struct PassFd(io::Result<OwnedFd>);

impl PassFd {
    fn into_owned(self, what: &str) -> Result<OwnedFd> {
        self.0
            .map_err(|e| Error::io(format!("duplicating the fd for {what}"), e))
    }
}

impl From<OwnedFd> for PassFd {
    fn from(fd: OwnedFd) -> Self {
        PassFd(Ok(fd))
    }
}
impl From<BorrowedFd<'_>> for PassFd {
    fn from(fd: BorrowedFd<'_>) -> Self {
        PassFd(fd.try_clone_to_owned())
    }
}
macro_rules! pass_fd_from {
    ($($t:ty),*) => {$(
        impl From<$t> for PassFd {
            fn from(v: $t) -> Self { PassFd(Ok(OwnedFd::from(v))) }
        }
    )*};
}
pass_fd_from!(
    File,
    std::os::unix::net::UnixStream,
    std::net::TcpStream,
    std::io::PipeReader,
    std::io::PipeWriter
);

/// How criu treats cgroups (`manage_cgroups_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CgroupMode {
    /// Leave cgroups alone.
    Ignore,
    /// Dump/restore no cgroup properties.
    None,
    /// Only properties.
    Props,
    /// Restore properties where the cgroup does not exist yet (criu's usual default).
    Soft,
    /// Restore everything, overwriting existing cgroups.
    Full,
    /// Like full, failing on mismatches.
    Strict,
    /// criu's compiled-in default.
    Default,
}

impl CgroupMode {
    pub(crate) fn from_wire(v: i32) -> Option<Self> {
        Some(match CriuCgMode::try_from(v).ok()? {
            CriuCgMode::Ignore => CgroupMode::Ignore,
            CriuCgMode::CgNone => CgroupMode::None,
            CriuCgMode::Props => CgroupMode::Props,
            CriuCgMode::Soft => CgroupMode::Soft,
            CriuCgMode::Full => CgroupMode::Full,
            CriuCgMode::Strict => CgroupMode::Strict,
            CriuCgMode::Default => CgroupMode::Default,
        })
    }

    fn wire(self) -> CriuCgMode {
        match self {
            CgroupMode::Ignore => CriuCgMode::Ignore,
            CgroupMode::None => CriuCgMode::CgNone,
            CgroupMode::Props => CriuCgMode::Props,
            CgroupMode::Soft => CriuCgMode::Soft,
            CgroupMode::Full => CriuCgMode::Full,
            CgroupMode::Strict => CriuCgMode::Strict,
            CgroupMode::Default => CriuCgMode::Default,
        }
    }
}

/// How criu locks the network of a dumped tree (`network_lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NetworkLock {
    /// iptables rules (criu's default).
    Iptables,
    /// nftables rules.
    Nftables,
    /// Do not lock; the caller does it (e.g. in the `network-lock` hook).
    Skip,
}

impl NetworkLock {
    pub(crate) fn from_wire(v: i32) -> Option<Self> {
        Some(match CriuNetworkLockMethod::try_from(v).ok()? {
            CriuNetworkLockMethod::Iptables => NetworkLock::Iptables,
            CriuNetworkLockMethod::Nftables => NetworkLock::Nftables,
            CriuNetworkLockMethod::Skip => NetworkLock::Skip,
        })
    }
}

/// How a pre-dump reads memory (`pre_dump_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PreDumpMode {
    /// vmsplice pages into pipes (criu's default; the tree is frozen longer).
    Splice,
    /// process_vm_readv: shorter freeze.
    VmRead,
}

#[derive(Debug)]
enum Dir {
    Path(PathBuf),
    Fd(PassFd),
}

type RawEdit = Box<dyn FnOnce(&mut CriuOpts) + Send>;

/// State shared by every builder.
#[derive(Default)]
struct Common {
    opts: CriuOpts,
    pid: Option<i32>,
    images: Option<Dir>,
    work: Option<Dir>,
    log_file: Option<String>,
    inherit: Vec<(String, PassFd)>,
    page_server_fd: Option<PassFd>,
    status_fd: Option<PassFd>,
    pidfd_store: Option<PassFd>,
    timeout: Option<Duration>,
    cancel: Option<CancellationToken>,
    raw: Vec<RawEdit>,
    /// Dump into a staging sibling of the images directory.
    staged: bool,
    /// Write a restore record with the dump.
    record: bool,
    /// For a container's dump: its part of the record.
    container: Option<crate::record::ContainerRecord>,
}

impl std::fmt::Debug for Common {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("opts", &self.opts)
            .field("pid", &self.pid)
            .field("images", &self.images)
            .field("work", &self.work)
            .field("log_file", &self.log_file)
            .field("inherit", &self.inherit)
            .field("timeout", &self.timeout)
            .field("raw_edits", &self.raw.len())
            .finish_non_exhaustive()
    }
}

/// A request ready to send: the message, the fds criu must inherit, and the fds of
/// ours it refers to by number (held open until criu answers).
#[derive(Debug)]
pub(crate) struct Prepared {
    pub(crate) kind: RequestKind,
    pub(crate) opts: CriuOpts,
    /// Mapped into criu's table at `FIRST_PASSED_FD`, `FIRST_PASSED_FD + 1`, ...
    pub(crate) passed: Vec<OwnedFd>,
    /// How many fds the request names in criu's table (stays when `passed` is taken).
    pub(crate) passed_count: usize,
    /// Ours, referred to by number (`images_dir_fd`, `work_dir_fd`, `status_fd`):
    /// criu opens them through `/proc/<our pid>/fd`, so they stay open as long as the
    /// request does.
    #[allow(dead_code)]
    pub(crate) held: Vec<OwnedFd>,
    /// Where criu writes its log and stats (its work dir), resolved to a real path.
    pub(crate) work_dir: Option<PathBuf>,
    /// The images directory, resolved.
    pub(crate) images_dir: Option<PathBuf>,
    /// The log file's name inside `work_dir`.
    pub(crate) log_file: Option<String>,
    /// criu logs to our pipe because the caller named no log file: not a choice of
    /// theirs to gate on criu's version. (criu before 3.19 ignores `log_to_stderr`
    /// and writes `criu.log` in the work dir instead.)
    pub(crate) log_piped_by_default: bool,
    /// When the request was prepared (to tell a fresh `criu.log` from a stale one).
    pub(crate) prepared_at: std::time::SystemTime,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) pid: Option<i32>,
    /// A directory of ours for criu's log, removed with the request.
    pub(crate) scratch: Option<tempfile::TempDir>,
    /// For dumps: what to remove from the images directory if the dump does not
    /// commit.
    pub(crate) scrub: Option<Scrub>,
    /// For staged dumps: where criu writes until the dump commits.
    pub(crate) staging: Option<Staging>,
    /// Write a restore record ([`crate::record`]) into the images directory.
    pub(crate) record: bool,
    /// For a container's dump: its part of the record.
    pub(crate) container: Option<crate::record::ContainerRecord>,
}

impl Prepared {
    /// The full path of criu's log for this request, when it goes to a file.
    pub(crate) fn log_path(&self) -> Option<PathBuf> {
        Some(self.work_dir.as_ref()?.join(self.log_file.as_ref()?))
    }

    /// Where a criu too old for `log_to_stderr` (before 3.19) logged this request
    /// instead of our pipe: its default `criu.log` in the work dir, if written since
    /// the request was prepared.
    pub(crate) fn fallback_log(&self) -> Option<PathBuf> {
        if !self.log_piped_by_default {
            return None;
        }
        let path = self.work_dir.as_ref()?.join("criu.log");
        let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
        // File times come from the kernel's coarse clock, a tick behind ours.
        let since = self.prepared_at - Duration::from_secs(1);
        (modified >= since).then_some(path)
    }
}

/// Where criu's log goes when the caller names no log file.
#[derive(Debug, Clone, Copy)]
enum LogDefault {
    /// A file of this name in the work dir.
    File(&'static str),
    /// criu's stderr, which is our pipe: its errors end up in ours, and no file is
    /// created in the images directory. Making that file costs a dump about 1 ms of
    /// inode allocation under load (3-4% of a 16 MiB dump at 4 jobs in scripts/bench);
    /// `criu dump` on the command line logs to stderr too. `file` is the log file
    /// when the caller turns `log_to_stderr` off.
    Pipe { file: &'static str },
}

impl Common {
    fn prepare(mut self, kind: RequestKind, default_log: LogDefault) -> Result<Prepared> {
        let mut held = Vec::new();
        let mut passed = Vec::new();
        let mut opts = std::mem::take(&mut self.opts);

        if let Some(pid) = self.pid {
            if pid <= 0 {
                return Err(Error::invalid("pid", format!("{pid} is not a process id")));
            }
            if pid as u32 == std::process::id() {
                return Err(Error::invalid(
                    "pid",
                    format!(
                        "{pid} is this process: criu would freeze the process that has to \
                         answer it"
                    ),
                ));
            }
            opts.pid = Some(pid);
        }

        let writes_images = matches!(
            kind,
            RequestKind::Dump
                | RequestKind::PreDump
                | RequestKind::SinglePreDump
                | RequestKind::PageServer
                | RequestKind::PageServerChild
                | RequestKind::CpuinfoDump
        );
        let needs_images =
            writes_images || matches!(kind, RequestKind::Restore | RequestKind::CpuinfoCheck);
        let dumps = matches!(
            kind,
            RequestKind::Dump | RequestKind::PreDump | RequestKind::SinglePreDump
        );
        let staging = match (&self.images, self.staged) {
            (Some(Dir::Path(target)), true) if kind == RequestKind::Dump => {
                Some(Staging::new(target)?)
            }
            (_, true) if kind == RequestKind::Dump => {
                return Err(Error::invalid(
                    "staged",
                    "a staged dump needs its images directory as a path (images_dir)",
                ));
            }
            _ => None,
        };
        if let Some(st) = &staging {
            self.images = Some(Dir::Path(st.temp().to_path_buf()));
        }
        let images_dir = match self.images.take() {
            Some(dir) => {
                let (fd, path) = open_dir(dir, "images_dir", writes_images)?;
                // A staged dump is reported where it will be once it commits.
                let path = match &staging {
                    Some(st) => st.target().to_path_buf(),
                    None => path,
                };
                let has_images = path.join("inventory.img").exists();
                if kind == RequestKind::Restore && !has_images {
                    return Err(Error::invalid(
                        "images_dir",
                        format!("{} holds no criu images (no inventory.img)", path.display()),
                    ));
                }
                if dumps && has_images {
                    // A dump that then failed would leave old and new images mixed, or
                    // (after the scrub) destroy the old dump.
                    return Err(Error::invalid(
                        "images_dir",
                        format!(
                            "{} already holds a dump (inventory.img): dump into an empty \
                             directory",
                            path.display()
                        ),
                    ));
                }
                opts.images_dir_fd = fd.as_raw_fd();
                held.push(fd);
                Some(path)
            }
            None if needs_images => {
                return Err(Error::invalid(
                    "images_dir",
                    format!("a {kind} request needs an images directory"),
                ));
            }
            None => None,
        };
        let work_dir = match self.work.take() {
            Some(dir) => {
                let (fd, path) = open_dir(dir, "work_dir", true)?;
                opts.work_dir_fd = Some(fd.as_raw_fd());
                held.push(fd);
                Some(path)
            }
            None => images_dir.clone(),
        };

        let log_to_stderr = opts.log_to_stderr == Some(true);
        let mut log_piped_by_default = false;
        let log_file = match self.log_file.take() {
            Some(name) => Some(name),
            None if log_to_stderr => None,
            None if work_dir.is_some() => match default_log {
                LogDefault::File(name) => Some(name.to_owned()),
                LogDefault::Pipe { file } if opts.log_to_stderr == Some(false) => {
                    Some(file.to_owned())
                }
                LogDefault::Pipe { .. } => {
                    log_piped_by_default = true;
                    opts.log_to_stderr = Some(true);
                    None
                }
            },
            None => None,
        };
        if let Some(name) = &log_file {
            if name.contains('/') {
                return Err(Error::invalid(
                    "log_file",
                    format!(
                        "criu takes a bare file name, not '{name}': put the directory in \
                         work_dir"
                    ),
                ));
            }
            if name.is_empty() || name == "." || name == ".." {
                return Err(Error::invalid(
                    "log_file",
                    format!("'{name}' is not a file name"),
                ));
            }
            if work_dir.is_none() {
                return Err(Error::invalid(
                    "log_file",
                    "a log file needs a work_dir (or images_dir) to live in",
                ));
            }
            if log_to_stderr {
                return Err(Error::invalid(
                    "log_file",
                    "log_file and log_to_stderr exclude each other",
                ));
            }
            opts.log_file = Some(name.clone());
        }
        if opts.log_level.is_none() {
            opts.log_level = Some(i32::from(DEFAULT_LOG_LEVEL));
        }
        let mut staging = staging;
        if let (Some(st), Some(name)) = (staging.as_mut(), &log_file)
            && work_dir == images_dir
        {
            st.keep_log(name);
        }
        let scrub = match (&images_dir, held.first()) {
            (Some(path), Some(fd)) if dumps => {
                // criu's log stays, to say why; with our default of logging to stderr,
                // a criu before 3.19 writes criu.log instead.
                let keep: Vec<&str> = match &log_file {
                    Some(name) if work_dir.as_ref() == Some(path) => vec![name],
                    None if log_piped_by_default => vec!["criu.log"],
                    _ => vec![],
                };
                let scrub = Scrub::new(fd.as_fd(), path.clone(), &keep)
                    .map_err(|e| Error::io(format!("listing {}", path.display()), e))?;
                Some(scrub)
            }
            _ => None,
        };

        for (key, fd) in self.inherit {
            if key.is_empty() {
                return Err(Error::invalid("inherit_fd", "an empty key"));
            }
            let fd = fd.into_owned(&format!("inherit_fd {key}"))?;
            opts.inherit_fd.push(InheritFd {
                key,
                fd: FIRST_PASSED_FD + passed.len() as i32,
            });
            passed.push(fd);
        }
        if let Some(fd) = self.page_server_fd {
            let fd = fd.into_owned("page_server_fd")?;
            opts.ps.get_or_insert_with(Default::default).fd =
                Some(FIRST_PASSED_FD + passed.len() as i32);
            passed.push(fd);
        }
        if let Some(fd) = self.status_fd {
            let fd = fd.into_owned("status_fd")?;
            opts.status_fd = Some(fd.as_raw_fd());
            held.push(fd);
        }
        if let Some(fd) = self.pidfd_store {
            let fd = fd.into_owned("pidfd_store")?;
            opts.pidfd_store_sk = Some(fd.as_raw_fd());
            held.push(fd);
        }

        if opts.leave_running == Some(true) && opts.leave_stopped == Some(true) {
            return Err(Error::invalid(
                "leave_stopped",
                "leave_running and leave_stopped exclude each other",
            ));
        }
        if opts.lazy_pages == Some(true) && kind == RequestKind::PreDump {
            return Err(Error::invalid("lazy_pages", "a pre-dump cannot be lazy"));
        }
        if opts
            .empty_ns
            .is_some_and(|ns| ns & !(nix::libc::CLONE_NEWNET as u32) != 0)
        {
            return Err(Error::invalid(
                "empty_ns",
                "criu accepts only CLONE_NEWNET in empty_ns",
            ));
        }

        for edit in self.raw {
            edit(&mut opts);
        }
        // Every request gets a rollback point: criu only stops at hooks when asked to.
        opts.notify_scripts = Some(true);

        Ok(Prepared {
            kind,
            opts,
            passed_count: passed.len(),
            passed,
            held,
            work_dir,
            images_dir,
            log_file,
            log_piped_by_default,
            prepared_at: std::time::SystemTime::now(),
            timeout: self.timeout,
            cancel: self.cancel,
            pid: self.pid,
            scratch: None,
            scrub,
            staging,
            record: self.record,
            container: self.container,
        })
    }
}

/// Opens a directory given as a path or fd; returns the fd and its real path.
fn open_dir(dir: Dir, option: &'static str, writable: bool) -> Result<(OwnedFd, PathBuf)> {
    let (fd, path) = match dir {
        Dir::Path(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            // One open (O_DIRECTORY) and one readlink of the fd, rather than a stat
            // plus a readlink per path component.
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_DIRECTORY)
                .open(&path)
                .map_err(|e| {
                    let why = if e.raw_os_error() == Some(nix::libc::ENOTDIR) {
                        format!("{} is not a directory", path.display())
                    } else {
                        format!("{}: {e}", path.display())
                    };
                    Error::invalid(option, why)
                })?;
            let real = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
                .ok()
                .filter(|p| p.is_absolute())
                .unwrap_or(path);
            (OwnedFd::from(file), real)
        }
        Dir::Fd(fd) => {
            let fd = fd.into_owned(option)?;
            let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
            let real = std::fs::read_link(&link).unwrap_or(link);
            let meta = nix::sys::stat::fstat(&fd)
                .map_err(|e| Error::invalid(option, format!("fd {}: {e}", fd.as_raw_fd())))?;
            if meta.st_mode & nix::libc::S_IFMT != nix::libc::S_IFDIR {
                return Err(Error::invalid(
                    option,
                    format!(
                        "fd {} ({}) is not a directory",
                        fd.as_raw_fd(),
                        real.display()
                    ),
                ));
            }
            (fd, real)
        }
    };
    if writable {
        let proc_path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        if let Err(e) = nix::unistd::access(Path::new(&proc_path), nix::unistd::AccessFlags::W_OK) {
            return Err(Error::invalid(
                option,
                format!("{} is not writable: {}", path.display(), e.desc()),
            ));
        }
    }
    Ok((fd, path))
}

// ----- setters shared by the builders -----

macro_rules! flag {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub fn $name(mut self, on: bool) -> Self {
            self.c.opts.$name = Some(on);
            self
        }
    };
}

/// Setters every builder has: where images, work dir and log go, our timeout, raw edits.
macro_rules! base_setters {
    () => {
        /// The images directory, by path. criu reads or writes its images there; it is
        /// also the work directory (log, stats) unless [`work_dir`](Self::work_dir) is set.
        pub fn images_dir(mut self, path: impl Into<PathBuf>) -> Self {
            self.c.images = Some(Dir::Path(path.into()));
            self
        }

        /// The images directory, as an open directory fd (kept open until criu answers).
        pub fn images_dir_fd(mut self, fd: impl Into<PassFd>) -> Self {
            self.c.images = Some(Dir::Fd(fd.into()));
            self
        }

        /// Where criu writes its log and stats (default: the images directory).
        pub fn work_dir(mut self, path: impl Into<PathBuf>) -> Self {
            self.c.work = Some(Dir::Path(path.into()));
            self
        }

        /// The work directory as an open directory fd.
        pub fn work_dir_fd(mut self, fd: impl Into<PassFd>) -> Self {
            self.c.work = Some(Dir::Fd(fd.into()));
            self
        }

        /// Have criu log to a file of this name inside the work directory (no `/`).
        ///
        /// By default dumps, pre-dumps and restores log to criu's stderr, which this
        /// crate reads: a refusal carries the error lines either way, and no log file
        /// lands among the images (making one costs a dump about 1 ms of inode
        /// allocation under load; `criu dump` on the command line logs to stderr too).
        /// Requests whose criu may outlive the call (page servers, and restores with
        /// [`exec_cmd`](crate::RestoreOptions::exec_cmd)) log to `page-server.log` or
        /// `restore.log`, and checks to a scratch `check.log` or to `cpuinfo.log`.
        /// Turning [`log_to_stderr`](Self::log_to_stderr) off gives `dump.log`,
        /// `pre-dump.log` or `restore.log`. criu before 3.19 cannot log to stderr over
        /// RPC and writes `criu.log` in the work dir instead; a refusal then carries its
        /// error lines.
        pub fn log_file(mut self, name: impl Into<String>) -> Self {
            self.c.log_file = Some(name.into());
            self
        }

        /// criu's log level, 0 (nothing) to 4 (debug). Default:
        /// [`DEFAULT_LOG_LEVEL`](crate::options::DEFAULT_LOG_LEVEL).
        pub fn log_level(mut self, level: u8) -> Self {
            self.c.opts.log_level = Some(i32::from(level));
            self
        }

        flag!(
            /// Log to criu's stderr instead of a file (criu 3.19+). This crate keeps the
            /// last lines and every error line for error messages, and emits each line
            /// as a `tracing` debug event (target `criu_swrk::criu_stderr`). The default
            /// for dumps, pre-dumps and restores (see [`log_file`](Self::log_file));
            /// setting it explicitly asks for criu 3.19 or later.
            log_to_stderr
        );

        /// Our own limit for the whole request. When it elapses the request is rolled
        /// back (criu answers its next hook with failure) and the call fails with
        /// [`Error::Timeout`]. Not criu's `--timeout`: see `freeze_timeout`.
        pub fn timeout(mut self, timeout: Duration) -> Self {
            self.c.timeout = Some(timeout);
            self
        }

        /// Cancels the request when `token` is cancelled: like a timeout, the request
        /// is rolled back (criu answers its next hook with failure) and the call fails
        /// with [`Error::Cancelled`].
        pub fn cancel_on(mut self, token: CancellationToken) -> Self {
            self.c.cancel = Some(token);
            self
        }

        /// Edits the raw `criu_opts` message just before it is sent, for fields without
        /// a typed setter. Runs after validation; `notify_scripts` stays on.
        pub fn raw(mut self, edit: impl FnOnce(&mut CriuOpts) + Send + 'static) -> Self {
            self.c.raw.push(Box::new(edit));
            self
        }
    };
}

/// Setters of requests that act on a process tree (dump, pre-dump, restore).
macro_rules! tree_setters {
    () => {
        flag!(
            /// The tree is a shell job: its session or process group leader is outside
            /// it, or it has a controlling terminal.
            shell_job
        );
        flag!(
            /// Allow external unix sockets (peers outside the tree).
            ext_unix_sk
        );
        flag!(
            /// Dump/restore established TCP connections (`--tcp-established`).
            tcp_established
        );
        flag!(
            /// Close established TCP connections instead of restoring them.
            tcp_close
        );
        flag!(
            /// Handle file locks.
            file_locks
        );
        flag!(
            /// Allow link-remap of deleted-but-open files.
            link_remap
        );
        flag!(
            /// Allow device files criu cannot resolve (`--evasive-devices`).
            evasive_devices
        );
        flag!(
            /// Detect external mounts automatically.
            auto_ext_mnt
        );
        flag!(
            /// Allow external mounts with shared propagation.
            ext_sharing
        );
        flag!(
            /// Allow external mounts with master propagation.
            ext_masters
        );
        flag!(
            /// Deduplicate pages against parent images.
            auto_dedup
        );
        flag!(
            /// Leave the tree stopped (SIGSTOP) after the dump or restore (criu 3.19+).
            leave_stopped
        );
        flag!(
            /// Post-copy: leave memory for a lazy-pages daemon (see criu's docs).
            lazy_pages
        );
        flag!(
            /// Print statistics in the log (criu 3.19+).
            display_stats
        );
        flag!(
            /// Run criu's checks as an unprivileged user (criu 3.18+).
            unprivileged
        );
        flag!(
            /// Skip the file rwx access check (criu 3.18+).
            skip_file_rwx_check
        );
        flag!(
            /// A tty slave whose master is outside the tree (a console held by the
            /// caller). Dump: accept it. Restore: make a new pty pair and hand its
            /// master to the `orphan-pts-master` hook.
            orphan_pts_master
        );
        tls_setters!();

        /// Declares an external resource (criu's `--external`, e.g. `mnt[/x]:key`,
        /// `file[inode]`, `net[inode]:name`). Repeatable.
        pub fn external(mut self, spec: impl Into<String>) -> Self {
            self.c.opts.external.push(spec.into());
            self
        }

        /// How cgroups are handled.
        pub fn manage_cgroups(mut self, mode: CgroupMode) -> Self {
            self.c.opts.manage_cgroups_mode = Some(mode.wire() as i32);
            self
        }

        /// How the network is locked (criu 3.16+).
        pub fn network_lock(mut self, method: NetworkLock) -> Self {
            self.c.opts.network_lock = Some(match method {
                NetworkLock::Iptables => CriuNetworkLockMethod::Iptables,
                NetworkLock::Nftables => CriuNetworkLockMethod::Nftables,
                NetworkLock::Skip => CriuNetworkLockMethod::Skip,
            } as i32);
            self
        }

        /// Mounts of this file system type may be dumped/restored as-is. Repeatable.
        pub fn enable_fs(mut self, fs: impl Into<String>) -> Self {
            self.c.opts.enable_fs.push(fs.into());
            self
        }

        /// Skip this mount point. Repeatable.
        pub fn skip_mnt(mut self, path: impl Into<String>) -> Self {
            self.c.opts.skip_mnt.push(path.into());
            self
        }

        /// Largest ghost (deleted) file criu copies into the images, in bytes
        /// (criu's default: 1 MiB).
        pub fn ghost_limit(mut self, bytes: u32) -> Self {
            self.c.opts.ghost_limit = Some(bytes);
            self
        }

        /// CPU capabilities to check (criu's `--cpu-cap` bit mask).
        pub fn cpu_cap(mut self, mask: u32) -> Self {
            self.c.opts.cpu_cap = Some(mask);
            self
        }

        /// criu's own `--timeout` (seconds) for freezing/seizing the tree.
        pub fn freeze_timeout(mut self, secs: u32) -> Self {
            self.c.opts.timeout = Some(secs);
            self
        }

        /// criu's configuration file for this request (`--config`); its settings
        /// override RPC settings.
        pub fn config_file(mut self, path: impl Into<String>) -> Self {
            self.c.opts.config_file = Some(path.into());
            self
        }

        /// A cgroup yard: where criu mounts cgroup controllers (criu 3.14+).
        pub fn cgroup_yard(mut self, path: impl Into<String>) -> Self {
            self.c.opts.cgroup_yard = Some(path.into());
            self
        }

    };
}

/// TLS setters: page-server connections of dumps, restores and page servers.
macro_rules! tls_setters {
    () => {
        flag!(
            /// Use TLS for page-server connections (criu 3.13+).
            tls
        );
        flag!(
            /// Do not verify the TLS peer's common name.
            tls_no_cn_verify
        );

        /// TLS CA certificate file.
        pub fn tls_cacert(mut self, path: impl Into<String>) -> Self {
            self.c.opts.tls_cacert = Some(path.into());
            self
        }

        /// TLS certificate revocation list: peer certificates it lists are refused.
        pub fn tls_cacrl(mut self, path: impl Into<String>) -> Self {
            self.c.opts.tls_cacrl = Some(path.into());
            self
        }

        /// TLS certificate file.
        pub fn tls_cert(mut self, path: impl Into<String>) -> Self {
            self.c.opts.tls_cert = Some(path.into());
            self
        }

        /// TLS private key file.
        pub fn tls_key(mut self, path: impl Into<String>) -> Self {
            self.c.opts.tls_key = Some(path.into());
            self
        }
    };
}

/// Setters of requests that freeze and read a tree (dump, pre-dump).
macro_rules! dump_setters {
    () => {
        flag!(
            /// Keep the tree running after the dump (otherwise criu kills it once the
            /// `post-dump` hook agreed).
            leave_running
        );
        flag!(
            /// Track memory changes for later incremental dumps (needs soft-dirty).
            track_mem
        );
        flag!(
            /// Skip in-flight TCP connections.
            tcp_skip_in_flight
        );
        flag!(
            /// Resolve inotify watch paths by scanning, not by handles.
            force_irmap
        );

        /// The parent images (a previous pre-dump), relative to the images directory,
        /// e.g. `../1`.
        pub fn parent_images(mut self, rel: impl Into<String>) -> Self {
            self.c.opts.parent_img = Some(rel.into());
            self
        }

        /// Freeze the tree with this freezer cgroup instead of ptrace-stopping tasks.
        pub fn freeze_cgroup(mut self, path: impl Into<String>) -> Self {
            self.c.opts.freeze_cgroup = Some(path.into());
            self
        }

        /// Dump only these cgroup controllers. Repeatable.
        pub fn cgroup_dump_controller(mut self, name: impl Into<String>) -> Self {
            self.c.opts.cgroup_dump_controller.push(name.into());
            self
        }

        /// Where to look for inotify watch paths. Repeatable.
        pub fn irmap_scan_path(mut self, path: impl Into<String>) -> Self {
            self.c.opts.irmap_scan_paths.push(path.into());
            self
        }

        /// Send memory pages to a page server instead of writing them locally.
        pub fn page_server(mut self, address: impl Into<String>, port: u16) -> Self {
            let ps = self.c.opts.ps.get_or_insert_with(Default::default);
            ps.address = Some(address.into());
            ps.port = Some(i32::from(port));
            self
        }

        /// Send memory pages over this connected socket (passed to criu).
        pub fn page_server_fd(mut self, fd: impl Into<PassFd>) -> Self {
            self.c.opts.ps.get_or_insert_with(CriuPageServerInfo::default);
            self.c.page_server_fd = Some(fd.into());
            self
        }

        /// A unix socket fd of ours where criu keeps pidfds across pre-dump
        /// iterations, to detect pid reuse (criu 3.16+).
        pub fn pidfd_store(mut self, fd: impl Into<PassFd>) -> Self {
            self.c.pidfd_store = Some(fd.into());
            self
        }
    };
}

/// Options of a dump (`criu dump`).
///
/// # Example
/// ```
/// use std::time::Duration;
/// use criu_swrk::DumpOptions;
///
/// let opts = DumpOptions::new(4242)
///     .images_dir("/var/lib/checkpoints/4242")
///     .leave_running(true)
///     .tcp_established(true)
///     .timeout(Duration::from_secs(30));
/// # let _ = opts;
/// ```
#[derive(Debug)]
pub struct DumpOptions {
    c: Common,
}

impl DumpOptions {
    /// Options to dump the tree rooted at `pid`.
    pub fn new(pid: i32) -> Self {
        DumpOptions {
            c: Common {
                pid: Some(pid),
                ..Default::default()
            },
        }
    }

    /// The pid to dump.
    pub fn pid(&self) -> i32 {
        self.c.pid.unwrap_or_default()
    }

    /// Our timeout, when set.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.c.timeout
    }

    base_setters!();
    tree_setters!();
    dump_setters!();

    /// Stage the images: criu writes them into a new hidden sibling of `images_dir`
    /// (`.NAME.partial-XXXXXX`), which is renamed to `images_dir` the moment the dump
    /// commits (its `post-dump` hook answered with success). `images_dir` then holds
    /// a complete dump or nothing, even if this process is killed mid-way; a staging
    /// directory left behind by a killed process is never taken for a dump. A dump
    /// that does not commit removes its staging directory.
    ///
    /// `images_dir` must be given as a path, be absent or an empty directory, and
    /// have a writable parent. Default: off (criu writes into `images_dir`, and a
    /// dump that does not commit has what criu wrote there removed).
    ///
    /// # Example
    /// ```no_run
    /// # async fn run() -> criu_swrk::Result<()> {
    /// let opts = criu_swrk::DumpOptions::new(4242)
    ///     .images_dir("/var/lib/ckpt/4242")
    ///     .staged(true);
    /// let out = criu_swrk::Criu::new().dump(opts).await?;
    /// assert!(out.images_dir.unwrap().join("inventory.img").exists());
    /// # Ok(()) }
    /// ```
    pub fn staged(mut self, on: bool) -> Self {
        self.c.staged = on;
        self
    }

    /// Write a restore record ([`record`](crate::record)) into the images directory
    /// with the dump: the options a restore needs (`tcp_established`, `shell_job`,
    /// the tree's `root`, the network lock, ...) and criu's version, in
    /// `criu-swrk.json`. It goes with the images: removed if the dump does not
    /// commit, published with them if the dump is staged. Default: off.
    pub fn record(mut self, on: bool) -> Self {
        self.c.record = on;
        self
    }

    /// The container's part of the restore record (see [`crate::oci`]); records.
    pub(crate) fn container_record(mut self, record: crate::record::ContainerRecord) -> Self {
        self.c.container = Some(record);
        self.c.record = true;
        self
    }

    /// Do not dump the links, routes and rules of the tree's network namespace: the
    /// restore re-creates it empty (criu's `--empty-ns net`, read at dump in net.c;
    /// restore with [`RestoreOptions::empty_ns`] too). `clone_flags` may hold only
    /// `CLONE_NEWNET`.
    pub fn empty_ns(mut self, clone_flags: u32) -> Self {
        self.c.opts.empty_ns = Some(clone_flags);
        self
    }

    /// Cgroup properties to dump, in criu's YAML format (criu reads them only at
    /// dump, in cr-dump.c).
    pub fn cgroup_props(mut self, yaml: impl Into<String>) -> Self {
        self.c.opts.cgroup_props = Some(yaml.into());
        self
    }

    /// A file with the cgroup properties to dump (criu reads it only at dump).
    pub fn cgroup_props_file(mut self, path: impl Into<String>) -> Self {
        self.c.opts.cgroup_props_file = Some(path.into());
        self
    }

    /// The bind mount at `mountpoint` (as the tree sees it) is external, saved under
    /// `key` (criu's `ext_mnt` field; the same as
    /// [`External::mount`](crate::external::External::mount)). Repeatable.
    pub fn ext_mount(mut self, mountpoint: impl Into<String>, key: impl Into<String>) -> Self {
        self.c.opts.ext_mnt.push(ExtMountMap {
            key: mountpoint.into(),
            val: key.into(),
        });
        self
    }

    /// The unix socket with this inode is external: its peer is outside the tree
    /// (criu's `unix_sk_ino` field, `--ext-unix-sk INODE`). Repeatable.
    pub fn ext_unix_sk_inode(mut self, inode: u32) -> Self {
        self.c.opts.unix_sk_ino.push(UnixSk { inode });
        self
    }

    pub(crate) fn prepare(self) -> Result<Prepared> {
        self.c
            .prepare(RequestKind::Dump, LogDefault::Pipe { file: "dump.log" })
    }
}

/// Options of one pre-dump (an iteration of the pre-dump loop, or a single pre-dump).
///
/// Each iteration writes to its own images directory; the next one names it with
/// [`parent_images`](Self::parent_images).
#[derive(Debug)]
pub struct PreDumpOptions {
    c: Common,
}

impl PreDumpOptions {
    /// Options to pre-dump the tree rooted at `pid`.
    pub fn new(pid: i32) -> Self {
        PreDumpOptions {
            c: Common {
                pid: Some(pid),
                ..Default::default()
            },
        }
    }

    /// How memory is read (criu 3.14+).
    pub fn pre_dump_mode(mut self, mode: PreDumpMode) -> Self {
        self.c.opts.pre_dump_mode = Some(match mode {
            PreDumpMode::Splice => CriuPreDumpMode::Splice,
            PreDumpMode::VmRead => CriuPreDumpMode::VmRead,
        } as i32);
        self
    }

    base_setters!();
    tree_setters!();
    dump_setters!();

    pub(crate) fn prepare(self, kind: RequestKind) -> Result<Prepared> {
        self.c.prepare(
            kind,
            LogDefault::Pipe {
                file: "pre-dump.log",
            },
        )
    }
}

/// Options of a restore (`criu restore`). criu always restores detached over RPC.
///
/// # Example
/// ```
/// use criu_swrk::RestoreOptions;
///
/// let opts = RestoreOptions::new()
///     .images_dir("/var/lib/checkpoints/4242")
///     .tcp_established(true);
/// # let _ = opts;
/// ```
#[derive(Debug, Default)]
pub struct RestoreOptions {
    c: Common,
}

impl RestoreOptions {
    /// Default restore options; set at least the images directory.
    pub fn new() -> Self {
        Self::default()
    }

    base_setters!();
    tree_setters!();

    flag!(
        /// Restore the tree as a sibling of criu, i.e. as our child: we can then wait
        /// for it (and must reap it).
        rst_sibling
    );
    flag!(
        /// Apply sysctls that fail to apply only as warnings.
        weak_sysctls
    );
    flag!(
        /// Restore mount namespaces the way criu did before 3.17 (criu 3.17+).
        mntns_compat_mode
    );

    /// The directory to restore the tree's root under: needed for a tree in its own
    /// mount namespace (one that pivot_root'ed into a rootfs); criu bind-mounts it,
    /// so it need not be a mount point. Without it criu 4.x dies of a `mnt: BUG` on
    /// such a tree.
    pub fn root(mut self, path: impl Into<String>) -> Self {
        self.c.opts.root = Some(path.into());
        self
    }

    /// Restore the tree's network namespace empty, with only the loopback device:
    /// its links, routes and rules are not restored (criu's `--empty-ns net`, read at
    /// restore in cr-restore.c; a dump with [`DumpOptions::empty_ns`] skips dumping
    /// them). `clone_flags` may hold only `CLONE_NEWNET`.
    pub fn empty_ns(mut self, clone_flags: u32) -> Self {
        self.c.opts.empty_ns = Some(clone_flags);
        self
    }

    /// Connect the tree's veth end `inner` to a new host end `outer` (criu's
    /// `veths` field; the same as [`External::veth`](crate::external::External::veth)
    /// without a bridge). Repeatable.
    pub fn veth(mut self, inner: impl Into<String>, outer: impl Into<String>) -> Self {
        self.c.opts.veths.push(CriuVethPair {
            if_in: inner.into(),
            if_out: outer.into(),
        });
        self
    }

    /// The external bind mount saved as `key` comes from `host_path` (criu's
    /// `ext_mnt` field; the same as
    /// [`External::mount_at`](crate::external::External::mount_at)). Repeatable.
    pub fn ext_mount(mut self, key: impl Into<String>, host_path: impl Into<String>) -> Self {
        self.c.opts.ext_mnt.push(ExtMountMap {
            key: key.into(),
            val: host_path.into(),
        });
        self
    }

    /// Give the restored tree this fd for the resource named `key` in the images
    /// (criu's `--inherit-fd fd[N]:key`, e.g. `pipe:[12345]`). The fd is mapped into
    /// criu's fd table at the number criu is told.
    pub fn inherit_fd(mut self, key: impl Into<String>, fd: impl Into<PassFd>) -> Self {
        self.c.inherit.push((key.into(), fd.into()));
        self
    }

    /// An fd of ours criu writes one byte to when the restore is ready (obsoleted by
    /// the `status-ready` hook, kept for old peers).
    pub fn status_fd(mut self, fd: impl Into<PassFd>) -> Self {
        self.c.status_fd = Some(fd.into());
        self
    }

    /// Put the cgroups of controller `ctrl` (all, when `None`) under `path`.
    pub fn cgroup_root(mut self, ctrl: Option<&str>, path: impl Into<String>) -> Self {
        self.c.opts.cg_root.push(CgroupRoot {
            ctrl: ctrl.map(str::to_owned),
            path: path.into(),
        });
        self
    }

    /// Join an existing namespace instead of creating one: `ns` is `net`, `ipc`,
    /// `uts`, ... and `ns_file` a `/proc/<pid>/ns/<ns>` path or a pid.
    pub fn join_ns(mut self, ns: impl Into<String>, ns_file: impl Into<String>) -> Self {
        self.c.opts.join_ns.push(JoinNamespace {
            ns: ns.into(),
            ns_file: ns_file.into(),
            extra_opt: None,
        });
        self
    }

    /// Join an existing user namespace (`ns_file`: a `/proc/<pid>/ns/user` path or a
    /// pid), criu taking `uid` and `gid` inside it (criu's `--join-ns
    /// user:NS_FILE,UID,GID`; [`join_ns`](Self::join_ns) keeps criu's own ids).
    pub fn join_user_ns(mut self, ns_file: impl Into<String>, uid: u32, gid: u32) -> Self {
        self.c.opts.join_ns.push(JoinNamespace {
            ns: "user".to_owned(),
            ns_file: ns_file.into(),
            extra_opt: Some(format!("{uid},{gid}")),
        });
        self
    }

    /// Run this command after a successful restore, in criu's place.
    pub fn exec_cmd<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.c.opts.exec_cmd = argv.into_iter().map(Into::into).collect();
        self
    }

    /// The LSM profile to restore the tree with (e.g. `apparmor:name`; criu 3.16+,
    /// as runc requires: older criu mishandles it).
    pub fn lsm_profile(mut self, profile: impl Into<String>) -> Self {
        self.c.opts.lsm_profile = Some(profile.into());
        self
    }

    /// The LSM mount context (SELinux) for restored mounts (criu 3.16+).
    pub fn lsm_mount_context(mut self, ctx: impl Into<String>) -> Self {
        self.c.opts.lsm_mount_context = Some(ctx.into());
        self
    }

    pub(crate) fn prepare(self) -> Result<Prepared> {
        // A command criu execs after the restore gets criu's log fd as its stdout and
        // stderr: that must not be our pipe, which closes when we are done.
        let default_log = if self.c.opts.exec_cmd.is_empty() {
            LogDefault::Pipe {
                file: "restore.log",
            }
        } else {
            LogDefault::File("restore.log")
        };
        self.c.prepare(RequestKind::Restore, default_log)
    }
}

/// Options of requests that act on no tree: `check` (all optional) and
/// `cpuinfo_dump` / `cpuinfo_check` (which need the images directory holding
/// `cpuinfo.img`).
#[derive(Debug, Default)]
pub struct CheckOptions {
    c: Common,
}

impl CheckOptions {
    /// Defaults: criu logs to `check.log` in a scratch directory that is removed
    /// afterwards (its error lines still reach a refusal).
    pub fn new() -> Self {
        Self::default()
    }

    base_setters!();

    /// For `cpuinfo_check`: which CPU features must match (criu's `--cpu-cap` bit
    /// mask; criu's default checks them all).
    pub fn cpu_cap(mut self, mask: u32) -> Self {
        self.c.opts.cpu_cap = Some(mask);
        self
    }

    pub(crate) fn prepare(mut self, kind: RequestKind) -> Result<Prepared> {
        let default_log = match kind {
            RequestKind::CpuinfoDump | RequestKind::CpuinfoCheck => "cpuinfo.log",
            _ => "check.log",
        };
        // criu before 4.2 wants an images directory for every request with options,
        // even a check: give it a scratch one, for its log only.
        let scratch =
            if kind == RequestKind::Check && self.c.images.is_none() && self.c.work.is_none() {
                let dir = tempfile::Builder::new()
                    .prefix("criu-swrk-")
                    .tempdir()
                    .map_err(|e| Error::io("creating a scratch directory for criu's log", e))?;
                self.c.images = Some(Dir::Path(dir.path().to_path_buf()));
                Some(dir)
            } else {
                None
            };
        let mut p = self.c.prepare(kind, LogDefault::File(default_log))?;
        p.scratch = scratch;
        Ok(p)
    }
}

/// Options of a page server (`criu page-server`): it receives the memory pages of a
/// dump sent with [`DumpOptions::page_server`] and writes them into its images
/// directory.
///
/// # Example
/// ```
/// use criu_swrk::options::PageServerOptions;
///
/// // Listen on loopback; port 0 lets criu pick one (reported back).
/// let opts = PageServerOptions::new()
///     .images_dir("/var/lib/ckpt/incoming")
///     .address("127.0.0.1")
///     .port(0);
/// # let _ = opts;
/// ```
#[derive(Debug, Default)]
pub struct PageServerOptions {
    c: Common,
}

impl PageServerOptions {
    /// Defaults: criu's (all addresses, port 0 = any free port).
    pub fn new() -> Self {
        Self::default()
    }

    base_setters!();

    /// The address to listen on (criu's default: every address).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.c.opts.ps.get_or_insert_with(Default::default).address = Some(address.into());
        self
    }

    /// The port to listen on; 0 (the default) lets criu pick a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.c.opts.ps.get_or_insert_with(Default::default).port = Some(i32::from(port));
        self
    }

    /// Serve over this already connected socket instead of listening (passed to
    /// criu's fd table).
    pub fn socket_fd(mut self, fd: impl Into<PassFd>) -> Self {
        self.c
            .opts
            .ps
            .get_or_insert_with(CriuPageServerInfo::default);
        self.c.page_server_fd = Some(fd.into());
        self
    }

    tls_setters!();

    flag!(
        /// Serve the memory of the dump in the images directory to a remote
        /// `lazy-pages` daemon, page by page as it asks (criu's `page-server
        /// --lazy-pages`), instead of receiving pages.
        lazy_pages
    );

    pub(crate) fn prepare(mut self, kind: RequestKind) -> Result<Prepared> {
        // criu reads `ps` to decide it is a page server at all.
        let ps = self.c.opts.ps.get_or_insert_with(Default::default);
        ps.port.get_or_insert(0);
        // A daemon outlives us: its log must not be a pipe we close.
        let mut p = self.c.prepare(kind, LogDefault::File("page-server.log"))?;
        if kind == RequestKind::PageServerChild {
            // The child's status-ready would race criu itself for our answer on the
            // shared socket (criu reads its next request meanwhile).
            p.opts.notify_scripts = Some(false);
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_with_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = DumpOptions::new(12345)
            .images_dir(dir.path())
            .log_file("logs/dump.log")
            .prepare()
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidOptions {
                    option: "log_file",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("logs/dump.log"));
    }

    #[test]
    fn dump_without_images_dir_is_refused() {
        let err = DumpOptions::new(12345).prepare().unwrap_err();
        assert!(err.to_string().contains("images directory"), "{err}");
    }

    #[test]
    fn dumping_ourselves_is_refused() {
        let err = DumpOptions::new(std::process::id() as i32)
            .prepare()
            .unwrap_err();
        assert!(
            matches!(err, Error::InvalidOptions { option: "pid", .. }),
            "{err}"
        );
    }

    #[test]
    fn restore_from_a_dir_without_images_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = RestoreOptions::new()
            .images_dir(dir.path())
            .prepare()
            .unwrap_err();
        assert!(err.to_string().contains("inventory.img"), "{err}");
    }

    #[test]
    fn missing_images_dir_names_the_path() {
        let err = DumpOptions::new(12345)
            .images_dir("/nonexistent/criu-swrk")
            .prepare()
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/criu-swrk"), "{err}");
    }

    #[test]
    fn images_dir_that_is_a_file_is_refused_and_symlinks_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        let err = DumpOptions::new(12345)
            .images_dir(&file)
            .prepare()
            .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("{} is not a directory", file.display())),
            "{err}"
        );

        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let p = DumpOptions::new(12345).images_dir(&link).prepare().unwrap();
        assert_eq!(p.images_dir, Some(std::fs::canonicalize(&real).unwrap()));
    }

    #[test]
    fn an_old_criu_log_is_found_only_when_fresh() {
        // criu before 3.19 ignores log_to_stderr and writes criu.log in the work dir.
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("criu.log");
        std::fs::write(&log, "Error (x.c:1): stale\n").unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&log)
            .unwrap()
            .set_modified(old)
            .unwrap();
        let p = DumpOptions::new(7)
            .images_dir(dir.path())
            .prepare()
            .unwrap();
        assert_eq!(
            p.fallback_log(),
            None,
            "a stale criu.log is not this request's"
        );
        std::fs::write(&log, "Error (x.c:1): fresh\n").unwrap();
        assert_eq!(
            p.fallback_log(),
            Some(std::fs::canonicalize(dir.path()).unwrap().join("criu.log"))
        );
        // Not when the caller chose the log's place.
        let p = DumpOptions::new(7)
            .images_dir(dir.path())
            .log_file("dump.log")
            .prepare()
            .unwrap();
        assert_eq!(p.fallback_log(), None);
    }

    #[test]
    fn defaults_and_fd_plan() {
        let dir = tempfile::tempdir().unwrap();
        let (r, _w) = std::io::pipe().unwrap();
        std::fs::write(dir.path().join("inventory.img"), b"").unwrap();
        let p = RestoreOptions::new()
            .images_dir(dir.path())
            .inherit_fd("pipe:[1]", r)
            .prepare()
            .unwrap();
        assert_eq!(p.opts.notify_scripts, Some(true));
        // criu logs to our pipe, not into the images directory, unless asked to.
        assert_eq!(p.opts.log_file, None);
        assert_eq!(p.opts.log_to_stderr, Some(true));
        assert!(p.log_piped_by_default);
        assert_eq!(p.log_path(), None);
        assert_eq!(p.opts.log_level, Some(2));
        assert_eq!(p.opts.inherit_fd[0].fd, FIRST_PASSED_FD);
        assert_eq!(p.passed.len(), 1);
        assert_eq!(p.held.len(), 1);
        assert_eq!(p.opts.images_dir_fd, p.held[0].as_raw_fd());

        // A named log file goes to the work dir (the images dir here), and so does
        // the default one when the caller turns stderr logging off.
        for (opts, name) in [
            (RestoreOptions::new().log_file("mine.log"), "mine.log"),
            (RestoreOptions::new().log_to_stderr(false), "restore.log"),
            (RestoreOptions::new().exec_cmd(["/bin/true"]), "restore.log"),
        ] {
            let p = opts.images_dir(dir.path()).prepare().unwrap();
            assert_eq!(p.opts.log_file.as_deref(), Some(name));
            assert!(!p.log_piped_by_default);
            assert_eq!(
                p.log_path().unwrap(),
                std::fs::canonicalize(dir.path()).unwrap().join(name)
            );
        }
        std::fs::remove_file(dir.path().join("inventory.img")).unwrap();
        for (p, name) in [
            (DumpOptions::new(7).images_dir(dir.path()).prepare(), None),
            (
                PreDumpOptions::new(7)
                    .images_dir(dir.path())
                    .prepare(RequestKind::PreDump),
                None,
            ),
            (
                PageServerOptions::new()
                    .images_dir(dir.path())
                    .prepare(RequestKind::PageServer),
                Some("page-server.log"),
            ),
            (
                CheckOptions::new()
                    .images_dir(dir.path())
                    .prepare(RequestKind::CpuinfoDump),
                Some("cpuinfo.log"),
            ),
        ] {
            let p = p.unwrap();
            assert_eq!(p.opts.log_file.as_deref(), name, "{}", p.kind);
            assert_eq!(p.opts.log_to_stderr, name.is_none().then_some(true));
        }
    }

    #[test]
    fn raw_edits_apply_last() {
        let dir = tempfile::tempdir().unwrap();
        let p = DumpOptions::new(12345)
            .images_dir(dir.path())
            .ghost_limit(7)
            .raw(|o| o.ghost_limit = Some(9))
            .prepare()
            .unwrap();
        assert_eq!(p.opts.ghost_limit, Some(9));
    }

    /// Every public typed setter of every builder goes through `prepare` and onto the
    /// wire: the request is encoded as criu receives it, decoded, and the field the
    /// setter names is compared with the value criu expects (enums as criu's numbers,
    /// fds as the numbers criu is told). Last, this file's source is scanned for
    /// setters, so a new one without a row here fails the test.
    #[test]
    fn every_option_round_trips_through_the_encoder() {
        use std::collections::BTreeSet;
        use std::os::unix::fs::MetadataExt;

        use prost::Message;

        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let (d, other) = (dirs[0].path(), dirs[1].path());
        // Restores need images in the directories; dumps refuse directories with them.
        let images = |there: bool| {
            for dir in [d, other] {
                let inventory = dir.join("inventory.img");
                if there {
                    std::fs::write(inventory, b"").unwrap();
                } else {
                    let _ = std::fs::remove_file(inventory);
                }
            }
        };
        let other_real = std::fs::canonicalize(other).unwrap();
        let mut covered = BTreeSet::<&'static str>::new();

        /// The options as criu decodes them, and the prepared request (its fds).
        fn wire(p: Result<Prepared>) -> (CriuOpts, Prepared) {
            let p = p.unwrap_or_else(|e| panic!("prepare: {e}"));
            let bytes = p.opts.encode_to_vec();
            (CriuOpts::decode(bytes.as_slice()).expect("decoding"), p)
        }
        /// The options without the numbers of the directory fds (new on each prepare).
        fn sans_dir_fds(mut o: CriuOpts) -> CriuOpts {
            o.images_dir_fd = -1;
            o.work_dir_fd = None;
            o
        }
        /// What fd `n` of ours is open on.
        fn target_of(n: i32) -> PathBuf {
            std::fs::read_link(format!("/proc/self/fd/{n}")).unwrap()
        }
        /// The inode fd `n` of ours is open on.
        fn ino(n: i32) -> u64 {
            std::fs::metadata(format!("/proc/self/fd/{n}"))
                .unwrap()
                .ino()
        }
        /// Whether fd `n` is one of the fds the request holds for criu.
        fn holds(p: &Prepared, n: i32) -> bool {
            p.held.iter().any(|f| f.as_raw_fd() == n)
        }

        // One row: a setter (and its arguments) applied to a fresh builder, then
        // checks on the decoded options `o` and the prepared request `p`.
        macro_rules! row {
            ($new:expr, $prep:expr; $setter:ident($($arg:expr),*) $(.$then:ident($($targ:expr),*))*
                => |$o:ident, $p:ident| $body:block) => {{
                covered.insert(stringify!($setter));
                let built = $new.$setter($($arg),*)$(.$then($($targ),*))*;
                #[allow(unused_variables)]
                let ($o, $p) = wire(($prep)(built));
                $body
            }};
        }
        // Flags: each one set to true and to false, alone.
        macro_rules! flags {
            ($new:expr, $prep:expr; $($f:ident),+ $(,)?) => {$(
                for on in [true, false] {
                    row!($new, $prep; $f(on) => |o, p| {
                        assert_eq!(o.$f, Some(on), "{}({on})", stringify!($f));
                    });
                }
            )+};
        }
        // Optional strings whose setter is named like the field.
        macro_rules! strings {
            ($new:expr, $prep:expr; $($f:ident),+ $(,)?) => {$(
                row!($new, $prep; $f(concat!("/etc/criu/", stringify!($f))) => |o, p| {
                    assert_eq!(
                        o.$f.as_deref(),
                        Some(concat!("/etc/criu/", stringify!($f))),
                        "{}", stringify!($f)
                    );
                });
            )+};
        }

        macro_rules! base_rows {
            ($new:expr, $prep:expr) => {{
                let baseline = sans_dir_fds(wire(($prep)($new)).0);
                assert_eq!(baseline.notify_scripts, Some(true));
                assert_eq!(baseline.log_level, Some(2));
                row!($new, $prep; images_dir(other) => |o, p| {
                    assert!(holds(&p, o.images_dir_fd), "images_dir_fd {}", o.images_dir_fd);
                    assert_eq!(target_of(o.images_dir_fd), other_real);
                    assert_eq!(o.images_dir, None, "sent as an fd, not a path");
                });
                row!($new, $prep; images_dir_fd(File::open(other).unwrap()) => |o, p| {
                    assert!(holds(&p, o.images_dir_fd), "images_dir_fd {}", o.images_dir_fd);
                    assert_eq!(target_of(o.images_dir_fd), other_real);
                });
                row!($new, $prep; work_dir(other) => |o, p| {
                    let n = o.work_dir_fd.expect("work_dir_fd");
                    assert!(holds(&p, n), "work_dir_fd {n}");
                    assert_eq!(target_of(n), other_real);
                });
                row!($new, $prep; work_dir_fd(File::open(other).unwrap()) => |o, p| {
                    let n = o.work_dir_fd.expect("work_dir_fd");
                    assert!(holds(&p, n), "work_dir_fd {n}");
                    assert_eq!(target_of(n), other_real);
                });
                row!($new, $prep; log_file("mine.log") => |o, p| {
                    assert_eq!(o.log_file.as_deref(), Some("mine.log"));
                });
                row!($new, $prep; log_level(1) => |o, p| {
                    assert_eq!(o.log_level, Some(1));
                });
                flags!($new, $prep; log_to_stderr);
                row!($new, $prep; log_to_stderr(true) => |o, p| {
                    assert_eq!(o.log_file, None, "no default log file with log_to_stderr");
                });
                row!($new, $prep; timeout(Duration::from_secs(7)) => |o, p| {
                    assert_eq!(p.timeout, Some(Duration::from_secs(7)));
                    assert_eq!(sans_dir_fds(o), baseline, "ours, not criu's");
                });
                row!($new, $prep; cancel_on(CancellationToken::new()) => |o, p| {
                    assert!(p.cancel.is_some());
                    assert_eq!(sans_dir_fds(o), baseline, "ours, not criu's");
                });
                row!($new, $prep; raw(|o| o.ghost_limit = Some(77))
                        .raw(|o| o.notify_scripts = Some(false)) => |o, p| {
                    assert_eq!(o.ghost_limit, Some(77));
                    assert_eq!(o.notify_scripts, Some(true), "hooks stay on");
                });
            }};
        }

        macro_rules! tree_rows {
            ($new:expr, $prep:expr) => {{
                flags!($new, $prep;
                    shell_job, ext_unix_sk, tcp_established, tcp_close, file_locks,
                    link_remap, evasive_devices, auto_ext_mnt, ext_sharing, ext_masters,
                    auto_dedup, leave_stopped, lazy_pages, display_stats, unprivileged,
                    skip_file_rwx_check, orphan_pts_master, tls, tls_no_cn_verify,
                );
                strings!($new, $prep;
                    config_file, cgroup_yard, tls_cacert, tls_cacrl, tls_cert, tls_key,
                );
                row!($new, $prep; external("mnt[/data]:data").external("file[1f:42]") => |o, p| {
                    assert_eq!(o.external, ["mnt[/data]:data", "file[1f:42]"]);
                });
                row!($new, $prep; enable_fs("nfs").enable_fs("fuse") => |o, p| {
                    assert_eq!(o.enable_fs, ["nfs", "fuse"]);
                });
                row!($new, $prep; skip_mnt("/a").skip_mnt("/b") => |o, p| {
                    assert_eq!(o.skip_mnt, ["/a", "/b"]);
                });
                row!($new, $prep; ghost_limit(123_456) => |o, p| {
                    assert_eq!(o.ghost_limit, Some(123_456));
                });
                row!($new, $prep; cpu_cap(0x5) => |o, p| {
                    assert_eq!(o.cpu_cap, Some(0x5));
                });
                row!($new, $prep; freeze_timeout(9) => |o, p| {
                    assert_eq!(o.timeout, Some(9));
                });
                // criu's criu_cg_mode numbers.
                for (mode, n) in [
                    (CgroupMode::Ignore, 0),
                    (CgroupMode::None, 1),
                    (CgroupMode::Props, 2),
                    (CgroupMode::Soft, 3),
                    (CgroupMode::Full, 4),
                    (CgroupMode::Strict, 5),
                    (CgroupMode::Default, 6),
                ] {
                    row!($new, $prep; manage_cgroups(mode) => |o, p| {
                        assert_eq!(o.manage_cgroups_mode, Some(n), "{mode:?}");
                        assert_eq!(o.manage_cgroups, None, "the deprecated bool stays unset");
                    });
                }
                // criu's criu_network_lock_method numbers.
                for (method, n) in [
                    (NetworkLock::Iptables, 1),
                    (NetworkLock::Nftables, 2),
                    (NetworkLock::Skip, 3),
                ] {
                    row!($new, $prep; network_lock(method) => |o, p| {
                        assert_eq!(o.network_lock, Some(n), "{method:?}");
                    });
                }
            }};
        }

        macro_rules! dump_rows {
            ($new:expr, $prep:expr) => {{
                flags!($new, $prep; leave_running, track_mem, tcp_skip_in_flight, force_irmap);
                strings!($new, $prep; freeze_cgroup);
                row!($new, $prep; parent_images("../1") => |o, p| {
                    assert_eq!(o.parent_img.as_deref(), Some("../1"));
                });
                row!($new, $prep; cgroup_dump_controller("cpu").cgroup_dump_controller("memory")
                        => |o, p| {
                    assert_eq!(o.cgroup_dump_controller, ["cpu", "memory"]);
                });
                row!($new, $prep; irmap_scan_path("/usr").irmap_scan_path("/etc") => |o, p| {
                    assert_eq!(o.irmap_scan_paths, ["/usr", "/etc"]);
                });
                row!($new, $prep; page_server("192.0.2.7", 2775) => |o, p| {
                    let ps = o.ps.expect("ps");
                    assert_eq!(ps.address.as_deref(), Some("192.0.2.7"));
                    assert_eq!(ps.port, Some(2775));
                    assert_eq!(ps.fd, None);
                });
                let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let sock_ino = ino(sock.as_raw_fd());
                row!($new, $prep; page_server_fd(sock) => |o, p| {
                    assert_eq!(o.ps.expect("ps").fd, Some(4), "criu's first passed fd");
                    assert_eq!(p.passed.len(), 1);
                    assert_eq!(ino(p.passed[0].as_raw_fd()), sock_ino);
                });
                let (store, _peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
                let store_ino = ino(store.as_raw_fd());
                row!($new, $prep; pidfd_store(OwnedFd::from(store)) => |o, p| {
                    let n = o.pidfd_store_sk.expect("pidfd_store_sk");
                    assert!(holds(&p, n), "pidfd_store_sk {n} is ours, held");
                    assert_eq!(ino(n), store_ino);
                });
            }};
        }

        // Dump.
        let dump = |b: DumpOptions| {
            images(false);
            b.prepare()
        };
        base_rows!(DumpOptions::new(4242).images_dir(d), dump);
        tree_rows!(DumpOptions::new(4242).images_dir(d), dump);
        dump_rows!(DumpOptions::new(4242).images_dir(d), dump);
        assert_eq!(
            wire(DumpOptions::new(4242).images_dir(d).prepare()).0.pid,
            Some(4242)
        );
        let dump_new = || DumpOptions::new(4242).images_dir(d);
        strings!(dump_new(), dump; cgroup_props, cgroup_props_file);
        row!(dump_new(), dump; empty_ns(nix::libc::CLONE_NEWNET as u32) => |o, p| {
            assert_eq!(o.empty_ns, Some(0x4000_0000));
        });
        row!(dump_new(), dump; ext_mount("/data", "vol") => |o, p| {
            assert_eq!(o.ext_mnt, [ExtMountMap { key: "/data".into(), val: "vol".into() }]);
        });
        row!(dump_new(), dump; ext_unix_sk_inode(77).ext_unix_sk_inode(78) => |o, p| {
            assert_eq!(o.unix_sk_ino, [UnixSk { inode: 77 }, UnixSk { inode: 78 }]);
        });
        for on in [true, false] {
            row!(dump_new(), dump; record(on) => |o, p| {
                assert_eq!(p.record, on, "the record is ours to write, not criu's");
            });
        }
        // Staged: criu writes into a staging sibling, the outcome names the target.
        let staged_target = d.join("staged");
        row!(dump_new(), dump; staged(true).images_dir(&staged_target) => |o, p| {
            let staging = std::fs::read_link(format!("/proc/self/fd/{}", o.images_dir_fd)).unwrap();
            assert!(staging.to_string_lossy().contains(".staged.partial-"), "{staging:?}");
            assert_eq!(p.images_dir.as_deref(), Some(staged_target.as_path()));
        });

        // Pre-dump (a single one: the loop refuses lazy_pages, checked below).
        let pre = |b: PreDumpOptions| {
            images(false);
            b.prepare(RequestKind::SinglePreDump)
        };
        base_rows!(PreDumpOptions::new(4242).images_dir(d), pre);
        tree_rows!(PreDumpOptions::new(4242).images_dir(d), pre);
        dump_rows!(PreDumpOptions::new(4242).images_dir(d), pre);
        for (mode, n) in [(PreDumpMode::Splice, 1), (PreDumpMode::VmRead, 2)] {
            row!(PreDumpOptions::new(4242).images_dir(d), pre; pre_dump_mode(mode) => |o, p| {
                assert_eq!(o.pre_dump_mode, Some(n), "{mode:?}");
            });
        }
        assert!(
            PreDumpOptions::new(4242)
                .images_dir(d)
                .lazy_pages(true)
                .prepare(RequestKind::PreDump)
                .is_err()
        );

        // Restore.
        let rst = |b: RestoreOptions| {
            images(true);
            b.prepare()
        };
        let rst_new = || RestoreOptions::new().images_dir(d);
        base_rows!(rst_new(), rst);
        tree_rows!(rst_new(), rst);
        flags!(rst_new(), rst; rst_sibling, weak_sysctls, mntns_compat_mode);
        strings!(rst_new(), rst; root, lsm_profile, lsm_mount_context);
        row!(rst_new(), rst; veth("eth0", "veth42").veth("eth1", "veth43") => |o, p| {
            assert_eq!(
                o.veths,
                [
                    CriuVethPair { if_in: "eth0".into(), if_out: "veth42".into() },
                    CriuVethPair { if_in: "eth1".into(), if_out: "veth43".into() },
                ]
            );
        });
        row!(rst_new(), rst; ext_mount("vol", "/srv/v") => |o, p| {
            assert_eq!(o.ext_mnt, [ExtMountMap { key: "vol".into(), val: "/srv/v".into() }]);
        });
        let (r1, _w1) = std::io::pipe().unwrap();
        let (_r2, w2) = std::io::pipe().unwrap();
        let inos = [ino(r1.as_raw_fd()), ino(w2.as_raw_fd())];
        row!(rst_new(), rst; inherit_fd("pipe:[1]", r1).inherit_fd("pipe:[2]", w2) => |o, p| {
            assert_eq!(
                o.inherit_fd,
                [
                    InheritFd { key: "pipe:[1]".into(), fd: 4 },
                    InheritFd { key: "pipe:[2]".into(), fd: 5 },
                ]
            );
            let passed: Vec<u64> = p.passed.iter().map(|f| ino(f.as_raw_fd())).collect();
            assert_eq!(passed, inos, "fd 4 and 5 in criu's table are our pipes, in order");
        });
        let (status, _peer) = std::io::pipe().unwrap();
        let status_ino = ino(status.as_raw_fd());
        row!(rst_new(), rst; status_fd(status) => |o, p| {
            let n = o.status_fd.expect("status_fd");
            assert!(holds(&p, n), "status_fd {n} is ours, held");
            assert_eq!(ino(n), status_ino);
        });
        row!(rst_new(), rst; cgroup_root(Some("cpu"), "/a").cgroup_root(None, "/b") => |o, p| {
            assert_eq!(
                o.cg_root,
                [
                    CgroupRoot { ctrl: Some("cpu".into()), path: "/a".into() },
                    CgroupRoot { ctrl: None, path: "/b".into() },
                ]
            );
        });
        row!(rst_new(), rst; join_ns("net", "/proc/1/ns/net") => |o, p| {
            assert_eq!(
                o.join_ns,
                [JoinNamespace {
                    ns: "net".into(),
                    ns_file: "/proc/1/ns/net".into(),
                    extra_opt: None,
                }]
            );
        });
        row!(rst_new(), rst; join_user_ns("/proc/1/ns/user", 1000, 100) => |o, p| {
            assert_eq!(
                o.join_ns,
                [JoinNamespace {
                    ns: "user".into(),
                    ns_file: "/proc/1/ns/user".into(),
                    extra_opt: Some("1000,100".into()),
                }]
            );
        });
        row!(rst_new(), rst; empty_ns(nix::libc::CLONE_NEWNET as u32) => |o, p| {
            assert_eq!(o.empty_ns, Some(0x4000_0000));
        });
        row!(rst_new(), rst; exec_cmd(["/bin/true", "--x"]) => |o, p| {
            assert_eq!(o.exec_cmd, ["/bin/true", "--x"]);
        });

        // Check.
        let chk = |b: CheckOptions| b.prepare(RequestKind::Check);
        base_rows!(CheckOptions::new().images_dir(d), chk);
        row!(CheckOptions::new().images_dir(d), chk; cpu_cap(0x3) => |o, p| {
            assert_eq!(o.cpu_cap, Some(3));
        });

        // Page server.
        let ps = |b: PageServerOptions| b.prepare(RequestKind::PageServer);
        let ps_new = || PageServerOptions::new().images_dir(d);
        base_rows!(ps_new(), ps);
        flags!(ps_new(), ps; tls, tls_no_cn_verify, lazy_pages);
        strings!(ps_new(), ps; tls_cacert, tls_cacrl, tls_cert, tls_key);
        row!(ps_new(), ps; address("127.0.0.1") => |o, p| {
            let ps = o.ps.expect("ps");
            assert_eq!(ps.address.as_deref(), Some("127.0.0.1"));
            assert_eq!(ps.port, Some(0), "any free port unless told");
        });
        row!(ps_new(), ps; port(2775) => |o, p| {
            assert_eq!(o.ps.expect("ps").port, Some(2775));
        });
        let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        let sock_ino = ino(sock.as_raw_fd());
        row!(ps_new(), ps; socket_fd(sock) => |o, p| {
            assert_eq!(o.ps.expect("ps").fd, Some(4), "criu's first passed fd");
            assert_eq!(ino(p.passed[0].as_raw_fd()), sock_ino);
        });

        // Every setter in this file has a row above.
        let source = include_str!("options.rs");
        let source = &source[..source.find("#[cfg(test)]").unwrap()];
        let mut setters = BTreeSet::new();
        for (_, rest) in source
            .match_indices("pub fn ")
            .map(|(i, _)| source.split_at(i + 7))
        {
            // The name, then the generics and parameters up to the first `)`.
            let name = rest.split(['(', '<']).next().unwrap();
            let params = &rest[..rest.find(')').unwrap()];
            if params.contains("mut self") && !name.starts_with('$') {
                setters.insert(name);
            }
        }
        let mut lines = source.lines().map(str::trim);
        while let Some(line) = lines.next() {
            if line == "flag!(" {
                let name = lines.by_ref().find(|l| !l.starts_with("///")).unwrap();
                setters.insert(name);
            }
        }
        assert!(
            setters.len() > 60,
            "the scan found too few setters: {setters:?}"
        );
        let missing: Vec<_> = setters.difference(&covered).collect();
        assert!(missing.is_empty(), "setters without a row: {missing:?}");
    }
}
