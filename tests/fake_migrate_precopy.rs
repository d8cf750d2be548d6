//! Pre-copy migration end to end over loopback, both sides driving a fake criu
//! ([`Criu::connect_with`]): this machine's kernel has no dirty-memory tracking, so
//! real criu refuses pre-dumps here (`tests/real_criu_migrate.rs` checks that). The
//! fakes write what criu would (cpuinfo.img, each round's stats, the final dump's
//! images) and record what each request carried; the test checks that every round
//! went into a page server the destination started for it, with the parents
//! chained on both sides, that P.Haul's rule stopped the rounds, and that the final
//! dump and the restore followed. No root, no criu.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use criu_swrk::migrate::{Destination, Migration, PreCopyPolicy, Security};
use criu_swrk::proto::{
    CriuPageServerInfo, CriuReq, CriuReqType, CriuResp, DumpStatsEntry, StatsEntry,
};

mod fake;
use fake::*;

/// What one request carried: its type, images directory, page-server port and
/// parent images.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    ty: CriuReqType,
    dir: PathBuf,
    port: Option<i32>,
    parent: Option<String>,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn seen(req: &CriuReq, log: &Log) {
    if let Some(o) = &req.opts {
        log.lock().unwrap().push(Seen {
            ty: req.r#type(),
            dir: dir_of_fd(o.images_dir_fd),
            port: o.ps.as_ref().and_then(|ps| ps.port),
            parent: o.parent_img.clone(),
        });
    }
}

/// The source's criu: pre-dumps writing `pages[n - 1]` pages in round n, then a
/// dump that stops at `post-dump` until the driver answers.
async fn source(mut p: FakePeer, pages: Vec<u64>, log: Log) -> FakePeer {
    let mut round = 0;
    while let Some(req) = p.recv().await {
        seen(&req, &log);
        match req.r#type() {
            CriuReqType::Version => p.send(&version_resp(4, 2, 1)).await,
            CriuReqType::FeatureCheck => p.send(&features_resp(true)).await,
            CriuReqType::CpuinfoDump => {
                let dir = dir_of_fd(req.opts.as_ref().unwrap().images_dir_fd);
                std::fs::write(dir.join("cpuinfo.img"), b"cpu").unwrap();
                p.send(&resp(CriuReqType::CpuinfoDump, true)).await;
                p.expect_closed().await;
                break;
            }
            CriuReqType::PreDump => {
                round += 1;
                let dir = dir_of_fd(req.opts.as_ref().unwrap().images_dir_fd);
                let entry = StatsEntry {
                    dump: Some(DumpStatsEntry {
                        pages_written: pages[round - 1],
                        ..Default::default()
                    }),
                    restore: None,
                };
                write_stats(&dir, "stats-dump", &entry);
                p.send(&resp(CriuReqType::PreDump, true)).await;
            }
            CriuReqType::Dump => {
                let dir = dir_of_fd(req.opts.as_ref().unwrap().images_dir_fd);
                std::fs::write(dir.join("inventory.img"), b"fake").unwrap();
                std::fs::write(dir.join("core-1.img"), b"core").unwrap();
                p.notify("pre-dump", None).await;
                // The driver answers once the destination has restored.
                let answer = p.notify("post-dump", None).await;
                assert_eq!(answer.notify_success, Some(true), "{answer:?}");
                p.send(&resp(CriuReqType::Dump, true)).await;
                p.expect_closed().await;
                break;
            }
            other => panic!("source: unexpected {other:?}"),
        }
    }
    p
}

/// The destination's criu: page servers (each says it got its pages once waited
/// for), and a restore of `restored`, a real process of ours.
async fn destination(mut p: FakePeer, restored: i32, log: Log) -> FakePeer {
    while let Some(req) = p.recv().await {
        seen(&req, &log);
        match req.r#type() {
            CriuReqType::Version => p.send(&version_resp(4, 2, 1)).await,
            CriuReqType::CpuinfoCheck => {
                p.send(&resp(CriuReqType::CpuinfoCheck, true)).await;
                p.expect_closed().await;
                break;
            }
            CriuReqType::PageServerChld => {
                let n = log.lock().unwrap().len() as i32;
                p.send(&CriuResp {
                    ps: Some(CriuPageServerInfo {
                        pid: Some(900 + n),
                        port: Some(41000 + n),
                        ..Default::default()
                    }),
                    // criu answers PAGE_SERVER_CHLD as PAGE_SERVER.
                    ..resp(CriuReqType::PageServer, true)
                })
                .await;
                let wait = p.expect(CriuReqType::WaitPid).await;
                assert_eq!(wait.pid, Some(900 + n as u32));
                p.send(&CriuResp {
                    status: Some(0),
                    ..resp(CriuReqType::WaitPid, true)
                })
                .await;
                p.expect_closed().await;
                break;
            }
            CriuReqType::Restore => {
                p.notify("post-restore", Some(restored)).await;
                p.send(&restore_resp(restored)).await;
                p.expect_closed().await;
                break;
            }
            other => panic!("destination: unexpected {other:?}"),
        }
    }
    p
}

struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn pre_copy_rounds_go_into_the_destination_until_the_rule_stops_them() {
    let (src_log, dst_log): (Log, Log) = Default::default();
    let (src_criu, src_peers) = {
        let log = src_log.clone();
        fake_criu(move |p| source(p, vec![5000, 2000, 40], log.clone()))
    };
    // The "restored tree": a real process of ours, which the destination holds.
    let copy = Sleeper(Command::new("sleep").arg("30").spawn().unwrap());
    let copy_pid = copy.0.id() as i32;
    let (dst_criu, dst_peers) = {
        let log = dst_log.clone();
        fake_criu(move |p| destination(p, copy_pid, log.clone()))
    };
    let root = images_dir();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = Destination::new(dst_criu, root.path(), Security::Insecure);
    let served = tokio::spawn(async move { dest.accept(&listener).await });

    // The tree: a process of ours that the fakes never touch.
    let tree = Sleeper(Command::new("sleep").arg("30").spawn().unwrap());
    let moved = within(
        "the migration",
        Migration::new(tree.0.id() as i32, addr, Security::Insecure)
            .id("pre")
            .pre_copy(PreCopyPolicy::default())
            .run(&src_criu),
    )
    .await
    .unwrap_or_else(|e| panic!("migration: {e}"));
    let arrived = served.await.unwrap().unwrap();
    assert_eq!((moved.pid, arrived.pid), (copy_pid, copy_pid));
    assert!(arrived.confirmed);
    src_peers.finish().await;
    dst_peers.finish().await;

    let dir = canonical(&root.path().join("pre"));
    let servers: Vec<Seen> = dst_log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.ty == CriuReqType::PageServerChld)
        .cloned()
        .collect();
    // Three rounds (40 pages stops them: FewPages), then the final dump's server.
    let dirs: Vec<PathBuf> = servers.iter().map(|s| canonical(&s.dir)).collect();
    assert_eq!(
        dirs,
        [dir.join("1"), dir.join("2"), dir.join("3"), dir.clone()],
        "{servers:?}"
    );
    let parents: Vec<Option<&str>> = servers.iter().map(|s| s.parent.as_deref()).collect();
    assert_eq!(parents, [None, Some("../1"), Some("../2"), Some("3")]);

    let dumps: Vec<Seen> = src_log
        .lock()
        .unwrap()
        .iter()
        .filter(|s| matches!(s.ty, CriuReqType::PreDump | CriuReqType::Dump))
        .cloned()
        .collect();
    let types: Vec<CriuReqType> = dumps.iter().map(|s| s.ty).collect();
    assert_eq!(
        types,
        [
            CriuReqType::PreDump,
            CriuReqType::PreDump,
            CriuReqType::PreDump,
            CriuReqType::Dump
        ]
    );
    // Each went to the page server started for it, with the same parents.
    let ports: Vec<Option<i32>> = dumps.iter().map(|s| s.port).collect();
    let expected_ports: Vec<Option<i32>> = (0..4)
        .map(|i| Some(41000 + servers_at(&dst_log, i)))
        .collect();
    assert_eq!(ports, expected_ports);
    let parents: Vec<Option<&str>> = dumps.iter().map(|s| s.parent.as_deref()).collect();
    assert_eq!(parents, [None, Some("../1"), Some("../2"), Some("3")]);
    // The source's rounds mirror the destination's layout: siblings under the dump's.
    let final_dir = &dumps[3].dir;
    for (i, d) in dumps[..3].iter().enumerate() {
        assert_eq!(d.dir, final_dir.join((i + 1).to_string()));
    }
    drop(copy);
    drop(tree);
}

/// The log index of the destination's `i`-th page server request (its port is
/// 41000 plus the log's length when it came).
fn servers_at(log: &Log, i: usize) -> i32 {
    let log = log.lock().unwrap();
    let at: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, s)| s.ty == CriuReqType::PageServerChld)
        .map(|(n, _)| n + 1)
        .collect();
    at[i] as i32
}
