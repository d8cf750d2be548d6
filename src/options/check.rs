//! [`CheckOptions`] (`criu check`) and [`CpuinfoOptions`] (`cpuinfo dump` / `cpuinfo
//! check`): requests on no tree.

use std::path::PathBuf;
use std::time::Duration;

use super::PassFd;
use super::plan::{Common, Dir, LogDefault, Prepared};
use crate::error::{Error, Result};
use crate::kind::RequestKind;
use crate::proto::CriuOpts;
use tokio_util::sync::CancellationToken;

/// Options of `criu check` (all optional: a work directory for the log, a log level).
#[derive(Debug, Default)]
#[must_use = "options do nothing until a request takes them"]
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

    pub(crate) fn prepare(mut self) -> Result<Prepared> {
        // criu before 4.2 wants an images directory for every request with options,
        // even a check: give it a scratch one, for its log only.
        let scratch = if self.c.images.is_none() && self.c.work.is_none() {
            let dir = tempfile::Builder::new()
                .prefix("criu-swrk-")
                .tempdir()
                .map_err(|e| Error::io("creating a scratch directory for criu's log", e))?;
            self.c.images = Some(Dir::Path(dir.path().to_path_buf()));
            Some(dir)
        } else {
            None
        };
        let mut p = self
            .c
            .prepare(RequestKind::Check, LogDefault::File("check.log"))?;
        p.scratch = scratch;
        Ok(p)
    }
}

/// Options of `cpuinfo dump` (saving this machine's CPU description into
/// `cpuinfo.img`) and `cpuinfo check` (comparing it with this machine): the images
/// directory holding `cpuinfo.img`, and for the check, which features must match.
#[derive(Debug, Default)]
#[must_use = "options do nothing until a request takes them"]
pub struct CpuinfoOptions {
    c: Common,
}

impl CpuinfoOptions {
    /// Defaults; set the images directory. criu logs to `cpuinfo.log` there.
    pub fn new() -> Self {
        Self::default()
    }

    base_setters!();

    /// For `cpuinfo check`: which CPU features must match (criu's `--cpu-cap` bit
    /// mask; criu's default checks them all).
    pub fn cpu_cap(mut self, mask: u32) -> Self {
        self.c.opts.cpu_cap = Some(mask);
        self
    }

    pub(crate) fn prepare(self, kind: RequestKind) -> Result<Prepared> {
        self.c.prepare(kind, LogDefault::File("cpuinfo.log"))
    }
}
