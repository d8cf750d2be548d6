//! criu's `stats-dump` and `stats-restore` images, read into typed stats.
//!
//! criu writes them to the work directory after a successful (pre-)dump or restore.
//! Layout: two `u32` magic words in host byte order (the service-image magic, then the
//! stats magic), then one entry: a `u32` length and that many bytes of protobuf.

use std::path::Path;
use std::time::Duration;

use prost::Message;

use crate::error::{BoxError, Error, Result};
use crate::proto::{DumpStatsEntry, RestoreStatsEntry, StatsEntry};

const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
const STATS_MAGIC: u32 = 0x5709_3306;

/// File name of the dump stats image in the work directory.
pub const DUMP_STATS_FILE: &str = "stats-dump";
/// File name of the restore stats image in the work directory.
pub const RESTORE_STATS_FILE: &str = "stats-restore";

/// What criu measured during a dump or pre-dump.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DumpStats {
    /// Time spent freezing the tree.
    pub freezing_time: Duration,
    /// How long the tree stayed frozen.
    pub frozen_time: Duration,
    /// Time spent collecting memory.
    pub memdump_time: Duration,
    /// Time spent writing memory out.
    pub memwrite_time: Duration,
    /// Pages criu looked at.
    pub pages_scanned: u64,
    /// Pages skipped because the parent images (pre-dump) already hold them.
    pub pages_skipped_parent: u64,
    /// Pages written to the images (or sent to the page server).
    pub pages_written: u64,
    /// Pages left for lazy (post-copy) transfer.
    pub pages_lazy: u64,
    /// Time spent resolving inotify paths, when criu reported it.
    pub irmap_resolve: Option<Duration>,
    /// Page pipes used, when reported.
    pub page_pipes: Option<u64>,
    /// Page pipe buffers used, when reported.
    pub page_pipe_bufs: Option<u64>,
    /// Shared-memory pages scanned, when reported.
    pub shpages_scanned: Option<u64>,
    /// Shared-memory pages skipped thanks to the parent, when reported.
    pub shpages_skipped_parent: Option<u64>,
    /// Shared-memory pages written, when reported.
    pub shpages_written: Option<u64>,
}

/// What criu measured during a restore.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreStats {
    /// Pages compared with the parent (copy-on-write detection).
    pub pages_compared: u64,
    /// Pages skipped because they were shared copy-on-write.
    pub pages_skipped_cow: u64,
    /// Time spent forking the tree.
    pub forking_time: Duration,
    /// Time spent restoring.
    pub restore_time: Duration,
    /// Pages restored, when reported.
    pub pages_restored: Option<u64>,
}

fn us(v: u32) -> Duration {
    Duration::from_micros(u64::from(v))
}

impl From<DumpStatsEntry> for DumpStats {
    fn from(e: DumpStatsEntry) -> Self {
        DumpStats {
            freezing_time: us(e.freezing_time),
            frozen_time: us(e.frozen_time),
            memdump_time: us(e.memdump_time),
            memwrite_time: us(e.memwrite_time),
            pages_scanned: e.pages_scanned,
            pages_skipped_parent: e.pages_skipped_parent,
            pages_written: e.pages_written,
            pages_lazy: e.pages_lazy,
            irmap_resolve: e.irmap_resolve.map(us),
            page_pipes: e.page_pipes,
            page_pipe_bufs: e.page_pipe_bufs,
            shpages_scanned: e.shpages_scanned,
            shpages_skipped_parent: e.shpages_skipped_parent,
            shpages_written: e.shpages_written,
        }
    }
}

impl From<RestoreStatsEntry> for RestoreStats {
    fn from(e: RestoreStatsEntry) -> Self {
        RestoreStats {
            pages_compared: e.pages_compared,
            pages_skipped_cow: e.pages_skipped_cow,
            forking_time: us(e.forking_time),
            restore_time: us(e.restore_time),
            pages_restored: e.pages_restored,
        }
    }
}

/// Reads `stats-dump` from a work directory.
///
/// # Errors
/// [`Error::Stats`] when the file cannot be read (criu writes it only after a
/// successful dump), is truncated, is not a stats image, or holds no dump entry.
pub fn read_dump_stats(work_dir: &Path) -> Result<DumpStats> {
    let path = work_dir.join(DUMP_STATS_FILE);
    let entry = read_entry(&path)?;
    entry
        .dump
        .map(DumpStats::from)
        .ok_or_else(|| stats_error(&path, "a stats image without a dump entry", None))
}

/// Reads `stats-restore` from a work directory.
///
/// # Errors
/// As [`read_dump_stats`].
pub fn read_restore_stats(work_dir: &Path) -> Result<RestoreStats> {
    let path = work_dir.join(RESTORE_STATS_FILE);
    let entry = read_entry(&path)?;
    entry
        .restore
        .map(RestoreStats::from)
        .ok_or_else(|| stats_error(&path, "a stats image without a restore entry", None))
}

fn stats_error(path: &Path, reason: impl Into<String>, source: Option<BoxError>) -> Error {
    Error::Stats {
        path: Some(path.to_owned()),
        reason: reason.into(),
        source,
    }
}

fn read_entry(path: &Path) -> Result<StatsEntry> {
    let bytes =
        std::fs::read(path).map_err(|e| stats_error(path, "cannot read it", Some(Box::new(e))))?;
    parse(&bytes).map_err(|(reason, source)| stats_error(path, reason, source))
}

/// Parses the bytes of a stats image; on failure, what is wrong and the decode error.
pub(crate) fn parse(bytes: &[u8]) -> std::result::Result<StatsEntry, (String, Option<BoxError>)> {
    let word = |at: usize| -> Option<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")))
    };
    let (Some(m0), Some(m1)) = (word(0), word(4)) else {
        return Err((
            format!("{} bytes, too short for a stats image's magic", bytes.len()),
            None,
        ));
    };
    if m0 != IMG_SERVICE_MAGIC || m1 != STATS_MAGIC {
        return Err((
            format!(
                "magic {m0:#x} {m1:#x}, not a stats image's {IMG_SERVICE_MAGIC:#x} {STATS_MAGIC:#x}"
            ),
            None,
        ));
    }
    let Some(len) = word(8) else {
        return Err(("no stats entry after the magic".into(), None));
    };
    let body = bytes.get(12..12 + len as usize).ok_or_else(|| {
        (
            format!(
                "truncated: a {len}-byte stats entry, {} bytes there",
                bytes.len().saturating_sub(12)
            ),
            None,
        )
    })?;
    StatsEntry::decode(body).map_err(|e| {
        (
            "cannot decode its stats_entry".to_owned(),
            Some(Box::new(e) as BoxError),
        )
    })
}

#[cfg(test)]
pub(crate) fn encode_image(entry: &StatsEntry) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&IMG_SERVICE_MAGIC.to_ne_bytes());
    out.extend_from_slice(&STATS_MAGIC.to_ne_bytes());
    let body = entry.encode_to_vec();
    out.extend_from_slice(&(body.len() as u32).to_ne_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump_entry() -> StatsEntry {
        StatsEntry {
            dump: Some(DumpStatsEntry {
                freezing_time: 1500,
                frozen_time: 20_000,
                pages_written: 4096,
                pages_scanned: 5000,
                ..Default::default()
            }),
            restore: None,
        }
    }

    #[test]
    fn round_trip() {
        let img = encode_image(&dump_entry());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DUMP_STATS_FILE), &img).unwrap();
        let s = read_dump_stats(dir.path()).unwrap();
        assert_eq!(s.frozen_time, Duration::from_millis(20));
        assert_eq!(s.pages_written, 4096);
        assert!(read_restore_stats(dir.path()).is_err());
    }

    #[test]
    fn truncated_foreign_and_missing_files_are_errors() {
        let img = encode_image(&dump_entry());
        for cut in [0, 3, 8, 11, img.len() - 1] {
            assert!(parse(&img[..cut]).is_err(), "{cut}");
        }
        let mut foreign = img.clone();
        foreign[4] ^= 0xff;
        assert!(parse(&foreign).unwrap_err().0.contains("magic"));
        let dir = tempfile::tempdir().unwrap();
        let e = read_dump_stats(dir.path()).unwrap_err();
        assert!(matches!(e, Error::Stats { .. }), "{e:?}");
        assert!(e.to_string().contains("stats-dump"), "{e}");
        std::fs::write(dir.path().join(DUMP_STATS_FILE), &img[..img.len() - 1]).unwrap();
        let e = read_dump_stats(dir.path()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
