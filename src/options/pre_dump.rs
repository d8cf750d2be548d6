//! [`PreDumpOptions`]: memory copied while the tree runs, for a later dump.

use std::path::PathBuf;
use std::time::Duration;

use super::plan::{Common, Dir, LogDefault, Prepared};
use super::{CgroupMode, NetworkLock, PassFd, PreDumpMode};
use crate::error::Result;
use crate::kind::RequestKind;
use crate::proto::{CriuNetworkLockMethod, CriuOpts, CriuPageServerInfo, CriuPreDumpMode};
use tokio_util::sync::CancellationToken;

/// Options of one pre-dump (an iteration of the pre-dump loop, or a single pre-dump).
///
/// Each iteration writes to its own images directory; the next one names it with
/// [`parent_images`](Self::parent_images).
#[derive(Debug)]
#[must_use = "options do nothing until a request takes them"]
pub struct PreDumpOptions {
    c: Common,
}

impl PreDumpOptions {
    /// Options to pre-dump the tree rooted at `pid`.
    pub fn new(pid: i32) -> Self {
        PreDumpOptions {
            c: Common {
                pid: Some(pid),
                ..Default::default()
            },
        }
    }

    /// How memory is read (criu 3.14+).
    pub fn pre_dump_mode(mut self, mode: PreDumpMode) -> Self {
        self.c.opts.pre_dump_mode = Some(match mode {
            PreDumpMode::Splice => CriuPreDumpMode::Splice,
            PreDumpMode::VmRead => CriuPreDumpMode::VmRead,
        } as i32);
        self
    }

    base_setters!();
    tree_setters!();
    dump_setters!();

    pub(crate) fn prepare(self, kind: RequestKind) -> Result<Prepared> {
        self.c.prepare(
            kind,
            LogDefault::Pipe {
                file: "pre-dump.log",
            },
        )
    }
}
