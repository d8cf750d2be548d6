//! The command line, as clap parses it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

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
    /// Test this criu for real: its version and check, the machine's limits (network
    /// lock, pipe sizes, memory tracking, criu's probe cache), and a dump and restore
    /// of canaries holding pipes, a deleted file, a unix socket pair, TCP connections
    /// and namespaces. Exit status 0 when criu can checkpoint and restore here.
    Doctor,
    /// Checkpoint one process tree.
    Dump(DumpArgs),
    /// Receive live migrations (`criu-swrk migrate`) into DIR/ID and restore them;
    /// one line (or JSON object) per migration, arrived or failed.
    Serve(ServeArgs),
    /// Move a running tree to a `criu-swrk serve` on another host (stop-and-copy): it
    /// is dumped straight into the destination's page server and let go here only
    /// once it runs there; any failure leaves it running here.
    Migrate(MigrateArgs),
    /// Restore one process tree (detached) and print its root pid. The options the
    /// dump recorded in DIR (criu-swrk.json: --tcp-established, --shell-job, the
    /// tree's root, the network lock, ...) are used unless a flag overrides them.
    Restore(RestoreArgs),
    /// Checkpoint many process trees, a few at a time; the images of pid P go to
    /// DIR/P (absent or empty; it appears when P's dump commits). Ctrl-C rolls back
    /// every dump in flight.
    DumpMany(DumpManyArgs),
    /// Restore many process trees (detached), a few at a time, each with the options
    /// its dump recorded.
    RestoreMany(RestoreManyArgs),
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
    /// The root of the tree to checkpoint (a container's init, with --bundle).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..), required_unless_present = "runc")]
    pub pid: Option<i32>,
    /// The tree is the OCI container made from the bundle in DIR: its mounts,
    /// namespaces, cgroups and console are derived from DIR/config.json.
    #[arg(long, value_name = "DIR", conflicts_with = "runc")]
    pub bundle: Option<PathBuf>,
    /// The tree is runc's container ID: its pid and bundle come from `runc state ID`.
    #[arg(long, value_name = "ID", conflicts_with = "pid")]
    pub runc: Option<String>,
    /// Where the images go: absent or an empty directory. The images are written
    /// into a hidden sibling (`.DIR.partial-XXXXXX`) and appear under DIR only once
    /// the dump has committed, so DIR never holds a half-written dump.
    #[arg(long, value_name = "DIR")]
    pub images_dir: PathBuf,
    /// Freeze the tree through this cgroup v1 freezer directory (the tree's own
    /// cgroup) instead of freezing each task.
    #[arg(long, value_name = "PATH")]
    pub freeze_cgroup: Option<String>,
    #[command(flatten)]
    pub common: DumpCommon,
}

/// `dump-many`'s arguments.
#[derive(Debug, Args)]
pub struct DumpManyArgs {
    /// The images of pid P go to DIR/P.
    #[arg(long, value_name = "DIR")]
    pub images_root: PathBuf,
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub common: DumpCommon,
    /// runc containers to checkpoint as well: the images of container ID go to
    /// DIR/ID. Repeatable.
    #[arg(long = "runc", value_name = "ID")]
    pub containers: Vec<String>,
    /// The roots of the trees to checkpoint.
    #[arg(value_name = "PID", value_parser = clap::value_parser!(i32).range(1..), required_unless_present = "containers")]
    pub pids: Vec<i32>,
}

/// The TLS files of a migration's side, or plain TCP.
#[derive(Debug, Args)]
pub struct SecurityArgs {
    /// The CA certificate (PEM) both sides trust.
    #[arg(long, value_name = "FILE", requires_all = ["tls_cert", "tls_key"], required_unless_present = "insecure")]
    pub tls_ca: Option<PathBuf>,
    /// This side's certificate (PEM), signed by the CA.
    #[arg(long, value_name = "FILE", requires = "tls_ca")]
    pub tls_cert: Option<PathBuf>,
    /// This side's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_ca")]
    pub tls_key: Option<PathBuf>,
    /// Plain TCP instead: loopback and RFC 5737 test addresses only.
    #[arg(long, conflicts_with_all = ["tls_ca", "tls_cert", "tls_key"])]
    pub insecure: bool,
    /// The longest one migration may take (the source tree then resumes).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub deadline: Option<Duration>,
}

/// `serve`'s arguments.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The address and port to listen on, e.g. 10.0.0.2:7070.
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Migrations arrive in DIR/ID (DIR must exist).
    #[arg(long, value_name = "DIR")]
    pub images_root: PathBuf,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Take one migration, then exit (status 0 if it arrived).
    #[arg(long)]
    pub once: bool,
}

/// `migrate`'s arguments.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// The root of the tree to move.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
    pub pid: i32,
    /// The destination's `criu-swrk serve` address, e.g. 10.0.0.2:7070.
    #[arg(long, value_name = "ADDR")]
    pub to: std::net::SocketAddr,
    /// The name the destination's certificate carries [default: its address].
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// The migration's name: its directory on the destination.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Move established TCP connections.
    #[arg(long)]
    pub tcp_established: bool,
    /// The tree is a shell job.
    #[arg(long)]
    pub shell_job: bool,
    /// How the network is locked while the tree is frozen.
    #[arg(long, value_enum, value_name = "METHOD")]
    pub network_lock: Option<LockArg>,
    /// Post-copy: the tree runs on the destination before its memory has arrived;
    /// pages follow on demand (needs fs.pipe-max-size >= 4 MiB here).
    #[arg(long)]
    pub lazy: bool,
    /// Pre-copy: rounds of pre-dumps while the tree runs before the final dump
    /// (needs the kernel's dirty-memory tracking; refused without it).
    #[arg(long, conflicts_with = "lazy")]
    pub pre_copy: bool,
    /// The tree is the OCI container whose bundle (holding config.json) is DIR; the
    /// destination restores it from the same path.
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
}

/// How `dump-many` and `restore-many` schedule their targets.
#[derive(Debug, Args)]
pub struct BatchArgs {
    /// How many criu processes may run at once. Default: two per CPU to start
    /// with, one more while a quarter of a CPU sits idle (up to four per CPU), one
    /// fewer while the CPUs are saturated (down to one per CPU).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
    /// Which targets start first: the largest (by resident memory, or by the size
    /// of their pages images for restores), or in the order given.
    #[arg(long, value_enum, default_value_t = OrderArg::Largest)]
    pub order: OrderArg,
}

/// `--order`'s values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OrderArg {
    /// The largest targets first.
    Largest,
    /// As given on the command line.
    Given,
}

/// Flags `dump` and `dump-many` share.
#[derive(Debug, Args)]
pub struct DumpCommon {
    /// Leave the tree running after the checkpoint (by default criu kills it).
    #[arg(long)]
    pub leave_running: bool,
    #[command(flatten)]
    pub tree: TreeArgs,
}

/// `restore`'s arguments.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The directory holding the images.
    #[arg(long, value_name = "DIR")]
    pub images_dir: PathBuf,
    #[command(flatten)]
    pub restore: RestoreCommon,
}

/// `restore-many`'s arguments.
#[derive(Debug, Args)]
pub struct RestoreManyArgs {
    #[command(flatten)]
    pub batch: BatchArgs,
    #[command(flatten)]
    pub restore: RestoreCommon,
    /// Image directories, one per tree.
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
}

/// Flags `restore` and `restore-many` share.
#[derive(Debug, Args)]
pub struct RestoreCommon {
    /// Restore the OCI container of the bundle in DIR: its init back in the bundle's
    /// rootfs, with its mounts [default: the bundle the dump recorded, for a container
    /// dumped with --bundle or --runc].
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// For a container with a terminal: send the new console's master to the unix
    /// socket at PATH (SCM_RIGHTS), as runc's --console-socket does.
    #[arg(long, value_name = "PATH")]
    pub console_socket: Option<PathBuf>,
    /// Restore the tree's root under DIR (a tree that lived in its own mount
    /// namespace, pivot_root'ed into a rootfs) [default: what the dump recorded].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Give the restored tree the file at PATH for the resource KEY in the images
    /// (e.g. `pipe:[12345]:/tmp/out.log`; criu's --inherit-fd). Repeatable.
    #[arg(long, value_name = "KEY:PATH", value_parser = parse_inherit)]
    pub inherit_fd: Vec<(String, PathBuf)>,
    #[command(flatten)]
    pub tree: TreeArgs,
}

/// What criu needs on both sides of a checkpoint. On a restore, a flag adds to what
/// the dump recorded.
#[derive(Debug, Args)]
pub struct TreeArgs {
    /// The tree is a shell job (its session leader is outside it, or it has a
    /// controlling terminal).
    #[arg(long)]
    pub shell_job: bool,
    /// Checkpoint established TCP connections (with a network lock; this machine may
    /// need --network-lock nftables).
    #[arg(long)]
    pub tcp_established: bool,
    /// Allow unix sockets whose peer is outside the tree.
    #[arg(long)]
    pub ext_unix_sk: bool,
    /// Checkpoint file locks.
    #[arg(long)]
    pub file_locks: bool,
    /// How criu locks the tree's network during the checkpoint [default: criu's,
    /// iptables, which needs the iptables binary].
    #[arg(long, value_enum, value_name = "METHOD")]
    pub network_lock: Option<LockArg>,
    /// An external resource (criu's --external, e.g. `mnt[/data]:vol` on a dump,
    /// `mnt[vol]:/srv/vol` on a restore). Repeatable.
    #[arg(long = "external", value_name = "SPEC")]
    pub external: Vec<String>,
    /// How criu handles the tree's cgroups.
    #[arg(long, value_enum, value_name = "MODE")]
    pub manage_cgroups: Option<CgroupArg>,
    /// Namespaces criu leaves empty: only `net` (its links, routes and rules are
    /// neither dumped nor restored).
    #[arg(long, value_enum, value_name = "NS")]
    pub empty_ns: Option<EmptyNsArg>,
    /// criu's log level, 0 (none) to 4 (debug) [default: 2, errors].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=4))]
    pub log_level: Option<u8>,
    #[command(flatten)]
    pub limits: Limits,
}

/// `--network-lock`'s values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LockArg {
    /// iptables rules (needs the iptables binary).
    Iptables,
    /// nftables rules (criu links libnftables: no binary needed).
    Nftables,
    /// No lock: the caller locks the network.
    Skip,
}

/// `--manage-cgroups`' values (criu's --manage-cgroups modes).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum CgroupArg {
    /// Leave cgroups alone.
    Ignore,
    /// No cgroup properties.
    None,
    /// Only properties.
    Props,
    /// Restore properties where the cgroup does not exist yet.
    Soft,
    /// Restore everything.
    Full,
    /// Like full, failing on mismatches.
    Strict,
}

/// `--empty-ns`' values.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EmptyNsArg {
    /// The network namespace.
    Net,
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

/// `KEY:PATH`; a key such as `pipe:[123]` holds a colon itself, so a key in brackets
/// ends at its `]`.
fn parse_inherit(s: &str) -> Result<(String, PathBuf), String> {
    let split = match s.find("]:") {
        Some(i) => Some((&s[..=i], &s[i + 2..])),
        None => s.split_once(':'),
    };
    match split {
        Some((key, path)) if !key.is_empty() && !path.is_empty() => {
            Ok((key.to_owned(), PathBuf::from(path)))
        }
        _ => Err(format!(
            "'{s}' is not KEY:PATH (e.g. pipe:[12345]:/tmp/out.log)"
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::parse_inherit;
    use std::path::PathBuf;

    #[test]
    fn inherit_specs_split_after_a_bracketed_key() {
        assert_eq!(
            parse_inherit("pipe:[123]:/tmp/out").unwrap(),
            ("pipe:[123]".to_owned(), PathBuf::from("/tmp/out"))
        );
        assert_eq!(
            parse_inherit("netns:/run/netns/a").unwrap(),
            ("netns".to_owned(), PathBuf::from("/run/netns/a"))
        );
        assert!(parse_inherit("nocolon").is_err());
        assert!(parse_inherit("pipe:[1]:").is_err());
    }
}
