//! A request plan: what a builder's options become when the request starts. The
//! directories opened, the fds criu gets (in its table, or through ours), where criu
//! logs, and what a dump that does not commit leaves to remove.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DEFAULT_LOG_LEVEL, PassFd};
use crate::error::{Error, Result};
use crate::kind::RequestKind;
use crate::proto::{CriuOpts, InheritFd};
use crate::publish::{Scrub, Staging};
use crate::spawn::FIRST_PASSED_FD;

#[derive(Debug)]
pub(crate) enum Dir {
    Path(PathBuf),
    Fd(PassFd),
}

pub(crate) type RawEdit = Box<dyn FnOnce(&mut CriuOpts) + Send>;

/// State shared by every builder.
#[derive(Default)]
pub(crate) struct Common {
    pub(crate) opts: CriuOpts,
    pub(crate) pid: Option<i32>,
    pub(crate) images: Option<Dir>,
    pub(crate) work: Option<Dir>,
    pub(crate) log_file: Option<String>,
    pub(crate) inherit: Vec<(String, PassFd)>,
    pub(crate) page_server_fd: Option<PassFd>,
    pub(crate) status_fd: Option<PassFd>,
    pub(crate) pidfd_store: Option<PassFd>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel: Option<CancellationToken>,
    pub(crate) raw: Vec<RawEdit>,
    /// Dump into a staging sibling of the images directory.
    pub(crate) staged: bool,
    /// Write a restore record with the dump.
    pub(crate) record: bool,
    /// For a container's dump: its part of the record.
    pub(crate) container: Option<crate::record::ContainerRecord>,
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
    pub(super) passed: Vec<OwnedFd>,
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
    pub(super) scrub: Option<Scrub>,
    /// For staged dumps: where criu writes until the dump commits.
    pub(super) staging: Option<Staging>,
    /// Write a restore record ([`crate::record`]) into the images directory.
    pub(crate) record: bool,
    /// For a container's dump: its part of the record.
    pub(crate) container: Option<crate::record::ContainerRecord>,
}

impl Prepared {
    /// What the request is.
    pub(crate) fn kind(&self) -> RequestKind {
        self.kind
    }

    /// Bounds the request by `timeout` (when its options set none) and `cancel`, as
    /// a batch does for each of its targets.
    pub(crate) fn bound_by(&mut self, timeout: Option<Duration>, cancel: CancellationToken) {
        self.timeout = self.timeout.or(timeout);
        self.cancel = Some(cancel);
    }

    /// The fds to place in criu's table, taken to start criu with them.
    pub(crate) fn take_passed(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.passed)
    }

    /// What guards a dump's images directory until it commits (the scrub of an
    /// uncommitted dump, the staging directory), handed to the connection for the
    /// exchange.
    pub(crate) fn take_guards(&mut self) -> (Option<Scrub>, Option<Staging>) {
        (self.scrub.take(), self.staging.take())
    }

    /// The staging directory back from the connection once the exchange is over
    /// (published or not), for the outcome.
    pub(crate) fn return_staging(&mut self, staging: Option<Staging>) {
        self.staging = staging;
    }

    /// Where the images really are: a staged dump whose rename failed left them in
    /// its staging directory.
    pub(crate) fn images_location(&self) -> Option<PathBuf> {
        match &self.staging {
            Some(st) => Some(st.location().to_path_buf()),
            None => self.images_dir.clone(),
        }
    }

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
pub(crate) enum LogDefault {
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
    /// The images directory as a path, when it is known before the request (a path,
    /// or an fd of ours whose path `/proc` names).
    pub(crate) fn images_path(&self) -> Option<PathBuf> {
        match self.images.as_ref()? {
            Dir::Path(p) => Some(p.clone()),
            Dir::Fd(fd) => std::fs::read_link(format!("/proc/self/fd/{}", fd.raw()?)).ok(),
        }
    }

    pub(crate) fn prepare(
        mut self,
        kind: RequestKind,
        default_log: LogDefault,
    ) -> Result<Prepared> {
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
pub(crate) fn open_dir(
    dir: Dir,
    option: &'static str,
    writable: bool,
) -> Result<(OwnedFd, PathBuf)> {
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
