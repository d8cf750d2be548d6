//! No half-written dump under the caller's images directory.
//!
//! criu writes a dump's images straight into the images directory, `inventory.img`
//! last, just before `post-dump`. A dump that fails, is rolled back (even at
//! `post-dump`, when every image is already there) or whose criu is killed leaves a
//! directory that may look complete. Restoring it would start a second copy of a
//! tree that still runs, or a broken one. So when a dump does not commit, what criu
//! wrote there is removed again: every entry that was not in the directory before the
//! request, except the caller's own log file.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

/// The images directory of one dump and what it held before criu started.
#[derive(Debug)]
pub(crate) struct Scrub {
    dir: OwnedFd,
    path: PathBuf,
    before: HashSet<OsString>,
    keep: Vec<OsString>,
}

impl Scrub {
    /// Notes what `dir` (at `path`) holds now. The files named in `keep` (criu's log)
    /// survive a scrub.
    pub(crate) fn new(dir: BorrowedFd<'_>, path: PathBuf, keep: &[&str]) -> io::Result<Self> {
        let dir = dir.try_clone_to_owned()?;
        let before = entries(dir.as_fd())?;
        Ok(Scrub {
            dir,
            path,
            before,
            keep: keep.iter().map(OsString::from).collect(),
        })
    }

    /// Removes what appeared since [`new`](Self::new). Call only once criu is gone.
    /// Returns how many entries were removed.
    pub(crate) fn run(self) -> usize {
        let now = match entries(self.dir.as_fd()) {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(dir = %self.path.display(), error = %e, "cannot list the images directory to remove a failed dump");
                return 0;
            }
        };
        let mut removed = 0;
        for name in now.difference(&self.before) {
            if self.keep.contains(name) {
                continue;
            }
            match nix::unistd::unlinkat(
                &self.dir,
                name.as_os_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                Ok(()) => removed += 1,
                Err(e) => tracing::warn!(
                    dir = %self.path.display(),
                    file = %name.to_string_lossy(),
                    error = %e,
                    "cannot remove a file of a failed dump"
                ),
            }
        }
        if removed > 0 {
            tracing::info!(dir = %self.path.display(), removed, "removed the images of a dump that did not commit");
        }
        removed
    }
}

/// The names in a directory, read through a fresh open of its fd.
fn entries(dir: BorrowedFd<'_>) -> io::Result<HashSet<OsString>> {
    use std::os::fd::AsRawFd;
    std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_only_what_appeared_and_keeps_the_log() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let fd = std::fs::File::open(dir.path()).unwrap();
        let scrub = Scrub::new(fd.as_fd(), dir.path().into(), &["dump.log"]).unwrap();
        for f in ["inventory.img", "pages-1.img", "dump.log"] {
            std::fs::write(dir.path().join(f), "x").unwrap();
        }
        assert_eq!(scrub.run(), 2);
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["dump.log", "notes.txt"]);
    }
}
