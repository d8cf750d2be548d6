//! One criu process and the lock-step exchange with it.
//!
//! The protocol is one request, any number of notifications (each blocking criu until
//! answered), one final response. A [`Session`] owns the socket and the child and drives
//! that exchange from its async methods; requests that end the criu process take
//! `self`, keep-open queries take `&mut self`.

use std::process::ExitStatus;
use std::time::Duration;

use tokio_seqpacket::UnixSeqpacket;
use tracing::Instrument;

use crate::conn::{Answer, Conn};
use crate::error::{Error, Result};
use crate::info::{Features, Version};
use crate::kind::RequestKind;
use crate::notify::{Hooks, NoHooks};
use crate::options::{
    CheckOptions, CpuinfoOptions, DumpOptions, PageServerOptions, PreDumpOptions, Prepared,
    RestoreOptions,
};
use crate::outcome::{DumpOutcome, PageServer, PreDumpOutcome, RestoreOutcome};
use crate::proto::CriuReq;
use crate::spawn::Supervised;
use crate::stats;
use request::Limits;

mod pre_dump_loop;
mod request;

pub use pre_dump_loop::PreDumpLoop;

/// How long criu gets, once a request is interrupted after criu seized its target, to
/// reach its next hook and finish rolling back (or, past the commit point, to finish)
/// before it is killed; also how long criu gets to exit after its session closes.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// One `criu swrk` process (or, through [`Session::from_fd`], any peer speaking
/// criu's protocol).
///
/// Made by [`Criu::session`](crate::Criu::session). Use it to ask several keep-open
/// questions of one criu process ([`version`](Self::version),
/// [`features`](Self::features)) and then, optionally, one request that ends it
/// ([`dump`](Self::dump), [`restore`](Self::restore), [`check`](Self::check),
/// [`pre_dump`](Self::pre_dump), ...).
///
/// # Drop behavior
/// Dropping a session closes the socket; criu exits and is reaped in the background
/// (killed if it has not exited within the grace period). Dropping it while a request
/// is in flight rolls the request back first (see [`dump`](Self::dump)).
#[derive(Debug)]
pub struct Session {
    pub(crate) conn: Conn,
    /// How many fds were mapped into criu's table at spawn for the request to come.
    pub(crate) mapped: Option<usize>,
    /// The peer is not a criu we started: fd numbers for its table go out as planned.
    pub(crate) foreign_peer: bool,
    pub(crate) default_timeout: Option<Duration>,
    /// criu's version, once asked.
    pub(crate) version: Option<Version>,
    /// For a criu taken from a warm pool: its replacement starts when this goes.
    pub(crate) refill: Option<crate::pool::Refill>,
}

/// How a request relates to the criu process serving it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    /// criu exits after answering.
    OneShot {
        /// Also wait for the `status-ready` notification (a page server daemon).
        until_ready: bool,
    },
    /// criu stays for the next request (keep_open).
    KeepOpen,
    /// A pre-dump: criu stays for the next pre-dump or the final dump.
    InLoop,
}

impl Session {
    pub(crate) fn spawned(
        sock: UnixSeqpacket,
        child: Supervised,
        mapped: usize,
        grace: Duration,
        default_timeout: Option<Duration>,
    ) -> Self {
        Session {
            conn: Conn::new(sock, Some(child), grace),
            mapped: (mapped > 0).then_some(mapped),
            foreign_peer: false,
            default_timeout,
            version: None,
            refill: None,
        }
    }

    /// A session over `fd`, a connected Unix `SOCK_SEQPACKET` socket whose peer speaks
    /// criu's swrk protocol: a criu started by other means (in another namespace, by a
    /// helper), or a fake peer in tests. The socket is made non-blocking.
    ///
    /// No child is supervised. Fds meant for criu's own fd table (`inherit_fd`,
    /// `page_server_fd`) cannot travel over an existing connection: requests carry the
    /// numbers they would have had in a criu started by this crate, and the fds
    /// themselves are closed.
    ///
    /// # Errors
    /// [`Error::Io`] when `fd` is not a Unix `SOCK_SEQPACKET` socket, or cannot be
    /// registered with the Tokio runtime (there is none, or its I/O driver is off).
    ///
    /// # Example
    /// ```
    /// use std::os::fd::OwnedFd;
    /// use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> criu_swrk::Result<()> {
    /// let (ours, criu_end): (OwnedFd, OwnedFd) =
    ///     socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
    ///         .unwrap();
    /// // criu_end goes to a criu started as `criu swrk <fd>` by other means.
    /// let session = criu_swrk::Session::from_fd(ours)?;
    /// # drop(criu_end); drop(session); Ok(()) }
    /// ```
    pub fn from_fd(fd: std::os::fd::OwnedFd) -> Result<Self> {
        Ok(Self::connected(crate::spawn::register(fd)?))
    }

    /// A session over a registered socket to a peer this crate did not start.
    pub(crate) fn connected(sock: UnixSeqpacket) -> Self {
        Session {
            conn: Conn::new(sock, None, DEFAULT_GRACE),
            mapped: None,
            foreign_peer: true,
            default_timeout: None,
            version: None,
            refill: None,
        }
    }

    /// How long the peer gets to answer a rollback or to exit before it is killed.
    pub fn set_grace(&mut self, grace: Duration) {
        self.conn.grace = grace;
    }

    /// The timeout applied to requests whose options set none.
    pub fn set_default_timeout(&mut self, timeout: Option<Duration>) {
        self.default_timeout = timeout;
    }

    /// criu's pid, while this session supervises one.
    pub fn criu_pid(&self) -> Option<i32> {
        self.conn.child.as_ref().and_then(Supervised::pid)
    }

    /// criu's version. Keeps criu open for further requests.
    ///
    /// # Errors
    /// [`Error::Exited`] when criu is gone, [`Error::Protocol`] / [`Error::Decode`] on a
    /// malformed answer, [`Error::Timeout`] past the session's default timeout.
    ///
    /// # Cancel safety
    /// Not cancel safe: a cancelled query leaves the session unusable (criu is then
    /// closed and reaped in the background).
    pub async fn version(&mut self) -> Result<Version> {
        let req = keep_open(RequestKind::Version);
        let answer = self.query(RequestKind::Version, req).await?;
        answer
            .resp
            .version
            .map(Version::from)
            .ok_or_else(|| Error::protocol("a VERSION response with a version", "none"))
    }

    /// criu's findings on optional kernel features (every feature criu knows is asked
    /// for). Keeps criu open for further requests.
    ///
    /// # Errors
    /// As [`version`](Self::version); [`Error::Refused`] when criu's probe failed.
    ///
    /// # Cancel safety
    /// As [`version`](Self::version).
    pub async fn features(&mut self) -> Result<Features> {
        let mut req = keep_open(RequestKind::FeatureCheck);
        req.features = Some(Features::query());
        let answer = self.query(RequestKind::FeatureCheck, req).await?;
        answer
            .resp
            .features
            .map(Features::from)
            .ok_or_else(|| Error::protocol("a FEATURE_CHECK response with features", "none"))
    }

    async fn query(&mut self, kind: RequestKind, req: CriuReq) -> Result<Answer> {
        self.query_within(kind, req, Limits::default()).await
    }

    async fn query_within(
        &mut self,
        kind: RequestKind,
        req: CriuReq,
        limits: Limits<'_>,
    ) -> Result<Answer> {
        let answer = self
            .run(kind, req, limits, false, &mut NoHooks)
            .instrument(tracing::debug_span!("criu", request = %kind))
            .await?;
        if !answer.resp.success {
            return Err(self.refusal(kind, None, &answer.resp, None));
        }
        Ok(answer)
    }

    /// Asks criu whether this kernel supports checkpoint/restore (`criu check`).
    ///
    /// # Errors
    /// [`Error::Refused`] when the check fails, with criu's reasons in
    /// [`Refusal::log_errors`](crate::Refusal::log_errors).
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is changed by a check; criu is reaped in the background.
    pub async fn check(self, opts: CheckOptions) -> Result<()> {
        let p = opts.prepare()?;
        self.one_shot(p, &mut NoHooks).await.map(drop)
    }

    /// Checkpoints a process tree. Without `leave_running` criu kills the tree once the
    /// `post-dump` hook agreed.
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] before anything starts (an images directory that
    /// already holds a dump, among others); [`Error::Refused`] with criu's message and
    /// log lines when criu fails (the tree keeps running); [`Error::Timeout`] /
    /// [`Error::Cancelled`] past the request's timeout or on cancellation, saying what
    /// became of the dump ([`Error::request_state`]); [`Error::Exited`] when criu dies.
    /// A dump that fails leaves no images behind (criu's log file stays).
    ///
    /// # Cancel safety
    /// What a timeout or a cancel does depends on how far criu has got (see the
    /// crate docs, "Never losing the target"):
    /// * before `pre-dump` was answered criu has touched nothing: it is killed at once
    ///   with its helpers ([`RequestState::Untouched`](crate::RequestState::Untouched));
    /// * between `pre-dump` and `post-dump` criu's next hook is answered with failure
    ///   and criu resumes the tree, memory intact ([`RequestState::RolledBack`](crate::RequestState::RolledBack)). criu
    ///   has the grace period ([`Criu::grace`](crate::Criu::grace)) to get to that
    ///   hook; past it criu is killed and the tree may carry criu's parasite
    ///   ([`RequestState::Unknown`](crate::RequestState::Unknown));
    /// * once `post-dump` was answered with success the dump is committed: it is let
    ///   finish and its outcome is returned (images complete, the tree gone unless
    ///   `leave_running`). A lazy dump ([`DumpOptions::lazy_pages`](crate::DumpOptions::lazy_pages))
    ///   then serves its pages and commits only with criu's final success: criu
    ///   resumes the tree if the transfer fails (**rolled back**), and criu lost
    ///   meanwhile is [`RequestState::Unknown`](crate::RequestState::Unknown).
    ///
    /// So a timed-out dump returns within its timeout (plus a moment to reap criu)
    /// before `pre-dump`, and within timeout + grace after it.
    ///
    /// # Drop behavior
    /// As for cancellation, in the background. That needs a running Tokio runtime;
    /// without one criu is killed, which its parasite survives (the tree resumes).
    pub async fn dump(self, opts: DumpOptions) -> Result<DumpOutcome> {
        self.dump_with(opts, &mut NoHooks).await
    }

    /// [`dump`](Self::dump), answering criu's notifications with `hooks`.
    ///
    /// # Errors
    /// As [`dump`](Self::dump), plus [`Error::Hook`] when a hook answered
    /// [`Reply::Fail`](crate::Reply::Fail) (criu rolled back: the tree keeps running).
    ///
    /// # Cancel safety
    /// As [`dump`](Self::dump). A hook future running at cancellation is dropped and
    /// its notification answered with failure.
    pub async fn dump_with<H: Hooks>(
        self,
        opts: DumpOptions,
        hooks: &mut H,
    ) -> Result<DumpOutcome> {
        self.dump_prepared(opts.prepare()?, hooks).await
    }

    pub(crate) async fn dump_prepared<H: Hooks>(
        self,
        p: Prepared,
        hooks: &mut H,
    ) -> Result<DumpOutcome> {
        let pid = p.pid.unwrap_or_default();
        let lazy = p.opts.lazy_pages == Some(true);

        let (p, _) = self.one_shot(p, hooks).await?;
        let stats = if lazy {
            // criu starts its lazy page server with fresh (zeroed) dump counters, so
            // the stats-dump it then writes describes nothing.
            Err(Error::Unsupported {
                what: "stats of a lazy dump".into(),
                reason: "criu resets its dump statistics when it starts serving pages \
                         lazily; its stats-dump holds no figures of the dump"
                    .into(),
            })
        } else {
            read_in(&p, stats::read_dump_stats)
        };
        let images_dir = p.images_location();
        Ok(DumpOutcome {
            pid,
            log: p.log_path(),
            stats,
            images_dir,
        })
    }

    /// The version of the criu serving this session, asked once, within `p`'s own
    /// timeout and cancellation (a criu that never answers must not outlast them).
    pub(crate) async fn known_version(&mut self, p: &Prepared) -> Result<Version> {
        if let Some(v) = &self.version {
            return Ok(v.clone());
        }
        let answer = self
            .query_within(
                RequestKind::Version,
                keep_open(RequestKind::Version),
                Limits::of(p),
            )
            .await
            .map_err(|e| e.for_request(p.kind))?;
        let v = answer
            .resp
            .version
            .map(Version::from)
            .ok_or_else(|| Error::protocol("a VERSION response with a version", "none"))?;
        self.version = Some(v.clone());
        Ok(v)
    }

    /// Restores a process tree from images. criu restores detached: the root's parent
    /// is our process with `rst_sibling`, otherwise the nearest child subreaper (or
    /// init) once criu exits.
    ///
    /// # Errors
    /// As [`dump`](Self::dump). A refused restore leaves nothing behind: criu kills
    /// what it restored.
    ///
    /// # Cancel safety
    /// * Before `pre-restore` was answered nothing exists yet: criu is killed at once
    ///   ([`RequestState::Untouched`](crate::RequestState::Untouched)).
    /// * Between `pre-restore` and `post-restore` criu's next hook is answered with
    ///   failure and criu kills what it restored ([`RequestState::RolledBack`](crate::RequestState::RolledBack)); past
    ///   the grace period criu is killed, and a partly restored tree may be left
    ///   ([`RequestState::Unknown`](crate::RequestState::Unknown), with its pid in the error when criu had sent it).
    /// * Once `post-restore` was answered the tree will run (criu ignores failures of
    ///   the later hooks): the restore is let finish and its outcome, with the pid, is
    ///   returned.
    ///
    /// # Drop behavior
    /// As for cancellation, in the background, except past `post-restore`: nobody
    /// would learn of the restored tree, so it is killed once criu is done (the
    /// images are untouched and can be restored again).
    pub async fn restore(self, opts: RestoreOptions) -> Result<RestoreOutcome> {
        self.restore_with(opts, &mut NoHooks).await
    }

    /// [`restore`](Self::restore), answering criu's notifications with `hooks`.
    ///
    /// # Errors
    /// As [`restore`](Self::restore), plus [`Error::Hook`].
    ///
    /// # Cancel safety
    /// As [`restore`](Self::restore).
    pub async fn restore_with<H: Hooks>(
        self,
        opts: RestoreOptions,
        hooks: &mut H,
    ) -> Result<RestoreOutcome> {
        self.restore_prepared(opts.prepare()?, hooks).await
    }

    pub(crate) async fn restore_prepared<H: Hooks>(
        self,
        p: Prepared,
        hooks: &mut H,
    ) -> Result<RestoreOutcome> {
        let (p, resp) = self.one_shot(p, hooks).await?;
        let pid = resp
            .restore
            .map(|r| r.pid)
            .ok_or_else(|| Error::protocol("a RESTORE response with the restored pid", "none"))?;
        Ok(RestoreOutcome {
            pid,
            log: p.log_path(),
            stats: read_in(&p, stats::read_restore_stats),
            images_dir: p.images_dir,
        })
    }

    /// Pre-dumps a tree once (`SINGLE_PRE_DUMP`): memory is copied while the tree
    /// keeps running, for a later dump with `parent_images`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when criu reports no memory tracking on this kernel
    /// (checked first, on the same criu process); otherwise as [`dump`](Self::dump).
    ///
    /// # Cancel safety
    /// criu sends no hook during a pre-dump, so there is no point at which to roll it
    /// back: a timeout or cancel lets criu finish (the tree runs on either way) and
    /// returns its outcome; past the grace period criu is killed
    /// ([`RequestState::Unknown`](crate::RequestState::Unknown): the tree may carry criu's parasite).
    ///
    /// # Drop behavior
    /// As for cancellation, in the background.
    pub async fn single_pre_dump(self, opts: PreDumpOptions) -> Result<PreDumpOutcome> {
        self.single_pre_dump_with(opts, &mut NoHooks).await
    }

    /// [`single_pre_dump`](Self::single_pre_dump) with hooks.
    ///
    /// # Errors
    /// As [`single_pre_dump`](Self::single_pre_dump), plus [`Error::Hook`].
    ///
    /// # Cancel safety
    /// As [`single_pre_dump`](Self::single_pre_dump).
    pub async fn single_pre_dump_with<H: Hooks>(
        self,
        opts: PreDumpOptions,
        hooks: &mut H,
    ) -> Result<PreDumpOutcome> {
        self.single_pre_dump_prepared(opts.prepare(RequestKind::SinglePreDump)?, hooks)
            .await
    }

    pub(crate) async fn single_pre_dump_prepared<H: Hooks>(
        mut self,
        p: Prepared,
        hooks: &mut H,
    ) -> Result<PreDumpOutcome> {
        self.require_mem_track(RequestKind::SinglePreDump).await?;
        let pid = p.pid.unwrap_or_default();
        let (p, _) = self.one_shot(p, hooks).await?;
        Ok(pre_dump_outcome(pid, p))
    }

    /// Starts the pre-dump loop: this first pre-dump, then more with
    /// [`PreDumpLoop::pre_dump`], and one final [`PreDumpLoop::dump`], all on this
    /// criu process.
    ///
    /// # Errors
    /// [`Error::Unsupported`] when criu reports no memory tracking on this kernel
    /// (criu would crash on a pre-dump there); otherwise as [`dump`](Self::dump).
    ///
    /// # Cancel safety
    /// Dropping the future rolls the pre-dump back; the tree keeps running.
    pub async fn pre_dump(self, opts: PreDumpOptions) -> Result<PreDumpLoop> {
        self.pre_dump_with(opts, &mut NoHooks).await.map(|(l, _)| l)
    }

    /// [`pre_dump`](Self::pre_dump) with hooks; also returns the first iteration's
    /// outcome.
    ///
    /// # Errors
    /// As [`pre_dump`](Self::pre_dump), plus [`Error::Hook`].
    ///
    /// # Cancel safety
    /// As [`pre_dump`](Self::pre_dump).
    pub async fn pre_dump_with<H: Hooks>(
        self,
        opts: PreDumpOptions,
        hooks: &mut H,
    ) -> Result<(PreDumpLoop, PreDumpOutcome)> {
        self.pre_dump_prepared(opts.prepare(RequestKind::PreDump)?, hooks)
            .await
    }

    pub(crate) async fn pre_dump_prepared<H: Hooks>(
        mut self,
        p: Prepared,
        hooks: &mut H,
    ) -> Result<(PreDumpLoop, PreDumpOutcome)> {
        self.require_mem_track(RequestKind::PreDump).await?;
        let mut lp = PreDumpLoop::new(self);
        let first = lp.iterate(p, hooks).await?;
        Ok((lp, first))
    }

    async fn require_mem_track(&mut self, kind: RequestKind) -> Result<()> {
        let features = self.features().await?;
        if !features.mem_track {
            let reason = "criu reports no memory tracking on this kernel (FEATURE_CHECK \
                          mem_track = false; the kernel lacks soft-dirty bits, \
                          CONFIG_MEM_SOFT_DIRTY). Dump without pre-dumps instead.";
            return Err(Error::Unsupported {
                what: kind.to_string(),
                reason: reason.into(),
            });
        }
        Ok(())
    }

    /// Starts a page server daemon (`PAGE_SERVER`): it receives the pages of one dump
    /// sent with [`DumpOptions::page_server`] and exits when that dump is done.
    /// Returns once the server listens and has said so (criu's `status-ready`), with
    /// its port. Ends this criu process; the daemon runs on.
    ///
    /// The daemon is not criu's child: it is re-parented to the nearest child
    /// subreaper (or init), which must reap it. criu 4.x does not report its pid.
    ///
    /// # Errors
    /// [`Error::Refused`] when criu cannot start it (port taken, bad address), with
    /// its log lines; [`Error::InvalidOptions`] without an images directory.
    ///
    /// # Cancel safety
    /// Dropping the future before `status-ready` was answered makes the daemon exit.
    pub async fn page_server(self, opts: PageServerOptions) -> Result<PageServer> {
        self.page_server_with(opts, &mut NoHooks).await
    }

    /// [`page_server`](Self::page_server), with hooks (`status-ready` arrives there).
    ///
    /// # Errors
    /// As [`page_server`](Self::page_server), plus [`Error::Hook`].
    ///
    /// # Cancel safety
    /// As [`page_server`](Self::page_server).
    pub async fn page_server_with<H: Hooks>(
        mut self,
        opts: PageServerOptions,
        hooks: &mut H,
    ) -> Result<PageServer> {
        let p = opts.prepare(RequestKind::PageServer)?;
        self.page_server_prepared(p, hooks).await
    }

    /// Starts a page server as criu's child (`PAGE_SERVER_CHLD`); wait for it with
    /// [`wait_pid`](Self::wait_pid) on this session. Returns once it listens.
    ///
    /// criu is asked for no notifications here: the child and criu would both read
    /// our answers from the one socket.
    ///
    /// # Errors
    /// As [`page_server`](Self::page_server).
    ///
    /// # Cancel safety
    /// Not cancel safe: the session is closed; a child already started is
    /// re-parented and runs on.
    pub async fn page_server_child(&mut self, opts: PageServerOptions) -> Result<PageServer> {
        let p = opts.prepare(RequestKind::PageServerChild)?;
        self.page_server_prepared(p, &mut NoHooks).await
    }

    pub(crate) async fn page_server_prepared<H: Hooks>(
        &mut self,
        mut p: Prepared,
        hooks: &mut H,
    ) -> Result<PageServer> {
        let mode = match p.kind {
            // The daemon sends status-ready from its own process, after or before
            // criu's answer. Only without keep_open is criu then not also reading
            // the socket (and taking the daemon's answer).
            RequestKind::PageServer => Mode::OneShot { until_ready: true },
            _ => Mode::KeepOpen,
        };
        let resp = self.request(&mut p, mode, hooks).await?;
        let ps = resp
            .ps
            .ok_or_else(|| Error::protocol("a PAGE_SERVER response with pid and port", "none"))?;
        let Some(port) = ps.port else {
            return Err(Error::protocol(
                "a PAGE_SERVER response with a port",
                "none",
            ));
        };
        let pid = ps.pid.filter(|pid| *pid > 0);
        if pid.is_none() && p.kind == RequestKind::PageServerChild {
            return Err(Error::protocol(
                "a PAGE_SERVER_CHLD response with the child's pid",
                format!("pid {:?}", ps.pid),
            ));
        }
        let port = u16::try_from(port)
            .map_err(|_| Error::protocol("a TCP port", format!("port {port}")))?;
        Ok(PageServer {
            pid,
            port,
            images_dir: p.images_dir.clone(),
            log: p.log_path(),
        })
    }

    /// Waits for a child of criu (a [`page_server_child`](Self::page_server_child))
    /// to exit (`WAIT_PID`) and returns its status. criu takes no request after this
    /// one (it does not keep WAIT_PID open), so it ends the session.
    ///
    /// # Errors
    /// [`Error::Refused`] when `pid` is not criu's child.
    ///
    /// # Cancel safety
    /// Cancel safe: criu is closed and reaped; the child is re-parented and runs on.
    pub async fn wait_pid(mut self, pid: i32) -> Result<ExitStatus> {
        let kind = RequestKind::WaitPid;
        let req = CriuReq {
            r#type: kind.wire() as i32,
            pid: Some(
                u32::try_from(pid)
                    .map_err(|_| Error::invalid("pid", format!("{pid} is not a pid")))?,
            ),
            ..Default::default()
        };
        let answer = self
            .run(kind, req, Limits::default(), false, &mut NoHooks)
            .await;
        self.conn.close().await;
        let resp = answer?.resp;
        if !resp.success {
            return Err(self.refusal(kind, Some(pid), &resp, None));
        }
        let status = resp
            .status
            .ok_or_else(|| Error::protocol("a WAIT_PID response with a status", "none"))?;
        Ok(std::os::unix::process::ExitStatusExt::from_raw(status))
    }

    /// Saves this machine's CPU description to `cpuinfo.img` in the images
    /// directory (`criu cpuinfo dump`).
    ///
    /// # Errors
    /// [`Error::InvalidOptions`] without an images directory; [`Error::Refused`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn cpuinfo_dump(self, opts: CpuinfoOptions) -> Result<()> {
        let p = opts.prepare(RequestKind::CpuinfoDump)?;
        self.one_shot(p, &mut NoHooks).await.map(drop)
    }

    /// Compares the CPU description in the images directory with this machine
    /// (`criu cpuinfo check`).
    ///
    /// # Errors
    /// [`Error::Refused`] when the CPUs are incompatible (`errno` is `ENOTSUP`).
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn cpuinfo_check(self, opts: CpuinfoOptions) -> Result<()> {
        let p = opts.prepare(RequestKind::CpuinfoCheck)?;
        self.one_shot(p, &mut NoHooks).await.map(drop)
    }

    /// Closes the connection and reaps criu; returns its exit status when this
    /// session supervised one. criu's exit status is not a request's result.
    ///
    /// # Errors
    /// None: the status is `None` for a peer this session did not start
    /// ([`from_fd`](Self::from_fd)), or when criu had to be killed after the grace and
    /// could not be reaped.
    ///
    /// # Cancel safety
    /// The connection is closed at once; dropping the future while criu is still
    /// exiting kills it, and it is reaped in the background.
    pub async fn close(mut self) -> Option<ExitStatus> {
        self.conn.close().await
    }
}

pub(crate) fn pre_dump_outcome(pid: i32, p: Prepared) -> PreDumpOutcome {
    PreDumpOutcome {
        pid,
        log: p.log_path(),
        stats: read_in(&p, stats::read_dump_stats),
        images_dir: p.images_dir,
    }
}

fn read_in<T>(p: &Prepared, read: fn(&std::path::Path) -> Result<T>) -> Result<T> {
    match &p.work_dir {
        Some(dir) => read(dir),
        None => Err(Error::Stats {
            path: None,
            reason: "the request had no work directory to write them to".into(),
            source: None,
        }),
    }
}

pub(crate) fn keep_open(kind: RequestKind) -> CriuReq {
    CriuReq {
        r#type: kind.wire() as i32,
        keep_open: Some(true),
        ..Default::default()
    }
}
