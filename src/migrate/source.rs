//! The source: dumps the tree into the destination and lets it go only once it runs
//! there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::dest::failed;
use super::precopy::PreCopyPolicy;
use super::progress::{Progress, tell};
use super::wire::{self, Msg};
use super::{DEFAULT_DEADLINE, Link, Security, insecure_allowed, rounds, tls, tunnel};
use crate::criu::Criu;
use crate::error::{Error, RequestState, Result, Side, chain};
use crate::notify::{Hooks, Notification, Reply};
use crate::options::{CpuinfoOptions, DumpOptions, NetworkLock};

/// One migration of the tree rooted at `pid` to a [`Destination`](super::Destination).
///
/// # Example
/// See the [module](super) docs.
#[derive(Debug, Clone)]
#[must_use = "a migration does nothing until `run`"]
pub struct Migration {
    pid: i32,
    to: SocketAddr,
    server_name: Option<String>,
    security: Security,
    id: Option<String>,
    tcp_established: bool,
    shell_job: bool,
    file_locks: bool,
    ext_unix_sk: bool,
    network_lock: Option<NetworkLock>,
    deadline: Duration,
    work_dir: Option<PathBuf>,
    lazy: bool,
    pre_copy: Option<PreCopyPolicy>,
    container: Option<crate::oci::Container>,
    progress: Option<mpsc::UnboundedSender<Progress>>,
}

/// A tree that moved.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Migrated {
    /// The restored root's pid on the destination.
    pub pid: i32,
    /// From the tree's freeze on the source (criu's `pre-dump` hook) to its restore
    /// on the destination being reported.
    pub downtime: Duration,
    /// The whole migration, connection to commit.
    pub total: Duration,
    /// Each phase's time, in order.
    pub phases: Phases,
    /// The dump's memory: pages sent to the destination's page server, or served to
    /// its lazy-pages daemon.
    pub pages_bytes: u64,
    /// The other image files, sent on the control connection.
    pub file_bytes: u64,
}

/// How long each phase of a migration took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Phases {
    /// Connecting and the TLS handshake.
    pub connect: Duration,
    /// The plan, until the destination's page server listened.
    pub plan: Duration,
    /// The dump, from its request to `post-dump` (memory sent to the page server).
    pub dump: Duration,
    /// The other image files, sent and checked.
    pub transfer: Duration,
    /// The destination's restore, until reported.
    pub restore: Duration,
    /// Post-copy: from the tree running on the destination to its last page there.
    pub pages: Duration,
    /// The dump's end here (the source tree ended), after the restore (stop-and-copy)
    /// or the last page (post-copy).
    pub commit: Duration,
}

impl Migration {
    /// A migration of `pid`'s tree to the destination listening at `to`.
    pub fn new(pid: i32, to: SocketAddr, security: Security) -> Self {
        Migration {
            pid,
            to,
            server_name: None,
            security,
            id: None,
            tcp_established: false,
            shell_job: false,
            file_locks: false,
            ext_unix_sk: false,
            network_lock: None,
            deadline: DEFAULT_DEADLINE,
            work_dir: None,
            lazy: false,
            pre_copy: None,
            container: None,
            progress: None,
        }
    }

    /// Pre-copy: before the final dump, copy the memory in rounds of pre-dumps while
    /// the tree runs, until `policy` says stop ([`PreCopyPolicy`]: P.Haul's rule),
    /// so that the final dump, while the tree is frozen, sends only what the last
    /// round left dirty. Each round goes to a page server the destination starts
    /// for it; the final dump's images name the last round as their parent.
    ///
    /// Needs the kernel to track dirty memory (soft-dirty bits): without it the
    /// migration is refused with [`Error::Unsupported`] before anything is
    /// connected or frozen. Not with [`lazy`](Self::lazy).
    pub fn pre_copy(mut self, policy: PreCopyPolicy) -> Self {
        self.pre_copy = Some(policy);
        self
    }

    /// Moves an OCI container (its init is the migration's pid): dumped with the
    /// options its bundle calls for ([`Container::dump_options`](crate::oci::Container::dump_options)),
    /// restored on the destination from the same bundle path
    /// ([`ContainerRestore`](crate::oci::ContainerRestore)), which must hold the
    /// same bundle there.
    pub fn container(mut self, container: crate::oci::Container) -> Self {
        self.pid = container.pid();
        self.container = Some(container);
        self
    }

    /// Sends each step of the migration to `tx` as it is reached, for a progress
    /// display; a closed receiver is ignored.
    ///
    /// # Example
    /// ```no_run
    /// # use criu_swrk::migrate::{Migration, Progress, Security};
    /// # async fn run(m: Migration) {
    /// let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    /// let shown = tokio::spawn(async move {
    ///     while let Some(step) = rx.recv().await {
    ///         eprintln!("{step:?}");
    ///     }
    /// });
    /// let moved = m.progress(tx).run(&criu_swrk::Criu::new()).await;
    /// # }
    /// ```
    pub fn progress(mut self, tx: mpsc::UnboundedSender<Progress>) -> Self {
        self.progress = Some(tx);
        self
    }

    /// Post-copy: the tree runs on the destination before its memory has arrived;
    /// the pages follow from the source's criu, on demand and in the background,
    /// inside the control connection. Downtime no longer grows with the tree's
    /// memory.
    ///
    /// The source tree stays frozen until the destination has every page. If the
    /// transfer fails after the tree ran on the destination, the destination kills
    /// its copy and the source tree resumes as it was frozen: what the copy did in
    /// between is lost (its outside effects, such as answers it sent, are not undone).
    ///
    /// Needs `fs.pipe-max-size` of at least 4 MiB on the source (criu's page pipe)
    /// unless criu has CAP_SYS_RESOURCE; refused before anything is frozen otherwise.
    pub fn lazy(mut self, on: bool) -> Self {
        self.lazy = on;
        self
    }

    /// The name the destination's certificate carries (default: `to`'s address).
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The migration's name: its directory on the destination (default
    /// `<hostname>-<pid>-<time>`).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Move established TCP connections (criu's `tcp_established`).
    pub fn tcp_established(mut self, on: bool) -> Self {
        self.tcp_established = on;
        self
    }

    /// The tree is a shell job (criu's `shell_job`).
    pub fn shell_job(mut self, on: bool) -> Self {
        self.shell_job = on;
        self
    }

    /// Move file locks (criu's `file_locks`).
    pub fn file_locks(mut self, on: bool) -> Self {
        self.file_locks = on;
        self
    }

    /// Move external unix sockets (criu's `ext_unix_sk`).
    pub fn ext_unix_sk(mut self, on: bool) -> Self {
        self.ext_unix_sk = on;
        self
    }

    /// How the source's network is locked while the tree is frozen.
    pub fn network_lock(mut self, lock: NetworkLock) -> Self {
        self.network_lock = Some(lock);
        self
    }

    /// The longest the migration may take (default [`DEFAULT_DEADLINE`]): past it,
    /// the source tree resumes where it was.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Where the source writes the images that are not pages, before sending them
    /// (default: a temporary directory, removed afterwards).
    pub fn work_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.work_dir = Some(dir.into());
        self
    }

    /// Moves the tree: see the [module](super) docs for the steps.
    ///
    /// # Errors
    /// [`Error::Migration`] naming the side that failed and why; its `source_tree`
    /// says what became of the tree here: [`RequestState::Untouched`] when it was
    /// never frozen (the destination refused, the link failed first),
    /// [`RequestState::RolledBack`] when criu resumed it at `post-dump`. Options
    /// criu rejects are [`Error::InvalidOptions`], as for a dump.
    ///
    /// # Cancel safety
    /// Dropping the future before `post-dump` was answered rolls the dump back as
    /// any dropped dump does (the tree runs on here) and drops the connection (the
    /// destination removes what it received). Dropped after the destination reported
    /// the restore, the dump commits: the tree runs on the destination.
    pub async fn run(self, criu: &Criu) -> Result<Migrated> {
        let span = tracing::info_span!("migrate", pid = self.pid, to = %self.to);
        tracing::Instrument::instrument(self.run_inner(criu), span).await
    }

    async fn run_inner(self, criu: &Criu) -> Result<Migrated> {
        let started = Instant::now();
        if self.lazy {
            crate::preflight::lazy_dump()?;
        }
        if self.pre_copy.is_some() {
            if self.lazy {
                return Err(Error::InvalidOptions {
                    option: "pre_copy",
                    reason: "pre-copy and post-copy do not go together: pick one".into(),
                });
            }
            let features = criu
                .features()
                .await
                .map_err(|e| failed(Side::Source, format!("criu here: {}", chain(&e))))?;
            super::precopy::check_memory_tracking(&features)?;
        }
        let host = self.to.ip();
        let scratch;
        let images = match &self.work_dir {
            Some(d) => d.clone(),
            None => {
                scratch = tempfile::Builder::new()
                    .prefix("criu-swrk-migrate.")
                    .tempdir()
                    .map_err(|e| Error::io("making the source's images directory", e))?;
                scratch.path().to_owned()
            }
        };
        let mut link = self.connect().await?;
        let connected = Instant::now();
        tracing::info!(took = ?connected - started, "connected");
        let version = criu
            .version()
            .await
            .map_err(|e| failed(Side::Source, format!("criu here: {}", chain(&e))))?;
        // The destination checks this CPU description against its own.
        let cpu_dir = images.join(".cpuinfo");
        std::fs::create_dir_all(&cpu_dir)
            .map_err(|e| Error::io("making the cpuinfo directory", e))?;
        criu.cpuinfo_dump(CpuinfoOptions::new().images_dir(&cpu_dir))
            .await
            .map_err(|e| failed(Side::Source, format!("cpuinfo dump: {}", chain(&e))))?;
        let id = self.id.clone().unwrap_or_else(|| default_id(self.pid));
        let memory_bytes = crate::fleet::size::tree_rss(self.pid);
        let lost = |e: std::io::Error| failed(Side::Link, format!("the control connection: {e}"));
        wire::send(
            &mut link,
            &Msg::Hello {
                protocol: wire::PROTOCOL,
                id,
                criu: format!("{}.{}.{}", version.major, version.minor, version.sublevel),
                tcp_established: self.tcp_established,
                shell_job: self.shell_job,
                file_locks: self.file_locks,
                ext_unix_sk: self.ext_unix_sk,
                lazy: self.lazy,
                memory_bytes,
                pre_copy: self.pre_copy.is_some(),
                bundle: self.container.as_ref().map(|c| c.bundle().to_owned()),
            },
        )
        .await
        .map_err(lost)?;
        wire::send_file(&mut link, "cpuinfo.img", &cpu_dir.join("cpuinfo.img"))
            .await
            .map_err(lost)?;
        let _ = std::fs::remove_dir_all(&cpu_dir);
        let port = match tokio::time::timeout(self.left(started), wire::recv(&mut link)).await {
            Err(_) => return Err(failed(Side::Destination, "no answer to the plan".into())),
            Ok(Err(e)) => return Err(lost(e)),
            Ok(Ok(Msg::Ready { page_server_port })) => page_server_port,
            Ok(Ok(Msg::Failed { reason })) => return Err(failed(Side::Destination, reason)),
            Ok(Ok(other)) => {
                return Err(failed(
                    Side::Destination,
                    format!("expected ready, got {other:?}"),
                ));
            }
        };

        tell(&self.progress, Progress::Ready);
        let mut pre_copied = None;
        let mut port = port;
        if let Some(policy) = &self.pre_copy {
            let deadline = started + self.left(started);
            let (lp, report, final_port, parent) = rounds::send(
                criu,
                &mut link,
                policy,
                self.pid,
                host,
                &images,
                &self.security,
                deadline,
            )
            .await?;
            tracing::info!(rounds = report.rounds.len(), stop = %report.stop, "pre-copied");
            port = final_port;
            pre_copied = Some((lp, parent));
        }
        let planned = Instant::now();
        tracing::info!(port, took = ?planned - connected, "the destination is ready");
        let base = match &self.container {
            Some(c) => c.dump_options()?,
            None => DumpOptions::new(self.pid),
        };
        let mut opts = base
            .images_dir(&images)
            .tcp_established(self.tcp_established)
            .shell_job(self.shell_job)
            .file_locks(self.file_locks)
            .ext_unix_sk(self.ext_unix_sk)
            .timeout(self.left(started));
        // Post-copy: criu serves the pages on our loopback once post-dump is
        // answered; we relay them (tunnel.rs).
        let lazy_port = if self.lazy {
            Some(tunnel::free_lazy_port()?)
        } else {
            None
        };
        match lazy_port {
            Some(p) => opts = opts.lazy_pages(true).page_server("127.0.0.1", p),
            None => {
                opts = opts.page_server(host.to_string(), port);
                if let Security::Tls(f) = &self.security {
                    opts = opts
                        .tls(true)
                        .tls_cacert(f.ca.display().to_string())
                        .tls_cert(f.cert.display().to_string())
                        .tls_key(f.key.display().to_string());
                }
            }
        }
        if let Some(lock) = self.network_lock {
            opts = opts.network_lock(lock);
        }
        let pre_loop = match pre_copied {
            Some((lp, parent)) => {
                opts = opts.parent_images(parent);
                Some(lp)
            }
            None => None,
        };
        let deadline = started + self.left(started);
        let (handed_tx, handed_rx) = oneshot::channel();
        let mut hand = Handover {
            link: Some(link),
            lazy: lazy_port.map(|_| handed_tx),
            images: images.clone(),
            deadline,
            frozen_at: None,
            post_dump_at: None,
            sent_at: None,
            restored: None,
            failure: None,
            file_bytes: 0,
            memory_bytes,
            progress: self.progress.clone(),
        };
        let relay = async {
            let port = lazy_port?;
            match handed_rx.await {
                // The dump never reached post-dump: criu serves nothing.
                Err(_) => None,
                // Refused at post-dump: criu serves anyway, to nobody; end its
                // session so that it resumes the tree.
                Ok(tunnel::Handed::Refused) => {
                    if let Err((_, why)) = tunnel::release(port, deadline).await {
                        tracing::warn!(reason = %why, "criu's lazy page server");
                    }
                    None
                }
                Ok(tunnel::Handed::Go(mut link)) => {
                    tracing::debug!(port, "post-dump answered: relaying criu's pages");
                    let served =
                        tunnel::serve_lazily(&mut link, port, deadline, self.progress.as_ref())
                            .await;
                    Some((link, served))
                }
            }
        };
        let dump = async {
            match pre_loop {
                Some(lp) => lp.dump_with(opts, &mut hand).await,
                None => criu.dump_with(opts, &mut hand).await,
            }
        };
        let (dumped, relayed) = tokio::join!(dump, relay);
        let ended = Instant::now();
        let mut lazy_result = None;
        if let Some((link, served)) = relayed {
            hand.link = Some(link);
            match served {
                Ok(r) => lazy_result = Some(r),
                Err(f) => hand.failure = Some(f),
            }
        }
        let mut link = hand.link.take().expect("the link is back");
        let restored = match (&lazy_result, hand.restored) {
            (Some((pid, at, _)), _) => Some((*pid, *at)),
            (None, r) if lazy_port.is_none() => r,
            _ => None,
        };
        match (dumped, restored) {
            (Ok(out), Some((pid, at))) => {
                // The tree is gone here: say so, so that the destination keeps it.
                let _ = wire::send_last(&mut link, &Msg::Commit).await;
                let pages_bytes = match &lazy_result {
                    Some((_, _, bytes)) => *bytes,
                    None => out
                        .stats
                        .as_ref()
                        .map_or(0, |s| s.pages_written * crate::info::page_size()),
                };
                let post_dump = hand.post_dump_at.unwrap_or(at);
                let sent = hand.sent_at.unwrap_or(at);
                let (pages, commit) = if lazy_result.is_some() {
                    (ended - at, Duration::ZERO)
                } else {
                    (Duration::ZERO, ended - at)
                };
                let phases = Phases {
                    connect: connected - started,
                    plan: planned - connected,
                    dump: post_dump - planned,
                    transfer: sent - post_dump,
                    restore: at - sent,
                    pages,
                    commit,
                };
                tracing::info!(restored = pid, ?phases, "migrated");
                if lazy_result.is_some() {
                    tell(&self.progress, Progress::Restored { pid });
                }
                Ok(Migrated {
                    pid,
                    downtime: hand.frozen_at.map_or(Duration::ZERO, |f| at - f),
                    total: started.elapsed(),
                    phases,
                    pages_bytes,
                    file_bytes: hand.file_bytes,
                })
            }
            (Ok(_), None) => {
                let (side, reason) = hand.failure.unwrap_or((
                    Side::Source,
                    "criu finished the dump without reaching post-dump".into(),
                ));
                let _ = wire::send_last(
                    &mut link,
                    &Msg::Abort {
                        reason: reason.clone(),
                    },
                )
                .await;
                // criu said the dump succeeded: the tree is gone here.
                Err(Error::Migration {
                    failed: side,
                    reason,
                    source_tree: RequestState::Committed,
                })
            }
            (Err(e), _) => {
                let reason = match &hand.failure {
                    Some((_, why)) => why.clone(),
                    None => chain(&e),
                };
                let _ = wire::send_last(
                    &mut link,
                    &Msg::Abort {
                        reason: reason.clone(),
                    },
                )
                .await;
                Err(Error::Migration {
                    failed: hand.failure.map_or(Side::Source, |(side, _)| side),
                    reason,
                    source_tree: e.request_state().unwrap_or(RequestState::Unknown),
                })
            }
        }
    }

    fn left(&self, started: Instant) -> Duration {
        self.deadline.saturating_sub(started.elapsed())
    }

    async fn connect(&self) -> Result<Box<dyn Link>> {
        if self.security == Security::Insecure && !insecure_allowed(self.to.ip()) {
            return Err(failed(
                Side::Source,
                format!(
                    "plain TCP is refused to {} (loopback and RFC 5737 only)",
                    self.to
                ),
            ));
        }
        let tcp = tokio::time::timeout(self.deadline, TcpStream::connect(self.to))
            .await
            .map_err(|_| failed(Side::Link, format!("connecting to {}: timed out", self.to)))?
            .map_err(|e| failed(Side::Link, format!("connecting to {}: {e}", self.to)))?;
        // Post-copy's page requests ride this connection and wait on each other.
        let _ = tcp.set_nodelay(true);
        match &self.security {
            Security::Insecure => Ok(Box::new(tcp)),
            Security::Tls(files) => {
                let name = tls::server_name(
                    &self
                        .server_name
                        .clone()
                        .unwrap_or_else(|| self.to.ip().to_string()),
                )?;
                let tls = tokio::time::timeout(self.deadline, files.client()?.connect(name, tcp))
                    .await
                    .map_err(|_| failed(Side::Link, "TLS: no handshake".into()))?
                    .map_err(|e| failed(Side::Link, format!("TLS with {}: {e}", self.to)))?;
                Ok(Box::new(tls))
            }
        }
    }
}

/// The dump's hooks: at `post-dump`, the files go over and the destination restores;
/// the answer to criu is the destination's.
struct Handover {
    /// Lent to the page relay once a post-copy's post-dump is answered.
    link: Option<Box<dyn Link>>,
    /// Post-copy: where the link goes at post-dump.
    lazy: Option<oneshot::Sender<tunnel::Handed>>,
    images: PathBuf,
    deadline: Instant,
    frozen_at: Option<Instant>,
    post_dump_at: Option<Instant>,
    sent_at: Option<Instant>,
    restored: Option<(i32, Instant)>,
    failure: Option<(Side, String)>,
    file_bytes: u64,
    memory_bytes: u64,
    progress: Option<mpsc::UnboundedSender<Progress>>,
}

impl Handover {
    async fn hand_over(&mut self) -> std::result::Result<i32, (Side, String)> {
        self.post_dump_at = Some(Instant::now());
        tell(&self.progress, Progress::Dumped);
        let lazy = self.lazy.is_some();
        let link = self
            .link
            .as_mut()
            .expect("the link is here until post-dump");
        let link_err = |e: std::io::Error| (Side::Link, format!("the control connection: {e}"));
        let mut names: Vec<String> = std::fs::read_dir(&self.images)
            .map_err(|e| {
                (
                    Side::Source,
                    format!("reading {}: {e}", self.images.display()),
                )
            })?
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for name in names {
            self.file_bytes += wire::send_file(link, &name, &self.images.join(&name))
                .await
                .map_err(link_err)?;
        }
        wire::send(link, &Msg::Restore).await.map_err(link_err)?;
        self.sent_at = Some(Instant::now());
        tracing::info!(
            bytes = self.file_bytes,
            "image files sent; the destination restores"
        );
        let left = self.deadline.saturating_duration_since(Instant::now());
        let sent = Progress::Sent {
            file_bytes: self.file_bytes,
        };
        match tokio::time::timeout(left, wire::recv(link)).await {
            Err(_) => Err((Side::Destination, "no restore within the deadline".into())),
            Ok(Err(e)) => Err(link_err(e)),
            Ok(Ok(Msg::Restored { pid })) if !lazy => {
                tell(&self.progress, sent);
                tell(&self.progress, Progress::Restored { pid });
                Ok(pid)
            }
            // Post-copy: the restore starts once criu serves the pages.
            Ok(Ok(Msg::Checked)) if lazy => {
                tell(&self.progress, sent);
                Ok(0)
            }
            Ok(Ok(Msg::Failed { reason })) => Err((Side::Destination, reason)),
            Ok(Ok(other)) => Err((
                Side::Destination,
                format!("expected restored, got {other:?}"),
            )),
        }
    }
}

impl Hooks for Handover {
    async fn on_notify(&mut self, n: Notification) -> Reply {
        match n {
            Notification::PreDump => {
                self.frozen_at = Some(Instant::now());
                tell(
                    &self.progress,
                    Progress::Frozen {
                        memory_bytes: self.memory_bytes,
                    },
                );
                Reply::ok()
            }
            Notification::PostDump => match self.hand_over().await {
                Ok(pid) => {
                    self.restored = Some((pid, Instant::now()));
                    if let Some(tx) = self.lazy.take() {
                        let link = self.link.take().expect("the link is here");
                        let _ = tx.send(tunnel::Handed::Go(link));
                    }
                    Reply::ok()
                }
                Err((side, why)) => {
                    tracing::warn!(%side, reason = %why, "migration failed: the tree resumes here");
                    if let Some(tx) = self.lazy.take() {
                        let _ = tx.send(tunnel::Handed::Refused);
                    }
                    let reply = Reply::fail(why.clone());
                    self.failure = Some((side, why));
                    reply
                }
            },
            _ => Reply::ok(),
        }
    }
}

fn default_id(pid: i32) -> String {
    let host = nix::sys::utsname::uname()
        .ok()
        .and_then(|u| u.nodename().to_str().map(str::to_owned))
        .filter(|h| wire::is_plain_name(h) && !h.starts_with('.'))
        .unwrap_or_else(|| "host".into());
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{host}-{pid}-{secs}")
}
