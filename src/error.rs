//! The crate's one error type.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::codec::RequestKind;

/// A boxed error from a caller's hook.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while driving criu.
///
/// Each variant carries typed fields so callers can react without parsing messages;
/// the `Display` form is written for a person and names what was wrong. Predicate
/// methods ([`is_refused`](Self::is_refused), [`is_timeout`](Self::is_timeout), ...)
/// cover the common checks.
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
    #[error("cannot start {path}: {source}")]
    Spawn {
        /// The criu binary.
        path: PathBuf,
        /// What `fork`/`exec` reported.
        #[source]
        source: io::Error,
    },

    /// An I/O error on our side (socket, directory, file).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// criu sent bytes that are not a valid message.
    #[error("cannot decode {what} from criu ({len} bytes): {source}")]
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
    #[error("hook {hook} failed, criu rolled the {request} back: {source}")]
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

    /// criu closed the connection or exited before answering.
    #[error("criu exited before answering the {request} request{}{}", display_status(.status), display_stderr(.stderr))]
    Exited {
        /// The request in flight.
        request: RequestKind,
        /// criu's exit status, when we spawned and reaped it.
        status: Option<ExitStatus>,
        /// The last lines criu wrote to stderr.
        stderr: String,
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

    /// The request exceeded the caller's timeout. For dumps, criu was told to roll
    /// back first: the target keeps running.
    #[error("{request} timed out after {after:?}{}", if *.rolled_back { "; criu rolled it back" } else { "" })]
    Timeout {
        /// The request.
        request: RequestKind,
        /// The timeout that elapsed.
        after: Duration,
        /// Whether criu confirmed the rollback (answered after our failed notify).
        rolled_back: bool,
    },

    /// The request was cancelled by the caller (a cancellation token, a batch
    /// cancel). For dumps, criu was told to roll back first: the target keeps running.
    #[error("{request} cancelled{}", if *.rolled_back { "; criu rolled it back" } else { "" })]
    Cancelled {
        /// The request.
        request: RequestKind,
        /// Whether criu confirmed the rollback (or had nothing to roll back).
        rolled_back: bool,
    },
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
    /// The refusal details, when criu refused.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Error::Refused(r) => Some(r),
            _ => None,
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

fn display_stderr(stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() {
        String::new()
    } else {
        format!("; stderr: {s}")
    }
}
