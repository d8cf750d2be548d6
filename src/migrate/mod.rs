//! Live migration between hosts: a running tree is dumped on the source, restored on
//! the destination, and only then let go on the source. Stop-and-copy by default;
//! post-copy with [`Migration::lazy`].
//!
//! Two sides, one control connection per migration (mutual TLS, [`TlsFiles`]):
//!
//! 1. the source ([`Migration::run`]) connects to the destination
//!    ([`Destination::accept`]) and says what it moves; the destination checks its
//!    criu, makes the images directory and starts a page server (criu's own TLS, from
//!    the same files) and says where;
//! 2. the source dumps the tree, its memory going to that page server (no pages
//!    written on the source); criu stops at `post-dump` with every page sent;
//! 3. there the source sends the other image files, each with its size and SHA-256;
//!    the destination checks them, waits for its page server to finish, restores the
//!    tree and says so;
//! 4. only then does the source answer `post-dump` with success: criu ends the
//!    source tree and the dump commits. If anything before failed (a refused
//!    certificate, a file that does not match, a restore that fails, a destination
//!    that dies or goes silent past the deadline, a link that breaks), the source
//!    answers `post-dump` with failure and the tree resumes where it was, intact:
//!    [`Error::Migration`](crate::Error::Migration) says which side failed and why.
//!
//! Before anything is frozen the destination checks its criu against the source's,
//! the source's CPU description (criu's `cpuinfo check`) and, unless post-copy, its
//! free space against the tree's resident memory.
//!
//! **Post-copy** ([`Migration::lazy`]): the dump leaves the memory in the frozen
//! source tree; the destination restores at once under a lazy-pages daemon, and the
//! tree runs there while its pages follow, on demand and in the background, relayed
//! inside the control connection. The downtime no longer grows with the memory. The
//! source tree ends only once every page has arrived and the daemon exited well; if
//! the transfer fails before (a link cut, a destination gone, a daemon failing), the
//! destination kills its copy and criu resumes the source tree as it was frozen.
//! What the copy did meanwhile is lost, and its effects outside (answers it sent)
//! are not undone.
//!
//! **Pre-copy** ([`Migration::pre_copy`]) needs the kernel to track dirty memory:
//! rounds of pre-dumps while the tree runs, each into a page server the destination
//! starts for it (`ID/<n>`, its parent `../<n - 1>`), until P.Haul's rule
//! ([`PreCopyPolicy`]) stops them; then the final dump into `ID`, its parent the last
//! round. [`pre_copy`] runs such rounds on one criu wherever they go. Where the
//! kernel lacks soft-dirty bits both are refused with
//! [`Error::Unsupported`](crate::Error::Unsupported) before anything is frozen.
//!
//! Plain TCP ([`Security::Insecure`]) is accepted only on loopback and on the
//! documentation ranges of RFC 5737 (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24),
//! which test setups use.
//!
//! A commit message from the source that never reaches the destination leaves the
//! restored tree running there, reported with [`Arrival::confirmed`] false.
//!
//! # Example
//! ```no_run
//! use criu_swrk::Criu;
//! use criu_swrk::migrate::{Destination, Migration, Security, TlsFiles};
//!
//! # async fn run() -> criu_swrk::Result<()> {
//! let tls = TlsFiles {
//!     ca: "/etc/criu-swrk/ca.pem".into(),
//!     cert: "/etc/criu-swrk/source.pem".into(),
//!     key: "/etc/criu-swrk/source.key".into(),
//! };
//! let moved = Migration::new(4242, "10.0.0.2:7070".parse().unwrap(), Security::Tls(tls))
//!     .tcp_established(true)
//!     .run(&Criu::new())
//!     .await?;
//! println!("runs on the destination as pid {}, {:?} frozen", moved.pid, moved.downtime);
//! # Ok(()) }
//! ```

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

mod dest;
mod precopy;
mod progress;
mod restore;
mod rounds;
mod source;
mod tls;
mod tunnel;
mod wire;

pub use dest::{Arrival, Destination};
pub use precopy::{
    PreCopyPolicy, PreCopyReport, RoundStats, Step, StopReason, check_memory_tracking, pre_copy,
};
pub use progress::Progress;
pub use source::{Migrated, Migration, Phases};
pub use tls::TlsFiles;

/// How the control connection (and criu's page-server connection) is protected.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Security {
    /// Mutual TLS from these files; criu's page server and dump use them too.
    Tls(TlsFiles),
    /// Plain TCP, for loopback and RFC 5737 test addresses only.
    Insecure,
}

/// How long a side waits for the other by default, and the longest a migration may
/// take end to end before it is abandoned (the source tree then resumes).
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);

/// Whether plain TCP may be used to or from `ip`.
pub(crate) fn insecure_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || (o[0], o[1], o[2]) == (192, 0, 2)
                || (o[0], o[1], o[2]) == (198, 51, 100)
                || (o[0], o[1], o[2]) == (203, 0, 113)
        }
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

/// A connection either side reads and writes: TLS or, where allowed, plain TCP.
pub(crate) trait Link: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Link for T {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tcp_only_on_loopback_and_test_addresses() {
        for ok in [
            "127.0.0.1",
            "::1",
            "192.0.2.7",
            "198.51.100.1",
            "203.0.113.9",
        ] {
            assert!(insecure_allowed(ok.parse().unwrap()), "{ok}");
        }
        for no in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "fe80::1"] {
            assert!(!insecure_allowed(no.parse().unwrap()), "{no}");
        }
    }
}
