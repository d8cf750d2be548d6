//! One criu process and the lock-step exchange with it.
//!
//! The protocol is one request, any number of notifications (each blocking criu until
//! answered), one final response. A [`Session`] owns the socket and the child and drives
//! that exchange from its async methods; requests that end the criu process take
//! `self`, keep-open queries take `&mut self`.

use std::process::ExitStatus;
use std::time::Duration;

use tokio_seqpacket::UnixSeqpacket;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::codec::{self, Incoming, RequestKind};
use crate::error::{BoxError, Error, Interruption, Refusal, RequestState, Result};
use crate::exchange::{Exchange, OnInterrupt};
use crate::info::{Features, Version};
use crate::log;
use crate::notify::{Hooks, NoHooks, Notification, Reply};
use crate::options;
use crate::options::{
    CheckOptions, DumpOptions, PageServerOptions, PreDumpOptions, Prepared, RestoreOptions,
};
use crate::outcome::{DumpOutcome, PageServer, PreDumpOutcome, RestoreOutcome};
use crate::process::Held;
use crate::proto::{CriuReq, CriuResp};
use crate::publish::{Scrub, Staging};
use crate::spawn::{StderrTail, Supervised};
use crate::stats;
use crate::transport::Transport;

/// How long criu gets, once a request is interrupted after criu seized its target, to
/// reach its next hook and finish rolling back (or, past the commit point, to finish)
/// before it is killed; also how long criu gets to exit after its session closes.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// One `criu swrk` process (or, through [`Session::from_socket`], any peer speaking
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
    conn: Conn,
    /// How many fds were mapped into criu's table at spawn for the request to come.
    mapped: Option<usize>,
    /// The peer is not a criu we started: fd numbers for its table go out as planned.
    foreign_peer: bool,
    default_timeout: Option<Duration>,
    /// criu's version, once asked.
    version: Option<Version>,
}

/// How a request relates to the criu process serving it.
#[derive(Debug, Clone, Copy)]
enum Mode {
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

/// The answer to one request.
struct Answer {
    resp: CriuResp,
    hook_failure: Option<(String, BoxError)>,
    /// What became of the request.
    state: RequestState,
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
        }
    }

    /// A session over a connected socket whose peer speaks criu's swrk protocol: the
    /// test seam for fake peers, or a criu started by other means.
    ///
    /// No child is supervised. Fds meant for criu's own fd table (`inherit_fd`,
    /// `page_server_fd`) cannot travel over an existing connection: requests carry the
    /// numbers they would have had in a criu started by this crate, and the fds
    /// themselves are closed.
    ///
    /// # Example
    /// ```
    /// # async fn run() -> criu_swrk::Result<()> {
    /// let (ours, theirs) = tokio_seqpacket::UnixSeqpacket::pair().unwrap();
    /// let session = criu_swrk::Session::from_socket(ours);
    /// # drop(theirs); drop(session); Ok(()) }
    /// ```
    pub fn from_socket(sock: UnixSeqpacket) -> Self {
        Session {
            conn: Conn::new(sock, None, DEFAULT_GRACE),
            mapped: None,
            foreign_peer: true,
            default_timeout: None,
            version: None,
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
    pub fn criu_pid(&self) -> Option<u32> {
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
    /// [`Refusal::log_errors`].
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is changed by a check; criu is reaped in the background.
    pub async fn check(self, opts: CheckOptions) -> Result<()> {
        let p = opts.prepare(RequestKind::Check)?;
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
    ///   with its helpers ([`RequestState::Untouched`]);
    /// * between `pre-dump` and `post-dump` criu's next hook is answered with failure
    ///   and criu resumes the tree, memory intact ([`RequestState::RolledBack`]). criu
    ///   has the grace period ([`Criu::grace`](crate::Criu::grace)) to get to that
    ///   hook; past it criu is killed and the tree may carry criu's parasite
    ///   ([`RequestState::Unknown`]);
    /// * once `post-dump` was answered with success the dump is committed: it is let
    ///   finish and its outcome is returned (images complete, the tree gone unless
    ///   `leave_running`).
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
    /// [`Reply::Fail`] (criu rolled back: the tree keeps running).
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
        // Where the images really are: a staged dump whose rename failed left them
        // in its staging directory.
        let images_dir = match &p.staging {
            Some(st) => Some(st.location().to_path_buf()),
            None => p.images_dir.clone(),
        };
        Ok(DumpOutcome {
            pid,
            log: p.log_path(),
            stats,
            images_dir,
        })
    }

    /// The version of the criu serving this session, asked once, within `p`'s own
    /// timeout and cancellation (a criu that never answers must not outlast them).
    async fn known_version(&mut self, p: &Prepared) -> Result<Version> {
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
    ///   ([`RequestState::Untouched`]).
    /// * Between `pre-restore` and `post-restore` criu's next hook is answered with
    ///   failure and criu kills what it restored ([`RequestState::RolledBack`]); past
    ///   the grace period criu is killed, and a partly restored tree may be left
    ///   ([`RequestState::Unknown`], with its pid in the error when criu had sent it).
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
    /// ([`RequestState::Unknown`]: the tree may carry criu's parasite).
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
        let mut lp = PreDumpLoop {
            session: self,
            iterations: 0,
        };
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
    pub async fn cpuinfo_dump(self, opts: CheckOptions) -> Result<()> {
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
    pub async fn cpuinfo_check(self, opts: CheckOptions) -> Result<()> {
        let p = opts.prepare(RequestKind::CpuinfoCheck)?;
        self.one_shot(p, &mut NoHooks).await.map(drop)
    }

    /// Closes the connection and reaps criu; returns its exit status when this
    /// session supervised one. criu's exit status is not a request's result.
    pub async fn close(mut self) -> Option<ExitStatus> {
        self.conn.close().await
    }

    /// Sends a request that ends criu, answers its notifications, reaps criu, and
    /// turns a failure into an error carrying criu's message and log.
    async fn one_shot<H: Hooks>(
        mut self,
        mut p: Prepared,
        hooks: &mut H,
    ) -> Result<(Prepared, CriuResp)> {
        let resp = self
            .request(&mut p, Mode::OneShot { until_ready: false }, hooks)
            .await?;
        Ok((p, resp))
    }

    /// Sends one request and answers its notifications until criu's final response.
    /// criu is closed and reaped after a one-shot request, and after any failure
    /// (criu leaves its request loop then). A dump that does not commit has its
    /// images removed (see `scrub`).
    async fn request<H: Hooks>(
        &mut self,
        p: &mut Prepared,
        mode: Mode,
        hooks: &mut H,
    ) -> Result<CriuResp> {
        self.take_mapped(p)?;
        let span = tracing::info_span!(
            "criu",
            request = %p.kind,
            pid = ?p.pid,
            criu.pid = ?self.criu_pid(),
        );
        self.conn.scrub = p.scrub.take();
        self.conn.staging = p.staging.take();
        async move {
            if let Err(e) = self.preflight(p).await {
                self.conn.close().await;
                self.conn.settle(RequestState::Untouched);
                return Err(e);
            }
            let req = CriuReq {
                r#type: p.kind.wire() as i32,
                opts: Some(p.opts.clone()),
                keep_open: matches!(mode, Mode::KeepOpen).then_some(true),
                ..Default::default()
            };
            let until_ready = matches!(mode, Mode::OneShot { until_ready: true });
            let answer = self
                .run(p.kind, req, Limits::of(p), until_ready, hooks)
                .await;
            let state = match &answer {
                Ok(a) => a.state,
                Err(e) => e.request_state().unwrap_or(RequestState::Unknown),
            };
            if answer.as_ref().map_or(true, |a| !a.resp.success)
                || matches!(mode, Mode::OneShot { .. })
            {
                self.conn.close().await;
            }
            // Judged before settling: a failed dump's log is read before its staging
            // directory goes.
            let judged = answer.and_then(|a| self.judge(p, a));
            let staging_goes = state != RequestState::Committed
                && self
                    .conn
                    .staging
                    .as_ref()
                    .is_some_and(|st| !st.is_published());
            self.conn.settle(state);
            p.staging = self.conn.staging.take();
            let resp = judged.map_err(|mut e| {
                if let (Error::Refused(r), true) = (&mut e, staging_goes) {
                    // Moved to the images directory with the staging directory's end.
                    r.log_path = p.log_path();
                }
                e
            })?;
            tracing::info!("criu finished the request");
            Ok(resp)
        }
        .instrument(span)
        .await
    }

    /// Checks what criu cannot be trusted to refuse clearly, before sending `p`.
    async fn preflight(&mut self, p: &Prepared) -> Result<()> {
        let mut gated = options::version_gated(&p.opts);
        if p.log_piped_by_default {
            // Our default, not the caller's choice: an older criu just logs to a file.
            gated.retain(|(name, _)| *name != "log_to_stderr");
        }
        if p.record {
            let version = self.known_version(p).await?;
            let record = crate::record::DumpRecord::of(
                p.pid.unwrap_or_default(),
                &p.opts,
                version.to_string(),
                p.container.clone(),
            );
            // Through the directory fd criu gets: the staging directory of a staged dump.
            let dir = std::path::PathBuf::from(format!("/proc/self/fd/{}", p.opts.images_dir_fd));
            record.write(&dir)?;
        }
        if !gated.is_empty() {
            let version = self.known_version(p).await?;
            if let Some((name, (major, minor))) = gated
                .into_iter()
                .find(|(_, (a, b))| !version.at_least(*a, *b))
            {
                return Err(Error::Unsupported {
                    what: format!("option {name}"),
                    reason: format!(
                        "unsupported by criu {version} (needs {major}.{minor} or later)"
                    ),
                });
            }
        }
        if p.kind == RequestKind::Dump && p.opts.lazy_pages == Some(true) {
            lazy_dump_preflight()?;
        }
        Ok(())
    }

    /// Turns criu's final answer into the caller's result.
    fn judge(&self, p: &Prepared, answer: Answer) -> Result<CriuResp> {
        let Answer {
            resp, hook_failure, ..
        } = answer;
        match (resp.success, hook_failure) {
            (false, Some((hook, source))) => Err(Error::Hook {
                request: p.kind,
                hook,
                source,
                criu_message: resp.cr_errmsg,
            }),
            (false, None) => {
                let mut err = self.refusal(p.kind, p.pid, &resp, self.log_path(p));
                if let Error::Refused(r) = &mut err
                    && r.log_errors.is_empty()
                    && let Some(path) = p.fallback_log()
                {
                    r.log_errors = log::error_lines_of_file(&path);
                    r.log_path = Some(path);
                }
                if let (Error::Refused(r), Some(_)) = (&mut err, &p.scratch) {
                    // The scratch directory goes away with the request.
                    r.log_path = None;
                }
                Err(err)
            }
            (true, Some((hook, source))) => {
                // criu ignores failures of some hooks (network-unlock, post-resume):
                // the request went through, so say so rather than report a rollback.
                tracing::warn!(%hook, error = %source, "criu went on despite the failed hook");
                Ok(resp)
            }
            (true, None) => Ok(resp),
        }
    }

    /// Where criu's log file for `p` is now: in a staged dump's staging directory
    /// until the dump is published.
    fn log_path(&self, p: &Prepared) -> Option<std::path::PathBuf> {
        match &self.conn.staging {
            Some(st) if !st.is_published() && p.work_dir == p.images_dir => {
                Some(st.temp().join(p.log_file.as_ref()?))
            }
            _ => p.log_path(),
        }
    }

    fn refusal(
        &self,
        kind: RequestKind,
        pid: Option<i32>,
        resp: &CriuResp,
        log_path: Option<std::path::PathBuf>,
    ) -> Error {
        let stderr = self.conn.stderr();
        let log_errors = match &log_path {
            Some(path) => log::error_lines_of_file(path),
            None => log::error_lines(&self.conn.stderr_errors()),
        };
        Error::Refused(Box::new(Refusal {
            request: kind,
            pid,
            errno: resp.cr_errno.filter(|e| *e != 0),
            // criu's cr_errmsg is its first logged error, which can be a harmless one
            // (RLIMIT_NOFILE without CAP_SYS_RESOURCE); the log lines then say more.
            message: resp
                .cr_errmsg
                .clone()
                .filter(|m| !m.trim().is_empty() && !log::is_harmless(m)),
            log_path,
            log_errors,
            stderr,
        }))
    }

    fn take_mapped(&mut self, p: &Prepared) -> Result<()> {
        if p.passed_count == 0 || self.foreign_peer {
            return Ok(());
        }
        if self.mapped == Some(p.passed_count) {
            self.mapped = None;
            return Ok(());
        }
        Err(Error::invalid(
            "inherit_fd",
            "fds for criu's own fd table (inherit_fd, page_server_fd) are mapped when criu \
             starts: use Criu::restore / Criu::dump, which start a criu for the request",
        ))
    }

    /// Runs one exchange under the request's timeout and cancellation. An
    /// interruption (or an error of ours while criu works on the request) ends it as
    /// far as it still can be ended: see [`Conn::wind_down`]. A request that went
    /// through anyway (criu was past its commit point) returns its answer.
    async fn run<H: Hooks>(
        &mut self,
        kind: RequestKind,
        req: CriuReq,
        limits: Limits<'_>,
        until_ready: bool,
        hooks: &mut H,
    ) -> Result<Answer> {
        let timeout = limits.timeout.or(self.default_timeout);
        let interrupt = {
            let exchange = self.conn.exchange(kind, &req, until_ready, hooks);
            let deadline = async {
                match timeout {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            let cancelled = async {
                match limits.cancel {
                    Some(token) => token.cancelled().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                res = exchange => match res {
                    Err(e) if self.conn.in_flight() => Interrupt::Failed(e),
                    res => return res,
                },
                () = deadline => Interrupt::Timeout(timeout.unwrap_or_default()),
                () = cancelled => Interrupt::Cancelled,
            }
        };
        // The exchange future is gone; `conn` says where it stood.
        let (resp, state) = self.conn.wind_down().await;
        let at = self.conn.interruption(state);
        let interrupt = match interrupt {
            // Nothing to account for beyond the error itself.
            Interrupt::Failed(e) if state == RequestState::Untouched => return Err(e),
            other => other,
        };
        if let (Some(resp), Interrupt::Timeout(_) | Interrupt::Cancelled) = (&resp, &interrupt)
            && resp.success
        {
            tracing::info!(%at, "interrupted past its commit point: the request went through");
            return Ok(Answer {
                resp: resp.clone(),
                hook_failure: None,
                state,
            });
        }
        Err(match interrupt {
            Interrupt::Timeout(after) => {
                tracing::warn!(?after, %at, "request timed out");
                Error::Timeout {
                    request: kind,
                    after,
                    at,
                }
            }
            Interrupt::Cancelled => {
                tracing::warn!(%at, "request cancelled");
                Error::Cancelled { request: kind, at }
            }
            Interrupt::Failed(source) => {
                tracing::warn!(error = %source, %at, "gave up on the request");
                Error::Aborted {
                    request: kind,
                    at,
                    source: Box::new(source),
                }
            }
        })
    }
}

/// Our limits on one request.
#[derive(Debug, Clone, Copy, Default)]
struct Limits<'a> {
    timeout: Option<Duration>,
    cancel: Option<&'a CancellationToken>,
}

impl<'a> Limits<'a> {
    fn of(p: &'a Prepared) -> Self {
        Limits {
            timeout: p.timeout,
            cancel: p.cancel.as_ref(),
        }
    }
}

enum Interrupt {
    Timeout(Duration),
    Cancelled,
    /// An error of ours while criu was working on the request.
    Failed(Error),
}

/// The pre-dump loop on one criu process: any number of pre-dumps, then one dump.
/// The types allow nothing else, which is all criu accepts.
///
/// Made by [`Session::pre_dump`] or [`Criu::pre_dump`](crate::Criu::pre_dump).
///
/// # Drop behavior
/// Dropping the loop without a final dump ends criu; the tree keeps running and the
/// pre-dump images stay on disk.
#[derive(Debug)]
pub struct PreDumpLoop {
    session: Session,
    iterations: u32,
}

impl PreDumpLoop {
    /// How many pre-dumps have completed.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// One more pre-dump (usually with `parent_images` naming the previous one).
    ///
    /// # Errors
    /// As [`Session::dump`]. After a failed pre-dump criu has left the loop: further
    /// calls fail with [`Error::Exited`].
    ///
    /// # Cancel safety
    /// Dropping the future rolls this pre-dump back and ends the loop.
    pub async fn pre_dump(&mut self, opts: PreDumpOptions) -> Result<PreDumpOutcome> {
        self.pre_dump_with(opts, &mut NoHooks).await
    }

    /// [`pre_dump`](Self::pre_dump) with hooks.
    ///
    /// # Errors
    /// As [`pre_dump`](Self::pre_dump), plus [`Error::Hook`].
    ///
    /// # Cancel safety
    /// As [`pre_dump`](Self::pre_dump).
    pub async fn pre_dump_with<H: Hooks>(
        &mut self,
        opts: PreDumpOptions,
        hooks: &mut H,
    ) -> Result<PreDumpOutcome> {
        self.iterate(opts.prepare(RequestKind::PreDump)?, hooks)
            .await
    }

    async fn iterate<H: Hooks>(
        &mut self,
        mut p: Prepared,
        hooks: &mut H,
    ) -> Result<PreDumpOutcome> {
        let pid = p.pid.unwrap_or_default();
        let iteration = self.iterations + 1;
        self.session
            .request(&mut p, Mode::InLoop, hooks)
            .instrument(tracing::info_span!("pre_dump_loop", iteration))
            .await?;
        self.iterations = iteration;
        Ok(pre_dump_outcome(pid, p))
    }

    /// The final dump, on the same criu process.
    ///
    /// # Errors
    /// As [`Session::dump`].
    ///
    /// # Cancel safety
    /// As [`Session::dump`].
    pub async fn dump(self, opts: DumpOptions) -> Result<DumpOutcome> {
        self.session.dump(opts).await
    }

    /// [`dump`](Self::dump) with hooks.
    ///
    /// # Errors
    /// As [`Session::dump_with`].
    ///
    /// # Cancel safety
    /// As [`Session::dump`].
    pub async fn dump_with<H: Hooks>(
        self,
        opts: DumpOptions,
        hooks: &mut H,
    ) -> Result<DumpOutcome> {
        self.session.dump_with(opts, hooks).await
    }
}

fn pre_dump_outcome(pid: i32, p: Prepared) -> PreDumpOutcome {
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
        None => Err(Error::invalid(
            "work_dir",
            "no work directory: criu wrote no stats",
        )),
    }
}

fn keep_open(kind: RequestKind) -> CriuReq {
    CriuReq {
        r#type: kind.wire() as i32,
        keep_open: Some(true),
        ..Default::default()
    }
}

/// The connection and the child, and where the exchange stands.
#[derive(Debug)]
struct Conn {
    transport: Option<Transport>,
    child: Option<Supervised>,
    /// criu's stderr, still readable after the child was reaped.
    stderr: Option<StderrTail>,
    /// The request sent last; in flight until criu's final response.
    exchange: Option<Exchange>,
    /// The restored root, held from `post-restore` on: a restore dropped past its
    /// commit point must not leave a tree running that nobody knows of.
    restored: Option<Held>,
    /// What a dump that does not commit leaves to remove.
    scrub: Option<Scrub>,
    /// Where a staged dump is written until it commits.
    staging: Option<Staging>,
    grace: Duration,
}

impl Conn {
    fn new(sock: UnixSeqpacket, child: Option<Supervised>, grace: Duration) -> Self {
        Conn {
            transport: Some(Transport::new(sock)),
            stderr: child.as_ref().map(Supervised::stderr_tail),
            child,
            exchange: None,
            restored: None,
            scrub: None,
            staging: None,
            grace,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .as_ref()
            .map(StderrTail::snapshot)
            .unwrap_or_default()
    }

    /// The error lines of criu's stderr, kept apart from the tail so that a verbose
    /// log does not push them out.
    fn stderr_errors(&self) -> String {
        self.stderr
            .as_ref()
            .map(StderrTail::error_text)
            .unwrap_or_default()
    }

    fn transport(&self, kind: RequestKind) -> Result<&Transport> {
        self.transport.as_ref().ok_or(Error::Exited {
            request: kind,
            status: None,
            stderr: "the session was closed by an earlier failure".into(),
            log_errors: Vec::new(),
            at: Interruption::untouched(),
        })
    }

    /// A request was sent and criu has neither answered it nor gone away.
    fn in_flight(&self) -> bool {
        self.exchange.as_ref().is_some_and(|x| !x.is_finished())
    }

    fn exchange_mut(&mut self) -> &mut Exchange {
        self.exchange
            .as_mut()
            .expect("a request is in flight while its exchange runs")
    }

    /// The caller's account of the request that ended in `state`.
    fn interruption(&self, state: RequestState) -> Interruption {
        match &self.exchange {
            Some(x) => x.interruption(state),
            None => Interruption {
                state,
                ..Interruption::untouched()
            },
        }
    }

    /// Sends `req` and answers notifications until criu's final response.
    ///
    /// With `until_ready`, a successful response is held back until criu's
    /// `status-ready` notification has been answered too: a page server sends it from
    /// its own process, before or after criu's response, and dies if nobody answers.
    ///
    /// Cancel safety: `exchange` always says where the request stands, so whoever
    /// drops this future can wind it down ([`wind_down`](Self::wind_down)).
    async fn exchange<H: Hooks>(
        &mut self,
        kind: RequestKind,
        req: &CriuReq,
        until_ready: bool,
        hooks: &mut H,
    ) -> Result<Answer> {
        self.transport(kind)?;
        self.exchange = Some(Exchange::new(kind));
        if let Err(e) = self.transport(kind)?.send(&codec::encode(req)).await {
            return Err(self.send_failed(kind, e).await);
        }
        let mut hook_failure: Option<(String, BoxError)> = None;
        let mut ready = !until_ready;
        let mut held: Option<CriuResp> = None;
        loop {
            let Some(dg) = recv_while_alive(self.transport(kind)?, self.child.as_ref()).await?
            else {
                return Err(self.exited(kind).await);
            };
            let incoming = match codec::classify(kind, &dg.bytes, dg.fds) {
                Ok(incoming) => incoming,
                Err(e) => {
                    // Say where criu stands for the wind-down: a rejected NOTIFY (stray
                    // fd, missing pid) still blocks criu until answered; any other
                    // well-formed message was its final answer. Undecodable: unknown.
                    match codec::peek(&dg.bytes) {
                        Some(codec::Peek::Notify(name)) => {
                            self.exchange_mut().notified(&name, None);
                        }
                        Some(codec::Peek::Final { success }) => {
                            self.exchange_mut().finish(success);
                        }
                        None => {}
                    }
                    return Err(e);
                }
            };
            match incoming {
                Incoming::Done(resp) => {
                    tracing::debug!(success = resp.success, "criu answered");
                    if resp.success && !ready {
                        held = Some(resp);
                        continue;
                    }
                    let state = self.exchange_mut().finish(resp.success);
                    return Ok(Answer {
                        resp,
                        hook_failure,
                        state,
                    });
                }
                Incoming::Notify(n) => {
                    self.exchange_mut().notified(n.name(), n.pid());
                    if let (RequestKind::Restore, Notification::PostRestore { pid }) = (kind, &n) {
                        // criu's child, or ours (rst_sibling); a session over a foreign
                        // socket has only ours to check against.
                        let mut parents = vec![std::process::id()];
                        parents.extend(self.child.as_ref().and_then(Supervised::pid));
                        self.restored = Held::child_of(*pid, &parents);
                    }
                    let name = n.name().to_owned();
                    ready |= matches!(n, Notification::StatusReady);
                    tracing::debug!(hook = %name, pid = ?n.pid(), "criu reached a hook");
                    let reply = hooks
                        .on_notify(n)
                        .instrument(tracing::debug_span!("hook", name = %name))
                        .await;
                    let (ok, externals) = match reply {
                        Reply::Ok => (true, Vec::new()),
                        Reply::Externals(v) => (true, v),
                        Reply::Fail(e) => {
                            tracing::info!(hook = %name, error = %e, "hook failed: criu rolls back");
                            hook_failure.get_or_insert((name, e));
                            (false, Vec::new())
                        }
                    };
                    let answer = codec::encode(&codec::notify_answer(ok, externals));
                    if let Err(e) = self.transport(kind)?.send(&answer).await {
                        return Err(self.send_failed(kind, e).await);
                    }
                    self.exchange_mut().answered(ok);
                    if self.exchange_mut().is_committed()
                        && let Some(staging) = self.staging.as_mut()
                    {
                        staging.publish();
                    }
                    if ready && let Some(resp) = held.take() {
                        let state = self.exchange_mut().finish(true);
                        return Ok(Answer {
                            resp,
                            hook_failure,
                            state,
                        });
                    }
                }
            }
        }
    }

    /// A send failed: criu gone (its end closed) is criu's exit; anything else is ours.
    async fn send_failed(&mut self, kind: RequestKind, e: Error) -> Error {
        let gone = matches!(
            &e,
            Error::Io { source, .. } if matches!(
                source.kind(),
                std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
            )
        );
        if gone { self.exited(kind).await } else { e }
    }

    /// criu closed the connection: reap it and say how it ended.
    async fn exited(&mut self, kind: RequestKind) -> Error {
        let state = self
            .exchange
            .as_mut()
            .map_or(RequestState::Untouched, Exchange::lost);
        let at = self.interruption(state);
        // Whatever criu left in its process group (a helper holding the socket, say)
        // has no purpose now.
        let status = self.stop_now().await;
        Error::Exited {
            request: kind,
            status,
            stderr: self.stderr(),
            log_errors: log::error_lines(&self.stderr_errors()),
            at,
        }
    }

    /// Ends the request in flight after an interruption, as far as it can still be
    /// ended, and closes the connection. Returns criu's final response if one came,
    /// and what became of the request.
    ///
    /// * Nothing touched yet: criu is stopped at once (killed with its helpers, or the
    ///   socket closed for a peer we did not start).
    /// * Otherwise every hook is answered (with failure until the commit point, so
    ///   that criu rolls back; with success after it) until criu's final response;
    ///   criu is killed if that does not come within the grace period.
    async fn wind_down(&mut self) -> (Option<CriuResp>, RequestState) {
        let Some(x) = self.exchange.as_mut().filter(|x| !x.is_finished()) else {
            // Over already (dropped while criu was being reaped, say): as it ended.
            let state = self
                .exchange
                .as_ref()
                .and_then(Exchange::outcome)
                .unwrap_or(RequestState::Untouched);
            self.close().await;
            return (None, state);
        };
        let (answer, pending) = match x.interrupt() {
            OnInterrupt::StopNow => {
                tracing::info!(request = %x.kind(), "nothing touched yet: stopping criu");
                let state = x.lost();
                self.stop_now().await;
                return (None, state);
            }
            OnInterrupt::WindDown { answer, pending } => (answer, pending),
        };
        let kind = x.kind();
        let grace = self.grace;
        let final_resp = match &self.transport {
            Some(t) => {
                let x = self.exchange.as_mut().expect("checked above");
                let child = self.child.as_ref();
                tokio::time::timeout(
                    grace,
                    answer_until_final(t, child, kind, x, answer, pending),
                )
                .await
                .unwrap_or_else(|_| {
                    tracing::warn!(?grace, "criu did not finish winding down: killing it");
                    None
                })
            }
            None => None,
        };
        let x = self.exchange.as_mut().expect("checked above");
        let state = match &final_resp {
            Some(resp) => x.finish(resp.success),
            None => x.lost(),
        };
        if final_resp.is_none() {
            self.stop_now().await;
        } else {
            self.close().await;
        }
        (final_resp, state)
    }

    /// Ends criu now: kills its process group (or, for a peer we did not start,
    /// closes the socket) and reaps it.
    async fn stop_now(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            child.kill();
        }
        self.close().await
    }

    /// The request ended in `state`: removes the images of a dump that did not
    /// commit, and lets go of a restored root.
    fn settle(&mut self, state: RequestState) {
        let scrub = self.scrub.take();
        if state != RequestState::Committed {
            match self.staging.take() {
                // Not published: dropping it removes the staging directory.
                Some(staging) if !staging.is_published() => drop(staging),
                _ => {
                    if let Some(scrub) = scrub {
                        scrub.run();
                    }
                }
            }
        }
        self.restored = None;
    }

    /// Closes the socket and reaps criu.
    async fn close(&mut self) -> Option<ExitStatus> {
        self.transport = None;
        match self.child.take() {
            Some(child) => child.finish(self.grace).await,
            None => None,
        }
    }
}

/// Answers each hook criu reaches with `answer` (the pending one first) until its final
/// response, which it returns; `None` if criu goes away or breaks the protocol first.
async fn answer_until_final(
    t: &Transport,
    child: Option<&Supervised>,
    kind: RequestKind,
    x: &mut Exchange,
    answer: bool,
    pending: bool,
) -> Option<CriuResp> {
    let encoded = |ok: bool| codec::encode(&codec::notify_answer(ok, Vec::new()));
    if pending {
        t.send(&encoded(answer)).await.ok()?;
        x.answered(answer);
    }
    loop {
        let dg = recv_while_alive(t, child).await.ok()??;
        match codec::classify(kind, &dg.bytes, dg.fds) {
            Ok(Incoming::Notify(n)) => {
                x.notified(n.name(), n.pid());
                let ok = x.wind_down_answer();
                tracing::info!(hook = n.name(), ok, "answering while winding down");
                t.send(&encoded(ok)).await.ok()?;
                x.answered(ok);
            }
            Ok(Incoming::Done(resp)) => {
                tracing::info!(success = resp.success, "criu answered while winding down");
                return Some(resp);
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable message while winding down");
                return None;
            }
        }
    }
}

/// Receives criu's next message; `None` at end-of-stream, or once criu has exited and
/// sent nothing more: a helper criu forked may hold criu's end of the socket open after
/// criu is gone, and end-of-stream would then never come.
async fn recv_while_alive(
    t: &Transport,
    child: Option<&Supervised>,
) -> Result<Option<crate::transport::Datagram>> {
    let Some(child) = child else {
        return t.recv().await;
    };
    tokio::select! {
        biased;
        dg = t.recv() => dg,
        () = child.exited() => {
            // What criu sent before it went is queued already.
            match tokio::time::timeout(Duration::from_millis(20), t.recv()).await {
                Ok(dg) => dg,
                Err(_) => Ok(None),
            }
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.transport.is_none() && self.child.is_none() {
            self.settle_dropped(None);
            return;
        }
        // Wrapped in `Detached`: were `rest` dropped as a plain `Conn` (no runtime, or
        // the task below dropped unfinished at runtime shutdown), its own drop would
        // build and spawn/drop another `Conn`, recursing until the stack overflows.
        let rest = Detached(Conn {
            transport: self.transport.take(),
            child: self.child.take(),
            stderr: None,
            exchange: self.exchange.take(),
            restored: self.restored.take(),
            scrub: self.scrub.take(),
            staging: self.staging.take(),
            grace: self.grace,
        });
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let mut rest = rest;
                    if let Some(x) = rest.0.exchange.as_ref().filter(|x| !x.is_finished()) {
                        tracing::warn!(request = %x.kind(), hook = ?x.pending(), "request dropped mid-way: winding it down");
                    }
                    let (_, state) = rest.0.wind_down().await;
                    rest.0.settle_dropped(Some(state));
                });
            }
            // No runtime: `Supervised`'s own drop kills criu; its parasite cures the
            // tree, which keeps running.
            Err(_) => drop(rest),
        }
    }
}

impl Conn {
    /// The end of a request nobody waits for any more: as [`settle`](Self::settle),
    /// and a restore that committed has its tree killed, since its caller is gone
    /// (the images are untouched: it can be restored again). `state` is `None` when
    /// criu could not be wound down (no runtime).
    fn settle_dropped(&mut self, state: Option<RequestState>) {
        let state = state.unwrap_or_else(|| {
            self.exchange
                .as_mut()
                .map_or(RequestState::Untouched, Exchange::lost)
        });
        if state == RequestState::Committed
            && let Some(root) = self.restored.take()
        {
            tracing::warn!(
                pid = root.pid(),
                "restore dropped after post-restore: killing the restored tree nobody waits for"
            );
            root.kill_tree();
        }
        self.settle(state);
    }
}

/// A connection wound down after its session was dropped (see `Conn`'s drop).
struct Detached(Conn);

impl Drop for Detached {
    /// Reached when the wind-down cannot run (no runtime) or is cut short (runtime
    /// shutdown): the socket closes and `Supervised`'s drop kills criu right here, so
    /// `Conn`'s drop finds nothing left and does not start another wind-down.
    fn drop(&mut self) {
        self.0.transport = None;
        self.0.child = None;
    }
}

/// A lazy dump serves pages through a pipe criu grows to 4 MiB; without
/// CAP_SYS_RESOURCE that needs `fs.pipe-max-size` of at least 4 MiB, and criu's own
/// failure ("tee: ... Operation not permitted", with a stale errno) misleads.
pub(crate) fn lazy_dump_preflight() -> Result<()> {
    const NEEDED: u64 = 4 * 1024 * 1024;
    const CAP_SYS_RESOURCE: u32 = 24;
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let has_cap = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0);
    match max {
        Some(max) if max < NEEDED && !has_cap => Err(Error::Unsupported {
            what: "lazy dump".into(),
            reason: format!(
                "criu grows its page pipe to {NEEDED} bytes, but fs.pipe-max-size is {max} and \
                 CAP_SYS_RESOURCE is missing: raise it first (echo {NEEDED} > \
                 /proc/sys/fs/pipe-max-size)"
            ),
        }),
        _ => Ok(()),
    }
}
