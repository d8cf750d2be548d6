//! The driver of one criu connection: sends a request, answers criu's notifications
//! with the caller's hooks, and, when the request is interrupted, winds it down as far
//! as [`Exchange`] allows (criu stopped, rolled back, or let finish), on every path
//! reaping criu. A dropped connection winds down in the background.

use std::process::ExitStatus;
use std::time::Duration;

use tokio_seqpacket::UnixSeqpacket;
use tracing::Instrument;

use crate::codec::{self, Incoming};
use crate::error::{BoxError, Error, Interruption, RequestState, Result};
use crate::exchange::{Exchange, OnInterrupt};
use crate::kind::RequestKind;
use crate::log;
use crate::notify::{Hooks, Notification, Reply};
use crate::process::Held;
use crate::proto::{CriuReq, CriuResp};
use crate::publish::{Scrub, Staging};
use crate::spawn::{StderrTail, Supervised};
use crate::transport::{Datagram, Transport};

/// The answer to one request.
pub(crate) struct Answer {
    pub(crate) resp: CriuResp,
    pub(crate) hook_failure: Option<(String, BoxError)>,
    /// What became of the request.
    pub(crate) state: RequestState,
}

/// The connection and the child, and where the exchange stands.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) transport: Option<Transport>,
    pub(crate) child: Option<Supervised>,
    /// criu's stderr, still readable after the child was reaped.
    pub(crate) stderr: Option<StderrTail>,
    /// The request sent last; in flight until criu's final response.
    pub(crate) exchange: Option<Exchange>,
    /// The restored root, held from `post-restore` on: a restore dropped past its
    /// commit point must not leave a tree running that nobody knows of.
    pub(crate) restored: Option<Held>,
    /// What a dump that does not commit leaves to remove.
    pub(crate) scrub: Option<Scrub>,
    /// Where a staged dump is written until it commits.
    pub(crate) staging: Option<Staging>,
    pub(crate) grace: Duration,
}

impl Conn {
    pub(crate) fn new(sock: UnixSeqpacket, child: Option<Supervised>, grace: Duration) -> Self {
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

    pub(crate) fn stderr(&self) -> String {
        self.stderr
            .as_ref()
            .map(StderrTail::snapshot)
            .unwrap_or_default()
    }

    /// The error lines of criu's stderr, kept apart from the tail so that a verbose
    /// log does not push them out.
    pub(crate) fn stderr_errors(&self) -> String {
        self.stderr
            .as_ref()
            .map(StderrTail::error_text)
            .unwrap_or_default()
    }

    pub(crate) fn transport(&self, kind: RequestKind) -> Result<&Transport> {
        self.transport
            .as_ref()
            .ok_or(Error::Closed { request: kind })
    }

    /// A request was sent and criu has neither answered it nor gone away.
    pub(crate) fn in_flight(&self) -> bool {
        self.exchange.as_ref().is_some_and(|x| !x.is_finished())
    }

    fn exchange_mut(&mut self) -> &mut Exchange {
        self.exchange
            .as_mut()
            .expect("a request is in flight while its exchange runs")
    }

    /// A staged dump's images move into place at its commit point: `post-dump`
    /// answered, or for a lazy dump criu's final success.
    fn publish_if_committed(&mut self) {
        if self.exchange.as_ref().is_some_and(Exchange::is_committed)
            && let Some(staging) = self.staging.as_mut()
        {
            staging.publish();
        }
    }

    /// The caller's account of the request that ended in `state`.
    pub(crate) fn interruption(&self, state: RequestState) -> Interruption {
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
    pub(crate) async fn exchange<H: Hooks>(
        &mut self,
        kind: RequestKind,
        req: &CriuReq,
        until_ready: bool,
        hooks: &mut H,
    ) -> Result<Answer> {
        self.transport(kind)?;
        let lazy = req.opts.as_ref().and_then(|o| o.lazy_pages) == Some(true);
        self.exchange = Some(Exchange::new(kind).lazy(lazy));
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
                    self.publish_if_committed();
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
                        let mut parents = vec![std::process::id() as i32];
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
                    self.publish_if_committed();
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
    pub(crate) async fn send_failed(&mut self, kind: RequestKind, e: Error) -> Error {
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
    pub(crate) async fn exited(&mut self, kind: RequestKind) -> Error {
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
    pub(crate) async fn wind_down(&mut self) -> (Option<CriuResp>, RequestState) {
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
        self.publish_if_committed();
        if final_resp.is_none() {
            self.stop_now().await;
        } else {
            self.close().await;
        }
        (final_resp, state)
    }

    /// Ends criu now: kills its process group (or, for a peer we did not start,
    /// closes the socket) and reaps it.
    pub(crate) async fn stop_now(&mut self) -> Option<ExitStatus> {
        if let Some(child) = self.child.as_mut() {
            child.kill();
        }
        self.close().await
    }

    /// The request ended in `state`: removes the images of a dump that did not
    /// commit, and lets go of a restored root.
    pub(crate) fn settle(&mut self, state: RequestState) {
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
    pub(crate) async fn close(&mut self) -> Option<ExitStatus> {
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
async fn recv_while_alive(t: &Transport, child: Option<&Supervised>) -> Result<Option<Datagram>> {
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
    pub(crate) fn settle_dropped(&mut self, state: Option<RequestState>) {
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
