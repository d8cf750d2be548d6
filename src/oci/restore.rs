//! Restoring a container from its bundle and its images.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use oci_spec::runtime::LinuxNamespaceType;

use super::{
    NET_KEY, PID_KEY, bind_mounts, check_spec, criu_config, criu_ns_name, devices,
    joined_namespaces, read_bundle,
};
use crate::criu::Criu;
use crate::error::{Error, Result};
use crate::notify::{Hooks, Notification, Reply};
use crate::options::{CgroupMode, PassFd, RestoreOptions};
use crate::outcome::RestoreOutcome;
use crate::record::DumpRecord;

/// The restore of a container from its bundle and its images (dumped with
/// [`Container::dump_options`](super::Container::dump_options), which recorded what the bundle does not say).
///
/// The init's stdin, stdout and stderr, when they were pipes, are given new fds: the
/// ones set here, else `/dev/null` (a pipe with no other end would kill a writer with
/// SIGPIPE).
#[derive(Debug)]
#[must_use = "a ContainerRestore does nothing until `run` or `options`"]
pub struct ContainerRestore {
    bundle: PathBuf,
    images: PathBuf,
    stdio: [Option<PassFd>; 3],
    inherit: Vec<(String, PassFd)>,
}

/// A restored container.
#[derive(Debug)]
#[non_exhaustive]
pub struct RestoredContainer {
    /// The restored init's pid (in our pid namespace).
    pub pid: i32,
    /// The new console's master, for a container with a terminal.
    pub console: Option<OwnedFd>,
    /// criu's outcome (stats, log).
    pub outcome: RestoreOutcome,
}

impl ContainerRestore {
    /// A restore of the container in `bundle` from `images_dir`.
    pub fn new(bundle: impl Into<PathBuf>, images_dir: impl Into<PathBuf>) -> Self {
        ContainerRestore {
            bundle: bundle.into(),
            images: images_dir.into(),
            stdio: [None, None, None],
            inherit: Vec::new(),
        }
    }

    /// Give the restored container this fd for the resource `key` in the images
    /// (criu's `inherit_fd`; a recorded stdio pipe's key included, which then gets no
    /// `/dev/null`).
    pub fn inherit_fd(mut self, key: impl Into<String>, fd: impl Into<PassFd>) -> Self {
        self.inherit.push((key.into(), fd.into()));
        self
    }

    /// The restored init's stdin (when it was a pipe).
    pub fn stdin(mut self, fd: impl Into<PassFd>) -> Self {
        self.stdio[0] = Some(fd.into());
        self
    }

    /// The restored init's stdout (when it was a pipe).
    pub fn stdout(mut self, fd: impl Into<PassFd>) -> Self {
        self.stdio[1] = Some(fd.into());
        self
    }

    /// The restored init's stderr (when it was a pipe).
    pub fn stderr(mut self, fd: impl Into<PassFd>) -> Self {
        self.stdio[2] = Some(fd.into());
        self
    }

    /// The restore options: the record's, the bundle's mounts mapped back to their
    /// sources, the rootfs as `root`, namespaces joined by path, stdio. Set more (a
    /// timeout, ...) before sending them with [`Criu::restore_with`]; a terminal
    /// container's console master then arrives in the `orphan-pts-master` hook.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] when the images hold no container record (dumped
    /// otherwise) or the bundle cannot be read; [`Error::Unsupported`] as for the dump;
    /// [`Error::Io`] when a namespace or `/dev/null` cannot be opened.
    pub fn options(self) -> Result<RestoreOptions> {
        let record = DumpRecord::read(&self.images)?.ok_or_else(|| {
            Error::invalid(
                "images_dir",
                format!(
                    "{} holds no dump record: dump the container with \
                     oci::Container::dump_options (criu-swrk dump --bundle)",
                    self.images.display()
                ),
            )
        })?;
        let container = record.container.clone().ok_or_else(|| {
            Error::invalid(
                "images_dir",
                format!(
                    "{} holds the dump of a process tree, not of a container",
                    self.images.display()
                ),
            )
        })?;
        let (_, spec, rootfs) = read_bundle(&self.bundle)?;
        check_spec(&spec)?;
        let mut opts = RestoreOptions::from_record(&record)
            .images_dir(&self.images)
            .root(rootfs.display().to_string())
            .manage_cgroups(CgroupMode::Soft)
            .orphan_pts_master(true)
            .evasive_devices(true);
        if let Some(config) = criu_config(&spec) {
            opts = opts.config_file(config);
        }
        for (dest, source) in bind_mounts(&spec) {
            opts = opts.ext_mount(dest, source);
        }
        if spec
            .linux()
            .as_ref()
            .and_then(|l| l.masked_paths().as_ref())
            .is_some_and(|m| !m.is_empty())
        {
            opts = opts.ext_mount("/dev/null", "/dev/null");
        }
        for dev in devices(&spec) {
            opts = opts.ext_mount(dev.clone(), dev);
        }
        for (mountpoint, host) in &container.cgroup_mounts {
            opts = opts.ext_mount(mountpoint.clone(), host.display().to_string());
        }
        for (kind, path) in joined_namespaces(&spec) {
            let open = || {
                std::fs::File::open(&path)
                    .map_err(|e| Error::io(format!("opening namespace {}", path.display()), e))
            };
            opts = match kind {
                LinuxNamespaceType::Network => opts.inherit_fd(NET_KEY, open()?),
                LinuxNamespaceType::Pid => opts.inherit_fd(PID_KEY, open()?),
                other => opts.join_ns(criu_ns_name(other), path.display().to_string()),
            };
        }
        let mut stdio = self.stdio;
        let given: Vec<String> = self.inherit.iter().map(|(k, _)| k.clone()).collect();
        for (key, fd) in self.inherit {
            opts = opts.inherit_fd(key, fd);
        }
        for (i, key) in container.stdio.iter().enumerate() {
            if !key.starts_with("pipe:") || given.contains(key) {
                continue;
            }
            let fd = match stdio[i].take() {
                Some(fd) => fd,
                None => std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(PassFd::from)
                    .map_err(|e| Error::io("opening /dev/null", e))?,
            };
            opts = opts.inherit_fd(key.clone(), fd);
        }
        Ok(opts)
    }

    /// Restores the container; see [`Criu::restore`].
    ///
    /// # Errors
    /// As [`options`](Self::options) and [`Criu::restore`].
    ///
    /// # Cancel safety
    /// As [`Session::restore`](crate::Session::restore).
    pub async fn run(self, criu: &Criu) -> Result<RestoredContainer> {
        let opts = self.options()?;
        let mut hooks = ConsoleHooks(None);
        let outcome = criu.restore_with(opts, &mut hooks).await?;
        Ok(RestoredContainer {
            pid: outcome.pid,
            console: hooks.0,
            outcome,
        })
    }
}

/// Keeps the console master criu hands over in `orphan-pts-master`.
struct ConsoleHooks(Option<OwnedFd>);

impl Hooks for ConsoleHooks {
    async fn on_notify(&mut self, n: Notification) -> Reply {
        if let Notification::OrphanPtsMaster { master } = n {
            self.0 = Some(master);
        }
        Reply::ok()
    }
}
