//! How one request runs on a session: the checks before it is sent, the exchange under
//! its timeout and cancellation, and criu's answer turned into the caller's result.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::conn::Answer;
use crate::error::{Error, Refusal, RequestState, Result};
use crate::kind::RequestKind;
use crate::log;
use crate::notify::Hooks;
use crate::options::Prepared;
use crate::proto::{CriuReq, CriuResp};
use crate::session::{Mode, Session};

impl Session {
    /// Sends a request that ends criu, answers its notifications, reaps criu, and
    /// turns a failure into an error carrying criu's message and log.
    pub(crate) async fn one_shot<H: Hooks>(
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
    pub(crate) async fn request<H: Hooks>(
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
        (self.conn.scrub, self.conn.staging) = p.take_guards();
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
            p.return_staging(self.conn.staging.take());
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
        // Our default, not the caller's choice: an older criu just logs to a file.
        let ours: &[&str] = if p.log_piped_by_default {
            &["log_to_stderr"]
        } else {
            &[]
        };
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
        if crate::preflight::needs_version(&p.opts, ours) {
            let version = self.known_version(p).await?;
            crate::preflight::check_version(&p.opts, ours, &version)?;
        }
        if p.kind == RequestKind::Dump && p.opts.lazy_pages == Some(true) {
            crate::preflight::lazy_dump()?;
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

    pub(crate) fn refusal(
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
            "fds for criu's own fd table (inherit_fd, page_server_fd, pidfd_store) are \
             mapped when criu starts: pass them with the request that starts criu \
             (Criu::dump, Criu::restore, the first pre-dump of Criu::pre_dump)",
        ))
    }

    /// Runs one exchange under the request's timeout and cancellation. An
    /// interruption (or an error of ours while criu works on the request) ends it as
    /// far as it still can be ended: see [`Conn::wind_down`]. A request that went
    /// through anyway (criu was past its commit point) returns its answer.
    pub(crate) async fn run<H: Hooks>(
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
pub(crate) struct Limits<'a> {
    pub(crate) timeout: Option<Duration>,
    pub(crate) cancel: Option<&'a CancellationToken>,
}

impl<'a> Limits<'a> {
    pub(crate) fn of(p: &'a Prepared) -> Self {
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
