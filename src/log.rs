//! criu's log: picking out the lines that say why a request failed.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// How many error lines an error carries at most.
const MAX_LINES: usize = 20;
/// How long one carried line may be.
const MAX_LINE_CHARS: usize = 400;
/// How much of the end of a log is read.
const TAIL_BYTES: u64 = 1024 * 1024;

/// Lines criu logs as errors that say nothing about the failure at hand.
const HARMLESS: &[&str] = &[
    // CAP_SYS_RESOURCE missing: criu goes on with the limit it has.
    "Can't setup RLIMIT_NOFILE for self",
];

/// The error lines of the log at `path`: the last [`MAX_LINES`] of them, each cut to a
/// readable length. An unreadable log gives no lines.
pub(crate) fn error_lines_of_file(path: &Path) -> Vec<String> {
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len > TAIL_BYTES {
        let _ = f.seek(SeekFrom::Start(len - TAIL_BYTES));
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    error_lines(&String::from_utf8_lossy(&buf))
}

/// The error lines of a log's text (see [`error_lines_of_file`]).
pub(crate) fn error_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| is_error(l) && !is_harmless(l))
        .map(|l| {
            let l = l.trim();
            if l.chars().count() > MAX_LINE_CHARS {
                let cut: String = l.chars().take(MAX_LINE_CHARS).collect();
                format!("{cut}...")
            } else {
                l.to_owned()
            }
        })
        .collect();
    if lines.len() > MAX_LINES {
        lines.drain(..lines.len() - MAX_LINES);
    }
    lines
}

/// Whether `line` is an error criu logs that says nothing about the failure at hand.
pub(crate) fn is_harmless(line: &str) -> bool {
    HARMLESS.iter().any(|h| line.contains(h))
}

/// criu prefixes errors with `Error (file:line): ` after an optional timestamp.
pub(crate) fn is_error(line: &str) -> bool {
    let rest = match line.strip_prefix('(') {
        Some(r) => r.split_once(") ").map(|(_, r)| r).unwrap_or(""),
        None => line,
    };
    rest.starts_with("Error (") || rest.starts_with("Error:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_errors_and_skips_harmless_ones() {
        let log = "\
(00.000010) Version: 4.1.1
(00.000300) Error (criu/util.c:1053): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
(00.001000) Warn  (criu/x.c:1): something
(00.002000) Error (criu/cr-dump.c:1970): No process with such pid 999999
Error (criu/cr-service.c:52): Can't read request
";
        let lines = error_lines(log);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].contains("No process with such pid"));
        assert!(lines[1].starts_with("Error (criu/cr-service.c"));
    }

    #[test]
    fn is_bounded() {
        let long = "x".repeat(5000);
        let log: String = (0..100)
            .map(|i| format!("(0.{i}) Error (a.c:1): {i} {long}\n"))
            .collect();
        let lines = error_lines(&log);
        assert_eq!(lines.len(), MAX_LINES);
        assert!(
            lines
                .iter()
                .all(|l| l.chars().count() <= MAX_LINE_CHARS + 3)
        );
        assert!(lines.last().unwrap().contains(" 99 "));
    }
}
