//! What a successful request returns.

use std::path::PathBuf;

use crate::error::Error;
use crate::stats::{DumpStats, RestoreStats};

/// A finished dump.
#[derive(Debug)]
#[non_exhaustive]
pub struct DumpOutcome {
    /// The dumped tree's root pid.
    pub pid: i32,
    /// Where the images are.
    pub images_dir: Option<PathBuf>,
    /// criu's log of the dump, when it went to a file (see
    /// [`DumpOptions::log_file`](crate::DumpOptions::log_file)).
    pub log: Option<PathBuf>,
    /// criu's `stats-dump`. An error here does not undo the dump: the images are
    /// complete; only the stats could not be read.
    pub stats: Result<DumpStats, Error>,
}

/// A finished pre-dump (one iteration, or a single pre-dump).
#[derive(Debug)]
#[non_exhaustive]
pub struct PreDumpOutcome {
    /// The pre-dumped tree's root pid (still running).
    pub pid: i32,
    /// Where this iteration's images are.
    pub images_dir: Option<PathBuf>,
    /// criu's log of this iteration, when it went to a file.
    pub log: Option<PathBuf>,
    /// criu's `stats-dump` for this iteration.
    pub stats: Result<DumpStats, Error>,
}

/// A finished restore.
#[derive(Debug)]
#[non_exhaustive]
pub struct RestoreOutcome {
    /// The restored root's pid, as criu reports it (in criu's pid namespace, which is
    /// ours).
    pub pid: i32,
    /// The images restored from.
    pub images_dir: Option<PathBuf>,
    /// criu's log of the restore, when it went to a file.
    pub log: Option<PathBuf>,
    /// criu's `stats-restore`.
    pub stats: Result<RestoreStats, Error>,
}

/// A running page server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PageServer {
    /// The page server's pid, when criu reports it. criu 4.x reports 0 for a daemon
    /// page server (the daemon's pid is lost inside criu), which becomes `None`; a
    /// [`Session::page_server_child`](crate::Session::page_server_child) always has
    /// one.
    pub pid: Option<i32>,
    /// The TCP port it listens on (the one criu picked, when asked for port 0).
    pub port: u16,
    /// Where it writes the pages it receives.
    pub images_dir: Option<PathBuf>,
    /// Its log.
    pub log: Option<PathBuf>,
}
