//! Post-copy restore: a supervised `criu lazy-pages` daemon.
//!
//! criu has no RPC request for the lazy-pages daemon, so it is started as a child of
//! ours (found, fd-mapped and reaped like every criu this crate runs). It serves the
//! memory of a tree restored with [`RestoreOptions::lazy_pages`](crate::RestoreOptions)
//! page by page, from local images or from a remote page server (a dump with
//! `lazy_pages`), and exits once every page has been delivered.
//!
//! # Example
//! ```no_run
//! use criu_swrk::{Criu, RestoreOptions};
//! use criu_swrk::lazy::LazyPagesOptions;
//!
//! # async fn run() -> criu_swrk::Result<()> {
//! let criu = Criu::new();
//! let daemon = criu.lazy_pages(LazyPagesOptions::new("/var/lib/ckpt/4242")).await?;
//! let restored = criu
//!     .restore(RestoreOptions::new().images_dir("/var/lib/ckpt/4242").lazy_pages(true))
//!     .await?;
//! // The tree runs already; its memory arrives as it touches it (and in the background).
//! daemon.wait().await?;
//! # Ok(()) }
//! ```

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::error::{DaemonFailure, Error, Result};
use crate::spawn::{self, Supervised};

/// How long the daemon gets to say it is ready, by default.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Options of a lazy-pages daemon.
#[derive(Debug, Clone)]
#[must_use = "options do nothing until a request takes them"]
pub struct LazyPagesOptions {
    images_dir: PathBuf,
    work_dir: Option<PathBuf>,
    page_server: Option<(String, u16)>,
    log_file: String,
    log_level: u8,
    ready_timeout: Duration,
    tls: bool,
}

impl LazyPagesOptions {
    /// A daemon serving the images in `images_dir`; its socket and log go to the work
    /// directory (default: the images directory), which the lazy restore must share.
    pub fn new(images_dir: impl Into<PathBuf>) -> Self {
        LazyPagesOptions {
            images_dir: images_dir.into(),
            work_dir: None,
            page_server: None,
            log_file: "lazy-pages.log".into(),
            log_level: crate::options::DEFAULT_LOG_LEVEL,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            tls: false,
        }
    }

    /// The work directory (its `lazy-pages.socket` is where the restore connects).
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Fetch pages from a dump serving them lazily (`dump` with `lazy_pages` and
    /// `page_server(address, port)`) instead of from local pages images.
    pub fn page_server(mut self, address: impl Into<String>, port: u16) -> Self {
        self.page_server = Some((address.into(), port));
        self
    }

    /// The log file's name in the work directory (default `lazy-pages.log`).
    pub fn log_file(mut self, name: impl Into<String>) -> Self {
        self.log_file = name.into();
        self
    }

    /// criu's log level (default [`DEFAULT_LOG_LEVEL`](crate::DEFAULT_LOG_LEVEL), 2:
    /// errors and warnings).
    pub fn log_level(mut self, level: u8) -> Self {
        self.log_level = level;
        self
    }

    /// How long the daemon gets to become ready (default 30 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Use TLS towards the page server.
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    fn args(&self, status_fd: i32) -> Result<Vec<String>> {
        if self.log_file.contains('/') {
            return Err(Error::invalid(
                "log_file",
                format!("criu takes a bare file name, not '{}'", self.log_file),
            ));
        }
        for (option, dir) in [
            ("images_dir", Some(&self.images_dir)),
            ("work_dir", self.work_dir.as_ref()),
        ] {
            if let Some(dir) = dir
                && !dir.is_dir()
            {
                return Err(Error::invalid(
                    option,
                    format!("{} is not a directory", dir.display()),
                ));
            }
        }
        let mut args = vec![
            "lazy-pages".to_string(),
            "--images-dir".into(),
            self.images_dir.display().to_string(),
            "--work-dir".into(),
            self.effective_work_dir().display().to_string(),
            "--status-fd".into(),
            status_fd.to_string(),
            "--log-file".into(),
            self.log_file.clone(),
            format!("-v{}", self.log_level),
        ];
        if let Some((address, port)) = &self.page_server {
            args.extend([
                "--page-server".into(),
                "--address".into(),
                address.clone(),
                "--port".into(),
                port.to_string(),
            ]);
        }
        if self.tls {
            args.push("--tls".into());
        }
        Ok(args)
    }

    fn effective_work_dir(&self) -> &PathBuf {
        self.work_dir.as_ref().unwrap_or(&self.images_dir)
    }
}

/// A running lazy-pages daemon, ready to serve.
///
/// # Drop behavior
/// Dropping it kills the daemon (a lazily restored tree then faults on its missing
/// pages); [`wait`](Self::wait) for it to finish instead.
#[derive(Debug)]
pub struct LazyPages {
    child: Option<Supervised>,
    log: PathBuf,
}

impl crate::Criu {
    /// Starts a lazy-pages daemon and waits until it is ready to serve (criu's
    /// status fd).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] for missing directories or a bad log name;
    /// [`Error::Daemon`] when the daemon exits before it is ready
    /// ([`DaemonFailure::ExitedBeforeReady`]) or is not ready within
    /// [`ready_timeout`](LazyPagesOptions::ready_timeout) (it is killed then:
    /// [`DaemonFailure::NotReady`]), with its log's error lines;
    /// [`Error::NotFound`] / [`Error::Spawn`] when criu cannot be started.
    ///
    /// # Cancel safety
    /// Dropping the future kills and reaps the daemon.
    pub async fn lazy_pages(&self, opts: LazyPagesOptions) -> Result<LazyPages> {
        let (status_rx, status_tx) =
            std::io::pipe().map_err(|e| Error::io("creating the status pipe", e))?;
        // criu writes one byte to its status fd (our pipe, its fd 3) once it listens.
        let args = opts.args(spawn::SOCKET_FD)?;
        let child = self.spawn(&args, vec![status_tx.into()])?;
        let log = opts.effective_work_dir().join(&opts.log_file);
        let mut daemon = LazyPages {
            child: Some(child),
            log,
        };
        let mut rx = tokio::net::unix::pipe::Receiver::from_owned_fd(status_rx.into())
            .map_err(|e| Error::io("watching the status pipe", e))?;
        let mut byte = [0u8; 1];
        match tokio::time::timeout(opts.ready_timeout, rx.read(&mut byte)).await {
            Ok(Ok(1)) => Ok(daemon),
            Ok(_) => {
                // End of file: the daemon exited without becoming ready.
                let status = daemon.take().wait().await;
                Err(daemon.failure(DaemonFailure::ExitedBeforeReady(status)))
            }
            Err(_) => {
                daemon.take().finish(Duration::ZERO).await;
                Err(daemon.failure(DaemonFailure::NotReady(opts.ready_timeout)))
            }
        }
    }
}

impl LazyPages {
    fn take(&mut self) -> Supervised {
        self.child
            .take()
            .expect("the daemon is supervised until consumed")
    }

    /// The daemon's pid.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().and_then(Supervised::pid)
    }

    /// The daemon's log.
    pub fn log(&self) -> &std::path::Path {
        &self.log
    }

    /// Waits until the daemon has delivered every page and exited; reaps it.
    ///
    /// # Errors
    /// [`Error::Daemon`] ([`DaemonFailure::Failed`]) when it exits with a failure, with
    /// its log's error lines.
    ///
    /// # Cancel safety
    /// Dropping the future kills the daemon (see the type's drop behavior).
    pub async fn wait(mut self) -> Result<ExitStatus> {
        let status = self.take().wait().await;
        match status {
            Some(s) if s.success() => Ok(s),
            other => Err(self.failure(DaemonFailure::Failed(other))),
        }
    }

    /// Kills the daemon and reaps it; its exit status, when it could be collected
    /// within 5 s.
    ///
    /// # Errors
    /// None: the status is `None` when the daemon could not be reaped in time (it is
    /// then reaped in the background).
    ///
    /// # Cancel safety
    /// Cancel safe: the daemon is killed before the first await; dropping the future
    /// leaves its reaping to the background.
    pub async fn kill(mut self) -> Option<ExitStatus> {
        let mut child = self.take();
        child.kill();
        child.finish(Duration::from_secs(5)).await
    }

    fn failure(&self, failure: DaemonFailure) -> Error {
        Error::Daemon {
            daemon: "lazy-pages",
            failure,
            log_path: Some(self.log.clone()),
            log_errors: crate::log::error_lines_of_file(&self.log),
        }
    }
}

impl Drop for LazyPages {
    fn drop(&mut self) {
        // Killed here; the orphan reaper reaps it.
        if let Some(mut child) = self.child.take() {
            child.kill();
        }
    }
}
