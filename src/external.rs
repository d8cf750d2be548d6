//! criu's external resources (`--external TYPE[ID]:VALUE`), typed.
//!
//! Some things a tree uses are not criu's to dump: a bind mount from the host, a
//! network namespace the tree shares with others, a device, an open file it cannot
//! resolve. They are declared at dump time under a name, and mapped back at restore
//! time. [`External`] builds the spec strings criu parses, so that a key is never
//! mistyped; pass them to `DumpOptions::external` / `RestoreOptions::external`.
//!
//! The syntax differs between the two sides, as in criu: a bind mount is dumped as
//! `mnt[MOUNTPOINT]:NAME` and restored as `mnt[NAME]:HOST_PATH`.
//!
//! # Example
//! ```
//! use criu_swrk::{DumpOptions, RestoreOptions};
//! use criu_swrk::external::External;
//!
//! // A volume bind-mounted at /data inside the tree, from /srv/volumes/42 outside.
//! let dump = DumpOptions::new(4242)
//!     .images_dir("/var/lib/ckpt/42")
//!     .external(External::mount("/data", "volume"));
//! let restore = RestoreOptions::new()
//!     .images_dir("/var/lib/ckpt/42")
//!     .external(External::mount_at("volume", "/srv/volumes/42"));
//! assert_eq!(External::mount("/data", "volume").to_string(), "mnt[/data]:volume");
//! ```

use std::fmt;
use std::io;
use std::path::Path;

/// One external-resource spec, as criu's `--external` takes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct External(String);

impl External {
    /// Dump: the bind mount at `mountpoint` (as the tree sees it) is external, saved
    /// under `name` (`mnt[MOUNTPOINT]:NAME`).
    pub fn mount(mountpoint: impl AsRef<str>, name: impl AsRef<str>) -> Self {
        External(format!("mnt[{}]:{}", mountpoint.as_ref(), name.as_ref()))
    }

    /// Dump: every external bind mount, detected by criu (`mnt[]`); with `shared`
    /// and `master`, also those with shared or master propagation (`mnt[]:sm`).
    pub fn mounts_detected(shared: bool, master: bool) -> Self {
        let mut flags = String::new();
        if shared {
            flags.push('s');
        }
        if master {
            flags.push('m');
        }
        if flags.is_empty() {
            External("mnt[]".into())
        } else {
            External(format!("mnt[]:{flags}"))
        }
    }

    /// Restore: the bind mount saved as `name` comes from `host_path`
    /// (`mnt[NAME]:HOST_PATH`).
    pub fn mount_at(name: impl AsRef<str>, host_path: impl AsRef<Path>) -> Self {
        External(format!(
            "mnt[{}]:{}",
            name.as_ref(),
            host_path.as_ref().display()
        ))
    }

    /// Restore: every bind mount dumped with [`mounts_detected`](Self::mounts_detected),
    /// from where it was (`mnt[]`).
    pub fn mounts_all() -> Self {
        External("mnt[]".into())
    }

    /// Dump: mounts of the device `major:minor` are external, saved under `name`
    /// (`dev[MAJOR/MINOR]:NAME`).
    pub fn device(major: u32, minor: u32, name: impl AsRef<str>) -> Self {
        External(format!("dev[{major}/{minor}]:{}", name.as_ref()))
    }

    /// Restore: the device saved as `name` is `dev_path` (`dev[NAME]:/dev/...`).
    pub fn device_at(name: impl AsRef<str>, dev_path: impl AsRef<Path>) -> Self {
        External(format!(
            "dev[{}]:{}",
            name.as_ref(),
            dev_path.as_ref().display()
        ))
    }

    /// Dump: an open file criu cannot resolve, by mount id and inode
    /// (`file[MNT_ID:INODE]`); restore it with `inherit_fd`.
    pub fn file(mnt_id: u32, inode: u64) -> Self {
        External(format!("file[{mnt_id:x}:{inode:x}]"))
    }

    /// Dump: an external tty, by its `st_rdev` and `st_dev` (`tty[RDEV:DEV]`).
    pub fn tty(rdev: u64, dev: u64) -> Self {
        External(format!("tty[{rdev:x}:{dev:x}]"))
    }

    /// Dump: an external unix socket, by inode (`unix[INODE]`).
    pub fn unix_socket(inode: u64) -> Self {
        External(format!("unix[{inode}]"))
    }

    /// Dump: the network namespace with this inode is external, under `name`
    /// (`net[INODE]:NAME`); restore passes an fd of the namespace with
    /// `inherit_fd(name, fd)`. See [`ns_inode`].
    pub fn net_ns(inode: u64, name: impl AsRef<str>) -> Self {
        External(format!("net[{inode}]:{}", name.as_ref()))
    }

    /// Dump: the PID namespace with this inode is external, under `name`
    /// (`pid[INODE]:NAME`).
    pub fn pid_ns(inode: u64, name: impl AsRef<str>) -> Self {
        External(format!("pid[{inode}]:{}", name.as_ref()))
    }

    /// Restore: connect the tree's veth end `inner` to a new host end `outer`, added
    /// to `bridge` when given (`veth[INNER]:OUTER@BRIDGE`).
    pub fn veth(inner: impl AsRef<str>, outer: impl AsRef<str>, bridge: Option<&str>) -> Self {
        let mut s = format!("veth[{}]:{}", inner.as_ref(), outer.as_ref());
        if let Some(br) = bridge {
            s.push('@');
            s.push_str(br);
        }
        External(s)
    }

    /// Restore: the tree's macvlan device `inner` sits on host device `outer`
    /// (`macvlan[INNER]:OUTER`).
    pub fn macvlan(inner: impl AsRef<str>, outer: impl AsRef<str>) -> Self {
        External(format!("macvlan[{}]:{}", inner.as_ref(), outer.as_ref()))
    }

    /// The spec as criu takes it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for External {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<External> for String {
    fn from(e: External) -> String {
        e.0
    }
}

/// The inode of a namespace file (`/proc/PID/ns/net`, a bind-mounted namespace),
/// which criu's `net[INODE]` and `pid[INODE]` keys name.
///
/// # Errors
/// When the file cannot be stat'ed.
pub fn ns_inode(path: impl AsRef<Path>) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_criu_s_syntax() {
        let cases = [
            (External::mount("/data", "vol"), "mnt[/data]:vol"),
            (External::mounts_detected(false, false), "mnt[]"),
            (External::mounts_detected(true, true), "mnt[]:sm"),
            (External::mount_at("vol", "/srv/v"), "mnt[vol]:/srv/v"),
            (External::device(8, 1, "disk"), "dev[8/1]:disk"),
            (
                External::device_at("disk", "/dev/sda1"),
                "dev[disk]:/dev/sda1",
            ),
            (External::file(0x1c, 0x1f2), "file[1c:1f2]"),
            (External::tty(0x8801, 0x17), "tty[8801:17]"),
            (External::unix_socket(4242), "unix[4242]"),
            (
                External::net_ns(4026531992, "netns"),
                "net[4026531992]:netns",
            ),
            (
                External::pid_ns(4026531836, "pidns"),
                "pid[4026531836]:pidns",
            ),
            (External::veth("eth0", "veth42", None), "veth[eth0]:veth42"),
            (
                External::veth("eth0", "veth42", Some("br0")),
                "veth[eth0]:veth42@br0",
            ),
            (External::macvlan("mv0", "eth1"), "macvlan[mv0]:eth1"),
        ];
        for (e, want) in cases {
            assert_eq!(e.as_str(), want);
            assert_eq!(String::from(e), want);
        }
    }

    #[test]
    fn ns_inode_is_the_namespace_s() {
        let a = ns_inode("/proc/self/ns/net").unwrap();
        let b = ns_inode(format!("/proc/{}/ns/net", std::process::id())).unwrap();
        assert_eq!(a, b);
        assert!(ns_inode("/nonexistent").is_err());
    }
}
