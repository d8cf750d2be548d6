//! [`RestoreOptions`]: bringing a tree back from its images.

use std::path::PathBuf;
use std::time::Duration;

use super::plan::{Common, Dir, LogDefault, Prepared};
use super::{CgroupMode, NetworkLock, PassFd};
use crate::error::Result;
use crate::kind::RequestKind;
use crate::proto::{
    CgroupRoot, CriuNetworkLockMethod, CriuOpts, CriuVethPair, ExtMountMap, JoinNamespace,
};
use crate::record::DumpRecord;
use tokio_util::sync::CancellationToken;

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
#[must_use = "options do nothing until a request takes them"]
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

    /// Restore options carrying what a dump recorded (see [`record`](crate::record)):
    /// `tcp_established`, `shell_job`, `ext_unix_sk`, `file_locks`,
    /// `orphan_pts_master` as the dump had them, and its root, network lock, cgroup
    /// mode and `empty_ns`. Add the images directory; setters called afterwards
    /// override what the record said.
    pub fn from_record(record: &DumpRecord) -> Self {
        Self::new().apply_record(record)
    }

    /// These options with what a dump recorded added (see
    /// [`from_record`](Self::from_record)).
    pub fn apply_record(self, record: &DumpRecord) -> Self {
        let mut opts = self
            .tcp_established(record.tcp_established)
            .shell_job(record.shell_job)
            .ext_unix_sk(record.ext_unix_sk)
            .file_locks(record.file_locks)
            .orphan_pts_master(record.orphan_pts_master);
        if let Some(root) = &record.root {
            opts = opts.root(root.display().to_string());
        }
        if let Some(lock) = record.network_lock {
            opts = opts.network_lock(lock);
        }
        if let Some(mode) = record.manage_cgroups {
            opts = opts.manage_cgroups(mode);
        }
        if let Some(ns) = record.empty_ns {
            opts = opts.empty_ns(ns);
        }
        opts
    }

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
    /// restore in cr-restore.c; a dump with [`DumpOptions::empty_ns`](crate::DumpOptions::empty_ns) skips dumping
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

    /// The images directory, when known before the request.
    pub(crate) fn images_path(&self) -> Option<PathBuf> {
        self.c.images_path()
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
