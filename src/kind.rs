//! The kinds of request criu serves, and their names on the wire.

use std::fmt;

use crate::proto::CriuReqType;

/// The kind of a request to criu.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RequestKind {
    /// `DUMP`: checkpoint a process tree.
    Dump,
    /// `PRE_DUMP`: one iteration of the pre-dump loop.
    PreDump,
    /// `SINGLE_PRE_DUMP`: a pre-dump on its own.
    SinglePreDump,
    /// `RESTORE`: restore a process tree from images.
    Restore,
    /// `CHECK`: ask criu whether this kernel supports it.
    Check,
    /// `PAGE_SERVER`: start a page server daemon.
    PageServer,
    /// `PAGE_SERVER_CHLD`: start a page server as criu's child.
    PageServerChild,
    /// `WAIT_PID`: wait for a child of criu.
    WaitPid,
    /// `CPUINFO_DUMP`: save this machine's CPU description.
    CpuinfoDump,
    /// `CPUINFO_CHECK`: compare a saved CPU description with this machine.
    CpuinfoCheck,
    /// `FEATURE_CHECK`: probe optional kernel features.
    FeatureCheck,
    /// `VERSION`: criu's version.
    Version,
}

impl RequestKind {
    pub(crate) fn wire(self) -> CriuReqType {
        match self {
            RequestKind::Dump => CriuReqType::Dump,
            RequestKind::PreDump => CriuReqType::PreDump,
            RequestKind::SinglePreDump => CriuReqType::SinglePreDump,
            RequestKind::Restore => CriuReqType::Restore,
            RequestKind::Check => CriuReqType::Check,
            RequestKind::PageServer => CriuReqType::PageServer,
            RequestKind::PageServerChild => CriuReqType::PageServerChld,
            RequestKind::WaitPid => CriuReqType::WaitPid,
            RequestKind::CpuinfoDump => CriuReqType::CpuinfoDump,
            RequestKind::CpuinfoCheck => CriuReqType::CpuinfoCheck,
            RequestKind::FeatureCheck => CriuReqType::FeatureCheck,
            RequestKind::Version => CriuReqType::Version,
        }
    }

    /// The name criu uses on the wire, e.g. `DUMP`.
    pub fn wire_name(self) -> &'static str {
        self.wire().as_str_name()
    }

    /// The response type criu answers this request with. criu answers a
    /// `SINGLE_PRE_DUMP` with `SINGLE_PRE_DUMP` and a `PAGE_SERVER_CHLD` with
    /// `PAGE_SERVER`.
    pub(crate) fn response_type(self) -> CriuReqType {
        match self {
            RequestKind::PageServerChild => CriuReqType::PageServer,
            k => k.wire(),
        }
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RequestKind::Dump => "dump",
            RequestKind::PreDump => "pre-dump",
            RequestKind::SinglePreDump => "single pre-dump",
            RequestKind::Restore => "restore",
            RequestKind::Check => "check",
            RequestKind::PageServer => "page-server",
            RequestKind::PageServerChild => "page-server (child)",
            RequestKind::WaitPid => "wait-pid",
            RequestKind::CpuinfoDump => "cpuinfo dump",
            RequestKind::CpuinfoCheck => "cpuinfo check",
            RequestKind::FeatureCheck => "feature check",
            RequestKind::Version => "version",
        })
    }
}
