//! What criu cannot be trusted to refuse clearly, checked before a request is sent:
//! options newer than the criu at hand (an older criu ignores unknown fields), and
//! kernel facts a request depends on.

use crate::error::{Error, Result};
use crate::info::Version;
use crate::proto::CriuOpts;

/// A lazy dump serves pages through a pipe criu grows to 4 MiB; without
/// CAP_SYS_RESOURCE that needs `fs.pipe-max-size` of at least 4 MiB, and criu's own
/// failure ("tee: ... Operation not permitted", with a stale errno) misleads.
pub(crate) fn lazy_dump() -> Result<()> {
    const NEEDED: u64 = 4 * 1024 * 1024;
    const CAP_SYS_RESOURCE: u32 = 24;
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    let has_cap = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_RESOURCE) != 0);
    match max {
        Some(max) if max < NEEDED && !has_cap => Err(Error::Unsupported {
            what: "lazy dump".into(),
            reason: format!(
                "criu grows its page pipe to {NEEDED} bytes, but fs.pipe-max-size is {max} and \
                 CAP_SYS_RESOURCE is missing: raise it first (echo {NEEDED} > \
                 /proc/sys/fs/pipe-max-size)"
            ),
        }),
        _ => Ok(()),
    }
}

/// `criu_opts` fields newer than criu 3.15 (the oldest criu this crate drives), with
/// the first criu release that knows each. An older criu ignores unknown fields
/// silently, so requests setting them are refused instead.
/// An option's name, the criu version that introduced it, and whether it is set.
type Gate = (&'static str, (u32, u32), fn(&CriuOpts) -> bool);

const VERSION_GATES: &[Gate] = &[
    ("pidfd_store", (3, 16), |o| o.pidfd_store_sk.is_some()),
    ("lsm_profile", (3, 16), |o| o.lsm_profile.is_some()),
    ("lsm_mount_context", (3, 16), |o| {
        o.lsm_mount_context.is_some()
    }),
    ("network_lock", (3, 16), |o| o.network_lock.is_some()),
    ("mntns_compat_mode", (3, 17), |o| {
        o.mntns_compat_mode.is_some()
    }),
    ("skip_file_rwx_check", (3, 18), |o| {
        o.skip_file_rwx_check.is_some()
    }),
    ("unprivileged", (3, 18), |o| o.unprivileged.is_some()),
    ("images_dir (by path)", (3, 19), |o| o.images_dir.is_some()),
    ("leave_stopped", (3, 19), |o| o.leave_stopped.is_some()),
    ("display_stats", (3, 19), |o| o.display_stats.is_some()),
    ("log_to_stderr", (3, 19), |o| o.log_to_stderr.is_some()),
];

/// The options `opts` sets that need a criu newer than 3.15, with that version.
fn version_gated(opts: &CriuOpts) -> Vec<(&'static str, (u32, u32))> {
    VERSION_GATES
        .iter()
        .filter(|(_, _, set)| set(opts))
        .map(|(name, v, _)| (*name, *v))
        .collect()
}

/// Refuses options `opts` sets that `version` does not know. `ours` are set by this
/// crate rather than the caller (logging to stderr): an older criu just logs to a file
/// instead, so they are not gated.
pub(crate) fn check_version(opts: &CriuOpts, ours: &[&str], version: &Version) -> Result<()> {
    let gated = version_gated(opts)
        .into_iter()
        .filter(|(name, _)| !ours.contains(name));
    for (name, (major, minor)) in gated {
        if !version.at_least(major, minor) {
            return Err(Error::Unsupported {
                what: format!("option {name}"),
                reason: format!("unsupported by criu {version} (needs {major}.{minor} or later)"),
            });
        }
    }
    Ok(())
}

/// Whether `opts` sets anything [`check_version`] needs criu's version for.
pub(crate) fn needs_version(opts: &CriuOpts, ours: &[&str]) -> bool {
    version_gated(opts)
        .iter()
        .any(|(name, _)| !ours.contains(name))
}
