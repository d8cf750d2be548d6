//! Typed builders for the options of each request, one per file.
//!
//! Each builder starts from criu's own defaults, adds this crate's (criu logging to a
//! pipe this crate reads, at criu's log level 2; notifications on, for the rollback
//! points), and catches contradictions before criu is started. Every `criu_opts` field
//! without a typed setter is still reachable through `raw`. A builder becomes a
//! request plan (`plan.rs`) when the request starts.

use std::fs::File;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use crate::error::{Error, Result};

#[macro_use]
mod setters;
mod check;
mod dump;
mod page_server;
mod plan;
mod pre_dump;
mod restore;
#[cfg(test)]
mod tests;

pub use crate::modes::{CgroupMode, NetworkLock, PreDumpMode};
pub use check::{CheckOptions, CpuinfoOptions};
pub use dump::DumpOptions;
pub use page_server::PageServerOptions;
pub(crate) use plan::Prepared;
pub use pre_dump::PreDumpOptions;
pub use restore::RestoreOptions;

/// The log level this crate asks for unless told otherwise: criu's own default (2,
/// errors only), which is all a refusal's [`log_errors`](crate::Refusal::log_errors)
/// need. Level 4 (debug) tells more about a failure but costs about 8% of a small
/// dump's time (measured with `scripts/bench`).
pub const DEFAULT_LOG_LEVEL: u8 = 2;

/// An fd handed to criu: owned (moved in) or borrowed (duplicated on the spot).
///
/// Built with `From`: `OwnedFd`, `BorrowedFd`, `File`, `UnixStream`, `PipeReader`,
/// `PipeWriter`, `TcpStream` all convert. A failed duplication of a borrowed fd is
/// reported when the request starts.
#[derive(Debug)]
pub struct PassFd(io::Result<OwnedFd>);

impl PassFd {
    /// The fd's number here, unless duplicating it failed.
    pub(crate) fn raw(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.0.as_ref().ok().map(AsRawFd::as_raw_fd)
    }

    pub(crate) fn into_owned(self, what: &str) -> Result<OwnedFd> {
        self.0
            .map_err(|e| Error::io(format!("duplicating the fd for {what}"), e))
    }
}

impl From<OwnedFd> for PassFd {
    fn from(fd: OwnedFd) -> Self {
        PassFd(Ok(fd))
    }
}
impl From<BorrowedFd<'_>> for PassFd {
    fn from(fd: BorrowedFd<'_>) -> Self {
        PassFd(fd.try_clone_to_owned())
    }
}
macro_rules! pass_fd_from {
    ($($t:ty),*) => {$(
        impl From<$t> for PassFd {
            fn from(v: $t) -> Self { PassFd(Ok(OwnedFd::from(v))) }
        }
    )*};
}
pass_fd_from!(
    File,
    std::os::unix::net::UnixStream,
    std::net::TcpStream,
    std::io::PipeReader,
    std::io::PipeWriter
);
