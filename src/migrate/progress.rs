//! A migration's steps, reported as they are reached.

use tokio::sync::mpsc;

/// How far a migration has got, as it goes ([`Migration::progress`](super::Migration::progress)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// Connected and authenticated; the destination took the plan.
    Ready,
    /// The tree is frozen (criu's `pre-dump` hook); about this much memory moves.
    Frozen {
        /// The tree's resident memory.
        memory_bytes: u64,
    },
    /// The dump reached `post-dump`: stop-and-copy's memory is on the destination.
    Dumped,
    /// The other image files are on the destination and match.
    Sent {
        /// Their bytes.
        file_bytes: u64,
    },
    /// Post-copy: the tree runs on the destination; its pages follow.
    Running {
        /// Its root's pid there.
        pid: i32,
    },
    /// Post-copy: pages served so far (every 8 MiB).
    Pages {
        /// Bytes served.
        bytes: u64,
    },
    /// The tree runs on the destination with all its memory (the source's ends next).
    Restored {
        /// Its root's pid there.
        pid: i32,
    },
}

/// Sends `step` to the caller's channel, if any (a closed one is ignored).
pub(super) fn tell(to: &Option<mpsc::UnboundedSender<Progress>>, step: Progress) {
    if let Some(tx) = to {
        let _ = tx.send(step);
    }
}
