//! [`Criu`]: which criu to run and how, and one-call requests that start a criu each.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::kind::RequestKind;
use std::time::Duration;

use crate::error::Result;
use crate::info::{Features, Version};
use crate::notify::{Hooks, NoHooks};
use crate::options::{
    CheckOptions, CpuinfoOptions, DumpOptions, PageServerOptions, PreDumpOptions, Prepared,
    RestoreOptions,
};
use crate::outcome::{DumpOutcome, PageServer, PreDumpOutcome, RestoreOutcome};
use crate::pool::{Pool, Ready};
use crate::session::{DEFAULT_GRACE, PreDumpLoop, Session};
use crate::spawn;

/// The entry point: which criu binary to run, with which limits.
///
/// Cheap to clone; holds no process. Each request method starts its own `criu swrk`
/// (about 5 ms) and reaps it before returning, so many requests may run concurrently
/// from one process. Use [`session`](Self::session) to ask several questions of one
/// criu process.
///
/// All methods need a Tokio runtime with its `net` and `time` drivers enabled.
///
/// # Example
/// ```no_run
/// use criu_swrk::{Criu, DumpOptions, RestoreOptions};
///
/// # async fn run() -> criu_swrk::Result<()> {
/// let criu = Criu::new();
/// println!("criu {}", criu.version().await?);
///
/// let dumped = criu
///     .dump(DumpOptions::new(4242).images_dir("/var/lib/ckpt/4242"))
///     .await?;
/// println!("frozen for {:?}", dumped.stats?.frozen_time);
///
/// let restored = criu
///     .restore(RestoreOptions::new().images_dir("/var/lib/ckpt/4242"))
///     .await?;
/// println!("restored as pid {}", restored.pid);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a Criu does nothing until a request is made"]
pub struct Criu {
    path: Option<PathBuf>,
    /// Where the search found criu, shared by clones: a fleet spawns criu per target
    /// and need not walk `$PATH` each time. Forgotten when spawning it fails.
    found: Arc<Mutex<Option<PathBuf>>>,
    grace: Duration,
    timeout: Option<Duration>,
    /// Where sessions come from instead of a spawned criu ([`Criu::connect_with`]).
    connect: Option<Connector>,
    /// criu processes started ahead ([`Criu::warm`]), shared by clones.
    pool: Option<Arc<Pool>>,
}

/// Makes connections to a criu peer for [`Criu::connect_with`].
#[derive(Clone)]
struct Connector(Arc<dyn Fn() -> std::io::Result<OwnedFd> + Send + Sync>);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Default for Criu {
    fn default() -> Self {
        Criu {
            path: None,
            found: Arc::default(),
            grace: DEFAULT_GRACE,
            timeout: None,
            connect: None,
            pool: None,
        }
    }
}

impl Criu {
    /// criu found through `$CRIU_BIN`, then `$PATH`, then `/usr/local/sbin` and
    /// `/usr/sbin`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Run this criu binary (no fallback when it does not work).
    pub fn with_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.path = Some(path.into());
        self.found = Arc::default();
        self
    }

    /// Requests reach criu through `connect` instead of starting it: each request (a
    /// session, a fleet's target) calls it for a connected Unix `SOCK_SEQPACKET`
    /// socket whose peer speaks criu's swrk protocol, and the session runs over it as
    /// [`Session::from_fd`] does: no process supervised here, and fds meant for criu's
    /// table (`inherit_fd`, `page_server_fd`) closed rather than passed. For a criu
    /// that something else starts (in another namespace, under another supervisor),
    /// and for running code that takes a `Criu` (a [`Fleet`](crate::fleet::Fleet))
    /// against a fake peer. The lazy-pages daemon is still started from the binary.
    ///
    /// # Example
    /// ```
    /// use std::os::fd::OwnedFd;
    /// use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    ///
    /// let criu = criu_swrk::Criu::connect_with(|| {
    ///     let (ours, criu_end): (OwnedFd, OwnedFd) =
    ///         socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)?;
    ///     // Hand criu_end to a criu started elsewhere, e.g. over a Unix socket.
    ///     # drop(criu_end);
    ///     Ok(ours)
    /// });
    /// ```
    pub fn connect_with<F>(connect: F) -> Self
    where
        F: Fn() -> std::io::Result<OwnedFd> + Send + Sync + 'static,
    {
        Criu {
            connect: Some(Connector(Arc::new(connect))),
            ..Criu::default()
        }
    }

    /// Keeps `n` criu processes started and waiting for a request, so that a request
    /// skips starting criu (the exec, criu's start-up: most of a `version` query's
    /// time, a few milliseconds of a dump's). A request takes the one that has waited
    /// longest and a replacement starts in the background; requests that pass fds
    /// into criu's fd table (`inherit_fd`, `page_server_fd`, ...) start a fresh criu,
    /// as those fds must be there when criu starts. `0` turns the pool off.
    ///
    /// A warm criu was started when the pool was filled: in the cgroup, namespaces
    /// and environment of this process at that moment, like a fresh one started then.
    /// Use [`spawn_dump`](Self::spawn_dump) to place criu somewhere first.
    ///
    /// The pool belongs to this `Criu` and its clones (set it before cloning it into
    /// a [`Fleet`](crate::fleet::Fleet)); when the last of them is dropped, the
    /// waiting criu processes see their socket close, exit, and are reaped. The pool
    /// fills at once inside a Tokio runtime, else at the first request. Call
    /// [`with_path`](Self::with_path) and [`connect_with`](Self::connect_with) before
    /// this: the pool starts the criu they name.
    ///
    /// # Example
    /// ```no_run
    /// # async fn run() -> criu_swrk::Result<()> {
    /// let criu = criu_swrk::Criu::new().warm(2);
    /// println!("criu {}", criu.version().await?); // answered by a waiting criu
    /// # Ok(()) }
    /// ```
    pub fn warm(mut self, n: usize) -> Self {
        self.pool = None;
        if n == 0 {
            return self;
        }
        let cold = self.clone();
        self.pool = Some(Pool::new(n, Arc::new(move || cold.start())));
        self
    }

    /// How many criu processes wait in the pool now ([`warm`](Self::warm)).
    pub fn warm_count(&self) -> usize {
        self.pool.as_ref().map_or(0, |p| p.len())
    }

    /// How long criu gets, once a request was interrupted after criu seized its
    /// target, to reach its next hook (and roll back, or, past the commit point,
    /// finish) before it is killed; also how long criu gets to exit after its session
    /// closes. Default: [`DEFAULT_GRACE`] (30 s). The next hook comes after the step
    /// criu is in (writing memory, for a dump), so keep this above that step's time: a
    /// criu killed there leaves its parasite in the tree
    /// ([`RequestState::Unknown`](crate::RequestState::Unknown)). Before criu seizes
    /// anything an interrupt kills it at once, whatever the grace.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// A timeout for requests whose options set none.
    pub fn default_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The criu binary requests will run.
    ///
    /// The search runs on first use and its answer is kept by this handle and its
    /// clones, until starting that binary fails (then the next request searches again).
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) listing every place tried.
    pub fn binary(&self) -> Result<PathBuf> {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = &*found {
            return Ok(p.clone());
        }
        let p = spawn::locate(self.path.as_deref())?;
        *found = Some(p.clone());
        Ok(p)
    }

    /// Starts `criu args...` with `fds` at 3, 4, ..., forgetting the binary if that fails.
    pub(crate) fn spawn(&self, args: &[String], fds: Vec<OwnedFd>) -> Result<spawn::Supervised> {
        let path = self.binary()?;
        spawn::spawn_criu(&path, args, fds).inspect_err(|_| self.forget_binary())
    }

    /// `spawn_*` hand out criu's pid and fill its fd table: neither exists for a
    /// criu reached through [`connect_with`](Self::connect_with).
    fn refuse_connected(&self, what: &str) -> Result<()> {
        match self.connect {
            Some(_) => Err(crate::Error::Unsupported {
                what: what.into(),
                reason: "this Criu connects to a criu started elsewhere (connect_with): \
                         there is no criu process here to start early"
                    .into(),
            }),
            None => Ok(()),
        }
    }

    fn forget_binary(&self) {
        *self.found.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Starts a criu process for several requests.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) or [`Error::Spawn`](crate::Error::Spawn).
    pub fn session(&self) -> Result<Session> {
        self.spawn_for(Vec::new())
    }

    fn spawn_for(&self, passed: Vec<OwnedFd>) -> Result<Session> {
        let (warm, refill) = match &self.pool {
            Some(pool) if passed.is_empty() => pool.take(),
            _ => (None, None),
        };
        let n = passed.len();
        let ready = match warm {
            Some(ready) => ready,
            None => self.start_with(passed)?,
        };
        let mut session = match ready.child {
            Some(child) => Session::spawned(ready.sock, child, n, self.grace, self.timeout),
            None => {
                let mut session = Session::connected(ready.sock);
                session.set_grace(self.grace);
                session.set_default_timeout(self.timeout);
                session
            }
        };
        session.refill = refill;
        Ok(session)
    }

    /// A criu waiting for its first request, with no fds of the caller's.
    fn start(&self) -> Result<Ready> {
        self.start_with(Vec::new())
    }

    /// Starts criu with `passed` in its table (or connects, dropping them).
    fn start_with(&self, passed: Vec<OwnedFd>) -> Result<Ready> {
        if let Some(Connector(connect)) = &self.connect {
            drop(passed);
            let fd = connect().map_err(|e| crate::Error::io("connecting to criu", e))?;
            return Ok(Ready {
                sock: spawn::register(fd)?,
                child: None,
            });
        }
        let path = self.binary()?;
        let (child, sock) = spawn::spawn(&path, passed).inspect_err(|_| self.forget_binary())?;
        Ok(Ready {
            sock,
            child: Some(child),
        })
    }

    /// A session for a prepared request: the fds it names in criu's table go there.
    pub(crate) fn session_for(&self, p: &mut Prepared) -> Result<Session> {
        self.spawn_for(p.take_passed())
    }

    /// criu's version.
    ///
    /// # Errors
    /// As [`Session::version`], plus spawn errors.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future kills criu (it has touched nothing) and reaps it
    /// in the background.
    pub async fn version(&self) -> Result<Version> {
        let mut s = self.session()?;
        let v = s.version().await;
        s.close().await;
        v
    }

    /// criu's findings on optional kernel features.
    ///
    /// # Errors
    /// As [`Session::features`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`version`](Self::version).
    pub async fn features(&self) -> Result<Features> {
        let mut s = self.session()?;
        let f = s.features().await;
        s.close().await;
        f
    }

    /// `criu check`: can criu checkpoint and restore on this kernel? (`CheckOptions::new()`
    /// for criu's defaults.)
    ///
    /// # Errors
    /// As [`Session::check`], plus spawn errors.
    ///
    /// # Cancel safety
    /// Cancel safe: a check changes nothing; criu is stopped at once.
    pub async fn check(&self, opts: CheckOptions) -> Result<()> {
        self.session()?.check(opts).await
    }

    /// Saves this machine's CPU description; see [`Session::cpuinfo_dump`].
    ///
    /// # Errors
    /// As [`Session::cpuinfo_dump`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::cpuinfo_dump`]; criu is reaped in the background.
    pub async fn cpuinfo_dump(&self, opts: CpuinfoOptions) -> Result<()> {
        self.session()?.cpuinfo_dump(opts).await
    }

    /// Checks a saved CPU description against this machine; see
    /// [`Session::cpuinfo_check`].
    ///
    /// # Errors
    /// As [`Session::cpuinfo_check`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::cpuinfo_check`]; criu is reaped in the background.
    pub async fn cpuinfo_check(&self, opts: CpuinfoOptions) -> Result<()> {
        self.session()?.cpuinfo_check(opts).await
    }

    /// Starts a page server daemon; see [`Session::page_server`]. The criu process
    /// that started it is reaped before this returns; the daemon runs on, ready.
    ///
    /// # Errors
    /// As [`Session::page_server`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::page_server`].
    pub async fn page_server(&self, opts: PageServerOptions) -> Result<PageServer> {
        self.page_server_with(opts, &mut NoHooks).await
    }

    /// Starts a page server daemon with hooks; see [`Session::page_server_with`].
    ///
    /// # Errors
    /// As [`Session::page_server_with`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::page_server_with`].
    pub async fn page_server_with<H: Hooks>(
        &self,
        opts: PageServerOptions,
        hooks: &mut H,
    ) -> Result<PageServer> {
        let mut p = opts.prepare(RequestKind::PageServer)?;
        let mut s = self.session_for(&mut p)?;
        s.page_server_prepared(p, hooks).await
    }

    /// Dumps a tree; see [`Session::dump`] for errors, cancel safety and drop
    /// behavior.
    ///
    /// # Errors
    /// As [`Session::dump`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::dump`]: where criu has got decides (untouched, rolled back, or
    /// committed and its outcome returned); criu is reaped in the background.
    pub async fn dump(&self, opts: DumpOptions) -> Result<DumpOutcome> {
        self.dump_with(opts, &mut NoHooks).await
    }

    /// Dumps a tree, answering notifications with `hooks`; see
    /// [`Session::dump_with`].
    ///
    /// # Errors
    /// As [`Session::dump_with`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::dump_with`].
    pub async fn dump_with<H: Hooks>(
        &self,
        opts: DumpOptions,
        hooks: &mut H,
    ) -> Result<DumpOutcome> {
        let mut p = opts.prepare()?;
        self.session_for(&mut p)?.dump_prepared(p, hooks).await
    }

    /// Starts criu for a dump without sending it yet: criu's pid is known (to move
    /// criu into the container's cgroup first, as runc does, say) and the fds the
    /// options pass to criu (`page_server_fd`, ...) are already in its table. Send
    /// the request with [`Spawned::run`].
    ///
    /// # Errors
    /// [`Error::InvalidOptions`](crate::Error::InvalidOptions), spawn errors;
    /// [`Error::Unsupported`](crate::Error::Unsupported) for a `Criu` made by
    /// [`connect_with`](Self::connect_with).
    ///
    /// # Drop behavior
    /// Dropping the [`Spawned`] unsent closes criu, which exits; it is reaped in the
    /// background.
    pub fn spawn_dump(&self, opts: DumpOptions) -> Result<Spawned<DumpOutcome>> {
        self.refuse_connected("spawn_dump")?;
        let mut p = opts.prepare()?;
        let session = self.session_for(&mut p)?;
        Ok(Spawned::new(session, p))
    }

    /// Starts criu for a restore without sending it yet; see
    /// [`spawn_dump`](Self::spawn_dump). The `inherit_fd` fds (the namespaces and
    /// stdio pipes a runtime hands the restored tree) are in criu's table already.
    ///
    /// # Example
    /// ```no_run
    /// use criu_swrk::{Criu, RestoreOptions};
    ///
    /// # async fn run(stdout: std::os::fd::OwnedFd) -> criu_swrk::Result<()> {
    /// let opts = RestoreOptions::new()
    ///     .images_dir("/var/lib/ckpt/42")
    ///     .inherit_fd("pipe:[12345]", stdout);
    /// let spawned = Criu::new().spawn_restore(opts)?;
    /// // Put criu into the container's cgroup before it restores anything.
    /// std::fs::write("/sys/fs/cgroup/pids/ctr42/cgroup.procs", spawned.criu_pid().to_string())
    ///     .expect("cgroup");
    /// let restored = spawned.run().await?;
    /// println!("restored as pid {}", restored.pid);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As [`spawn_dump`](Self::spawn_dump).
    ///
    /// # Drop behavior
    /// As [`spawn_dump`](Self::spawn_dump).
    pub fn spawn_restore(&self, opts: RestoreOptions) -> Result<Spawned<RestoreOutcome>> {
        self.refuse_connected("spawn_restore")?;
        let mut p = opts.prepare()?;
        let session = self.session_for(&mut p)?;
        Ok(Spawned::new(session, p))
    }

    /// Restores a tree; see [`Session::restore`].
    ///
    /// # Errors
    /// As [`Session::restore`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::restore`]: before `post-restore` was answered the restore is
    /// stopped or rolled back; past it the outcome (with the restored pid) is returned.
    pub async fn restore(&self, opts: RestoreOptions) -> Result<RestoreOutcome> {
        self.restore_with(opts, &mut NoHooks).await
    }

    /// Restores a tree with hooks; see [`Session::restore_with`].
    ///
    /// # Errors
    /// As [`Session::restore_with`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::restore_with`].
    pub async fn restore_with<H: Hooks>(
        &self,
        opts: RestoreOptions,
        hooks: &mut H,
    ) -> Result<RestoreOutcome> {
        let mut p = opts.prepare()?;
        self.session_for(&mut p)?.restore_prepared(p, hooks).await
    }

    /// Starts the pre-dump loop; see [`Session::pre_dump`].
    ///
    /// # Errors
    /// As [`Session::pre_dump`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::pre_dump`].
    pub async fn pre_dump(&self, opts: PreDumpOptions) -> Result<PreDumpLoop> {
        self.pre_dump_with(opts, &mut NoHooks).await.map(|(l, _)| l)
    }

    /// Starts the pre-dump loop with hooks; see [`Session::pre_dump_with`].
    ///
    /// # Errors
    /// As [`Session::pre_dump_with`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::pre_dump_with`].
    pub async fn pre_dump_with<H: Hooks>(
        &self,
        opts: PreDumpOptions,
        hooks: &mut H,
    ) -> Result<(PreDumpLoop, PreDumpOutcome)> {
        let mut p = opts.prepare(RequestKind::PreDump)?;
        self.session_for(&mut p)?.pre_dump_prepared(p, hooks).await
    }

    /// A single pre-dump; see [`Session::single_pre_dump`].
    ///
    /// # Errors
    /// As [`Session::single_pre_dump`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::single_pre_dump`].
    pub async fn single_pre_dump(&self, opts: PreDumpOptions) -> Result<PreDumpOutcome> {
        self.single_pre_dump_with(opts, &mut NoHooks).await
    }

    /// A single pre-dump with hooks; see [`Session::single_pre_dump_with`].
    ///
    /// # Errors
    /// As [`Session::single_pre_dump_with`], plus spawn errors.
    ///
    /// # Cancel safety
    /// As [`Session::single_pre_dump_with`].
    pub async fn single_pre_dump_with<H: Hooks>(
        &self,
        opts: PreDumpOptions,
        hooks: &mut H,
    ) -> Result<PreDumpOutcome> {
        let mut p = opts.prepare(RequestKind::SinglePreDump)?;
        self.session_for(&mut p)?
            .single_pre_dump_prepared(p, hooks)
            .await
    }
}

/// A criu started for one request that has not been sent yet (see
/// [`Criu::spawn_dump`], [`Criu::spawn_restore`]).
#[must_use = "the request is sent only by `run`; dropping this closes criu"]
#[derive(Debug)]
pub struct Spawned<O> {
    session: Session,
    prepared: Prepared,
    outcome: std::marker::PhantomData<fn() -> O>,
}

impl<O> Spawned<O> {
    fn new(session: Session, prepared: Prepared) -> Self {
        Spawned {
            session,
            prepared,
            outcome: std::marker::PhantomData,
        }
    }

    /// criu's pid.
    pub fn criu_pid(&self) -> i32 {
        self.session
            .criu_pid()
            .expect("a spawned criu has a pid until it is reaped")
    }
}

impl Spawned<DumpOutcome> {
    /// Sends the dump; as [`Session::dump`].
    ///
    /// # Errors
    /// As [`Session::dump`].
    ///
    /// # Cancel safety
    /// As [`Session::dump`].
    pub async fn run(self) -> Result<DumpOutcome> {
        self.run_with(&mut NoHooks).await
    }

    /// Sends the dump, answering criu's notifications with `hooks`; as
    /// [`Session::dump_with`].
    ///
    /// # Errors
    /// As [`Session::dump_with`].
    ///
    /// # Cancel safety
    /// As [`Session::dump`].
    pub async fn run_with<H: Hooks>(self, hooks: &mut H) -> Result<DumpOutcome> {
        self.session.dump_prepared(self.prepared, hooks).await
    }
}

impl Spawned<RestoreOutcome> {
    /// Sends the restore; as [`Session::restore`].
    ///
    /// # Errors
    /// As [`Session::restore`].
    ///
    /// # Cancel safety
    /// As [`Session::restore`].
    pub async fn run(self) -> Result<RestoreOutcome> {
        self.run_with(&mut NoHooks).await
    }

    /// Sends the restore, answering criu's notifications with `hooks`; as
    /// [`Session::restore_with`].
    ///
    /// # Errors
    /// As [`Session::restore_with`].
    ///
    /// # Cancel safety
    /// As [`Session::restore`].
    pub async fn run_with<H: Hooks>(self, hooks: &mut H) -> Result<RestoreOutcome> {
        self.session.restore_prepared(self.prepared, hooks).await
    }
}
