//! What a restore needs to know about a dump, kept with its images.
//!
//! criu needs several options at restore time that only the dump knew: a tree dumped
//! with `tcp_established` restores only with it too (else `inet: Connected TCP socket
//! in image`), a shell job only with `shell_job`, a tree in its own mount namespace
//! only with `root`, and the network lock method must match. A dump asked to
//! ([`DumpOptions::record`](crate::DumpOptions::record)) writes those into its images
//! directory as [`FILE_NAME`], a small versioned JSON file, with criu's version;
//! [`DumpRecord::read`] and [`RestoreOptions::from_record`](crate::RestoreOptions::from_record)
//! bring them back.
//!
//! # Example
//! ```no_run
//! use criu_swrk::{Criu, DumpOptions, RestoreOptions};
//! use criu_swrk::record::DumpRecord;
//!
//! # async fn run() -> criu_swrk::Result<()> {
//! let criu = Criu::new();
//! criu.dump(
//!     DumpOptions::new(4242)
//!         .images_dir("/var/lib/ckpt/4242")
//!         .tcp_established(true)
//!         .record(true),
//! )
//! .await?;
//! // Later, maybe in another process: the restore gets tcp_established from the record.
//! let opts = match DumpRecord::read("/var/lib/ckpt/4242")? {
//!     Some(record) => RestoreOptions::from_record(&record),
//!     None => RestoreOptions::new(),
//! };
//! criu.restore(opts.images_dir("/var/lib/ckpt/4242")).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::modes::{CgroupMode, NetworkLock};
use crate::proto::CriuOpts;

/// The record's file name in the images directory.
pub const FILE_NAME: &str = "criu-swrk.json";

/// The record format this crate writes; it reads this one and older.
pub const FORMAT: u32 = 1;

/// The restore-relevant options of a dump (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct DumpRecord {
    /// The record's format ([`FORMAT`]).
    pub format: u32,
    /// The criu that made the dump, e.g. `4.2.1`.
    pub criu_version: String,
    /// The dumped tree's root pid.
    pub pid: i32,
    /// The tree's root directory as seen from outside, when it was not `/` (a tree
    /// that pivot_root'ed into a rootfs): the restore needs it as `root`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Dumped with `tcp_established`.
    #[serde(default)]
    pub tcp_established: bool,
    /// Dumped as a shell job.
    #[serde(default)]
    pub shell_job: bool,
    /// Dumped with `ext_unix_sk`.
    #[serde(default)]
    pub ext_unix_sk: bool,
    /// Dumped with `file_locks`.
    #[serde(default)]
    pub file_locks: bool,
    /// Dumped with `orphan_pts_master` (a console held outside the tree).
    #[serde(default)]
    pub orphan_pts_master: bool,
    /// The network lock the dump used: the restore must unlock the same way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_lock: Option<NetworkLock>,
    /// How the dump handled cgroups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manage_cgroups: Option<CgroupMode>,
    /// The dump's `empty_ns` flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub empty_ns: Option<u32>,
    /// For a container dumped from its OCI bundle ([`crate::oci`]): what its restore
    /// needs beyond the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<ContainerRecord>,
}

/// What the restore of an OCI container needs that its bundle does not say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ContainerRecord {
    /// The container's id, when known (`runc state`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The bundle directory.
    pub bundle: PathBuf,
    /// Each cgroup v1 hierarchy bind-mounted into the container: its mount point
    /// inside and the container's cgroup directory on the host it came from.
    #[serde(default)]
    pub cgroup_mounts: Vec<(String, PathBuf)>,
    /// What the init's stdin, stdout and stderr were (`pipe:[INODE]`, a path): the
    /// keys a restore hands new fds for.
    #[serde(default)]
    pub stdio: Vec<String>,
    /// The container has a terminal (its console master is outside the tree).
    #[serde(default)]
    pub terminal: bool,
}

impl DumpRecord {
    /// The record of a dump of `pid` with `opts` by criu `criu_version`.
    pub(crate) fn of(
        pid: i32,
        opts: &CriuOpts,
        criu_version: String,
        container: Option<ContainerRecord>,
    ) -> Self {
        DumpRecord {
            format: FORMAT,
            criu_version,
            pid,
            root: tree_root(pid),
            tcp_established: opts.tcp_established == Some(true),
            shell_job: opts.shell_job == Some(true),
            ext_unix_sk: opts.ext_unix_sk == Some(true),
            file_locks: opts.file_locks == Some(true),
            orphan_pts_master: opts.orphan_pts_master == Some(true),
            network_lock: opts.network_lock.and_then(NetworkLock::from_wire),
            manage_cgroups: opts.manage_cgroups_mode.and_then(CgroupMode::from_wire),
            empty_ns: opts.empty_ns,
            container,
        }
    }

    /// Reads the record in `images_dir`; `Ok(None)` when there is none (a dump made
    /// without one, or by criu's command line).
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read; [`Error::InvalidOptions`]
    /// (`images_dir`) when it is not a record this crate understands (a newer format,
    /// or not JSON).
    pub fn read(images_dir: impl AsRef<Path>) -> Result<Option<Self>> {
        let path = images_dir.as_ref().join(FILE_NAME);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
        };
        let record: DumpRecord = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(
                "images_dir",
                format!("{} is not a dump record: {e}", path.display()),
            )
        })?;
        if record.format > FORMAT {
            return Err(Error::invalid(
                "images_dir",
                format!(
                    "{} has record format {}; this criu-swrk reads up to {FORMAT}",
                    path.display(),
                    record.format
                ),
            ));
        }
        Ok(Some(record))
    }

    /// Writes the record into the directory behind `dir` (a path, or
    /// `/proc/self/fd/N`).
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let path = dir.join(FILE_NAME);
        let mut text = serde_json::to_string_pretty(self).expect("a record serializes");
        text.push('\n');
        std::fs::write(&path, text)
            .map_err(|e| Error::io("writing the dump record into the images directory", e))
    }
}

/// The directory that is `pid`'s root, as a path of ours, when it is not our root: a
/// tree that pivot_root'ed into a rootfs. `/proc/PID/root` reads `/` then, so the path
/// comes from mountinfo: the tree's root mount names its device and the path within
/// that file system; a mount of the same device here turns that into one of our paths,
/// which must then be the same directory (device and inode).
fn tree_root(pid: i32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let theirs = std::fs::metadata(format!("/proc/{pid}/root/.")).ok()?;
    let ours = std::fs::metadata("/").ok()?;
    if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
        return None;
    }
    let same_dir = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| (m.dev(), m.ino()) == (theirs.dev(), theirs.ino()))
    };
    let link = std::fs::read_link(format!("/proc/{pid}/root")).ok()?;
    if link != Path::new("/") && same_dir(&link) {
        return Some(link);
    }
    let their_mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    let (dev, fs_path) = their_mounts
        .lines()
        .filter_map(parse_mountinfo)
        .find(|m| m.mount_point == "/")
        .map(|m| (m.dev, m.root))?;
    let our_mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    our_mounts
        .lines()
        .filter_map(parse_mountinfo)
        .filter(|m| m.dev == dev)
        .filter_map(|m| {
            let rest = fs_path.strip_prefix(m.root.trim_end_matches('/'))?;
            (rest.is_empty() || rest.starts_with('/'))
                .then(|| PathBuf::from(format!("{}{rest}", m.mount_point.trim_end_matches('/'))))
        })
        .find(|p| same_dir(p))
}

/// The fields of a mountinfo line this module needs (proc(5)).
struct Mount {
    dev: String,
    root: String,
    mount_point: String,
}

fn parse_mountinfo(line: &str) -> Option<Mount> {
    let mut f = line.split(' ');
    let _id = f.next()?;
    let _parent = f.next()?;
    let dev = f.next()?.to_owned();
    let root = unescape(f.next()?);
    let mount_point = unescape(f.next()?);
    Some(Mount {
        dev,
        root,
        mount_point,
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal `\NNN`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| u8::from_str_radix(&s[i + 1..i + 4], 8).ok())
            .flatten();
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_newer_formats() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(DumpRecord::read(dir.path()).unwrap(), None);
        let opts = CriuOpts {
            tcp_established: Some(true),
            network_lock: Some(crate::proto::CriuNetworkLockMethod::Nftables as i32),
            manage_cgroups_mode: Some(crate::proto::CriuCgMode::Full as i32),
            ..Default::default()
        };
        let record = DumpRecord::of(std::process::id() as i32, &opts, "4.2.1".into(), None);
        assert_eq!(record.root, None, "our own root is /");
        record.write(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(text.contains("\"network_lock\": \"nftables\""), "{text}");
        assert!(text.contains("\"manage_cgroups\": \"full\""), "{text}");
        let back = DumpRecord::read(dir.path()).unwrap().unwrap();
        assert_eq!(back, record);

        std::fs::write(
            dir.path().join(FILE_NAME),
            text.replace("\"format\": 1", "\"format\": 99"),
        )
        .unwrap();
        let err = DumpRecord::read(dir.path()).unwrap_err();
        assert!(err.to_string().contains("record format 99"), "{err}");
        std::fs::write(dir.path().join(FILE_NAME), "not json").unwrap();
        assert!(DumpRecord::read(dir.path()).is_err());
    }

    #[test]
    fn mountinfo_lines_parse_with_their_escapes() {
        let m = parse_mountinfo(
            "36 35 98:0 /srv/my\\040root /mnt/r\\303\\251 rw,noatime master:1 - ext3 /dev/root rw",
        )
        .unwrap();
        assert_eq!(m.dev, "98:0");
        assert_eq!(m.root, "/srv/my root");
        assert_eq!(m.mount_point, "/mnt/r\u{e9}");
    }
}
