//! [`DumpOptions`]: checkpointing a process tree.

use std::path::PathBuf;
use std::time::Duration;

use super::plan::{Common, Dir, LogDefault, Prepared};
use super::{CgroupMode, NetworkLock, PassFd};
use crate::error::Result;
use crate::kind::RequestKind;
use crate::proto::{CriuNetworkLockMethod, CriuOpts, CriuPageServerInfo, ExtMountMap, UnixSk};
use tokio_util::sync::CancellationToken;

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
#[must_use = "options do nothing until a request takes them"]
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
    /// restore with [`RestoreOptions::empty_ns`](crate::RestoreOptions::empty_ns) too). `clone_flags` may hold only
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
