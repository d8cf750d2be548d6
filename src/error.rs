//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::kind::RequestKind;

/// A boxed error from a caller's hook.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while driving criu.
///
/// Each variant carries typed fields so callers can react without parsing messages;
/// the `Display` form is written for a person and names what was wrong. A variant
/// caused by another error (an I/O error, a hook's own error) returns it from
/// [`source`](std::error::Error::source) and does not repeat it in its `Display`:
/// print the chain (as `anyhow` and the `criu-swrk` tool do) to see each cause once.
/// Predicate methods ([`is_refused`](Self::is_refused), [`is_timeout`](Self::is_timeout),
/// ...) cover the common checks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No usable criu binary was found. Lists every place tried and why each failed.
    #[error("no usable criu binary: {}", display_tried(.tried))]
    NotFound {
        /// Each candidate path with the reason it was rejected.
        tried: Vec<(PathBuf, String)>,
    },

    /// criu could not be started.
    #[error("cannot start {path}")]
    Spawn {
        /// The criu binary.
        path: PathBuf,
        /// What `fork`/`exec` reported.
        #[source]
        source: io::Error,
    },

    /// An I/O error on our side (socket, directory, file).
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// criu sent bytes that are not a valid message.
    #[error("cannot decode {what} from criu ({len} bytes)")]
    Decode {
        /// What we tried to decode.
        what: &'static str,
        /// The datagram's length.
        len: usize,
        /// prost's error.
        #[source]
        source: prost::DecodeError,
    },

    /// criu broke the protocol: an unexpected message type, a truncated datagram,
    /// an fd where none belongs.
    #[error("protocol error: expected {expected}, got {got}")]
    Protocol {
        /// What the exchange allowed at that point.
        expected: String,
        /// What arrived instead.
        got: String,
    },

    /// criu answered the request with `success = false`.
    #[error("{0}")]
    Refused(Box<Refusal>),

    /// A hook answered with failure; criu rolled the request back.
    #[error("hook {hook} failed; criu rolled the {request} back")]
    Hook {
        /// The request the hook belonged to.
        request: RequestKind,
        /// The hook's name as criu sent it (e.g. `post-dump`).
        hook: String,
        /// The hook's own error.
        #[source]
        source: BoxError,
        /// criu's final answer after the rollback, when it sent one.
        criu_message: Option<String>,
    },

    /// criu closed the connection or exited before answering. `at` says how far the
    /// request had got (a criu that died after seizing the target leaves it
    /// [`RequestState::Unknown`]).
    #[error("criu exited before answering the {request} request{}; {at}{}", display_status(.status), display_causes(.log_errors, .stderr))]
    Exited {
        /// The request in flight.
        request: RequestKind,
        /// criu's exit status, when we spawned and reaped it.
        status: Option<ExitStatus>,
        /// The last lines criu wrote to stderr.
        stderr: String,
        /// The error lines criu (and its helpers) wrote to stderr before it went,
        /// known-harmless ones skipped.
        log_errors: Vec<String>,
        /// Where the request stood when criu went away.
        at: Interruption,
    },

    /// The session can take no further request: an earlier request ended it (criu
    /// exits after answering one) or failed and closed it.
    #[error(
        "the session is closed: an earlier request ended it; start a new one for the {request}"
    )]
    Closed {
        /// The request that was refused.
        request: RequestKind,
    },

    /// A criu daemon this crate started (the lazy-pages daemon) did not become ready,
    /// or ended with a failure; its log's error lines say why.
    #[error("criu's {daemon} daemon {failure}{}", display_causes(.log_errors, ""))]
    Daemon {
        /// Which daemon (`lazy-pages`).
        daemon: &'static str,
        /// What went wrong with it.
        failure: DaemonFailure,
        /// The daemon's log file.
        log_path: Option<PathBuf>,
        /// The error lines of that log, known-harmless ones skipped.
        log_errors: Vec<String>,
    },

    /// criu's stats file for a request that went through is missing or malformed:
    /// the request's outcome stands, only its figures are unknown.
    #[error("no criu stats{}: {reason}", display_path(.path))]
    Stats {
        /// The stats file, when there was a directory to read it from.
        path: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
        /// The read or decode error behind it.
        #[source]
        source: Option<BoxError>,
    },

    /// A live migration ([`migrate`](crate::migrate)) did not go through: `failed` says
    /// which side (or the link between them) and `reason` why; `source_tree` what
    /// became of the tree on the source: [`RequestState::RolledBack`] (it runs on
    /// where it was, memory intact) or [`RequestState::Untouched`] (never frozen).
    #[error("migration failed on the {failed}: {reason}; the source tree: {source_tree}")]
    Migration {
        /// Which side failed.
        failed: Side,
        /// Why, in that side's words.
        reason: String,
        /// What became of the source tree.
        source_tree: RequestState,
    },

    /// The request needs something criu, the kernel or this machine does not offer.
    #[error("unsupported: {what}: {reason}")]
    Unsupported {
        /// What was asked for.
        what: String,
        /// Why it cannot be done, and what to change where possible.
        reason: String,
    },

    /// Options that contradict each other or that criu would refuse, caught before
    /// criu was started.
    #[error("invalid option {option}: {reason}")]
    InvalidOptions {
        /// The option's name, as the builder method is called.
        option: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The request exceeded the caller's timeout. `at` says what became of it:
    /// stopped before criu touched anything, rolled back, committed (criu was past its
    /// point of no return and did not answer within the grace), or unknown.
    #[error("{request} timed out after {after:?}; {at}")]
    Timeout {
        /// The request.
        request: RequestKind,
        /// The timeout that elapsed.
        after: Duration,
        /// Where the request stood, and what became of it.
        at: Interruption,
    },

    /// The request was cancelled by the caller (a cancellation token, a batch
    /// cancel). `at` says what became of it, as for [`Error::Timeout`].
    #[error("{request} cancelled; {at}")]
    Cancelled {
        /// The request.
        request: RequestKind,
        /// Where the request stood, and what became of it.
        at: Interruption,
    },

    /// We gave the request up because of an error on our side of the exchange (an
    /// I/O error on the socket, a message from criu that breaks the protocol) while
    /// criu was working on it; `at` says what became of it.
    #[error("gave up on the {request}; {at}")]
    Aborted {
        /// The request.
        request: RequestKind,
        /// Where the request stood, and what became of it.
        at: Interruption,
        /// What made us give up.
        #[source]
        source: Box<Error>,
    },
}

/// The side of a migration that failed ([`Error::Migration`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Side {
    /// The side the tree is moved from.
    Source,
    /// The side the tree is moved to.
    Destination,
    /// The connection between them (cut, timed out, refused).
    Link,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Source => "source",
            Side::Destination => "destination",
            Side::Link => "link between source and destination",
        })
    }
}

/// What became of a criu daemon that failed ([`Error::Daemon`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DaemonFailure {
    /// It exited before it said it was ready.
    ExitedBeforeReady(Option<ExitStatus>),
    /// It was not ready within this long; it was killed.
    NotReady(Duration),
    /// It exited with a failure (or was killed) while serving.
    Failed(Option<ExitStatus>),
}

impl fmt::Display for DaemonFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DaemonFailure::ExitedBeforeReady(s) => {
                write!(f, "exited before it was ready{}", display_status(s))
            }
            DaemonFailure::NotReady(after) => {
                write!(f, "was not ready after {after:?} and was killed")
            }
            DaemonFailure::Failed(s) => write!(f, "failed{}", display_status(s)),
        }
    }
}

/// criu's refusal of a request: what it said, and what its log said.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Refusal {
    /// The request criu refused.
    pub request: RequestKind,
    /// The pid the request was about, when there was one.
    pub pid: Option<i32>,
    /// `cr_errno` from criu's response (an errno value), when set.
    pub errno: Option<i32>,
    /// `cr_errmsg`: criu's first logged error, when set.
    pub message: Option<String>,
    /// The log file criu wrote, when it logged to a file (by default criu logs to
    /// its stderr, which this crate reads).
    pub log_path: Option<PathBuf>,
    /// The error lines of criu's log (that file, or its stderr), known-harmless ones
    /// skipped, bounded in size.
    pub log_errors: Vec<String>,
    /// The last lines criu wrote to stderr.
    pub stderr: String,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "criu refused the {} request", self.request)?;
        if let Some(pid) = self.pid {
            write!(f, " for pid {pid}")?;
        }
        match (&self.message, self.errno) {
            (Some(m), Some(e)) if e != 0 => write!(f, ": {} ({})", m.trim_end(), errno_name(e))?,
            (Some(m), _) => write!(f, ": {}", m.trim_end())?,
            (None, Some(e)) if e != 0 => write!(f, ": {}", errno_name(e))?,
            _ => {}
        }
        if !self.log_errors.is_empty() {
            write!(f, "\n  log errors:")?;
            for line in &self.log_errors {
                write!(f, "\n    {line}")?;
            }
        }
        if let Some(fix) = crate::log::hint(&self.log_errors) {
            write!(f, "\n  hint: {fix}")?;
        }
        if let Some(p) = &self.log_path {
            write!(f, "\n  log: {}", p.display())?;
        }
        if self.log_errors.is_empty() && !self.stderr.trim().is_empty() {
            write!(f, "\n  stderr: {}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

impl Error {
    /// criu answered `success = false`.
    pub fn is_refused(&self) -> bool {
        matches!(self, Error::Refused(_))
    }
    /// The caller's timeout elapsed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
    /// A hook failed (and criu rolled back).
    pub fn is_hook(&self) -> bool {
        matches!(self, Error::Hook { .. })
    }
    /// The request was cancelled.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled { .. })
    }
    /// The request needs something unavailable here.
    pub fn is_unsupported(&self) -> bool {
        matches!(self, Error::Unsupported { .. })
    }
    /// What became of the request this error ended: whether its target is as it
    /// was ([`RequestState::Untouched`], [`RequestState::RolledBack`]), whether it went
    /// through ([`RequestState::Committed`]), or nobody can tell
    /// ([`RequestState::Unknown`]). `None` for errors that are not about a request's
    /// progress (reading stats, say).
    ///
    /// # Example
    /// ```no_run
    /// use criu_swrk::{Criu, DumpOptions, RequestState};
    /// # async fn run() {
    /// match Criu::new().dump(DumpOptions::new(4242).images_dir("/ckpt/4242")).await {
    ///     Ok(out) => println!("dumped {}", out.pid),
    ///     Err(e) => match e.request_state() {
    ///         Some(RequestState::Committed) => println!("dumped, but: {e}"),
    ///         Some(RequestState::Unknown) => println!("check pid 4242: {e}"),
    ///         _ => println!("pid 4242 runs on as before: {e}"),
    ///     },
    /// }
    /// # }
    /// ```
    pub fn request_state(&self) -> Option<RequestState> {
        match self {
            Error::Timeout { at, .. }
            | Error::Cancelled { at, .. }
            | Error::Aborted { at, .. }
            | Error::Exited { at, .. } => Some(at.state),
            // criu resumes the tree (or kills what it restored) on every failure.
            Error::Refused(_) | Error::Hook { .. } => Some(RequestState::RolledBack),
            Error::NotFound { .. }
            | Error::Spawn { .. }
            | Error::Unsupported { .. }
            | Error::InvalidOptions { .. }
            | Error::Closed { .. } => Some(RequestState::Untouched),
            Error::Migration { source_tree, .. } => Some(*source_tree),
            Error::Io { .. }
            | Error::Decode { .. }
            | Error::Protocol { .. }
            | Error::Daemon { .. }
            | Error::Stats { .. } => None,
        }
    }

    /// Where an interrupted request stood: for timeouts, cancels, aborts and a criu
    /// that went away.
    pub fn interruption(&self) -> Option<&Interruption> {
        match self {
            Error::Timeout { at, .. }
            | Error::Cancelled { at, .. }
            | Error::Aborted { at, .. }
            | Error::Exited { at, .. } => Some(at),
            _ => None,
        }
    }

    /// The refusal details, when criu refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// This error, from a query made on behalf of a `kind` request (criu's version,
    /// asked before it), as that request's: a timeout or cancel then ended it.
    pub(crate) fn for_request(self, kind: RequestKind) -> Self {
        match self {
            Error::Timeout { after, at, .. } => Error::Timeout {
                request: kind,
                after,
                at,
            },
            Error::Cancelled { at, .. } => Error::Cancelled { request: kind, at },
            other => other,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn protocol(expected: impl Into<String>, got: impl Into<String>) -> Self {
        Error::Protocol {
            expected: expected.into(),
            got: got.into(),
        }
    }

    pub(crate) fn invalid(option: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidOptions {
            option,
            reason: reason.into(),
        }
    }
}

/// What became of a request that did not finish normally.
///
/// criu's exchange has two points that matter. Up to the first (a dump's `pre-dump`
/// hook, a restore's `pre-restore`) criu has touched nothing, and stopping it is free.
/// From the second on (a dump's `post-dump` answered with success, a restore's
/// `post-restore`) the request goes through whatever the driver says next. In between,
/// criu undoes the request when a hook is answered with failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestState {
    /// criu was stopped before it touched the target (a dump before `pre-dump` was
    /// answered, a restore before `pre-restore`), or the request touches nothing. The
    /// target is as it was.
    Untouched,
    /// criu undid the request and said so: a dumped tree runs on as before (it was
    /// only frozen for a while), a restore killed what it had restored. A dump's
    /// images are removed.
    RolledBack,
    /// criu was past its point of no return. A dump's images are complete (criu
    /// writes them all before `post-dump`) and the tree is gone unless
    /// `leave_running`; a restored tree runs (its pid is in
    /// [`Interruption::pid`] when criu had sent it).
    Committed,
    /// criu was killed, or died, after it had seized the target and before it said
    /// how the request ended. A dumped tree most likely runs on (criu's parasite
    /// cures it when criu goes away), but it may carry criu's parasite mapping
    /// (`/memfd:CRIUMFD`) and stay frozen if a freezer cgroup was used: check it, or
    /// restart it. A partly restored tree may be left (its pid in
    /// [`Interruption::pid`] when known). A dump's images are removed.
    Unknown,
}

impl RequestState {
    /// Whether the target is as it was before the request: untouched or rolled back.
    pub fn target_unchanged(self) -> bool {
        matches!(self, RequestState::Untouched | RequestState::RolledBack)
    }
}

impl fmt::Display for RequestState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestState::Untouched => "stopped before criu touched the target",
            RequestState::RolledBack => "criu rolled it back",
            RequestState::Committed => "criu had already committed it",
            RequestState::Unknown => {
                "criu was stopped after seizing the target: it may carry criu's parasite \
                 mapping; check or restart it"
            }
        })
    }
}

/// Where an interrupted request stood when it ended, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Interruption {
    /// What became of the request.
    pub state: RequestState,
    /// The hook criu was waiting at when the request was interrupted, if any.
    pub hook: Option<String>,
    /// The restored root's pid, when criu had sent it (`setup-namespaces`,
    /// `post-restore`).
    pub pid: Option<i32>,
}

impl Interruption {
    /// Nothing was touched and no hook was pending.
    pub(crate) fn untouched() -> Self {
        Interruption {
            state: RequestState::Untouched,
            hook: None,
            pid: None,
        }
    }
}

impl fmt::Display for Interruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(hook) = &self.hook {
            write!(f, "at hook {hook}: ")?;
        }
        write!(f, "{}", self.state)?;
        if let Some(pid) = self.pid {
            write!(f, " (restored pid {pid})")?;
        }
        Ok(())
    }
}

/// `err` and its sources, each once: `cannot start /x: No such file or directory`.
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

fn errno_name(e: i32) -> String {
    let errno = nix::errno::Errno::from_raw(e);
    if errno == nix::errno::Errno::UnknownErrno {
        format!("errno {e}")
    } else {
        format!("{errno:?}: {}", errno.desc())
    }
}

fn display_tried(tried: &[(PathBuf, String)]) -> String {
    if tried.is_empty() {
        return "nothing to try (set CRIU_BIN or put criu on PATH)".into();
    }
    tried
        .iter()
        .map(|(p, why)| format!("{} ({why})", p.display()))
        .collect::<Vec<_>>()
        .join("; ")
}

fn display_status(status: &Option<ExitStatus>) -> String {
    status.map(|s| format!(" ({s})")).unwrap_or_default()
}

/// criu's error lines, or else the end of its stderr.
fn display_causes(log_errors: &[String], stderr: &str) -> String {
    if !log_errors.is_empty() {
        let mut out = String::from("\n  log errors:");
        for line in log_errors {
            out.push_str("\n    ");
            out.push_str(line);
        }
        if let Some(fix) = crate::log::hint(log_errors) {
            out.push_str("\n  hint: ");
            out.push_str(fix);
        }
        return out;
    }
    let s = stderr.trim();
    if s.is_empty() {
        return String::new();
    }
    // The last few lines: the tail can be long at a high log level.
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(5);
    format!("\n  stderr: {}", lines[from..].join("\n          "))
}

fn display_path(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_names_each_cause_once() {
        let e = Error::Spawn {
            path: "/x/criu".into(),
            source: io::Error::from_raw_os_error(2),
        };
        assert_eq!(e.to_string(), "cannot start /x/criu");
        assert_eq!(
            chain(&e),
            "cannot start /x/criu: No such file or directory (os error 2)"
        );
        let io = Error::io(
            "sending to criu",
            io::Error::from(io::ErrorKind::BrokenPipe),
        );
        assert_eq!(chain(&io), "sending to criu: broken pipe");
        let aborted = Error::Aborted {
            request: RequestKind::Dump,
            at: Interruption::untouched(),
            source: Box::new(io),
        };
        assert_eq!(
            chain(&aborted),
            "gave up on the dump; stopped before criu touched the target: sending to criu: broken pipe"
        );
    }
}
