//! Warm criu processes: `criu swrk` started ahead of the requests that will take them,
//! so that a request skips the exec and criu's start-up (see [`Criu::warm`]).
//!
//! [`Criu::warm`]: crate::Criu::warm

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio_seqpacket::UnixSeqpacket;

use crate::error::Result;
use crate::spawn::Supervised;

/// One criu waiting for its first request: its socket and, when this crate started
/// it, the process (`None` for a connector's peer).
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) sock: UnixSeqpacket,
    pub(crate) child: Option<Supervised>,
}

impl Ready {
    /// Still waiting: a criu that exited meanwhile (killed, or out of memory) is of no
    /// use. A connector's peer cannot be told apart until it is asked.
    fn is_usable(&mut self) -> bool {
        self.child.as_mut().is_none_or(Supervised::is_running)
    }
}

/// Makes one [`Ready`] (spawns criu, or connects).
pub(crate) type Make = Arc<dyn Fn() -> Result<Ready> + Send + Sync>;

/// Up to `size` criu processes kept waiting. Dropping the pool (the last `Criu`
/// holding it) closes their sockets: criu exits on end of file, and each is killed
/// if still there and reaped by the orphan reaper.
pub(crate) struct Pool {
    size: usize,
    ready: Mutex<VecDeque<Ready>>,
    make: Make,
    /// A fill is running: another would overshoot `size`.
    filling: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("size", &self.size)
            .field("ready", &self.len())
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of `size`, filled at once when a Tokio runtime is at hand (criu's
    /// socket and pidfd are registered with it), else on first use.
    pub(crate) fn new(size: usize, make: Make) -> Arc<Self> {
        let pool = Arc::new(Pool {
            size,
            ready: Mutex::new(VecDeque::with_capacity(size)),
            make,
            filling: AtomicBool::new(false),
        });
        if tokio::runtime::Handle::try_current().is_ok() {
            pool.fill();
        }
        pool
    }

    /// How many are waiting.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// The criu that has waited longest, if one is usable, and the promise of a
    /// replacement: started when that [`Refill`] is dropped, i.e. once the request
    /// that took the criu is over. Started during the request, criu's start-up would
    /// compete with the request for the CPUs (measured: it ate the pool's gain).
    pub(crate) fn take(self: &Arc<Self>) -> (Option<Ready>, Option<Refill>) {
        let taken = {
            let mut ready = self.lock();
            loop {
                let Some(mut r) = ready.pop_front() else {
                    break None;
                };
                if r.is_usable() {
                    break Some(r);
                }
                tracing::debug!(
                    criu.pid = ?r.child.as_ref().and_then(Supervised::pid),
                    "a warm criu had exited"
                );
            }
        };
        (taken, Some(Refill(Arc::downgrade(self))))
    }

    /// Starts criu processes until `size` are waiting; a failure stops the filling
    /// (the next request starts its own criu and reports the error).
    fn fill(&self) {
        if self.filling.swap(true, Ordering::AcqRel) {
            return;
        }
        while self.len() < self.size {
            match (self.make)() {
                Ok(r) => self.lock().push_back(r),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a warm criu");
                    break;
                }
            }
        }
        self.filling.store(false, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Ready>> {
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Refills its pool when dropped (held by the session that took a criu), on a task
/// of its own: spawning waits for criu's exec, which stays off the caller's path.
/// Does nothing once the pool is gone.
#[derive(Debug)]
pub(crate) struct Refill(Weak<Pool>);

impl Drop for Refill {
    fn drop(&mut self) {
        let Some(pool) = self.0.upgrade() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(async move { pool.fill() })),
            Err(_) => pool.fill(),
        }
    }
}
