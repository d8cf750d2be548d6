//! `Fleet` against fake criu peers (through `Criu::connect_with`): no root, no criu.
//! Each target's request gets a peer of its own that behaves as criu does for a dump
//! or a restore; the tests check what the batch reports and what each peer was told.

mod fake;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;

use criu_swrk::fleet::{Batch, Event, Fleet, Order};
use criu_swrk::proto::CriuReqType;
use criu_swrk::{DumpOptions, Error, Notification, Reply, RequestState, RestoreOptions};
use fake::*;

/// Every event of a batch, and each target's result, by index.
async fn drain<T>(mut batch: Batch<T>) -> (Vec<String>, BTreeMap<usize, criu_swrk::Result<T>>) {
    let mut events = Vec::new();
    let mut results = BTreeMap::new();
    while let Some(event) = within("the next fleet event", batch.next()).await {
        match event {
            Event::Finished { target, result } => {
                events.push(format!("{target} finished"));
                assert!(
                    results.insert(target, result).is_none(),
                    "target {target} finished twice"
                );
            }
            Event::Queued { target } => events.push(format!("{target} queued")),
            Event::Started { target, .. } => events.push(format!("{target} started")),
            Event::Hook { target, name } => events.push(format!("{target} {name}")),
            _ => events.push("an event this test does not know".into()),
        }
    }
    (events, results)
}

/// A dump as criu runs one: pre-dump, then post-dump, each answered; success if both
/// were agreed to, else the refusal criu sends after a rollback. `pause` is spent
/// "dumping memory" between the hooks.
async fn dump_peer(mut p: FakePeer, pause: Duration) -> FakePeer {
    p.expect(CriuReqType::Dump).await;
    if p.notify("pre-dump", None).await.notify_success != Some(true) {
        p.send(&refused(CriuReqType::Dump, 0, "pre-dump script failed"))
            .await;
        p.expect_closed().await;
        return p;
    }
    tokio::time::sleep(pause).await;
    if p.notify("post-dump", None).await.notify_success != Some(true) {
        p.send(&refused(CriuReqType::Dump, 0, "post-dump script failed"))
            .await;
        p.expect_closed().await;
        return p;
    }
    p.send(&resp(CriuReqType::Dump, true)).await;
    p.expect_closed().await;
    p
}

fn targets(dirs: &[tempfile::TempDir]) -> Vec<DumpOptions> {
    dirs.iter()
        .enumerate()
        .map(|(i, d)| DumpOptions::new(TARGET - i as i32).images_dir(d.path()))
        .collect()
}

/// Counts the peers between a dump request's arrival and its answer, each pausing
/// `pause` inside; returns (the criu, its peers, the most seen at once).
fn counted_dump_peers(pause: Duration) -> (criu_swrk::Criu, Peers, Arc<AtomicUsize>) {
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (r, m) = (running.clone(), most.clone());
    let (criu, peers) = fake_criu(move |p| {
        let (r, m) = (r.clone(), m.clone());
        // Counted from the request's arrival to the final answer: inside the slot
        // the driver holds (the peer's task may outlive it a little).
        async move {
            let mut p = p;
            p.expect(CriuReqType::Dump).await;
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            m.fetch_max(now, Ordering::SeqCst);
            assert_eq!(p.notify("pre-dump", None).await.notify_success, Some(true));
            tokio::time::sleep(pause).await;
            assert_eq!(p.notify("post-dump", None).await.notify_success, Some(true));
            r.fetch_sub(1, Ordering::SeqCst);
            p.send(&resp(CriuReqType::Dump, true)).await;
            p.expect_closed().await;
            p
        }
    });
    (criu, peers, most)
}

#[tokio::test]
async fn a_batch_of_dumps_runs_each_on_its_own_criu_at_most_jobs_at_once() {
    let (criu, peers, most) = counted_dump_peers(Duration::from_millis(20));
    let dirs: Vec<_> = (0..6).map(|_| images_dir()).collect();
    let (events, results) = drain(Fleet::new(criu).jobs(2).dump(targets(&dirs))).await;
    let peers = peers.finish().await;

    assert_eq!(peers.len(), 6, "one criu per target");
    assert!(most.load(Ordering::SeqCst) <= 2, "more than 2 at once");
    assert_eq!(most.load(Ordering::SeqCst), 2, "the slots were not used");
    for (i, result) in &results {
        let out = result
            .as_ref()
            .unwrap_or_else(|e| panic!("target {i}: {e}"));
        assert_eq!(out.pid, TARGET - *i as i32, "outcome of target {i}");
    }
    assert_eq!(results.len(), 6);
    for i in 0..6 {
        let at = |what: &str| {
            events
                .iter()
                .position(|e| *e == format!("{i} {what}"))
                .unwrap_or_else(|| panic!("no '{i} {what}' in {events:?}"))
        };
        assert!(at("queued") < at("started"));
        assert!(at("started") < at("pre-dump"));
        assert!(at("pre-dump") < at("post-dump"));
        assert!(at("post-dump") < at("finished"));
    }
    for p in &peers {
        assert_eq!(p.answers(), [true, true]);
    }
}

#[tokio::test]
async fn without_jobs_a_batch_starts_two_per_cpu_and_never_runs_more_than_four() {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let (criu, peers, most) = counted_dump_peers(Duration::from_millis(150));
    let n = 6 * cpus;
    let dirs: Vec<_> = (0..n).map(|_| images_dir()).collect();
    let (_, results) = drain(Fleet::new(criu).dump(targets(&dirs))).await;
    let peers = peers.finish().await;

    assert_eq!(peers.len(), n, "one criu per target");
    assert!(results.values().all(|r| r.is_ok()), "{results:?}");
    let most = most.load(Ordering::SeqCst);
    // The first wave alone holds two per CPU at once (each pauses 150 ms).
    assert!(most >= 2 * cpus, "at most {most} at once on {cpus} CPUs");
    assert!(most <= 4 * cpus, "{most} at once on {cpus} CPUs");
}

#[tokio::test]
async fn a_hook_that_vetoes_one_target_rolls_back_that_target_only() {
    let (criu, peers) = fake_criu(|p| dump_peer(p, Duration::ZERO));
    let dirs: Vec<_> = (0..3).map(|_| images_dir()).collect();
    let vetoed = TARGET - 1;
    let with_hooks = targets(&dirs).into_iter().map(|opts| {
        let pid = opts.pid();
        let hooks = move |n: Notification| async move {
            if pid == vetoed && n.name() == "pre-dump" {
                Reply::fail("not now")
            } else {
                Reply::ok()
            }
        };
        (opts, hooks)
    });
    let (_, results) = drain(Fleet::new(criu).jobs(3).dump_with(with_hooks)).await;
    let peers = peers.finish().await;

    assert!(results[&0].is_ok(), "{:?}", results[&0]);
    assert!(results[&2].is_ok(), "{:?}", results[&2]);
    match &results[&1] {
        Err(e @ Error::Hook { hook, .. }) => {
            assert_eq!(hook, "pre-dump");
            assert_eq!(e.request_state(), Some(RequestState::RolledBack));
            let cause = std::error::Error::source(e).expect("the hook's error");
            assert_eq!(cause.to_string(), "not now");
        }
        other => panic!("target 1: {other:?}"),
    }
    let mut answers: Vec<_> = peers.iter().map(|p| p.answers()).collect();
    answers.sort();
    assert_eq!(answers, [vec![false], vec![true, true], vec![true, true]]);
}

#[tokio::test]
async fn a_cancelled_batch_rolls_back_what_runs_and_never_starts_what_is_queued() {
    // Each peer "dumps memory" for 300 ms between its hooks: long enough to cancel
    // while the first two are between pre-dump and post-dump.
    let (criu, peers) = fake_criu(|p| dump_peer(p, Duration::from_millis(300)));
    let dirs: Vec<_> = (0..5).map(|_| images_dir()).collect();
    let mut batch = Fleet::new(criu).jobs(2).dump(targets(&dirs));
    let mut seized = 0;
    let mut results = BTreeMap::new();
    while let Some(event) = within("the next fleet event", batch.next()).await {
        match event {
            Event::Hook { name, .. } if name == "pre-dump" => {
                seized += 1;
                if seized == 2 {
                    batch.cancel();
                }
            }
            Event::Finished { target, result } => {
                results.insert(target, result);
            }
            _ => {}
        }
    }
    let peers = peers.finish().await;

    assert_eq!(peers.len(), 2, "a queued target started after the cancel");
    assert_eq!(results.len(), 5, "every target finishes");
    for (i, result) in &results {
        let Err(e @ Error::Cancelled { at, .. }) = result else {
            panic!("target {i}: {result:?}");
        };
        let want = if *i < 2 {
            RequestState::RolledBack
        } else {
            RequestState::Untouched
        };
        assert_eq!(at.state, want, "target {i}: {e}");
    }
    for p in &peers {
        // pre-dump agreed, post-dump failed: criu resumed the tree.
        assert_eq!(p.answers(), [true, false]);
    }
}

#[tokio::test]
async fn a_batch_past_its_timeout_rolls_each_slow_target_back() {
    let (criu, peers) = fake_criu(|p| dump_peer(p, Duration::from_millis(400)));
    let dirs: Vec<_> = (0..2).map(|_| images_dir()).collect();
    let fleet = Fleet::new(criu).jobs(2).timeout(Duration::from_millis(100));
    let (_, results) = drain(fleet.dump(targets(&dirs))).await;
    let peers = peers.finish().await;
    for (i, result) in &results {
        match result {
            Err(Error::Timeout { at, .. }) => assert_eq!(at.state, RequestState::RolledBack),
            other => panic!("target {i}: {other:?}"),
        }
    }
    for p in &peers {
        assert_eq!(p.answers(), [true, false]);
    }
}

#[tokio::test]
async fn a_batch_of_restores_reports_each_restored_pid() {
    let (criu, peers) = fake_criu(|mut p| async move {
        p.expect(CriuReqType::Restore).await;
        assert_eq!(
            p.notify("pre-restore", None).await.notify_success,
            Some(true)
        );
        assert_eq!(
            p.notify("post-restore", Some(RESTORED))
                .await
                .notify_success,
            Some(true)
        );
        p.send(&restore_resp(RESTORED)).await;
        p.expect_closed().await;
        p
    });
    let dirs: Vec<_> = (0..3).map(|_| restore_images()).collect();
    let targets = dirs
        .iter()
        .map(|d| RestoreOptions::new().images_dir(d.path()));
    let (_, results) = drain(Fleet::new(criu).jobs(2).restore(targets)).await;
    peers.finish().await;
    assert_eq!(results.len(), 3);
    for (i, result) in results {
        let out = result.unwrap_or_else(|e| panic!("target {i}: {e}"));
        assert_eq!(out.pid, RESTORED);
    }
}

#[tokio::test]
async fn a_connector_that_fails_fails_each_target_with_its_cause() {
    let criu = criu_swrk::Criu::connect_with(|| {
        Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "no criu there",
        ))
    });
    let dirs: Vec<_> = (0..2).map(|_| images_dir()).collect();
    let (_, results) = drain(Fleet::new(criu).dump(targets(&dirs))).await;
    assert_eq!(results.len(), 2);
    for (i, result) in results {
        let e = result.expect_err(&format!("target {i}: no criu to connect to"));
        assert_eq!(e.to_string(), "connecting to criu");
        let cause = std::error::Error::source(&e).expect("the connector's error");
        assert_eq!(cause.to_string(), "no criu there");
    }
}

/// The pid each peer was asked to dump, in the order the requests arrived.
fn dumped_pids(peers: &[FakePeer]) -> Vec<i32> {
    let mut firsts: Vec<_> = peers
        .iter()
        .map(|p| {
            let req = &p.received[0];
            assert_eq!(req.r#type(), CriuReqType::Dump);
            req.opts.as_ref().and_then(|o| o.pid).expect("a pid")
        })
        .collect();
    firsts.dedup();
    firsts
}

#[tokio::test]
async fn the_biggest_tree_starts_first_unless_asked_for_the_order_given() {
    // Two small trees around a big one (64 MiB touched): forked children that only
    // pause, the big one after the buffer was filled (its pages resident in it too).
    let pause = || match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => loop {
            nix::unistd::pause();
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    let small = [pause(), pause()];
    let big: Vec<u8> = vec![1; 64 << 20];
    let big_child = pause();
    let children = [small[0], small[1], big_child];
    let small: Vec<i32> = small.iter().map(|p| p.as_raw()).collect();
    let big_pid = big_child.as_raw();
    let given = [small[0], big_pid, small[1]];
    for (order, want) in [
        (Order::LargestFirst, [big_pid, small[0], small[1]]),
        (Order::AsGiven, given),
    ] {
        let (criu, peers) = fake_criu(|p| dump_peer(p, Duration::ZERO));
        let dirs: Vec<_> = (0..3).map(|_| images_dir()).collect();
        let targets = given
            .iter()
            .zip(&dirs)
            .map(|(pid, d)| DumpOptions::new(*pid).images_dir(d.path()));
        let (_, results) = drain(Fleet::new(criu).jobs(1).order(order).dump(targets)).await;
        let peers = peers.finish().await;
        assert_eq!(dumped_pids(&peers), want, "{order:?}");
        // Results still name targets by their index in the order given.
        for (i, pid) in given.iter().enumerate() {
            assert_eq!(results[&i].as_ref().unwrap().pid, *pid, "{order:?}");
        }
    }
    assert_eq!(big[big.len() - 1], 1);
    for child in children {
        nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL).unwrap();
        nix::sys::wait::waitpid(child, None).unwrap();
    }
}

#[tokio::test]
async fn restores_start_with_the_most_pages() {
    let (criu, peers) = fake_criu(|mut p| async move {
        let req = p.expect(CriuReqType::Restore).await;
        let dir = dir_of_fd(req.opts.as_ref().unwrap().images_dir_fd);
        let pages = std::fs::metadata(dir.join("pages-1.img")).unwrap().len();
        p.received.clear();
        // The fake peer remembers the size it restored in the request's pid field.
        let mut seen = req.clone();
        seen.opts.as_mut().unwrap().pid = Some(pages as i32);
        p.received.push(seen);
        p.send(&restore_resp(RESTORED)).await;
        p.expect_closed().await;
        p
    });
    let dirs: Vec<_> = [4096usize, 65536, 16384]
        .iter()
        .map(|len| {
            let d = restore_images();
            std::fs::write(d.path().join("pages-1.img"), vec![0u8; *len]).unwrap();
            d
        })
        .collect();
    let targets = dirs
        .iter()
        .map(|d| RestoreOptions::new().images_dir(d.path()));
    let (_, results) = drain(Fleet::new(criu).jobs(1).restore(targets)).await;
    let peers = peers.finish().await;
    assert_eq!(results.len(), 3);
    let sizes: Vec<i32> = peers
        .iter()
        .map(|p| p.received[0].opts.as_ref().unwrap().pid.unwrap())
        .collect();
    assert_eq!(sizes, [65536, 16384, 4096]);
}
