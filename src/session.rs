//! One criu process and the lock-step exchange with it.
//!
//! The protocol is one request, any number of notifications (each blocking criu until
//! answered), one final response. A [`Session`] owns the socket and the child and drives
//! that exchange from its async methods; requests that end the criu process take
//! `self`, keep-open queries take `&mut self`.

use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;
use tokio_seqpacket::UnixSeqpacket;
use tracing::Instrument;

use crate::codec::{self, Incoming, RequestKind};
use crate::error::{BoxError, Error, Refusal, Result};
use crate::info::{Features, Version};
use crate::log;
use crate::notify::{Hooks, NoHooks, Reply};
use crate::options::{CheckOptions, DumpOptions, PreDumpOptions, Prepared, RestoreOptions};
use crate::outcome::{DumpOutcome, PreDumpOutcome, RestoreOutcome};
use crate::proto::{CriuReq, CriuResp};
use crate::spawn::{StderrTail, Supervised};
use crate::stats;
use crate::transport::Transport;

/// How long criu gets to answer a rollback, or to exit, before it is killed.
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
}

/// The answer to one request.
struct Answer {
    resp: CriuResp,
    hook_failure: Option<(String, BoxError)>,
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
        let answer = self
            .run(kind, req, None, &mut NoHooks)
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
    /// [`Error::InvalidOptions`] before anything starts; [`Error::Refused`] with criu's
    /// message and log lines when criu fails (the tree keeps running);
    /// [`Error::Timeout`] past the request's timeout (rolled back); [`Error::Exited`]
    /// when criu dies.
    ///
    /// # Cancel safety
    /// Dropping the future before criu's `post-dump` hook was answered leaves the tree
    /// running with its memory intact: criu's next notification is answered with
    /// failure in the background, criu rolls back and is reaped (killed only if it
    /// stops answering within the grace period). After `post-dump` was answered the
    /// dump is committed; it then finishes in the background.
    ///
    /// # Drop behavior
    /// As for cancellation; the rollback needs a running Tokio runtime. Without one,
    /// criu is killed, which its parasite survives (the tree resumes).
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
        let (p, _) = self.one_shot(p, hooks).await?;
        Ok(DumpOutcome {
            pid,
            log: p.log_path(),
            stats: read_in(&p, stats::read_dump_stats),
            images_dir: p.images_dir,
        })
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
    /// Dropping the future before the restored tree resumed makes criu fail at its
    /// next hook and kill what it restored.
    ///
    /// # Drop behavior
    /// As for cancellation.
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
    /// As [`dump`](Self::dump): the tree keeps running either way.
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

    /// Closes the connection and reaps criu; returns its exit status when this
    /// session supervised one. criu's exit status is not a request's result.
    pub async fn close(mut self) -> Option<ExitStatus> {
        self.conn.close().await
    }

    /// Sends a request that ends criu, answers its notifications, reaps criu, and
    /// turns a failure into an error carrying criu's message and log.
    async fn one_shot<H: Hooks>(
        mut self,
        p: Prepared,
        hooks: &mut H,
    ) -> Result<(Prepared, CriuResp)> {
        self.take_mapped(&p)?;
        let span = tracing::info_span!(
            "criu",
            request = %p.kind,
            pid = ?p.pid,
            criu.pid = ?self.criu_pid(),
        );
        async move {
            let req = CriuReq {
                r#type: p.kind.wire() as i32,
                opts: Some(p.opts.clone()),
                ..Default::default()
            };
            let answer = self.run(p.kind, req, p.timeout, hooks).await?;
            self.conn.close().await;
            let answer = self.judge(&p, answer)?;
            tracing::info!("criu finished the request");
            Ok((p, answer))
        }
        .instrument(span)
        .await
    }

    /// Turns criu's final answer into the caller's result.
    fn judge(&self, p: &Prepared, answer: Answer) -> Result<CriuResp> {
        let Answer { resp, hook_failure } = answer;
        match (resp.success, hook_failure) {
            (false, Some((hook, source))) => Err(Error::Hook {
                request: p.kind,
                hook,
                source,
                criu_message: resp.cr_errmsg,
            }),
            (false, None) => {
                let mut err = self.refusal(p.kind, p.pid, &resp, p.log_path());
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
            None => log::error_lines(&stderr),
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

    /// Runs one exchange under the request's timeout; on any failure while criu waits
    /// on us, rolls the request back before returning.
    async fn run<H: Hooks>(
        &mut self,
        kind: RequestKind,
        req: CriuReq,
        timeout: Option<Duration>,
        hooks: &mut H,
    ) -> Result<Answer> {
        let fut = self.conn.exchange(kind, &req, hooks);
        let res = match timeout.or(self.default_timeout) {
            Some(after) => match tokio::time::timeout(after, fut).await {
                Ok(res) => res,
                Err(_) => {
                    tracing::warn!(?after, "request timed out: rolling back");
                    let rolled_back = self.conn.rollback().await;
                    return Err(Error::Timeout {
                        request: kind,
                        after,
                        rolled_back,
                    });
                }
            },
            None => fut.await,
        };
        if res.is_err() && self.conn.in_flight.is_some() {
            self.conn.rollback().await;
        }
        res
    }
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

    async fn iterate<H: Hooks>(&mut self, p: Prepared, hooks: &mut H) -> Result<PreDumpOutcome> {
        let s = &mut self.session;
        s.take_mapped(&p)?;
        let pid = p.pid.unwrap_or_default();
        let req = CriuReq {
            r#type: p.kind.wire() as i32,
            opts: Some(p.opts.clone()),
            ..Default::default()
        };
        let span =
            tracing::info_span!("criu", request = %p.kind, pid, iteration = self.iterations + 1);
        let answer = s
            .run(p.kind, req, p.timeout, hooks)
            .instrument(span)
            .await?;
        let failed = !answer.resp.success;
        let judged = s.judge(&p, answer);
        if failed {
            // criu leaves the loop after a failed pre-dump; do not keep a dead process.
            s.conn.close().await;
        }
        judged?;
        self.iterations += 1;
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
    /// A request was sent and its final answer has not arrived.
    in_flight: Option<RequestKind>,
    /// criu sent a notification and waits for our answer.
    notify_pending: bool,
    grace: Duration,
}

impl Conn {
    fn new(sock: UnixSeqpacket, child: Option<Supervised>, grace: Duration) -> Self {
        Conn {
            transport: Some(Transport::new(sock)),
            stderr: child.as_ref().map(Supervised::stderr_tail),
            child,
            in_flight: None,
            notify_pending: false,
            grace,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .as_ref()
            .map(StderrTail::snapshot)
            .unwrap_or_default()
    }

    fn transport(&self, kind: RequestKind) -> Result<&Transport> {
        self.transport.as_ref().ok_or(Error::Exited {
            request: kind,
            status: None,
            stderr: "the session was closed by an earlier failure".into(),
        })
    }

    /// Sends `req` and answers notifications until criu's final response.
    ///
    /// Cancel safety: `in_flight` and `notify_pending` always say where the exchange
    /// stands, so whoever drops this future can roll back.
    async fn exchange<H: Hooks>(
        &mut self,
        kind: RequestKind,
        req: &CriuReq,
        hooks: &mut H,
    ) -> Result<Answer> {
        self.transport(kind)?.send(&codec::encode(req)).await?;
        self.in_flight = Some(kind);
        let mut hook_failure: Option<(String, BoxError)> = None;
        loop {
            let Some(dg) = self.transport(kind)?.recv().await? else {
                return Err(self.exited(kind).await);
            };
            match codec::classify(kind, &dg.bytes, dg.fds)? {
                Incoming::Done(resp) => {
                    self.in_flight = None;
                    tracing::debug!(success = resp.success, "criu answered");
                    return Ok(Answer { resp, hook_failure });
                }
                Incoming::Notify(n) => {
                    self.notify_pending = true;
                    let name = n.name().to_owned();
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
                    self.transport(kind)?.send(&answer).await?;
                    self.notify_pending = false;
                }
            }
        }
    }

    /// criu closed the connection: reap it and say how it ended.
    async fn exited(&mut self, kind: RequestKind) -> Error {
        let status = self.close().await;
        Error::Exited {
            request: kind,
            status,
            stderr: self.stderr(),
        }
    }

    /// Makes criu give up the request in flight: answers every notification with
    /// failure until criu's final response, then closes and reaps. Kills criu if it
    /// does not get there within the grace period. Returns whether criu confirmed
    /// (or nothing was in flight).
    async fn rollback(&mut self) -> bool {
        let Some(kind) = self.in_flight.take() else {
            self.close().await;
            return true;
        };
        let deadline = Instant::now() + self.grace;
        let confirmed = match &self.transport {
            Some(t) => {
                let pending = std::mem::take(&mut self.notify_pending);
                tokio::time::timeout_at(deadline, answer_with_failure(t, kind, pending))
                    .await
                    .unwrap_or_else(|_| {
                        tracing::warn!(grace = ?self.grace, "criu did not finish rolling back: killing it");
                        false
                    })
            }
            None => false,
        };
        if !confirmed {
            if let Some(child) = self.child.as_mut() {
                child.kill();
            }
        }
        self.close().await;
        confirmed
    }

    /// Closes the socket and reaps criu.
    async fn close(&mut self) -> Option<ExitStatus> {
        self.in_flight = None;
        self.notify_pending = false;
        self.transport = None;
        match self.child.take() {
            Some(child) => child.finish(self.grace).await,
            None => None,
        }
    }
}

async fn answer_with_failure(t: &Transport, kind: RequestKind, pending: bool) -> bool {
    let fail = codec::encode(&codec::notify_answer(false, Vec::new()));
    if pending && t.send(&fail).await.is_err() {
        return false;
    }
    loop {
        match t.recv().await {
            Ok(Some(dg)) => match codec::classify(kind, &dg.bytes, dg.fds) {
                Ok(Incoming::Notify(n)) => {
                    tracing::info!(hook = n.name(), "answering with failure to roll back");
                    if t.send(&fail).await.is_err() {
                        return false;
                    }
                }
                Ok(Incoming::Done(resp)) => {
                    tracing::info!(success = resp.success, "criu rolled back");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "unreadable message during rollback");
                    return false;
                }
            },
            Ok(None) | Err(_) => return false,
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.transport.is_none() && self.child.is_none() {
            return;
        }
        let mut rest = Conn {
            transport: self.transport.take(),
            child: self.child.take(),
            stderr: None,
            in_flight: self.in_flight.take(),
            notify_pending: self.notify_pending,
            grace: self.grace,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if let Some(kind) = rest.in_flight {
                        tracing::warn!(request = %kind, "request dropped mid-way: rolling back");
                    }
                    rest.rollback().await;
                });
            }
            // No runtime: `Supervised`'s own drop kills criu; its parasite cures the
            // tree, which keeps running.
            Err(_) => drop(rest),
        }
    }
}
