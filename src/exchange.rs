//! Where the exchange of one request with criu stands, and what that allows: a state
//! machine with no I/O. The session sends, receives and answers; this module says how
//! far criu has got with the target and what an interruption (a timeout, a cancel, a
//! drop, an error of ours) may still do about it.
//!
//! A request that touches a target passes two points (read from criu's cr-dump.c and
//! cr-restore.c):
//!
//! * the **seize point**: criu runs a dump's `pre-dump` hook before it collects and
//!   freezes the tree, and a restore's `pre-restore` before it forks anything. Until
//!   that hook is answered nothing is touched, and criu may simply be stopped.
//! * the **commit point**: once `post-dump` is answered with success criu kills the
//!   tree (unless `leave_running`); once `post-restore` is, the restored tree will run
//!   (criu ignores a failed `pre-resume`, `post-resume` and `network-unlock`). A lazy
//!   dump (`lazy_pages`) commits only with criu's final success: after `post-dump` it
//!   serves the pages, and if that fails it resumes the tree (cr-dump.c sets the
//!   tree's final state after `cr_lazy_mem_dump`); criu lost meanwhile leaves it
//!   unknown.
//!
//! In between, a hook answered with failure makes criu undo the request. A pre-dump
//! sends no hook at all, so it counts as touched from the moment it is sent.

use crate::error::{Interruption, RequestState};
use crate::kind::RequestKind;

/// How far criu has got with the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Untouched,
    Seized,
    Committed,
}

/// What to do when the request is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnInterrupt {
    /// Nothing is touched: end criu at once (kill it, or close the socket).
    StopNow,
    /// criu holds the target: answer every hook with `answer` (the pending one first,
    /// if any) until criu's final response; kill criu if it does not come within the
    /// grace period.
    WindDown {
        /// How to answer: failure to roll back, success once committed.
        answer: bool,
        /// A hook is waiting for that answer now.
        pending: bool,
    },
}

/// One request's exchange with criu.
#[derive(Debug, Clone)]
pub(crate) struct Exchange {
    kind: RequestKind,
    /// A lazy dump: `post-dump` is not its commit point.
    lazy: bool,
    phase: Phase,
    /// The hook criu waits at, until it is answered.
    pending: Option<String>,
    /// The hook pending when the request was interrupted.
    interrupted_at: Option<String>,
    interrupted: bool,
    /// The restored root's pid, once criu sent it.
    pid: Option<i32>,
    /// What became of the request, once its exchange is over (criu answered or went
    /// away).
    outcome: Option<RequestState>,
}

impl Exchange {
    /// A request of `kind`, just sent.
    pub(crate) fn new(kind: RequestKind) -> Self {
        let phase = match kind {
            // No hook tells when a pre-dump seizes the tree.
            RequestKind::PreDump | RequestKind::SinglePreDump => Phase::Seized,
            _ => Phase::Untouched,
        };
        Exchange {
            kind,
            lazy: false,
            phase,
            pending: None,
            interrupted_at: None,
            interrupted: false,
            pid: None,
            outcome: None,
        }
    }

    /// The request is a lazy dump (see the module docs).
    pub(crate) fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    pub(crate) fn kind(&self) -> RequestKind {
        self.kind
    }

    /// The hook criu now waits at, if any.
    pub(crate) fn pending(&self) -> Option<&str> {
        self.pending.as_deref()
    }

    /// The request is past its commit point, or criu's final answer committed it.
    pub(crate) fn is_committed(&self) -> bool {
        self.phase == Phase::Committed || self.outcome == Some(RequestState::Committed)
    }

    /// The exchange is over: criu answered, or went away.
    pub(crate) fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }

    /// What became of the request, once the exchange is over.
    pub(crate) fn outcome(&self) -> Option<RequestState> {
        self.outcome
    }

    /// The restored root's pid, once criu has sent it.
    #[cfg(test)]
    pub(crate) fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// Whether the request can touch a target at all.
    fn touches_target(&self) -> bool {
        matches!(
            self.kind,
            RequestKind::Dump
                | RequestKind::PreDump
                | RequestKind::SinglePreDump
                | RequestKind::Restore
        )
    }

    /// The hook at which criu seizes the target, for the requests that have one.
    fn seize_hook(&self) -> Option<&'static str> {
        match self.kind {
            RequestKind::Dump => Some("pre-dump"),
            RequestKind::Restore => Some("pre-restore"),
            _ => None,
        }
    }

    /// The hook whose success commits the request.
    fn commit_hook(&self) -> Option<&'static str> {
        match self.kind {
            RequestKind::Dump if self.lazy => None,
            RequestKind::Dump => Some("post-dump"),
            RequestKind::Restore => Some("post-restore"),
            _ => None,
        }
    }

    /// criu reached hook `name` and waits for an answer. `pid` is the restored root's
    /// pid where criu sends one (`setup-namespaces`, `post-restore`).
    pub(crate) fn notified(&mut self, name: &str, pid: Option<i32>) {
        if self.phase == Phase::Untouched
            && self.touches_target()
            && self.seize_hook() != Some(name)
        {
            // Any other hook first means criu is past its seize point.
            self.phase = Phase::Seized;
        }
        if self.kind == RequestKind::Restore
            && matches!(name, "setup-namespaces" | "post-restore")
            && let Some(pid) = pid
        {
            self.pid = Some(pid);
        }
        self.pending = Some(name.to_owned());
    }

    /// The pending hook was answered with `ok`.
    pub(crate) fn answered(&mut self, ok: bool) {
        let Some(hook) = self.pending.take() else {
            return;
        };
        if !ok || !self.touches_target() {
            return;
        }
        if self.commit_hook() == Some(hook.as_str()) {
            self.phase = Phase::Committed;
        } else if self.phase == Phase::Untouched && self.seize_hook() == Some(hook.as_str()) {
            self.phase = Phase::Seized;
        }
    }

    /// The request is interrupted: what to do now. Further notifications are answered
    /// with [`wind_down_answer`](Self::wind_down_answer), not by the caller's hooks.
    pub(crate) fn interrupt(&mut self) -> OnInterrupt {
        if !self.interrupted {
            self.interrupted = true;
            self.interrupted_at = self.pending.clone();
        }
        match self.phase {
            Phase::Untouched => OnInterrupt::StopNow,
            Phase::Seized | Phase::Committed => OnInterrupt::WindDown {
                answer: self.wind_down_answer(),
                pending: self.pending.is_some(),
            },
        }
    }

    /// How to answer hooks once interrupted: with failure, so that criu rolls back,
    /// until the request is committed; with success after that (failing would only make
    /// criu log errors it then ignores).
    pub(crate) fn wind_down_answer(&self) -> bool {
        self.phase == Phase::Committed
    }

    /// criu's final response arrived, with `success`: what became of the request.
    pub(crate) fn finish(&mut self, success: bool) -> RequestState {
        self.pending = None;
        let state = match (success, self.phase) {
            (true, _) if self.touches_target() => RequestState::Committed,
            (true, _) | (false, Phase::Untouched) => RequestState::Untouched,
            // criu resumes the tree (or kills what it restored) on any failure, even
            // one after the commit point (a lazy dump whose pages could not be served).
            (false, _) => RequestState::RolledBack,
        };
        *self.outcome.get_or_insert(state)
    }

    /// criu is gone (killed, or dead) without a final response: what became of the
    /// request. The exchange is over.
    pub(crate) fn lost(&mut self) -> RequestState {
        let state = match self.phase {
            Phase::Untouched => RequestState::Untouched,
            Phase::Seized => RequestState::Unknown,
            Phase::Committed => RequestState::Committed,
        };
        *self.outcome.get_or_insert(state)
    }

    /// The caller's account of an interrupted request that ended in `state`.
    pub(crate) fn interruption(&self, state: RequestState) -> Interruption {
        Interruption {
            state,
            hook: if self.interrupted {
                self.interrupted_at.clone()
            } else {
                self.pending.clone()
            },
            pid: self.pid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(kind: RequestKind, hooks: &[(&str, bool)]) -> Exchange {
        let mut x = Exchange::new(kind);
        for (hook, ok) in hooks {
            let pid = matches!(*hook, "setup-namespaces" | "post-restore").then_some(42);
            x.notified(hook, pid);
            x.answered(*ok);
        }
        x
    }

    #[test]
    fn a_dump_is_untouched_until_pre_dump_is_answered() {
        let mut x = Exchange::new(RequestKind::Dump);
        assert_eq!(x.clone().interrupt(), OnInterrupt::StopNow);
        x.notified("pre-dump", None);
        // Pending, unanswered: criu waits before it seizes anything.
        assert_eq!(x.clone().interrupt(), OnInterrupt::StopNow);
        assert_eq!(x.clone().lost(), RequestState::Untouched);
        x.answered(true);
        assert_eq!(
            x.interrupt(),
            OnInterrupt::WindDown {
                answer: false,
                pending: false
            }
        );
        assert_eq!(x.clone().lost(), RequestState::Unknown);
    }

    #[test]
    fn a_dump_interrupted_between_hooks_fails_the_next_one_and_is_rolled_back() {
        let mut x = walk(
            RequestKind::Dump,
            &[("pre-dump", true), ("query-ext-files", true)],
        );
        x.notified("post-dump", None);
        assert_eq!(
            x.interrupt(),
            OnInterrupt::WindDown {
                answer: false,
                pending: true
            }
        );
        x.answered(x.wind_down_answer());
        assert_eq!(x.finish(false), RequestState::RolledBack);
        let at = x.interruption(RequestState::RolledBack);
        assert_eq!(at.hook.as_deref(), Some("post-dump"));
    }

    #[test]
    fn a_dump_is_committed_once_post_dump_is_answered_with_success() {
        let mut x = walk(
            RequestKind::Dump,
            &[
                ("pre-dump", true),
                ("query-ext-files", true),
                ("post-dump", true),
            ],
        );
        // The very moment the issue was about: an interrupt right after post-dump.
        assert_eq!(
            x.interrupt(),
            OnInterrupt::WindDown {
                answer: true,
                pending: false
            }
        );
        assert_eq!(x.clone().lost(), RequestState::Committed);
        // A hook after the commit (network-unlock with leave_running) is agreed to.
        x.notified("network-unlock", None);
        assert!(x.wind_down_answer());
        x.answered(true);
        assert_eq!(x.finish(true), RequestState::Committed);
    }

    #[test]
    fn a_lazy_dump_commits_only_with_criu_s_final_success() {
        let lazy = || {
            let mut x = Exchange::new(RequestKind::Dump).lazy(true);
            for hook in ["pre-dump", "query-ext-files", "post-dump"] {
                x.notified(hook, None);
                x.answered(true);
            }
            x
        };
        let mut x = lazy();
        // Serving its pages: criu resumes the tree if that fails, so nothing is
        // committed yet, and criu lost now leaves the tree in doubt.
        assert!(!x.is_committed());
        assert_eq!(
            x.interrupt(),
            OnInterrupt::WindDown {
                answer: false,
                pending: false
            }
        );
        assert_eq!(x.clone().lost(), RequestState::Unknown);
        assert_eq!(x.finish(true), RequestState::Committed);
        assert!(x.is_committed());
        // The transfer failed: criu resumed the tree.
        assert_eq!(lazy().finish(false), RequestState::RolledBack);
    }

    #[test]
    fn a_failed_post_dump_does_not_commit() {
        let mut x = walk(
            RequestKind::Dump,
            &[("pre-dump", true), ("post-dump", false)],
        );
        assert_eq!(x.clone().lost(), RequestState::Unknown);
        assert_eq!(x.finish(false), RequestState::RolledBack);
    }

    #[test]
    fn a_failed_pre_dump_leaves_the_target_untouched() {
        let mut x = walk(RequestKind::Dump, &[("pre-dump", false)]);
        assert_eq!(x.clone().lost(), RequestState::Untouched);
        assert_eq!(x.finish(false), RequestState::Untouched);
    }

    #[test]
    fn a_restore_commits_at_post_restore_and_keeps_the_pid() {
        let mut x = walk(
            RequestKind::Restore,
            &[
                ("pre-restore", true),
                ("setup-namespaces", true),
                ("post-setup-namespaces", true),
            ],
        );
        assert_eq!(x.pid(), Some(42));
        assert_eq!(x.clone().lost(), RequestState::Unknown);
        x.notified("post-restore", Some(42));
        x.answered(true);
        assert_eq!(x.clone().lost(), RequestState::Committed);
        assert_eq!(
            x.interrupt(),
            OnInterrupt::WindDown {
                answer: true,
                pending: false
            }
        );
        let state = x.lost();
        let at = x.interruption(state);
        assert_eq!(at.pid, Some(42));
        assert_eq!(at.state, RequestState::Committed);
    }

    #[test]
    fn a_restore_before_pre_restore_is_answered_may_be_stopped() {
        let mut x = Exchange::new(RequestKind::Restore);
        x.notified("pre-restore", None);
        assert_eq!(x.interrupt(), OnInterrupt::StopNow);
        let state = x.lost();
        assert_eq!(x.interruption(state).hook.as_deref(), Some("pre-restore"));
    }

    #[test]
    fn an_unexpected_first_hook_counts_as_seized() {
        let mut x = Exchange::new(RequestKind::Dump);
        x.notified("network-lock", None);
        assert!(matches!(x.interrupt(), OnInterrupt::WindDown { .. }));
    }

    #[test]
    fn a_pre_dump_counts_as_touched_from_the_start() {
        let mut x = Exchange::new(RequestKind::PreDump);
        assert_eq!(
            x.interrupt(),
            OnInterrupt::WindDown {
                answer: false,
                pending: false
            }
        );
        assert_eq!(x.clone().lost(), RequestState::Unknown);
        assert_eq!(x.finish(true), RequestState::Committed);
    }

    #[test]
    fn the_outcome_is_kept_once_the_exchange_is_over() {
        let mut x = walk(
            RequestKind::Dump,
            &[("pre-dump", true), ("post-dump", true)],
        );
        assert_eq!(x.outcome(), None);
        assert_eq!(x.finish(true), RequestState::Committed);
        // Asked again later (a session dropped while criu is reaped): the same answer.
        assert_eq!(x.outcome(), Some(RequestState::Committed));
        assert_eq!(x.lost(), RequestState::Committed);
    }

    #[test]
    fn queries_touch_nothing() {
        for kind in [
            RequestKind::Version,
            RequestKind::FeatureCheck,
            RequestKind::Check,
            RequestKind::PageServer,
            RequestKind::CpuinfoCheck,
        ] {
            let mut x = Exchange::new(kind);
            x.notified("status-ready", None);
            x.answered(true);
            assert_eq!(x.interrupt(), OnInterrupt::StopNow, "{kind}");
            assert_eq!(x.finish(true), RequestState::Untouched, "{kind}");
        }
    }

    #[test]
    fn the_reported_hook_is_the_one_pending_at_the_interrupt() {
        let mut x = walk(RequestKind::Dump, &[("pre-dump", true)]);
        x.notified("query-ext-files", None);
        x.interrupt();
        x.answered(false);
        // Later hooks met while winding down do not replace it.
        x.notified("post-dump", None);
        x.interrupt();
        x.answered(false);
        let state = x.finish(false);
        let at = x.interruption(state);
        assert_eq!(at.hook.as_deref(), Some("query-ext-files"));
        assert_eq!(at.state, RequestState::RolledBack);
    }
}
