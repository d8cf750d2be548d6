//! Pre-copy ([`criu_swrk::migrate::pre_copy`]) against the in-process fake criu: the
//! fake answers each PRE_DUMP with the page count a test chooses (in the round's
//! `stats-dump`, as criu writes it), and the tests check how many rounds ran, why
//! they stopped, and what each request carried. No root, no criu.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use criu_swrk::migrate::{PreCopyPolicy, StopReason, check_memory_tracking, pre_copy};
use criu_swrk::proto::{CriuReq, CriuReqType, DumpStatsEntry, StatsEntry};
use criu_swrk::{DumpOptions, Error, PreDumpOptions, RequestKind};

mod fake;
use fake::*;

/// How the fake answers the pre-dump rounds.
#[derive(Clone, Default)]
struct Script {
    /// Round n's page count is `pages[n - 1]`; a round past the end panics.
    pages: Vec<u64>,
    /// This round (from 1) is refused, as criu refuses a pre-dump that fails.
    fail_round: Option<usize>,
    /// Write no `stats-dump`, as a criu that could not.
    no_stats: bool,
    /// The images directory of each PRE_DUMP and DUMP, found when it arrived (the
    /// driver closes its fds once answered).
    images_dirs: Arc<Mutex<Vec<PathBuf>>>,
}

/// The fake criu of a pre-copy: FEATURE_CHECK, then PRE_DUMPs answered per `script`,
/// then at most one DUMP, then the close.
async fn serve(mut p: FakePeer, script: Script) -> FakePeer {
    p.expect(CriuReqType::FeatureCheck).await;
    p.send(&features_resp(true)).await;
    let mut round = 0;
    while let Some(req) = p.recv().await {
        if let Some(opts) = &req.opts {
            let dir = dir_of_fd(opts.images_dir_fd);
            script.images_dirs.lock().unwrap().push(dir);
        }
        match req.r#type() {
            CriuReqType::PreDump => {
                round += 1;
                if script.fail_round == Some(round) {
                    p.send(&refused(
                        CriuReqType::PreDump,
                        nix::libc::ENOMEM,
                        "Can't dump pages",
                    ))
                    .await;
                    // criu leaves the loop: the driver must not send anything more.
                    p.expect_closed().await;
                    break;
                }
                let pages = *script
                    .pages
                    .get(round - 1)
                    .unwrap_or_else(|| panic!("round {round}: the script has no pages for it"));
                if !script.no_stats {
                    let entry = StatsEntry {
                        dump: Some(DumpStatsEntry {
                            pages_written: pages,
                            pages_scanned: pages * 2,
                            ..Default::default()
                        }),
                        restore: None,
                    };
                    write_stats(&work_dir(&req), "stats-dump", &entry);
                }
                p.send(&resp(CriuReqType::PreDump, true)).await;
            }
            CriuReqType::Dump => {
                p.send(&resp(CriuReqType::Dump, true)).await;
                p.expect_closed().await;
                break;
            }
            other => panic!("unexpected {other:?} in the pre-dump loop: {req:?}"),
        }
    }
    p
}

/// Where criu would write a request's stats: its work dir, else its images dir.
fn work_dir(req: &CriuReq) -> PathBuf {
    let opts = req.opts.as_ref().expect("a pre-dump carries opts");
    dir_of_fd(opts.work_dir_fd.unwrap_or(opts.images_dir_fd))
}

/// A `Criu` whose every connection runs `script`.
fn criu_with(script: Script) -> (criu_swrk::Criu, Peers) {
    fake_criu(move |p| serve(p, script.clone()))
}

/// `<root>/<n>` for rounds 1..=n, made.
fn round_dirs(root: &Path, n: u32) -> Vec<PathBuf> {
    (1..=n)
        .map(|i| {
            let d = root.join(i.to_string());
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect()
}

/// Options of round `n`: images in `<root>/<n>`.
fn local(root: &Path) -> impl FnMut(u32, Option<&str>) -> PreDumpOptions + '_ {
    move |n, _| PreDumpOptions::new(TARGET).images_dir(root.join(n.to_string()))
}

/// The PRE_DUMP requests a peer received.
fn pre_dumps(peer: &FakePeer) -> Vec<&CriuReq> {
    peer.received
        .iter()
        .filter(|r| r.r#type() == CriuReqType::PreDump)
        .collect()
}

/// Runs a pre-copy with the default policy against `pages`; returns the rounds'
/// page counts, the stop reason and the one peer (after the loop was dropped).
async fn run(pages: Vec<u64>) -> (Vec<u64>, StopReason, FakePeer) {
    let root = images_dir();
    round_dirs(root.path(), 10);
    let (criu, peers) = criu_with(Script {
        pages,
        ..Script::default()
    });
    let policy = PreCopyPolicy::default();
    let (lp, report) = within("pre-copy", pre_copy(&criu, &policy, local(root.path())))
        .await
        .unwrap();
    assert_eq!(lp.iterations() as usize, report.rounds.len());
    drop(lp);
    let mut all = peers.finish().await;
    assert_eq!(all.len(), 1, "one criu for every round");
    let peer = all.pop().unwrap();
    assert_eq!(pre_dumps(&peer).len(), report.rounds.len());
    let rounds: Vec<u32> = report.rounds.iter().map(|r| r.round).collect();
    assert_eq!(rounds, (1..=rounds.len() as u32).collect::<Vec<_>>());
    let written = report.rounds.iter().map(|r| r.pages_written).collect();
    (written, report.stop, peer)
}

#[tokio::test]
async fn few_pages_stop_the_rounds() {
    let (written, stop, _) = run(vec![5000, 2000, 40, 30, 20]).await;
    assert_eq!(written, [5000, 2000, 40]);
    assert_eq!(stop, StopReason::FewPages);
}

#[tokio::test]
async fn a_growing_round_stops_the_rounds() {
    // 3400 > 3000 + 10%; the fake would go on shrinking if asked.
    let (written, stop, _) = run(vec![5000, 3000, 3400, 100, 50]).await;
    assert_eq!(written, [5000, 3000, 3400]);
    assert_eq!(stop, StopReason::Growing);
}

#[tokio::test]
async fn rounds_that_keep_shrinking_stop_after_eight() {
    let pages: Vec<u64> = (0..10).map(|i| 10_000 - i * 1000).collect();
    let (written, stop, peer) = run(pages.clone()).await;
    assert_eq!(written, pages[..8]);
    assert_eq!(stop, StopReason::MaxRounds);
    assert_eq!(pre_dumps(&peer).len(), 8);
}

#[tokio::test]
async fn each_round_names_its_parent_and_carries_its_own_options_on_one_criu() {
    let root = images_dir();
    let dirs = round_dirs(root.path(), 4);
    let script = Script {
        pages: vec![5000, 2000, 40],
        ..Script::default()
    };
    let images_dirs = script.images_dirs.clone();
    let (criu, peers) = criu_with(script);
    let mut seen_parents = Vec::new();
    let opts = |n: u32, parent: Option<&str>| {
        seen_parents.push(parent.map(str::to_owned));
        PreDumpOptions::new(TARGET)
            .images_dir(root.path().join(n.to_string()))
            .page_server("192.0.2.1", 7000 + n as u16)
    };
    let policy = PreCopyPolicy::default();
    let (lp, report) = within("pre-copy", pre_copy(&criu, &policy, opts))
        .await
        .unwrap();
    assert_eq!(report.stop, StopReason::FewPages);
    assert_eq!(report.final_parent(), "../3");
    let last = DumpOptions::new(TARGET)
        .images_dir(&dirs[3])
        .parent_images(report.final_parent());
    within("final dump", lp.dump(last)).await.unwrap();

    let mut all = peers.finish().await;
    assert_eq!(
        all.len(),
        1,
        "one criu process for every round and the dump"
    );
    let peer = all.pop().unwrap();
    assert_eq!(
        peer.types(),
        [
            CriuReqType::FeatureCheck,
            CriuReqType::PreDump,
            CriuReqType::PreDump,
            CriuReqType::PreDump,
            CriuReqType::Dump,
        ]
    );
    let parents = [None, Some("../1"), Some("../2")];
    assert_eq!(
        seen_parents,
        parents.map(|p| p.map(str::to_owned)),
        "what the closure was given"
    );
    let want: Vec<PathBuf> = dirs.iter().map(|d| canonical(d)).collect();
    assert_eq!(
        *images_dirs.lock().unwrap(),
        want,
        "rounds 1-3, then the dump"
    );
    for (i, req) in pre_dumps(&peer).into_iter().enumerate() {
        let n = i + 1;
        let opts = req.opts.as_ref().unwrap();
        assert_eq!(opts.parent_img.as_deref(), parents[i], "round {n}");
        let ps = opts.ps.as_ref().expect("the round's page server");
        assert_eq!(ps.address.as_deref(), Some("192.0.2.1"), "round {n}");
        assert_eq!(ps.port, Some(7000 + n as i32), "round {n}");
    }
    let dump = peer.received.last().unwrap().opts.as_ref().unwrap();
    assert_eq!(dump.parent_img.as_deref(), Some("../3"));
}

#[tokio::test]
async fn a_round_criu_fails_ends_the_pre_copy_with_its_error() {
    let root = images_dir();
    round_dirs(root.path(), 4);
    let (criu, peers) = criu_with(Script {
        pages: vec![5000, 4000, 3000, 2000],
        fail_round: Some(2),
        ..Script::default()
    });
    let policy = PreCopyPolicy::default();
    let res = within("pre-copy", pre_copy(&criu, &policy, local(root.path()))).await;
    let err = res.map(|(_, report)| report).unwrap_err();
    assert_eq!(
        err.refusal().map(|r| (r.request, r.errno)),
        Some((RequestKind::PreDump, Some(nix::libc::ENOMEM))),
        "{err:?}"
    );
    // The fake's script waits for the close after the refusal, failing on any request.
    let all = peers.finish().await;
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].types(),
        [
            CriuReqType::FeatureCheck,
            CriuReqType::PreDump,
            CriuReqType::PreDump
        ]
    );
}

#[tokio::test]
async fn a_round_without_stats_stops_with_an_error_that_says_so() {
    let root = images_dir();
    round_dirs(root.path(), 2);
    let (criu, peers) = criu_with(Script {
        pages: vec![5000, 4000],
        no_stats: true,
        ..Script::default()
    });
    let policy = PreCopyPolicy::default();
    let res = within("pre-copy", pre_copy(&criu, &policy, local(root.path()))).await;
    let err = res.map(|(_, report)| report).unwrap_err();
    assert!(matches!(err, Error::Stats { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("round 1") && msg.contains("pages_written"),
        "{msg}"
    );
    let all = peers.finish().await;
    assert_eq!(
        all[0].types(),
        [CriuReqType::FeatureCheck, CriuReqType::PreDump],
        "no round after the one without stats"
    );
}

#[tokio::test]
async fn memory_tracking_is_checked_from_criu_s_features() {
    for mem_track in [false, true] {
        let (criu, peers) = fake_criu(move |mut p| async move {
            p.expect(CriuReqType::FeatureCheck).await;
            p.send(&features_resp(mem_track)).await;
            p.expect_closed().await;
            p
        });
        let features = within("features", criu.features()).await.unwrap();
        peers.finish().await;
        let checked = check_memory_tracking(&features);
        if mem_track {
            checked.unwrap();
            continue;
        }
        let err = checked.unwrap_err();
        let Error::Unsupported { what, reason } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(what, "pre-copy migration");
        assert_eq!(
            reason,
            "this kernel does not track dirty memory (CONFIG_MEM_SOFT_DIRTY; criu's \
             mem_track feature is off): use stop-and-copy or post-copy"
        );
    }
}

#[tokio::test]
async fn pre_copy_without_memory_tracking_sends_no_pre_dump() {
    let root = images_dir();
    round_dirs(root.path(), 1);
    let (criu, peers) = fake_criu(|mut p| async move {
        p.expect(CriuReqType::FeatureCheck).await;
        p.send(&features_resp(false)).await;
        p.expect_closed().await;
        p
    });
    let policy = PreCopyPolicy::default();
    let res = within("pre-copy", pre_copy(&criu, &policy, local(root.path()))).await;
    let err = res.map(|(_, report)| report).unwrap_err();
    assert!(err.is_unsupported(), "{err:?}");
    let all = peers.finish().await;
    assert_eq!(all[0].types(), [CriuReqType::FeatureCheck]);
}
