//! How criu treats a tree's cgroups, locks its network, reads its memory: the modes the
//! option builders and the dump record share.

use crate::proto::{CriuCgMode, CriuNetworkLockMethod};

/// How criu treats cgroups (`manage_cgroups_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CgroupMode {
    /// Leave cgroups alone.
    Ignore,
    /// Dump/restore no cgroup properties.
    None,
    /// Only properties.
    Props,
    /// Restore properties where the cgroup does not exist yet (criu's usual default).
    Soft,
    /// Restore everything, overwriting existing cgroups.
    Full,
    /// Like full, failing on mismatches.
    Strict,
    /// criu's compiled-in default.
    Default,
}

impl CgroupMode {
    pub(crate) fn from_wire(v: i32) -> Option<Self> {
        Some(match CriuCgMode::try_from(v).ok()? {
            CriuCgMode::Ignore => CgroupMode::Ignore,
            CriuCgMode::CgNone => CgroupMode::None,
            CriuCgMode::Props => CgroupMode::Props,
            CriuCgMode::Soft => CgroupMode::Soft,
            CriuCgMode::Full => CgroupMode::Full,
            CriuCgMode::Strict => CgroupMode::Strict,
            CriuCgMode::Default => CgroupMode::Default,
        })
    }

    pub(crate) fn wire(self) -> CriuCgMode {
        match self {
            CgroupMode::Ignore => CriuCgMode::Ignore,
            CgroupMode::None => CriuCgMode::CgNone,
            CgroupMode::Props => CriuCgMode::Props,
            CgroupMode::Soft => CriuCgMode::Soft,
            CgroupMode::Full => CriuCgMode::Full,
            CgroupMode::Strict => CriuCgMode::Strict,
            CgroupMode::Default => CriuCgMode::Default,
        }
    }
}

/// How criu locks the network of a dumped tree (`network_lock`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum NetworkLock {
    /// iptables rules (criu's default).
    Iptables,
    /// nftables rules.
    Nftables,
    /// Do not lock; the caller does it (e.g. in the `network-lock` hook).
    Skip,
}

impl NetworkLock {
    pub(crate) fn from_wire(v: i32) -> Option<Self> {
        Some(match CriuNetworkLockMethod::try_from(v).ok()? {
            CriuNetworkLockMethod::Iptables => NetworkLock::Iptables,
            CriuNetworkLockMethod::Nftables => NetworkLock::Nftables,
            CriuNetworkLockMethod::Skip => NetworkLock::Skip,
        })
    }
}

/// How a pre-dump reads memory (`pre_dump_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PreDumpMode {
    /// vmsplice pages into pipes (criu's default; the tree is frozen longer).
    Splice,
    /// process_vm_readv: shorter freeze.
    VmRead,
}
