//! Many targets at once: bounded, observable, cancellable batches of dumps or restores.
//!
//! A [`Fleet`] runs each target's request on its own criu process, a few at a time
//! ([`jobs`](Fleet::jobs), chosen from the CPUs and the batch's own measurements
//! unless set), all on one Tokio task (no thread per target). The biggest targets
//! start first ([`Order`]), so that the batch does not end with one big dump running
//! alone while the other slots sit idle. Results stream back as each target
//! finishes, success or error, with progress [`Event`]s in between, each naming its
//! target by its index in the order given; one target's failure or hang never holds
//! up the others beyond the slot it occupies (bound it with [`Fleet::timeout`]).
//!
//! # Example
//! ```no_run
//! use std::time::Duration;
//! use futures::StreamExt;
//! use criu_swrk::{Criu, DumpOptions};
//! use criu_swrk::fleet::{Event, Fleet};
//!
//! # async fn run() {
//! let pids = [101, 102, 103];
//! let fleet = Fleet::new(Criu::new()).jobs(2).timeout(Duration::from_secs(60));
//! let mut batch = fleet.dump(
//!     pids.iter()
//!         .map(|pid| DumpOptions::new(*pid).images_dir(format!("/var/lib/ckpt/{pid}"))),
//! );
//! while let Some(event) = batch.next().await {
//!     match event {
//!         Event::Finished { target, result: Ok(out) } => println!("{}: dumped", pids[target]),
//!         Event::Finished { target, result: Err(e) } => eprintln!("{}: {e}", pids[target]),
//!         _ => {}
//!     }
//! }
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::criu::Criu;
use crate::error::{Error, Result};
use crate::notify::{Hooks, NoHooks, Notification, Reply};
use crate::options::{DumpOptions, Prepared, RestoreOptions};
use crate::outcome::{DumpOutcome, RestoreOutcome};
use jobs::{Jobs, Slots};

mod jobs;
pub(crate) mod size;

/// Runs requests for many targets concurrently, bounded.
#[derive(Debug, Clone)]
#[must_use = "a fleet does nothing until dump or restore is called"]
pub struct Fleet {
    criu: Criu,
    jobs: Jobs,
    order: Order,
    timeout: Option<Duration>,
}

/// In which order a batch starts its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Order {
    /// The biggest first: a dump's tree by its resident memory (the RSS of each of
    /// its processes, from `/proc`), a restore by the size of its pages images; ties
    /// and targets that cannot be measured keep the order given, the latter last.
    /// With the big ones started first, the small ones fill the other slots while
    /// they run, instead of one big dump running alone at the end.
    #[default]
    LargestFirst,
    /// The order given.
    AsGiven,
}

/// A request a batch can run for a target: crate-private, so that the batch's
/// scheduling is written once for dumps and restores.
pub(crate) trait Target: Send + 'static {
    /// An estimate of the target's size in bytes, for [`Order::LargestFirst`].
    fn size(&self) -> u64;
    /// The request, ready to send.
    fn prepare(self) -> Result<Prepared>;
}

impl Target for DumpOptions {
    fn size(&self) -> u64 {
        size::tree_rss(self.pid())
    }
    fn prepare(self) -> Result<Prepared> {
        DumpOptions::prepare(self)
    }
}

impl Target for RestoreOptions {
    fn size(&self) -> u64 {
        self.images_path().map_or(0, |d| size::image_pages(&d))
    }
    fn prepare(self) -> Result<Prepared> {
        RestoreOptions::prepare(self)
    }
}

/// What happens to one target of a batch. `target` is the target's index in the
/// order the batch was given.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event<T> {
    /// Waiting for a free slot.
    Queued {
        /// The target's index.
        target: usize,
    },
    /// Its criu started.
    Started {
        /// The target's index.
        target: usize,
        /// The criu process serving it.
        criu_pid: Option<i32>,
    },
    /// criu reached a hook for it.
    Hook {
        /// The target's index.
        target: usize,
        /// The hook's name (e.g. `post-dump`).
        name: String,
    },
    /// Done, one way or the other. Every target ends with exactly one of these.
    Finished {
        /// The target's index.
        target: usize,
        /// The outcome (with criu's stats) or what went wrong.
        result: Result<T>,
    },
}

impl<T> Event<T> {
    /// The index of the target the event is about.
    pub fn target(&self) -> usize {
        match self {
            Event::Queued { target }
            | Event::Started { target, .. }
            | Event::Hook { target, .. }
            | Event::Finished { target, .. } => *target,
        }
    }
}

/// A running batch: a stream of [`Event`]s ending after every target's
/// [`Event::Finished`].
///
/// # Drop behavior
/// Dropping the batch cancels it: requests in flight roll back (their targets keep
/// running), queued ones never start.
#[derive(Debug)]
pub struct Batch<T> {
    events: mpsc::UnboundedReceiver<Event<T>>,
    cancel: CancellationToken,
}

impl<T> Batch<T> {
    /// Cancels the batch: every request in flight is stopped or rolled back as a
    /// single request is (dumped trees keep running; requests already past their
    /// commit point finish and report their outcome) and finishes with
    /// [`Error::Cancelled`] saying which; queued targets finish with it without
    /// starting ([`RequestState::Untouched`](crate::RequestState::Untouched)).
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A token that cancels this batch when cancelled (e.g. from a signal handler).
    pub fn cancel_token(&self) -> CancellationToken {
        self.cancel.clone()
    }
}

impl<T> Stream for Batch<T> {
    type Item = Event<T>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event<T>>> {
        self.events.poll_recv(cx)
    }
}

impl<T> Drop for Batch<T> {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

impl Fleet {
    /// A fleet running `criu`: jobs chosen as the batch runs, the biggest targets
    /// first, no timeout.
    pub fn new(criu: Criu) -> Self {
        Fleet {
            criu,
            jobs: Jobs::Auto,
            order: Order::default(),
            timeout: None,
        }
    }

    /// How many criu processes may run at once (at least 1).
    ///
    /// Unset, a batch chooses: it starts with two per CPU this process may use (a
    /// criu dump spends about a fifth of its time off the CPU), then after each
    /// target looks at how idle the CPUs were meanwhile (`/proc/stat`, idle time
    /// only): a quarter of a CPU idle on average opens one more slot, up to four per
    /// CPU; saturated CPUs (less than a twentieth of one idle) close a slot again,
    /// down to one per CPU. More at once shortens the batch but keeps each tree
    /// frozen longer: give `jobs` when each tree's downtime matters more.
    pub fn jobs(mut self, jobs: usize) -> Self {
        self.jobs = Jobs::Fixed(jobs.max(1));
        self
    }

    /// In which order targets start (default: [`Order::LargestFirst`]). Events and
    /// results name targets by their index in the order given, whatever the order
    /// they run in.
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// A timeout per target, for targets whose options set none. A target past it is
    /// stopped or rolled back as a single request is (see
    /// [`Session::dump`](crate::Session::dump)) and finishes with [`Error::Timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// How long a target's criu gets to roll back (reach its next hook) after a
    /// timeout or cancel before it is killed; see [`Criu::grace`]. A target's request
    /// therefore ends within timeout + grace.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.criu = self.criu.grace(grace);
        self
    }

    /// Dumps every target. Needs a Tokio runtime; the batch runs on a task of its
    /// own.
    ///
    /// Every hook criu reaches is reported as an [`Event::Hook`] and agreed to; use
    /// [`dump_with`](Self::dump_with) to answer hooks per target.
    pub fn dump<I>(&self, targets: I) -> Batch<DumpOutcome>
    where
        I: IntoIterator<Item = DumpOptions>,
    {
        self.dump_with(targets.into_iter().map(|t| (t, NoHooks)))
    }

    /// Dumps every target, each answering its own hooks with its own [`Hooks`] (to
    /// lock a container's network at `network-lock`, say, or to veto a dump at
    /// `pre-dump`). A hook that answers [`Reply::fail`] rolls back that target only;
    /// it finishes with [`Error::Hook`] and its tree keeps running.
    ///
    /// [`Event::Hook`] is sent before the target's hooks are asked. A batch that is
    /// cancelled (or a target that times out) drops the hook future in flight and
    /// fails criu's hook, as for a single request.
    ///
    /// # Example
    /// ```no_run
    /// use futures::StreamExt;
    /// use criu_swrk::{Criu, DumpOptions, Notification, Reply};
    /// use criu_swrk::fleet::{Event, Fleet};
    ///
    /// # async fn run() {
    /// let pids = [101, 102];
    /// let targets = pids.map(|pid| {
    ///     let opts = DumpOptions::new(pid).images_dir(format!("/var/lib/ckpt/{pid}"));
    ///     let hooks = move |n: Notification| async move {
    ///         if n.name() == "network-lock" {
    ///             // Block this container's traffic here.
    ///             println!("{pid}: locking its network");
    ///         }
    ///         Reply::ok()
    ///     };
    ///     (opts, hooks)
    /// });
    /// let mut batch = Fleet::new(Criu::new()).dump_with(targets);
    /// while let Some(event) = batch.next().await {
    ///     if let Event::Finished { target, result } = event {
    ///         println!("{}: {:?}", pids[target], result.map(|out| out.pid));
    ///     }
    /// }
    /// # }
    /// ```
    pub fn dump_with<I, H>(&self, targets: I) -> Batch<DumpOutcome>
    where
        I: IntoIterator<Item = (DumpOptions, H)>,
        H: Hooks + 'static,
    {
        let targets = targets.into_iter().collect();
        self.run(targets, |criu, p, hooks| {
            Box::pin(async move {
                let mut p = p;
                let session = criu.session_for(&mut p)?;
                hooks.started(session.criu_pid());
                session.dump_prepared(p, hooks).await
            })
        })
    }

    /// Restores every target. Needs a Tokio runtime; the batch runs on a task of its
    /// own.
    pub fn restore<I>(&self, targets: I) -> Batch<RestoreOutcome>
    where
        I: IntoIterator<Item = RestoreOptions>,
    {
        self.restore_with(targets.into_iter().map(|t| (t, NoHooks)))
    }

    /// Restores every target, each answering its own hooks (`setup-namespaces`,
    /// `post-restore`, ...), as [`dump_with`](Self::dump_with) does for dumps.
    pub fn restore_with<I, H>(&self, targets: I) -> Batch<RestoreOutcome>
    where
        I: IntoIterator<Item = (RestoreOptions, H)>,
        H: Hooks + 'static,
    {
        let targets = targets.into_iter().collect();
        self.run(targets, |criu, p, hooks| {
            Box::pin(async move {
                let mut p = p;
                let session = criu.session_for(&mut p)?;
                hooks.started(session.criu_pid());
                session.restore_prepared(p, hooks).await
            })
        })
    }

    /// Runs `request` for each target, `prepare`d only when its slot comes up:
    /// preparing opens the images directory and holds it open until the request
    /// ends, so preparing a whole batch up front would hold one fd per queued target
    /// and fail every target past `RLIMIT_NOFILE` (1024 by default) with EMFILE.
    fn run<O, H, T, F>(&self, targets: Vec<(O, H)>, request: F) -> Batch<T>
    where
        O: Target,
        H: Hooks + 'static,
        T: Send + 'static,
        F: for<'a> Fn(
                Criu,
                Prepared,
                &'a mut Progress<T, H>,
            ) -> futures::future::BoxFuture<'a, Result<T>>
            + Send
            + Sync
            + 'static,
    {
        let (tx, events) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let fleet = self.clone();
        let token = cancel.clone();
        for target in 0..targets.len() {
            let _ = tx.send(Event::Queued { target });
        }
        tokio::spawn(async move {
            let request = &request;
            let order = start_order(&targets, fleet.order);
            let mut targets: Vec<Option<(O, H)>> = targets.into_iter().map(Some).collect();
            let one = |target: usize, opts: O, hooks: H| {
                let tx = tx.clone();
                let token = token.clone();
                let criu = fleet.criu.clone();
                let timeout = fleet.timeout;
                async move {
                    let result = match opts.prepare() {
                        Err(e) => Err(e),
                        Ok(p) if token.is_cancelled() => Err(Error::Cancelled {
                            request: p.kind(),
                            at: crate::error::Interruption::untouched(),
                        }),
                        Ok(mut p) => {
                            p.bound_by(timeout, token.child_token());
                            let mut progress = Progress {
                                target,
                                tx: tx.clone(),
                                inner: hooks,
                            };
                            request(criu, p, &mut progress).await
                        }
                    };
                    let _ = tx.send(Event::Finished { target, result });
                }
            };
            let mut slots = Slots::new(fleet.jobs);
            let mut queue = order.into_iter();
            let mut running = FuturesUnordered::new();
            loop {
                while running.len() < slots.limit() {
                    let Some(i) = queue.next() else { break };
                    let (opts, hooks) = targets[i].take().expect("each target starts once");
                    running.push(one(i, opts, hooks));
                }
                if running.next().await.is_none() {
                    break;
                }
                slots.finished();
            }
        });
        Batch { events, cancel }
    }
}

/// The indices of `targets` in the order they are to start.
fn start_order<O: Target, H>(targets: &[(O, H)], order: Order) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..targets.len()).collect();
    if order == Order::LargestFirst {
        let sizes: Vec<u64> = targets.iter().map(|(o, _)| o.size()).collect();
        // Stable: equal sizes keep the order given.
        indices.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
    }
    indices
}

/// Hooks that report each notification as an [`Event::Hook`], then ask the target's
/// own hooks.
#[derive(Debug)]
pub(crate) struct Progress<T, H> {
    target: usize,
    tx: mpsc::UnboundedSender<Event<T>>,
    inner: H,
}

impl<T, H> Progress<T, H> {
    fn started(&self, criu_pid: Option<i32>) {
        let _ = self.tx.send(Event::Started {
            target: self.target,
            criu_pid,
        });
    }
}

impl<T: Send, H: Hooks> Hooks for Progress<T, H> {
    async fn on_notify(&mut self, notification: Notification) -> Reply {
        let _ = self.tx.send(Event::Hook {
            target: self.target,
            name: notification.name().to_owned(),
        });
        self.inner.on_notify(notification).await
    }
}
