//! OCI containers: checkpoint and restore containers made by runc (or any OCI
//! runtime) from their bundle.
//!
//! A container is a process tree in its own namespaces, pivot_root'ed into the
//! bundle's rootfs, with mounts from the host that criu must be told about. runc
//! derives those from the bundle's `config.json` (libcontainer/criu_linux.go); so does
//! this module, so that a runtime does not have to rediscover the list:
//!
//! * every bind mount is external (`mnt[DEST]:DEST` at dump, `mnt[DEST]:SOURCE` at
//!   restore); so are the cgroup v1 hierarchies runc binds into `/sys/fs/cgroup`
//!   (restored onto the container's own cgroup directories), the devices, and the
//!   masked files (bound to `/dev/null`);
//! * namespaces joined by path: net and pid become external (`net[INODE]:extRootNetNS`,
//!   the namespace handed back at restore through `inherit_fd`), the others are joined
//!   at restore (`join_ns`); a cgroup namespace joined by path cannot be handled;
//! * the container's freezer cgroup freezes it; cgroups are managed (`soft`: removed
//!   ones are re-created, with their limits);
//! * the console: `orphan_pts_master`, so that a terminal container's restore hands
//!   the new console master back;
//! * the init's stdio: recorded at dump, so that a restore can give it new pipes;
//! * the container's own network namespace is restored empty (`empty_ns`), as runc
//!   does: its devices are the runtime's to set up (CNI), not criu's; and criu's
//!   configuration file is the one the bundle's `org.criu.config` annotation names,
//!   else `/etc/criu/runc.conf` when it exists, as runc does.
//!
//! What cannot be derived, or what criu cannot do (a mount of a file system criu does
//! not know, a cgroup namespace joined by path), is an error naming the mount or the
//! namespace, before the container is touched.
//!
//! The restore brings the container's init back in the bundle's rootfs with its mounts;
//! runc does not know the restored container (it is criu-swrk's to watch).
//!
//! # Example
//! ```no_run
//! use criu_swrk::Criu;
//! use criu_swrk::oci::{Container, ContainerRestore};
//!
//! # async fn run() -> criu_swrk::Result<()> {
//! let criu = Criu::new();
//! let container = Container::from_runc("web")?; // `runc state web`
//! let dump = container.dump_options()?.images_dir("/var/lib/ckpt/web");
//! criu.dump(dump).await?;
//!
//! // Later: the bundle and the images are all it takes.
//! let restored = ContainerRestore::new(container.bundle(), "/var/lib/ckpt/web")
//!     .run(&criu)
//!     .await?;
//! println!("restored as pid {}", restored.pid);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::error::{Error, Result};
use crate::external::{External, ns_inode};
use crate::options::{CgroupMode, DumpOptions, NetworkLock};
use crate::record::ContainerRecord;

/// criu's keys for namespaces joined by path, as runc names them.
const NET_KEY: &str = "extRootNetNS";
const PID_KEY: &str = "extRootPidNS";

/// File systems criu 4.2 can dump and restore (its criu/filesystems.c, less `fuse`,
/// which it always refuses); `bind` mounts are made external instead.
const CRIU_FILESYSTEMS: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "binfmt_misc",
    "tmpfs",
    "devpts",
    "simfs",
    "btrfs",
    "pstore",
    "mqueue",
    "securityfs",
    "fusectl",
    "debugfs",
    "tracefs",
    "cgroup",
    "cgroup2",
    "aufs",
    "overlay",
    "autofs",
];

/// The devices runc (libcontainer) creates in every container besides those the
/// spec lists: external when runc bind-mounts them (in a user namespace).
const DEFAULT_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/random",
    "/dev/full",
    "/dev/tty",
    "/dev/zero",
    "/dev/urandom",
];

/// runc's annotation naming a criu configuration file for the container (empty: none).
const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";
/// The file runc has criu read when the annotation is absent.
const RUNC_CRIU_CONFIG: &str = "/etc/criu/runc.conf";

/// A running container to checkpoint: its bundle, its `config.json`, its init's pid.
#[derive(Debug, Clone)]
pub struct Container {
    id: Option<String>,
    pid: i32,
    bundle: PathBuf,
    rootfs: PathBuf,
    spec: Spec,
}

impl Container {
    /// The container whose init is `pid`, made from the bundle in `bundle` (the
    /// directory holding `config.json`).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] (`bundle`) when `config.json` cannot be read or is not
    /// an OCI runtime spec; (`pid`) when `pid` is not a live process.
    pub fn from_bundle(bundle: impl AsRef<Path>, pid: i32) -> Result<Self> {
        let (bundle, spec, rootfs) = read_bundle(bundle.as_ref())?;
        if pid <= 0 || !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(Error::invalid(
                "pid",
                format!("{pid} is not a running process"),
            ));
        }
        Ok(Container {
            id: None,
            pid,
            bundle,
            rootfs,
            spec,
        })
    }

    /// The container `id` as runc knows it: its pid and bundle from `runc state ID`
    /// (`$RUNC`, or `runc` on `$PATH`).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] (`runc`) when runc does not know the container or it
    /// is not running; as [`from_bundle`](Self::from_bundle).
    pub fn from_runc(id: &str) -> Result<Self> {
        let runc = std::env::var_os("RUNC").unwrap_or_else(|| "runc".into());
        let out = std::process::Command::new(&runc)
            .args(["state", id])
            .output()
            .map_err(|e| Error::invalid("runc", format!("{}: {e}", runc.to_string_lossy())))?;
        if !out.status.success() {
            return Err(Error::invalid(
                "runc",
                format!(
                    "runc state {id}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            ));
        }
        Self::from_state(&String::from_utf8_lossy(&out.stdout))
    }

    /// The container an OCI runtime state describes (what `runc state ID` prints:
    /// `id`, `pid`, `bundle`, `status`).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] (`runc`) when the state is not JSON of that shape or
    /// the container is not running; as [`from_bundle`](Self::from_bundle).
    pub fn from_state(json: &str) -> Result<Self> {
        #[derive(serde::Deserialize)]
        struct State {
            id: String,
            pid: i32,
            bundle: PathBuf,
            status: String,
        }
        let state: State = serde_json::from_str(json)
            .map_err(|e| Error::invalid("runc", format!("not a container state: {e}")))?;
        if state.status != "running" && state.status != "paused" {
            return Err(Error::invalid(
                "runc",
                format!("container {} is {}, not running", state.id, state.status),
            ));
        }
        let mut c = Self::from_bundle(&state.bundle, state.pid)?;
        c.id = Some(state.id);
        Ok(c)
    }

    /// The init's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The container's id, when it came from a runtime state.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The bundle directory.
    pub fn bundle(&self) -> &Path {
        &self.bundle
    }

    /// The rootfs, resolved against the bundle.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// Whether the container has a terminal (`process.terminal`).
    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }

    /// The options to dump this container, derived from its bundle and its running
    /// init (see the [module docs](self)); add the images directory and, say,
    /// `leave_running`. They record what the restore needs (see
    /// [`ContainerRestore`]).
    ///
    /// # Errors
    /// [`Error::Unsupported`] naming the mount or namespace criu cannot handle;
    /// [`Error::Io`] when the container's `/proc` entries cannot be read.
    pub fn dump_options(&self) -> Result<DumpOptions> {
        check_spec(&self.spec)?;
        let mut opts = DumpOptions::new(self.pid)
            .manage_cgroups(CgroupMode::Soft)
            .orphan_pts_master(true);
        if let Some(config) = criu_config(&self.spec) {
            opts = opts.config_file(config);
        }
        if owns_net_namespace(&self.spec) {
            opts = opts.empty_ns(nix::libc::CLONE_NEWNET as u32);
        }
        if !on_path("iptables-restore") {
            // criu's default lock runs iptables-restore for the container's own net
            // namespace; libnftables needs no binary.
            opts = opts.network_lock(NetworkLock::Nftables);
        }
        for (dest, _) in bind_mounts(&self.spec) {
            opts = opts.ext_mount(dest.clone(), dest);
        }
        for path in masked_files(&self.spec, self.pid) {
            opts = opts.ext_mount(path, "/dev/null");
        }
        for dev in devices(&self.spec) {
            opts = opts.ext_mount(dev.clone(), dev);
        }
        let cgroups = cgroup_mounts(self.pid)?;
        for (mountpoint, _) in &cgroups {
            opts = opts.ext_mount(mountpoint.clone(), mountpoint.clone());
        }
        for (kind, path) in joined_namespaces(&self.spec) {
            let key = match kind {
                LinuxNamespaceType::Network => NET_KEY,
                LinuxNamespaceType::Pid => PID_KEY,
                _ => continue,
            };
            let inode = ns_inode(&path)
                .map_err(|e| Error::io(format!("reading namespace {}", path.display()), e))?;
            opts = opts.external(match kind {
                LinuxNamespaceType::Network => External::net_ns(inode, key),
                _ => External::pid_ns(inode, key),
            });
        }
        if let Some(freezer) = freezer_cgroup(self.pid) {
            opts = opts.freeze_cgroup(freezer.display().to_string());
        }
        let record = ContainerRecord {
            id: self.id.clone(),
            bundle: self.bundle.clone(),
            cgroup_mounts: cgroups,
            stdio: (0..3)
                .map(|fd| {
                    std::fs::read_link(format!("/proc/{}/fd/{fd}", self.pid))
                        .map(|l| l.display().to_string())
                        .unwrap_or_default()
                })
                .collect(),
            terminal: self.terminal(),
        };
        Ok(opts.container_record(record))
    }
}

/// The bundle's canonical path, its spec, and its rootfs resolved against it.
fn read_bundle(bundle: &Path) -> Result<(PathBuf, Spec, PathBuf)> {
    let bundle = std::fs::canonicalize(bundle)
        .map_err(|e| Error::invalid("bundle", format!("{}: {e}", bundle.display())))?;
    let config = bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|e| {
        Error::invalid(
            "bundle",
            format!("{} is not an OCI runtime spec: {e}", config.display()),
        )
    })?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or_else(|| Error::invalid("bundle", format!("{} has no root", config.display())))?;
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let rootfs = std::fs::canonicalize(&rootfs)
        .map_err(|e| Error::invalid("bundle", format!("rootfs {}: {e}", rootfs.display())))?;
    Ok((bundle, spec, rootfs))
}

/// What criu cannot handle in a spec, named.
fn check_spec(spec: &Spec) -> Result<()> {
    for m in spec.mounts().as_deref().unwrap_or_default() {
        if is_bind(m) {
            continue;
        }
        let ty = m.typ().as_deref().unwrap_or("");
        let known = CRIU_FILESYSTEMS.contains(&ty);
        if !known {
            let why = if ty.starts_with("fuse") {
                "criu cannot checkpoint FUSE mounts".to_owned()
            } else {
                format!(
                    "criu cannot checkpoint {ty} mounts (it knows {})",
                    CRIU_FILESYSTEMS.join(", ")
                )
            };
            return Err(Error::Unsupported {
                what: format!("mount {} (type {ty})", m.destination().display()),
                reason: format!(
                    "{why}: use a tmpfs, or bind-mount a host directory there, which criu \
                     treats as external"
                ),
            });
        }
    }
    for (kind, path) in joined_namespaces(spec) {
        if kind == LinuxNamespaceType::Cgroup {
            return Err(Error::Unsupported {
                what: format!("cgroup namespace {}", path.display()),
                reason: "criu can neither treat a cgroup namespace the container shares as \
                         external nor join one at restore: let the container have its own"
                    .into(),
            });
        }
    }
    Ok(())
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o == "bind" || o == "rbind")
}

/// The bind mounts: destination, source.
fn bind_mounts(spec: &Spec) -> Vec<(String, String)> {
    spec.mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|m| is_bind(m))
        .map(|m| {
            (
                m.destination().display().to_string(),
                m.source()
                    .as_ref()
                    .map(|s| s.display().to_string())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The masked paths that are files in the container (runc binds /dev/null over them;
/// masked directories get a read-only tmpfs, which criu dumps itself).
fn masked_files(spec: &Spec, pid: i32) -> Vec<String> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| std::fs::metadata(format!("/proc/{pid}/root{p}")).is_ok_and(|m| !m.is_dir()))
        .collect()
}

/// The devices of the container: runc's defaults and the spec's own.
fn devices(spec: &Spec) -> Vec<String> {
    let mut out: Vec<String> = DEFAULT_DEVICES.iter().map(|d| (*d).to_owned()).collect();
    for d in spec
        .linux()
        .as_ref()
        .and_then(|l| l.devices().clone())
        .unwrap_or_default()
    {
        let path = d.path().display().to_string();
        if !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

/// The criu configuration file for the container, as runc picks it.
fn criu_config(spec: &Spec) -> Option<String> {
    match spec
        .annotations()
        .as_ref()
        .and_then(|a| a.get(CRIU_CONFIG_ANNOTATION))
    {
        Some(path) if path.is_empty() => None,
        Some(path) => Some(path.clone()),
        None => Path::new(RUNC_CRIU_CONFIG)
            .exists()
            .then(|| RUNC_CRIU_CONFIG.to_owned()),
    }
}

/// The container gets a network namespace of its own (not one joined by path).
fn owns_net_namespace(spec: &Spec) -> bool {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .iter()
        .any(|ns| ns.typ() == LinuxNamespaceType::Network && ns.path().is_none())
}

/// Namespaces the container joins by path.
fn joined_namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, PathBuf)> {
    spec.linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|ns| Some((ns.typ(), ns.path().clone()?)))
        .collect()
}

/// criu's `join_ns` name for a namespace type.
fn criu_ns_name(kind: LinuxNamespaceType) -> &'static str {
    match kind {
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Time => "time",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Cgroup => "cgroup",
    }
}

/// The cgroup v1 hierarchies bound into the container (`cgroup` mounts under its
/// `/sys/fs/cgroup`), each with the container's own cgroup directory on the host.
fn cgroup_mounts(pid: i32) -> Result<Vec<(String, PathBuf)>> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map_err(|e| Error::io(format!("reading the mounts of {pid}"), e))?;
    let paths = cgroup_paths(pid)?;
    let mut out = Vec::new();
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let Some((head, tail)) = line.split_once(" - ") else {
            continue;
        };
        let mut tail = tail.split(' ');
        if tail.next() != Some("cgroup") {
            continue;
        }
        let _source = tail.next();
        let supers: Vec<&str> = tail.next().unwrap_or("").split(',').collect();
        let Some(mountpoint) = head.split(' ').nth(4) else {
            continue;
        };
        // The hierarchy: its controllers (or name=...) among the super options.
        let Some(path) = paths.iter().find_map(|(ctrls, path)| {
            ctrls
                .split(',')
                .all(|c| supers.contains(&c))
                .then_some(path)
        }) else {
            continue;
        };
        let hierarchy = Path::new(mountpoint)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let host = PathBuf::from("/sys/fs/cgroup")
            .join(&hierarchy)
            .join(path.trim_start_matches('/'));
        out.push((mountpoint.to_owned(), host));
    }
    Ok(out)
}

/// `/proc/PID/cgroup`: controllers (`cpu,cpuacct`, `name=systemd`; empty for v2) to
/// the process's path in that hierarchy.
fn cgroup_paths(pid: i32) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| Error::io(format!("reading the cgroups of {pid}"), e))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let _id = f.next()?;
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .filter(|(ctrls, _)| !ctrls.is_empty())
        .collect())
}

/// The container's freezer cgroup directory: v1 `freezer`, else its cgroup v2
/// directory when the host is unified.
fn freezer_cgroup(pid: i32) -> Option<PathBuf> {
    let paths = cgroup_paths(pid).ok()?;
    let path = paths.get("freezer")?;
    let dir = Path::new("/sys/fs/cgroup/freezer").join(path.trim_start_matches('/'));
    dir.exists().then_some(dir)
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

mod restore;
#[cfg(test)]
mod tests;

pub use restore::{ContainerRestore, RestoredContainer};
