//! The command line, as clap parses it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

/// Checkpoint and restore Linux processes with criu, through its RPC (swrk) mode.
///
/// Exit status: 0 when every target succeeded, 1 when any failed, 2 on usage errors.
#[derive(Debug, Parser)]
#[command(name = "criu-swrk", version)]
pub struct Cli {
    /// The criu binary to run [default: $CRIU_BIN, then $PATH, then /usr/local/sbin
    /// and /usr/sbin].
    #[arg(long, global = true, value_name = "PATH")]
    pub criu: Option<PathBuf>,

    /// Write one JSON object per line on stdout for each target (`target`, `ok`,
    /// `pid`, `images_dir`, `error`, `stats`); one object for version, features and
    /// check.
    #[arg(long, global = true)]
    pub json: bool,

    /// For dumps and restores: have criu write its log to NAME in each images
    /// directory. By default criu logs to its stderr, which the tool reads: errors
    /// carry criu's error lines either way.
    #[arg(long, global = true, value_name = "NAME")]
    pub log_file: Option<String>,

    /// Tracing logs on stderr: -v info, -vv debug, -vvv trace ($RUST_LOG overrides).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print criu's version and where that criu is.
    Version,
    /// Ask criu which optional kernel features this machine offers.
    Features,
    /// Run criu's own check: can it checkpoint and restore on this machine?
    Check,
    /// Checkpoint one process tree.
    Dump(DumpArgs),
    /// Restore one process tree (detached) and print its root pid.
    Restore {
        /// The directory holding the images.
        #[arg(long, value_name = "DIR")]
        images_dir: PathBuf,
        #[command(flatten)]
        limits: Limits,
    },
    /// Checkpoint many process trees, a few at a time; the images of pid P go to
    /// DIR/P (absent or empty; it appears when P's dump commits). Ctrl-C rolls back
    /// every dump in flight.
    DumpMany(DumpManyArgs),
    /// Restore many process trees (detached), a few at a time.
    RestoreMany {
        /// How many criu processes may run at once.
        #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
        jobs: u16,
        #[command(flatten)]
        limits: Limits,
        /// Image directories, one per tree.
        #[arg(required = true, value_name = "DIR")]
        dirs: Vec<PathBuf>,
    },
    /// Start a sample workload, checkpoint it, restore it, and show its memory intact
    /// and criu's stats.
    Demo,
    /// The demo's workload: MIB MiB of random bytes, described in INFO_FILE.
    #[command(hide = true)]
    Workload {
        /// MiB of random bytes to hold.
        mib: usize,
        /// Where to write the buffer's address and checksum.
        info_file: PathBuf,
    },
}

/// `dump`'s arguments.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The root of the tree to checkpoint.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub pid: i32,
    /// Where the images go: absent or an empty directory. The images are written
    /// into a hidden sibling (`.DIR.partial-XXXXXX`) and appear under DIR only once
    /// the dump has committed, so DIR never holds a half-written dump.
    #[arg(long, value_name = "DIR")]
    pub images_dir: PathBuf,
    /// The tree is a shell job (its session leader is outside it, or it has a
    /// controlling terminal).
    #[arg(long)]
    pub shell_job: bool,
    /// Checkpoint established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// Allow unix sockets whose peer is outside the tree.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Checkpoint file locks.
    #[arg(long)]
    pub file_locks: bool,
    #[command(flatten)]
    pub common: DumpCommon,
}

/// `dump-many`'s arguments.
#[derive(Debug, Args)]
pub struct DumpManyArgs {
    /// The images of pid P go to DIR/P.
    #[arg(long, value_name = "DIR")]
    pub images_root: PathBuf,
    /// How many criu processes may run at once.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    #[command(flatten)]
    pub common: DumpCommon,
    /// The roots of the trees to checkpoint.
    #[arg(required = true, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..))]
    pub pids: Vec<i32>,
}

/// Flags `dump` and `dump-many` share.
#[derive(Debug, Args)]
pub struct DumpCommon {
    /// Leave the tree running after the checkpoint (by default criu kills it).
    #[arg(long)]
    pub leave_running: bool,
    #[command(flatten)]
    pub limits: Limits,
}

/// How long a target may take, for every command that runs criu on targets.
#[derive(Debug, Args)]
pub struct Limits {
    /// Give up on a target after SECS seconds (fractions allowed). Before criu has
    /// touched the target it is stopped at once; after that its dump or restore is
    /// rolled back at criu's next hook (the tree keeps running); past criu's commit
    /// point it is let finish and reported as done.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Duration>,
    /// After a timeout or Ctrl-C, how long criu gets to reach its next hook and roll
    /// back before it is killed (a criu killed then may leave its parasite in the
    /// tree) [default: 30].
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub grace: Option<Duration>,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    match Duration::try_from_secs_f64(secs) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(format!("'{s}' is not a positive number of seconds")),
    }
}
