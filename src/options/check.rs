//! [`CheckOptions`]: requests on no tree (`check`, `cpuinfo dump`, `cpuinfo check`).

use std::path::PathBuf;
use std::time::Duration;

use super::PassFd;
use super::plan::{Common, Dir, LogDefault, Prepared};
use crate::error::{Error, Result};
use crate::kind::RequestKind;
use crate::proto::CriuOpts;
use tokio_util::sync::CancellationToken;

/// Options of requests that act on no tree: `check` (all optional) and
/// `cpuinfo_dump` / `cpuinfo_check` (which need the images directory holding
/// `cpuinfo.img`).
#[derive(Debug, Default)]
pub struct CheckOptions {
    c: Common,
}

impl CheckOptions {
    /// Defaults: criu logs to `check.log` in a scratch directory that is removed
    /// afterwards (its error lines still reach a refusal).
    pub fn new() -> Self {
        Self::default()
    }

    base_setters!();

    /// For `cpuinfo_check`: which CPU features must match (criu's `--cpu-cap` bit
    /// mask; criu's default checks them all).
    pub fn cpu_cap(mut self, mask: u32) -> Self {
        self.c.opts.cpu_cap = Some(mask);
        self
    }

    pub(crate) fn prepare(mut self, kind: RequestKind) -> Result<Prepared> {
        let default_log = match kind {
            RequestKind::CpuinfoDump | RequestKind::CpuinfoCheck => "cpuinfo.log",
            _ => "check.log",
        };
        // criu before 4.2 wants an images directory for every request with options,
        // even a check: give it a scratch one, for its log only.
        let scratch =
            if kind == RequestKind::Check && self.c.images.is_none() && self.c.work.is_none() {
                let dir = tempfile::Builder::new()
                    .prefix("criu-swrk-")
                    .tempdir()
                    .map_err(|e| Error::io("creating a scratch directory for criu's log", e))?;
                self.c.images = Some(Dir::Path(dir.path().to_path_buf()));
                Some(dir)
            } else {
                None
            };
        let mut p = self.c.prepare(kind, LogDefault::File(default_log))?;
        p.scratch = scratch;
        Ok(p)
    }
}
