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
    // iproute2, when a restore beside the original re-adds an address criu then
    // finds in place: the restore goes on.
    "ipv4: Address already assigned",
    "ipv6: address already assigned",
    // criu's kernel probe asking for iptables on a machine without it (8-12 lines
    // per request on a tree with its own net namespace). A lock that really needs
    // iptables fails with lines of its own ("Locking network failed", "Iptables
    // configuration failed", sh's "iptables: not found"), which stay.
    "execvp(\"iptables",
    "execvp(\"ip6tables",
    "iptables-restore -V failed",
    "iptables-save -V failed",
    "ip6tables-restore -V failed",
    "ip6tables-save -V failed",
    "tables-legacy-save -V failed",
    "tables-legacy-restore -V failed",
];

/// Known causes, recognised in criu's error lines, and what to do about them.
const HINTS: &[(&str, &str)] = &[
    (
        "mnt: BUG at",
        "a tree in its own mount namespace restores only with the directory holding its \
         root: RestoreOptions::root (criu-swrk restore --root DIR)",
    ),
    (
        "Connected TCP socket in image",
        "the tree was dumped with established TCP connections: restore with \
         tcp_established too (--tcp-established)",
    ),
    (
        "iptables: not found",
        "criu's default network lock runs iptables, which is not installed: use \
         network_lock(NetworkLock::Nftables) (--network-lock nftables)",
    ),
    (
        "iptables-restore returned",
        "criu's default network lock runs iptables-restore, which failed or is not \
         installed: use network_lock(NetworkLock::Nftables) (--network-lock nftables)",
    ),
    (
        "Can't get 1:16 opt",
        "this criu cannot dump inet sockets on Linux 6.16 and later: install criu 4.2 or \
         later",
    ),
    (
        "Address already in use",
        "another process holds an address the tree listened on: free it (the images \
         are unharmed) and restore again",
    ),
    (
        "is not a session leader",
        "the tree's session leader is outside it: dump (and restore) with shell_job \
         (--shell-job), or start the tree with setsid",
    ),
    (
        "doesn't have a proper root mount",
        "a mount of the tree is not under its root: declare it external (External::mount, \
         --external mnt[MOUNTPOINT]:NAME) and map it back at restore",
    ),
];

/// What to do about the failure these lines describe, when it is a known one.
pub(crate) fn hint(lines: &[String]) -> Option<&'static str> {
    HINTS
        .iter()
        .find(|(cause, _)| lines.iter().any(|l| l.contains(cause)))
        .map(|(_, fix)| *fix)
}

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

/// The lines of a log's text (criu's stderr, or its log file) that say why a request
/// failed: criu's errors, and what criu's helpers wrote (see [`is_cause`]), bounded.
pub(crate) fn error_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = text
        .lines()
        .filter(|l| is_cause(l))
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

/// One line of what criu writes, taken apart.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Line<'a> {
    /// criu wrote it: it has criu's timestamp or pid prefix, or a level word.
    pub(crate) criu: bool,
    /// An error (`Error (file:line): ...`, `Error: ...`, criu's `BUG at ...`).
    pub(crate) error: bool,
    /// The text after criu's prefixes.
    pub(crate) text: &'a str,
}

/// Takes a line apart: criu writes `[(SS.UUUUUU) ][  PID: ]Level (file:line): text`,
/// the timestamp at log level 4 and above, the pid for what its restored tasks log
/// (criu's log.c); anything else on its stderr comes from the helpers it runs
/// (`sh: 1: iptables: not found`).
pub(crate) fn parse(line: &str) -> Line<'_> {
    let mut rest = line;
    let mut prefixed = false;
    if let Some(after) = rest.strip_prefix('(')
        && let Some((ts, tail)) = after.split_once(") ")
        && !ts.is_empty()
        && ts.chars().all(|c| c.is_ascii_digit() || c == '.')
    {
        rest = tail;
        prefixed = true;
    }
    let trimmed = rest.trim_start();
    if let Some((pid, tail)) = trimmed.split_once(": ")
        && !pid.is_empty()
        && pid.chars().all(|c| c.is_ascii_digit())
    {
        rest = tail;
        prefixed = true;
    }
    let error = rest.starts_with("Error (") || rest.starts_with("Error:");
    let level = error || rest.starts_with("Warn  (") || rest.starts_with("Warn (");
    Line {
        criu: prefixed || level,
        error,
        text: rest,
    }
}

/// Whether criu logged `line` as an error (in any of its forms; see [`parse`]).
#[cfg(test)]
fn is_error(line: &str) -> bool {
    parse(line).error
}

/// Whether `line` says why a request failed: an error criu logged, or a line one of
/// its helpers wrote (criu's own lines all carry its prefixes); known-harmless lines
/// and blank ones do not.
pub(crate) fn is_cause(line: &str) -> bool {
    if line.trim().is_empty() || is_harmless(line) {
        return false;
    }
    let l = parse(line);
    l.error || !l.criu
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
    fn recognises_every_form_criu_writes_errors_in() {
        let cases = [
            // Level 2, criu itself.
            (
                "Error (criu/cr-dump.c:1970): No process with such pid 999999",
                true,
            ),
            // A restored task's error: its pid in front.
            (
                " 14246: Error (criu/sk-inet.c:903): inet: Connected TCP socket in image",
                true,
            ),
            // Level 4: a timestamp, and both.
            (
                "(00.012345) Error (criu/mount.c:48): mnt: BUG at criu/mount.c:48",
                true,
            ),
            (
                "(00.145223)  14246: Error (criu/cr-restore.c:1480): Can't fork for 1139: File exists",
                true,
            ),
            ("Error: ipv4: something", true),
            // Not errors.
            ("(00.000010) Version: 4.2.1", false),
            ("Warn  (criu/x.c:1): something", false),
            ("  123: Warn  (criu/x.c:1): something", false),
        ];
        for (line, error) in cases {
            assert_eq!(is_error(line), error, "{line}");
            assert!(parse(line).criu, "{line}");
            assert_eq!(is_cause(line), error, "{line}");
        }
        let lines = error_lines(
            "(00.001) Error (criu/cr-restore.c:2392): Restoring FAILED.\n\
             (00.000) 14246: Error (criu/sk-inet.c:903): inet: Connected TCP socket in image\n",
        );
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("Connected TCP socket"), "{lines:?}");
    }

    #[test]
    fn what_a_helper_wrote_is_a_cause() {
        // criu's network lock runs iptables through sh; without iptables the decisive
        // line is sh's, not criu's.
        let stderr = "Error (criu/util.c:650): exited, status=127\n\
                      sh: 1: iptables: not found\n\
                      Error (criu/net.c:3102): Iptables configuration failed\n\
                      \n";
        let lines = error_lines(stderr);
        assert_eq!(
            lines,
            [
                "Error (criu/util.c:650): exited, status=127",
                "sh: 1: iptables: not found",
                "Error (criu/net.c:3102): Iptables configuration failed"
            ]
        );
        assert!(!parse("sh: 1: iptables: not found").criu);
        assert!(!is_cause("Error: ipv4: Address already assigned."));
    }

    #[test]
    fn known_causes_come_with_their_fix() {
        let lines = vec![
            "1: Error (criu/mount.c:48): mnt: BUG at criu/mount.c:48".to_owned(),
            "Error (criu/cr-restore.c:2331): Restoring FAILED.".to_owned(),
        ];
        assert!(hint(&lines).unwrap().contains("RestoreOptions::root"));
        assert_eq!(hint(&["Error (x.c:1): something else".to_owned()]), None);
        assert!(!is_cause(
            "Error (criu/util.c:640): execvp(\"iptables-restore\", ...) failed: No such file or directory"
        ));
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
