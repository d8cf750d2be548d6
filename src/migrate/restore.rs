//! How the destination restores what arrived, and holds the restored root.

use std::path::{Path, PathBuf};

use crate::criu::Criu;
use crate::error::{Side, chain};
use crate::notify::{Hooks, Notification, Reply};
use crate::options::RestoreOptions;
use crate::process::Held;

/// A restored root, held from criu's `post-restore` hook on, so that it can be killed
/// (with its descendants) wherever it was re-parented since.
pub(super) type Restored = Held;

/// Restores, holding the restored root.
pub(super) async fn restore_holding(
    criu: &Criu,
    opts: RestoreOptions,
) -> std::result::Result<Restored, (Side, String)> {
    let mut pin = Pin(None);
    let out = criu
        .restore_with(opts, &mut pin)
        .await
        .map_err(|e| (Side::Destination, format!("restore: {}", chain(&e))))?;
    let me = std::process::id() as i32;
    match pin.0.filter(|h| h.pid() == out.pid) {
        Some(held) => Ok(held),
        None => match Held::child_of(out.pid, &[1, me]) {
            Some(held) => Ok(held),
            None => {
                // Running, but not ours to kill later: not kept. Killed now, by
                // pid, a moment after criu named it.
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(out.pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                Err((
                    Side::Destination,
                    format!("restored pid {} could not be held; killed it", out.pid),
                ))
            }
        },
    }
}

/// How to restore what arrived: a process tree with the source's flags, or an OCI
/// container from its bundle (whose record came with the images).
pub(super) struct Restore {
    pub(super) plain: RestoreOptions,
    pub(super) bundle: Option<PathBuf>,
}

impl Restore {
    pub(super) fn options(self, dir: &Path) -> std::result::Result<RestoreOptions, (Side, String)> {
        match self.bundle {
            None => Ok(self.plain),
            Some(bundle) => crate::oci::ContainerRestore::new(bundle, dir)
                .options()
                .map_err(|e| {
                    (
                        Side::Destination,
                        format!("the container's bundle: {}", chain(&e)),
                    )
                }),
        }
    }
}

/// Takes hold of the restored root at `post-restore`.
struct Pin(Option<Held>);

impl Hooks for Pin {
    async fn on_notify(&mut self, n: Notification) -> Reply {
        if let Notification::PostRestore { pid } = n {
            self.0 = Held::restored_here(pid);
        }
        Reply::ok()
    }
}
