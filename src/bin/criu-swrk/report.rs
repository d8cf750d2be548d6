//! What the tool prints about each target: a JSON line (`--json`) or a line for a
//! person; errors also go to stderr.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_swrk::stats::{DumpStats, RestoreStats};
use criu_swrk::{DumpOutcome, RestoreOutcome};
use serde_json::{Value, json};

/// An error and its sources, each named once (the library's errors do not repeat
/// their source in their own message): `cannot start /x/criu: No such file or
/// directory`.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut next = err.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}

/// The result for one target.
#[derive(Debug)]
pub struct Report {
    /// The target as the user named it (a pid, a directory).
    pub target: String,
    /// The process: the dumped pid, or the restored root's pid.
    pub pid: Option<i32>,
    /// Where its images are.
    pub images_dir: Option<PathBuf>,
    /// A line for a person (on success).
    pub summary: String,
    /// What went wrong (criu's message included).
    pub error: Option<String>,
    /// criu's stats, when known.
    pub stats: Option<Value>,
}

impl Report {
    /// A target that failed before its request could start.
    pub fn failed(target: &crate::batch::Target, error: String) -> Self {
        Report {
            target: target.name.clone(),
            pid: target.pid,
            images_dir: Some(target.images_dir.clone()),
            summary: String::new(),
            error: Some(error),
            stats: None,
        }
    }

    /// Whether the target succeeded.
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }

    /// The `--json` form.
    pub fn to_json(&self) -> Value {
        json!({
            "target": self.target,
            "ok": self.ok(),
            "pid": self.pid,
            "images_dir": self.images_dir.as_deref().map(Path::to_string_lossy),
            "error": self.error,
            "stats": self.stats,
        })
    }
}

/// Prints reports on stdout (as JSON lines or summaries), errors on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// `--json`.
    pub json: bool,
    /// Without `--json`, print only the pid of a successful target (`restore`).
    pub pid_only: bool,
    /// Progress as plain lines even on a terminal (`-v`: log lines would tear bars).
    pub plain_progress: bool,
}

impl Printer {
    /// The line for stdout, if any, and the line for stderr, if any.
    pub fn lines(&self, r: &Report) -> (Option<String>, Option<String>) {
        let err = r
            .error
            .as_ref()
            .map(|e| format!("criu-swrk: {}: {e}", r.target));
        let out = if self.json {
            Some(r.to_json().to_string())
        } else if r.ok() && self.pid_only {
            r.pid.map(|p| p.to_string())
        } else if r.ok() {
            Some(r.summary.clone())
        } else {
            None
        };
        (out, err)
    }

    /// Prints a report.
    pub fn print(&self, r: &Report) {
        let (out, err) = self.lines(r);
        if let Some(out) = out {
            println!("{out}");
        }
        if let Some(err) = err {
            eprintln!("{err}");
        }
    }

    /// Prints a one-object answer (version, features, check): `value` as JSON, or
    /// `human` for a person; `error` on stderr either way.
    pub fn single(&self, value: Value, human: &str, error: Option<&str>) {
        if self.json {
            println!("{value}");
        } else if error.is_none() {
            println!("{human}");
        }
        if let Some(e) = error {
            eprintln!("criu-swrk: {e}");
        }
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A dump's stats as JSON (times in microseconds, as criu measures them).
pub fn dump_stats_json(s: &DumpStats) -> Value {
    json!({
        "freezing_time_us": us(s.freezing_time),
        "frozen_time_us": us(s.frozen_time),
        "memdump_time_us": us(s.memdump_time),
        "memwrite_time_us": us(s.memwrite_time),
        "pages_scanned": s.pages_scanned,
        "pages_skipped_parent": s.pages_skipped_parent,
        "pages_written": s.pages_written,
        "pages_lazy": s.pages_lazy,
    })
}

/// A restore's stats as JSON (times in microseconds).
pub fn restore_stats_json(s: &RestoreStats) -> Value {
    json!({
        "forking_time_us": us(s.forking_time),
        "restore_time_us": us(s.restore_time),
        "pages_compared": s.pages_compared,
        "pages_skipped_cow": s.pages_skipped_cow,
        "pages_restored": s.pages_restored,
    })
}

/// A dump's stats for a person.
pub fn dump_stats_line(s: &DumpStats) -> String {
    format!(
        "frozen {:?} (freezing {:?}, memdump {:?}, memwrite {:?}), {} pages written of {} scanned",
        s.frozen_time,
        s.freezing_time,
        s.memdump_time,
        s.memwrite_time,
        s.pages_written,
        s.pages_scanned
    )
}

/// A restore's stats for a person.
pub fn restore_stats_line(s: &RestoreStats) -> String {
    format!(
        "forking {:?}, restore {:?}, {} pages restored",
        s.forking_time,
        s.restore_time,
        s.pages_restored.unwrap_or(0)
    )
}

/// What a finished request of a batch tells about its target.
pub trait Outcome {
    /// Fills a report (pid, images, stats, summary) from the outcome.
    fn fill(&self, r: &mut Report);
}

impl Outcome for DumpOutcome {
    fn fill(&self, r: &mut Report) {
        r.pid = Some(self.pid);
        if let Some(dir) = &self.images_dir {
            r.images_dir = Some(dir.clone());
        }
        let dir = r.images_dir.as_deref().unwrap_or(Path::new("?")).display();
        r.summary = match &self.stats {
            Ok(s) => {
                r.stats = Some(dump_stats_json(s));
                format!("{}: dumped to {dir}; {}", r.target, dump_stats_line(s))
            }
            Err(e) => format!("{}: dumped to {dir} (no stats: {e})", r.target),
        };
    }
}

impl Outcome for RestoreOutcome {
    fn fill(&self, r: &mut Report) {
        r.pid = Some(self.pid);
        if let Some(dir) = &self.images_dir {
            r.images_dir = Some(dir.clone());
        }
        r.summary = match &self.stats {
            Ok(s) => {
                r.stats = Some(restore_stats_json(s));
                format!(
                    "{}: restored as pid {}; {}",
                    r.target,
                    self.pid,
                    restore_stats_line(s)
                )
            }
            Err(e) => format!("{}: restored as pid {} (no stats: {e})", r.target, self.pid),
        };
    }
}
