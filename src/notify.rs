//! criu's notifications (its "action scripts" over RPC) and the ways to answer them.
//!
//! While a request runs, criu stops at each hook, sends a [`Notification`] and waits for
//! the answer. Answer with a [`Hooks`] implementation (an async method that may keep
//! state and borrow the caller's data), a closure, or through a
//! [`Notifications`] stream fed by [`channel`].
//!
//! Answering [`Reply::fail`] makes criu fail the request and roll back: before
//! `post-dump` returns, a dumped tree keeps running; a restore kills what it restored.
//!
//! # Example
//!
//! ```no_run
//! use criu_swrk::{Criu, DumpOptions, Notification, Reply};
//!
//! # async fn run() -> criu_swrk::Result<()> {
//! let mut seen = Vec::new();
//! let mut hooks = |n: Notification| {
//!     seen.push(n.name().to_owned());
//!     std::future::ready(match n {
//!         // Veto the checkpoint at the last moment: the target keeps running.
//!         Notification::PostDump => Reply::fail("images could not be shipped"),
//!         _ => Reply::ok(),
//!     })
//! };
//! let opts = DumpOptions::new(1234).images_dir("/var/lib/ckpt/1234");
//! let err = Criu::new().dump_with(opts, &mut hooks).await.unwrap_err();
//! assert!(err.is_hook());
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::os::fd::OwnedFd;

use futures::Stream;
use tokio::sync::{mpsc, oneshot};

use crate::error::BoxError;

/// One stop of criu at a hook, in the order criu reaches them.
///
/// Dump: `pre-dump`, `network-lock` (tree in its own netns), `query-ext-files`,
/// `post-dump`, then `network-unlock` when the dump is rolled back or `leave_running`.
/// Restore: `pre-restore`, `setup-namespaces`, `post-setup-namespaces`,
/// `orphan-pts-master` (with `orphan_pts_master`), `post-restore`, `pre-resume`,
/// `post-resume`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Notification {
    /// `pre-stream`: before criu connects to an image streamer.
    PreStream,
    /// `pre-dump`: before the tree is frozen.
    PreDump,
    /// `post-dump`: images written, tree still frozen. Failing it rolls the dump back
    /// (the tree resumes, even without `leave_running`).
    PostDump,
    /// `pre-restore`: before anything is restored.
    PreRestore,
    /// `post-restore`: the tree is restored, not yet resumed.
    PostRestore {
        /// The restored root's pid (in criu's pid namespace).
        pid: i32,
    },
    /// `network-lock`: lock the tree's network now.
    NetworkLock,
    /// `network-unlock`: unlock the tree's network now.
    NetworkUnlock,
    /// `setup-namespaces`: the root task exists; set up its namespaces (e.g. network).
    SetupNamespaces {
        /// The restored root's pid.
        pid: i32,
    },
    /// `post-setup-namespaces`: namespaces are set up.
    PostSetupNamespaces,
    /// `pre-resume`: just before the restored tree resumes.
    PreResume,
    /// `post-resume`: the restored tree runs.
    PostResume,
    /// `orphan-pts-master`: the master side of a restored tty whose master was not
    /// part of the dump. Keep it to talk to the restored task's terminal.
    OrphanPtsMaster {
        /// The pty master.
        master: OwnedFd,
    },
    /// `status-ready`: a page server or lazy-pages daemon is ready to serve.
    StatusReady,
    /// `query-ext-files`: the tree is frozen; answer with
    /// [`Reply::externals`] to declare external files.
    QueryExtFiles,
    /// A hook this crate does not know yet, passed through as criu sent it.
    Other {
        /// The hook name.
        name: String,
        /// The pid criu sent with it.
        pid: Option<i32>,
        /// The fd criu sent with it.
        fd: Option<OwnedFd>,
    },
}

impl Notification {
    /// The hook's name as criu spells it, e.g. `post-dump`.
    pub fn name(&self) -> &str {
        match self {
            Notification::PreStream => "pre-stream",
            Notification::PreDump => "pre-dump",
            Notification::PostDump => "post-dump",
            Notification::PreRestore => "pre-restore",
            Notification::PostRestore { .. } => "post-restore",
            Notification::NetworkLock => "network-lock",
            Notification::NetworkUnlock => "network-unlock",
            Notification::SetupNamespaces { .. } => "setup-namespaces",
            Notification::PostSetupNamespaces => "post-setup-namespaces",
            Notification::PreResume => "pre-resume",
            Notification::PostResume => "post-resume",
            Notification::OrphanPtsMaster { .. } => "orphan-pts-master",
            Notification::StatusReady => "status-ready",
            Notification::QueryExtFiles => "query-ext-files",
            Notification::Other { name, .. } => name,
        }
    }

    /// The pid criu sent with the notification (the restored root, for
    /// `setup-namespaces` and `post-restore`).
    pub fn pid(&self) -> Option<i32> {
        match self {
            Notification::PostRestore { pid } | Notification::SetupNamespaces { pid } => Some(*pid),
            Notification::Other { pid, .. } => *pid,
            _ => None,
        }
    }
}

/// The hook names criu 4.2 sends, in criu's own table order. A slice, not an array:
/// a later criu may add hooks.
pub const HOOK_NAMES: &[&str] = &[
    "pre-stream",
    "pre-dump",
    "post-dump",
    "pre-restore",
    "post-restore",
    "network-lock",
    "network-unlock",
    "setup-namespaces",
    "post-setup-namespaces",
    "pre-resume",
    "post-resume",
    "orphan-pts-master",
    "status-ready",
    "query-ext-files",
];

/// The answer to a notification.
#[non_exhaustive]
pub enum Reply {
    /// Go on.
    Ok,
    /// Go on, and treat these objects as external (answer to `query-ext-files`; each
    /// string is what criu's `--external` takes).
    Externals(Vec<String>),
    /// Stop: criu fails the request and rolls back. The error is returned to the
    /// caller of the request inside [`Error::Hook`](crate::Error::Hook).
    ///
    /// criu ignores failures of a few hooks (`network-unlock`, `post-resume`): the
    /// request then succeeds and the hook's error is only logged (a `tracing`
    /// warning), since nothing was rolled back.
    Fail(BoxError),
}

impl Reply {
    /// Go on.
    pub fn ok() -> Self {
        Reply::Ok
    }
    /// Stop the request; criu rolls back.
    pub fn fail(reason: impl Into<BoxError>) -> Self {
        Reply::Fail(reason.into())
    }
    /// Go on, declaring external objects (for `query-ext-files`).
    pub fn externals<I, S>(objects: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Reply::Externals(objects.into_iter().map(Into::into).collect())
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reply::Ok => f.write_str("Ok"),
            Reply::Externals(v) => f.debug_tuple("Externals").field(v).finish(),
            Reply::Fail(e) => f.debug_tuple("Fail").field(&e.to_string()).finish(),
        }
    }
}

/// Answers criu's notifications.
///
/// Implement it on a type that keeps state across hooks, or pass a closure
/// `FnMut(Notification) -> impl Future<Output = Reply>`. Requests take `&mut H`, so the
/// hooks may borrow the caller's data and are still there afterwards.
///
/// # Example
///
/// ```
/// use criu_swrk::{Hooks, Notification, Reply};
///
/// /// Records the order criu reaches its hooks in.
/// #[derive(Default)]
/// struct Recorder(Vec<String>);
///
/// impl Hooks for Recorder {
///     async fn on_notify(&mut self, n: Notification) -> Reply {
///         self.0.push(n.name().to_owned());
///         Reply::ok()
///     }
/// }
/// ```
pub trait Hooks: Send {
    /// Called at each hook; criu waits until the returned future completes.
    ///
    /// # Cancel safety
    /// If the request is cancelled or times out while this future runs, it is dropped
    /// and criu is answered with failure (it rolls back).
    fn on_notify(&mut self, notification: Notification) -> impl Future<Output = Reply> + Send;
}

/// Hooks that answer every notification with [`Reply::ok`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHooks;

impl Hooks for NoHooks {
    async fn on_notify(&mut self, _notification: Notification) -> Reply {
        Reply::Ok
    }
}

impl<F, Fut> Hooks for F
where
    F: FnMut(Notification) -> Fut + Send,
    Fut: Future<Output = Reply> + Send,
{
    fn on_notify(&mut self, notification: Notification) -> impl Future<Output = Reply> + Send {
        self(notification)
    }
}

/// Hooks that forward every notification to a [`Notifications`] stream.
///
/// Made by [`channel`]. If the stream is dropped, or a [`Pending`] notification is
/// dropped without an answer, criu is answered with failure.
#[derive(Debug)]
pub struct ChannelHooks {
    tx: mpsc::Sender<Pending>,
}

/// A stream of notifications waiting for an answer, made by [`channel`].
#[derive(Debug)]
pub struct Notifications {
    rx: mpsc::Receiver<Pending>,
}

/// A notification criu is waiting on. Answer it with [`reply`](Self::reply) (or
/// [`ok`](Self::ok)); dropping it unanswered answers with failure.
#[derive(Debug)]
pub struct Pending {
    notification: Option<Notification>,
    reply: Option<oneshot::Sender<Reply>>,
}

/// Makes a pair: hooks to pass to a request, and the stream their notifications
/// arrive on.
///
/// # Example
///
/// ```no_run
/// use futures::StreamExt;
/// use criu_swrk::{Criu, DumpOptions};
///
/// # async fn run() -> criu_swrk::Result<()> {
/// let (mut hooks, mut notifications) = criu_swrk::notify::channel();
/// let dump = tokio::spawn(async move {
///     let opts = DumpOptions::new(1234).images_dir("/tmp/ckpt").leave_running(true);
///     Criu::new().dump_with(opts, &mut hooks).await
/// });
/// while let Some(pending) = notifications.next().await {
///     println!("criu reached {}", pending.notification().name());
///     pending.ok();
/// }
/// let outcome = dump.await.expect("dump task panicked")?;
/// # Ok(()) }
/// ```
pub fn channel() -> (ChannelHooks, Notifications) {
    // Capacity 1: criu sends one notification at a time and waits for the answer.
    let (tx, rx) = mpsc::channel(1);
    (ChannelHooks { tx }, Notifications { rx })
}

impl Hooks for ChannelHooks {
    async fn on_notify(&mut self, notification: Notification) -> Reply {
        let (reply_tx, reply_rx) = oneshot::channel();
        let name = notification.name().to_owned();
        let pending = Pending {
            notification: Some(notification),
            reply: Some(reply_tx),
        };
        if self.tx.send(pending).await.is_err() {
            return Reply::fail(format!("the notification stream was dropped before {name}"));
        }
        reply_rx
            .await
            .unwrap_or_else(|_| Reply::fail(format!("{name} was dropped without an answer")))
    }
}

impl Stream for Notifications {
    type Item = Pending;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Pending>> {
        self.rx.poll_recv(cx)
    }
}

impl Pending {
    /// The notification. Use [`take_notification`](Self::take_notification) to own
    /// its fd.
    pub fn notification(&self) -> &Notification {
        self.notification
            .as_ref()
            .expect("notification taken; it is only taken by take_notification")
    }

    /// Takes the notification out (e.g. to keep the `orphan-pts-master` fd).
    ///
    /// # Panics
    /// When called twice.
    pub fn take_notification(&mut self) -> Notification {
        self.notification
            .take()
            .expect("notification already taken")
    }

    /// Answers criu.
    pub fn reply(mut self, reply: Reply) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(reply);
        }
    }

    /// Answers criu with [`Reply::ok`].
    pub fn ok(self) {
        self.reply(Reply::Ok)
    }

    /// Answers criu with [`Reply::fail`].
    pub fn fail(self, reason: impl Into<BoxError>) {
        self.reply(Reply::fail(reason))
    }
}
