//! [`PageServerOptions`]: a page server receiving a dump's memory.

use std::path::PathBuf;
use std::time::Duration;

use super::PassFd;
use super::plan::{Common, Dir, LogDefault, Prepared};
use crate::error::Result;
use crate::kind::RequestKind;
use crate::proto::{CriuOpts, CriuPageServerInfo};
use tokio_util::sync::CancellationToken;

/// Options of a page server (`criu page-server`): it receives the memory pages of a
/// dump sent with [`DumpOptions::page_server`](crate::DumpOptions::page_server) and writes them into its images
/// directory.
///
/// # Example
/// ```
/// use criu_swrk::PageServerOptions;
///
/// // Listen on loopback; port 0 lets criu pick one (reported back).
/// let opts = PageServerOptions::new()
///     .images_dir("/var/lib/ckpt/incoming")
///     .address("127.0.0.1")
///     .port(0);
/// # let _ = opts;
/// ```
#[derive(Debug, Default)]
#[must_use = "options do nothing until a request takes them"]
pub struct PageServerOptions {
    c: Common,
}

impl PageServerOptions {
    /// Defaults: criu's (all addresses, port 0 = any free port).
    pub fn new() -> Self {
        Self::default()
    }

    base_setters!();

    /// The address to listen on (criu's default: every address).
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.c.opts.ps.get_or_insert_with(Default::default).address = Some(address.into());
        self
    }

    /// The port to listen on; 0 (the default) lets criu pick a free one.
    pub fn port(mut self, port: u16) -> Self {
        self.c.opts.ps.get_or_insert_with(Default::default).port = Some(i32::from(port));
        self
    }

    /// Serve over this already connected socket instead of listening (passed to
    /// criu's fd table).
    pub fn socket_fd(mut self, fd: impl Into<PassFd>) -> Self {
        self.c
            .opts
            .ps
            .get_or_insert_with(CriuPageServerInfo::default);
        self.c.page_server_fd = Some(fd.into());
        self
    }

    /// The images of the previous pre-dump iteration this server received, relative
    /// to its images directory (e.g. `../1`): criu links them as the parent, so that
    /// the iteration's pages images only hold what changed (criu's `--prev-images-dir`
    /// on `page-server`). Needed to receive a pre-dump loop on another host.
    pub fn parent_images(mut self, rel: impl Into<String>) -> Self {
        self.c.opts.parent_img = Some(rel.into());
        self
    }

    tls_setters!();

    flag!(
        /// Serve the memory of the dump in the images directory to a remote
        /// `lazy-pages` daemon, page by page as it asks (criu's `page-server
        /// --lazy-pages`), instead of receiving pages.
        lazy_pages
    );

    pub(crate) fn prepare(mut self, kind: RequestKind) -> Result<Prepared> {
        // criu reads `ps` to decide it is a page server at all.
        let ps = self.c.opts.ps.get_or_insert_with(Default::default);
        ps.port.get_or_insert(0);
        // A daemon outlives us: its log must not be a pipe we close.
        let mut p = self.c.prepare(kind, LogDefault::File("page-server.log"))?;
        if kind == RequestKind::PageServerChild {
            // The child's status-ready would race criu itself for our answer on the
            // shared socket (criu reads its next request meanwhile).
            p.opts.notify_scripts = Some(false);
        }
        Ok(p)
    }
}
