//! Can criu checkpoint and restore on this machine? [`Criu::self_test`] asks criu, the
//! kernel and the machine, then dumps and restores small canary processes the crate
//! starts, and reports each capability as working or not, with the reason and the fix.
//!
//! `criu check` alone is not enough: criu 4.1 passes it on Linux 6.16 and later and
//! then fails every dump of a process holding an inet socket. So the canaries hold
//! what real services hold: pipes, a deleted file, a unix socket pair, a listening
//! TCP socket with an established loopback connection, and a tree in its own pid,
//! mount, net, uts and ipc namespaces. Each canary is `cat` echoing what it reads (from
//! coreutils), so after the restore the doctor writes to it and reads the answer back.
//!
//! # Example
//! ```no_run
//! # async fn run() {
//! let report = criu_swrk::Criu::new().self_test().await;
//! for check in &report.checks {
//!     println!("{:?} {}: {}", check.status, check.name, check.detail);
//! }
//! assert!(report.can_checkpoint());
//! # }
//! ```

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::criu::Criu;
use crate::error::Error;
use crate::info::Version;
use crate::options::NetworkLock;

/// How long each canary's dump and restore may take.
const CANARY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a canary has to answer.
const ANSWER: Duration = Duration::from_secs(5);

/// The outcome of [`Criu::self_test`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Report {
    /// The criu binary tested, when one was found.
    pub criu: Option<PathBuf>,
    /// Its version, when it answered.
    pub version: Option<Version>,
    /// The running kernel's release (`uname -r`).
    pub kernel: String,
    /// Each check, in the order run.
    pub checks: Vec<Check>,
}

/// One check of a [`Report`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Check {
    /// What was checked, e.g. `canary: tcp`.
    pub name: &'static str,
    /// How it went.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to change, when something should be.
    pub fix: Option<String>,
}

/// How a [`Check`] went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// Works.
    Ok,
    /// Works, with a limit worth knowing (a feature unavailable, a slower path).
    Warning,
    /// Does not work.
    Failed,
    /// Could not be tried (a tool missing, an earlier failure).
    Skipped,
}

impl Status {
    /// A short lowercase word for the status: `ok`, `warning`, `failed`, `skipped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

impl Report {
    /// Whether criu can checkpoint and restore here: it answered, `criu check` passed
    /// and the process and TCP canaries came back working. The namespace canary and
    /// the warnings do not count.
    pub fn can_checkpoint(&self) -> bool {
        let ok = |name: &str| {
            self.checks
                .iter()
                .any(|c| c.name == name && c.status == Status::Ok)
        };
        ok("criu") && ok("criu check") && ok(PROCESS) && ok(TCP)
    }

    fn push(&mut self, name: &'static str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            name,
            status,
            detail,
            fix,
        });
    }
}

const PROCESS: &str = "canary: process";
const TCP: &str = "canary: tcp";
const NAMESPACES: &str = "canary: namespaces";

impl Criu {
    /// Tests whether this criu can checkpoint and restore here (see the
    /// [`doctor`](crate::doctor) module): criu's version and `criu check`, kernel
    /// facts that limit what works (network lock without iptables, pipe sizes for
    /// lazy dumps, memory tracking for pre-dumps, criu's kernel probe cache), and a dump
    /// and restore of three canaries. Needs root (as criu does).
    ///
    /// # Errors
    /// None: what did not work (criu missing included) is a finding in the report.
    ///
    /// # Cancel safety
    /// Dropping the future mid-way kills the canary in flight (the canaries are its
    /// children, killed on drop) and winds criu down as any dropped request does.
    pub async fn self_test(&self) -> Report {
        let mut r = Report {
            criu: None,
            version: None,
            kernel: kernel_release(),
            checks: Vec::new(),
        };
        let path = match self.binary() {
            Ok(p) => p,
            Err(e) => {
                r.push(
                    "criu",
                    Status::Failed,
                    e.to_string(),
                    Some(
                        "install criu 4.2 or later (scripts/install-criu), or set CRIU_BIN".into(),
                    ),
                );
                return r;
            }
        };
        r.criu = Some(path.clone());
        let version = match self.version().await {
            Ok(v) => v,
            Err(e) => {
                r.push("criu", Status::Failed, e.to_string(), None);
                return r;
            }
        };
        r.version = Some(version.clone());
        r.push(
            "criu",
            Status::Ok,
            format!("criu {version} at {}", path.display()),
            None,
        );
        match self.check(crate::options::CheckOptions::new()).await {
            Ok(()) => r.push("criu check", Status::Ok, "passed".into(), None),
            Err(e) => {
                let fix = hint_of(&e);
                r.push("criu check", Status::Failed, e.to_string(), fix);
            }
        }

        let kernel = kernel_version(&r.kernel);
        if kernel >= (6, 16) && !version.at_least(4, 2) {
            r.push(
                "inet sockets",
                Status::Failed,
                format!(
                    "criu {version} cannot dump inet sockets on Linux {} (Linux 6.16 restricted \
                     SO_PASSCRED and SO_PASSSEC, which criu before 4.2 reads on every socket)",
                    r.kernel
                ),
                Some("install criu 4.2 or later".into()),
            );
        }

        let iptables = on_path("iptables-restore") || on_path("iptables");
        let lock = if iptables {
            r.push(
                "network lock",
                Status::Ok,
                "iptables found: criu's default lock works".into(),
                None,
            );
            None
        } else {
            r.push(
                "network lock",
                Status::Warning,
                "no iptables here: criu's default network lock fails for established TCP \
                 connections and trees in their own net namespace"
                    .into(),
                Some(
                    "use network_lock(NetworkLock::Nftables) (criu-swrk --network-lock nftables)"
                        .into(),
                ),
            );
            Some(NetworkLock::Nftables)
        };
        match self.features().await {
            Ok(f) if f.mem_track => r.push(
                "memory tracking",
                Status::Ok,
                "soft-dirty tracking: pre-dumps work".into(),
                None,
            ),
            Ok(_) => r.push(
                "memory tracking",
                Status::Warning,
                "no soft-dirty tracking (CONFIG_MEM_SOFT_DIRTY): pre-dumps and pre-copy \
                 migration are unavailable; criu would crash on a pre-dump, so the crate \
                 refuses them"
                    .into(),
                None,
            ),
            Err(e) => r.push("memory tracking", Status::Skipped, e.to_string(), None),
        }
        match crate::preflight::lazy_dump() {
            Ok(()) => r.push(
                "pipe size",
                Status::Ok,
                "criu can grow its page pipes to 4 MiB: lazy dumps work".into(),
                None,
            ),
            Err(e) => r.push(
                "pipe size",
                Status::Warning,
                "fs.pipe-max-size is below 4 MiB and CAP_SYS_RESOURCE is missing: lazy \
                 (post-copy) dumps fail"
                    .into(),
                Some(match e {
                    Error::Unsupported { reason, .. } => reason,
                    other => other.to_string(),
                }),
            ),
        }
        if let Some(age) = stale_kdat_tmp() {
            // criu writes its cache through an O_EXCL temporary file: one left behind
            // by a criu killed mid-write makes every later criu give up saving it.
            r.push(
                "kernel probe cache",
                Status::Warning,
                format!(
                    "/run/criu.kdat.tmp is {} s old, left by a criu that was killed: \
                     no criu can save its kernel probe while it is there",
                    age.as_secs()
                ),
                Some("remove /run/criu.kdat.tmp".into()),
            );
        } else if run_is_tmpfs() {
            r.push(
                "kernel probe cache",
                Status::Ok,
                "/run is a tmpfs: criu caches its kernel probe".into(),
                None,
            );
        } else {
            r.push(
                "kernel probe cache",
                Status::Warning,
                "/run is not a tmpfs: criu cannot keep its kernel probe (/run/criu.kdat) and \
                 re-probes the kernel on every request, about 25 ms each"
                    .into(),
                Some("mount a tmpfs on /run, as systemd machines have".into()),
            );
        }

        let canaries: [(&'static str, Canary); 3] = [
            (PROCESS, Canary::Process),
            (TCP, Canary::Tcp),
            (NAMESPACES, Canary::Namespaces),
        ];
        for (name, canary) in canaries {
            let started = Instant::now();
            match canary.run(self, lock).await {
                Ok(what) => r.push(
                    name,
                    Status::Ok,
                    format!(
                        "{what}: dumped and restored, working ({} ms)",
                        started.elapsed().as_millis()
                    ),
                    None,
                ),
                Err(Failure::Skipped(why)) => r.push(name, Status::Skipped, why, None),
                Err(Failure::Failed { detail, fix }) => r.push(name, Status::Failed, detail, fix),
            }
        }
        r
    }
}

/// The age of `/run/criu.kdat.tmp`, when one older than a minute is there (a live
/// criu's lasts milliseconds).
fn stale_kdat_tmp() -> Option<Duration> {
    let modified = std::fs::metadata("/run/criu.kdat.tmp")
        .ok()?
        .modified()
        .ok()?;
    let age = modified.elapsed().ok()?;
    (age > Duration::from_secs(60)).then_some(age)
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `major.minor` of a kernel release such as `6.18.44-fc`.
fn kernel_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

pub(super) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
                .any(|dir| dir.join(program).is_file())
        })
        .unwrap_or(false)
}

fn run_is_tmpfs() -> bool {
    nix::sys::statfs::statfs("/run")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

mod canary;

use canary::{Canary, Failure, hint_of};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v857"), (6, 18));
        assert_eq!(kernel_version("5.10.0-28-amd64"), (5, 10));
        assert_eq!(kernel_version(""), (0, 0));
    }
}
