//! The driver fed random and mutated datagrams, with and without fds, through
//! `Session::from_fd`: every call must return (bounded), nothing may panic, and no
//! fd may be left open. The seeds are valid messages of every kind criu sends; the
//! mutations flip, cut, extend and splice them, or replace them by noise.
//!
//! `FUZZ_DATAGRAMS` sets how many datagrams are sent (default 20,000; `scripts/torture`
//! sends 1,000,000); `FUZZ_SEED` the generator's seed (default: fixed).

use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use prost::Message;
use tokio_seqpacket::UnixSeqpacket;
use tokio_seqpacket::ancillary::AncillaryMessageWriter;

use criu_swrk::proto::{
    CriuFeatures, CriuNotify, CriuPageServerInfo, CriuReqType, CriuResp, CriuRestoreResp,
    CriuVersion,
};
use criu_swrk::{CheckOptions, DumpOptions, RestoreOptions, Session};

/// A small xorshift generator: reproducible from its seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const HOOKS: [&str; 15] = [
    "pre-stream",
    "pre-dump",
    "post-dump",
    "pre-restore",
    "post-restore",
    "network-lock",
    "network-unlock",
    "setup-namespaces",
    "post-setup-namespaces",
    "pre-resume",
    "post-resume",
    "orphan-pts-master",
    "status-ready",
    "query-ext-files",
    "no-such-hook",
];

/// Valid messages of every kind criu sends.
fn seeds() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let base = |ty: CriuReqType, success: bool| CriuResp {
        r#type: ty as i32,
        success,
        ..Default::default()
    };
    for ty in [
        CriuReqType::Empty,
        CriuReqType::Dump,
        CriuReqType::Restore,
        CriuReqType::Check,
        CriuReqType::PreDump,
        CriuReqType::PageServer,
        CriuReqType::CpuinfoDump,
        CriuReqType::FeatureCheck,
        CriuReqType::Version,
        CriuReqType::WaitPid,
        CriuReqType::SinglePreDump,
    ] {
        for success in [true, false] {
            out.push(base(ty, success).encode_to_vec());
        }
    }
    for hook in HOOKS {
        for pid in [None, Some(1), Some(i32::MAX)] {
            let mut m = base(CriuReqType::Notify, true);
            m.notify = Some(CriuNotify {
                script: Some(hook.into()),
                pid,
            });
            out.push(m.encode_to_vec());
        }
    }
    let mut v = base(CriuReqType::Version, true);
    v.version = Some(CriuVersion {
        major_number: 4,
        minor_number: 2,
        sublevel: Some(1),
        ..Default::default()
    });
    out.push(v.encode_to_vec());
    let mut f = base(CriuReqType::FeatureCheck, true);
    f.features = Some(CriuFeatures {
        mem_track: Some(true),
        lazy_pages: Some(false),
        pidfd_store: Some(true),
    });
    out.push(f.encode_to_vec());
    let mut r = base(CriuReqType::Restore, true);
    r.restore = Some(CriuRestoreResp { pid: 4321 });
    out.push(r.encode_to_vec());
    let mut ps = base(CriuReqType::PageServer, true);
    ps.ps = Some(CriuPageServerInfo {
        port: Some(27000),
        pid: Some(0),
        ..Default::default()
    });
    out.push(ps.encode_to_vec());
    let mut e = base(CriuReqType::Dump, false);
    e.cr_errno = Some(3);
    e.cr_errmsg = Some("x".repeat(9000));
    out.push(e.encode_to_vec());
    out
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut m = seeds[rng.below(seeds.len())].clone();
    match rng.below(7) {
        0 => {
            // Pure noise.
            m = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
        }
        1 => {
            for _ in 0..=rng.below(4) {
                if !m.is_empty() {
                    let i = rng.below(m.len());
                    m[i] ^= 1 << rng.below(8);
                }
            }
        }
        2 => m.truncate(rng.below(m.len() + 1)),
        3 => m.extend((0..rng.below(16)).map(|_| rng.next() as u8)),
        4 => {
            let other = &seeds[rng.below(seeds.len())];
            let cut = rng.below(m.len() + 1);
            m.truncate(cut);
            m.extend_from_slice(&other[rng.below(other.len() + 1)..]);
        }
        5 if !m.is_empty() => {
            let i = rng.below(m.len());
            m[i] = rng.next() as u8;
        }
        // Unchanged: a valid message, possibly at a moment it is not expected.
        _ => {}
    }
    m
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn every_call_returns_and_nothing_leaks_under_random_and_mutated_datagrams() {
    let total: usize = std::env::var("FUZZ_DATAGRAMS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed_c0de_2026);
    let mut rng = Rng(seed.max(1));
    let seeds = seeds();
    let dump_dir = tempfile::tempdir().unwrap();
    let restore_dir = tempfile::tempdir().unwrap();
    std::fs::write(restore_dir.path().join("inventory.img"), b"").unwrap();
    let (_pipe_r, pipe_w) = std::io::pipe().unwrap();
    let pipe_w = OwnedFd::from(pipe_w);
    let fds_before = open_fds();

    let (mut sent, mut sessions, mut ok) = (0usize, 0usize, 0usize);
    let mut errors = std::collections::BTreeMap::<String, usize>::new();
    while sent < total {
        sessions += 1;
        let (ours, theirs) = UnixSeqpacket::pair().unwrap();
        let mut session = Session::from_fd(ours.into()).expect("a seqpacket socket");
        session.set_grace(Duration::from_millis(10));
        // A peer that stays open and silent is ended by the request's timeout.
        session.set_default_timeout(Some(Duration::from_millis(2)));
        // criu's side: a burst of datagrams, then, usually, the end of the connection.
        let burst = 1 + rng.below(4);
        for _ in 0..burst {
            let bytes = mutate(&mut rng, &seeds);
            sent += 1;
            let res = if rng.chance(6) {
                let mut space = [0u8; 64];
                let mut anc = AncillaryMessageWriter::new(&mut space);
                anc.add_fds([pipe_w.as_fd()]).unwrap();
                theirs.send_with_ancillary(&bytes, &mut anc).await
            } else {
                theirs.send(&bytes).await
            };
            // An empty datagram is end-of-stream to a reader; a send may also fail on
            // an oversized splice: neither matters here.
            let _ = res;
        }
        let keep_open = rng.chance(64);
        // criu reads the request, then (usually) goes away: the driver meets the
        // burst, then the end of the connection.
        let peer = async move {
            let mut buf = vec![0u8; 1 << 16];
            let _ = tokio::time::timeout(Duration::from_secs(1), theirs.recv(&mut buf)).await;
            keep_open.then_some(theirs)
        };
        let call = async {
            match rng.below(5) {
                0 => session.version().await.map(drop),
                1 => session.features().await.map(drop),
                2 => session
                    .dump(DumpOptions::new(999_999).images_dir(dump_dir.path()))
                    .await
                    .map(drop),
                3 => session
                    .restore(RestoreOptions::new().images_dir(restore_dir.path()))
                    .await
                    .map(drop),
                _ => session.check(CheckOptions::new()).await.map(drop),
            }
        };
        let (res, theirs) =
            futures::future::join(tokio::time::timeout(Duration::from_secs(2), call), peer).await;
        drop(theirs);
        match res {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                let kind = format!("{e:?}");
                let kind = kind.split([' ', '{', '(']).next().unwrap_or("").to_owned();
                *errors.entry(kind).or_default() += 1;
            }
            Err(_) => panic!("a call did not return within 2 s (session {sessions})"),
        }
    }
    // Dropped sessions wind down in the background.
    tokio::time::sleep(Duration::from_millis(200)).await;
    println!(
        "TORTURE fuzz: {sent} datagrams over {sessions} sessions: {ok} answered, errors \
         {errors:?}; fds {fds_before} -> {}",
        open_fds()
    );
    assert_eq!(open_fds(), fds_before, "fds leaked");
    let stray: Vec<_> = std::fs::read_dir(dump_dir.path()).unwrap().collect();
    assert!(
        stray.is_empty(),
        "files left in the dump directory: {stray:?}"
    );
}
