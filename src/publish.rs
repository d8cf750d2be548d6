//! A dump's images: published when the dump commits, removed when it does not.
//!
//! criu writes a dump's images straight into the images directory, `inventory.img`
//! last, just before `post-dump`. A dump that fails, is rolled back (even at
//! `post-dump`, when every image is already there) or whose criu is killed leaves a
//! directory that may look complete. Restoring it would start a second copy of a
//! tree that still runs, or a broken one. So:
//!
//! * [`Scrub`]: when a dump does not commit, what criu wrote is removed again: every
//!   entry that was not in the directory before the request, except criu's log file.
//! * [`Staging`] (opt-in): criu writes into a hidden sibling of the images directory,
//!   renamed into place the moment the dump commits. Even if this process is killed
//!   mid-way, the images directory then holds a complete dump or nothing.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

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

/// A dump written into a hidden sibling of its images directory and renamed into
/// place at the commit point.
#[derive(Debug)]
pub(crate) struct Staging {
    /// Where criu writes.
    temp: PathBuf,
    /// The caller's images directory.
    target: PathBuf,
    published: bool,
    /// The dump committed: whatever happens, the images stay.
    committed: bool,
    /// criu's log file, moved to the target when the dump does not commit.
    log: Option<String>,
}

impl Staging {
    /// Makes the staging directory for `target`, which must be absent or an empty
    /// directory (the rename replaces an empty one).
    pub(crate) fn new(target: &Path) -> Result<Self> {
        let bad = |why: String| Error::invalid("images_dir", why);
        match std::fs::read_dir(target) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(bad(format!(
                        "{} is not empty: a staged dump is moved into an empty or absent \
                         directory",
                        target.display()
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad(format!("{}: {e}", target.display()))),
        }
        let name = target
            .file_name()
            .ok_or_else(|| bad(format!("{} has no directory name", target.display())))?;
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let parent = std::fs::canonicalize(&parent)
            .map_err(|e| bad(format!("{}: {e}", parent.display())))?;
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{}.partial-", name.to_string_lossy()))
            .tempdir_in(&parent)
            .map_err(|e| {
                bad(format!(
                    "cannot make a staging directory in {}: {e}",
                    parent.display()
                ))
            })?
            .keep();
        Ok(Staging {
            temp,
            target: parent.join(name),
            published: false,
            committed: false,
            log: None,
        })
    }

    /// criu logs to `name` in the staging directory: if the dump does not commit, that
    /// file is moved to the images directory (a log alone is no dump) and the rest
    /// removed.
    pub(crate) fn keep_log(&mut self, name: &str) {
        self.log = Some(name.to_owned());
    }

    /// Where criu writes until the dump commits.
    pub(crate) fn temp(&self) -> &Path {
        &self.temp
    }

    /// The caller's images directory.
    pub(crate) fn target(&self) -> &Path {
        &self.target
    }

    /// Where the images are now.
    pub(crate) fn location(&self) -> &Path {
        if self.published {
            &self.target
        } else {
            &self.temp
        }
    }

    /// The dump committed: moves the images into place. criu writes on through its
    /// open directory fd, which follows the rename.
    pub(crate) fn publish(&mut self) {
        self.committed = true;
        if self.published {
            return;
        }
        match std::fs::rename(&self.temp, &self.target) {
            Ok(()) => self.published = true,
            Err(e) => tracing::warn!(
                images = %self.temp.display(),
                target = %self.target.display(),
                error = %e,
                "the dump committed but its images could not be moved into place; they stay where criu wrote them"
            ),
        }
    }

    /// Whether the images were moved into place.
    pub(crate) fn is_published(&self) -> bool {
        self.published
    }
}

impl Drop for Staging {
    /// Unless the dump committed, the staging directory goes (criu is gone by then:
    /// the session drops it only after reaping criu).
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Some(name) = &self.log {
            let from = self.temp.join(name);
            if from.exists() {
                let moved = std::fs::create_dir_all(&self.target)
                    .and_then(|()| std::fs::rename(&from, self.target.join(name)));
                if let Err(e) = moved {
                    tracing::warn!(log = %from.display(), error = %e, "cannot move the log of a failed dump to its images directory");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.temp)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.temp.display(), error = %e, "cannot remove the staging directory of a failed dump");
        }
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

    #[test]
    fn a_staged_dump_appears_under_its_name_only_when_published() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("ckpt");
        let mut staged = Staging::new(&target).unwrap();
        std::fs::write(staged.temp().join("inventory.img"), "x").unwrap();
        assert!(!target.exists());
        assert!(
            staged
                .temp()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".ckpt.partial-")
        );
        staged.publish();
        assert!(target.join("inventory.img").exists());
        assert_eq!(staged.location(), std::fs::canonicalize(&target).unwrap());

        // Discarded before publishing: nothing left, not even the staging directory.
        let other = root.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let staged = Staging::new(&other).unwrap();
        let temp = staged.temp().to_path_buf();
        drop(staged);
        assert!(!temp.exists());
        assert!(other.exists(), "the caller's empty directory stays");

        // With a log: the log alone moves to the images directory.
        let third = root.path().join("third");
        let mut staged = Staging::new(&third).unwrap();
        staged.keep_log("dump.log");
        std::fs::write(staged.temp().join("dump.log"), "Error (x): why").unwrap();
        std::fs::write(staged.temp().join("inventory.img"), "x").unwrap();
        drop(staged);
        let left: Vec<_> = std::fs::read_dir(&third)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["dump.log"]);
    }

    #[test]
    fn staging_refuses_a_directory_with_files() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x"), "").unwrap();
        let err = Staging::new(root.path()).unwrap_err();
        assert!(err.to_string().contains("is not empty"), "{err}");
    }
}
