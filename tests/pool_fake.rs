//! `Criu::warm` against fake criu peers (through `Criu::connect_with`): connections
//! made ahead, taken oldest first, replaced, bypassed by requests that pass fds, and
//! closed when the pool goes. No root, no criu.

mod fake;

use std::time::Duration;

use criu_swrk::proto::CriuReqType;
use criu_swrk::{DumpOptions, RestoreOptions};
use fake::*;

/// A peer that answers one VERSION (keep-open) and then waits for the close; or, if
/// the first request is something else, answers it as criu would.
async fn serve(mut p: FakePeer) -> FakePeer {
    let Some(req) = p.recv().await else {
        return p;
    };
    match req.r#type() {
        CriuReqType::Version => p.send(&version_resp(4, 2, 1)).await,
        CriuReqType::Dump => {
            p.notify("pre-dump", None).await;
            p.notify("post-dump", None).await;
            p.send(&resp(CriuReqType::Dump, true)).await;
        }
        CriuReqType::Restore => p.send(&restore_resp(RESTORED)).await,
        other => panic!("unexpected {other:?}"),
    }
    p.expect_closed().await;
    p
}

async fn settle() {
    // The refill runs as a task of its own.
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
}

#[tokio::test]
async fn a_warm_pool_connects_ahead_serves_the_oldest_first_and_refills() {
    let (criu, peers) = fake_criu(serve);
    let criu = criu.warm(2);
    assert_eq!(peers.count(), 2, "filled at once inside a runtime");
    assert_eq!(criu.warm_count(), 2);

    let v = within("version", criu.version()).await.unwrap();
    assert_eq!(v.to_string().split_whitespace().next(), Some("4.2.1"));
    settle().await;
    assert_eq!(peers.count(), 3, "one replacement for the one taken");
    assert_eq!(criu.warm_count(), 2);

    let dir = images_dir();
    within(
        "dump",
        criu.dump(DumpOptions::new(TARGET).images_dir(dir.path())),
    )
    .await
    .unwrap();
    settle().await;
    assert_eq!(peers.count(), 4);

    drop(criu);
    let peers = peers.finish().await;
    // Connection 0 served the version, 1 the dump (oldest first); 2 and 3 waited and
    // saw the pool's sockets close when the last Criu went.
    assert_eq!(peers[0].types(), [CriuReqType::Version]);
    assert_eq!(peers[1].types()[0], CriuReqType::Dump);
    assert!(peers[2].received.is_empty());
    assert!(peers[3].received.is_empty());
}

#[tokio::test]
async fn a_request_passing_fds_takes_a_fresh_criu_and_leaves_the_pool_alone() {
    let (criu, peers) = fake_criu(serve);
    let criu = criu.warm(1);
    assert_eq!(peers.count(), 1);
    let dir = restore_images();
    let (_r, w) = std::io::pipe().unwrap();
    let opts = RestoreOptions::new()
        .images_dir(dir.path())
        .inherit_fd("pipe:[12345]", w);
    let out = within("restore", criu.restore(opts)).await.unwrap();
    assert_eq!(out.pid, RESTORED);
    settle().await;
    assert_eq!(peers.count(), 2, "one fresh connection, no refill");
    assert_eq!(criu.warm_count(), 1);
    drop(criu);
    let peers = peers.finish().await;
    assert!(peers[0].received.is_empty(), "the warm one was not used");
    assert_eq!(peers[1].types(), [CriuReqType::Restore]);
}

#[tokio::test]
async fn clones_share_one_pool_and_zero_turns_it_off() {
    let (criu, peers) = fake_criu(serve);
    let criu = criu.warm(1);
    let clone = criu.clone();
    within("version", clone.version()).await.unwrap();
    settle().await;
    assert_eq!(peers.count(), 2, "the clone took from the shared pool");
    let off = criu.warm(0);
    assert_eq!(off.warm_count(), 0);
    drop((off, clone));
    peers.finish().await;
}

#[tokio::test]
async fn the_replacement_starts_once_the_request_that_took_a_criu_is_over() {
    // Started during the request, a replacement's start-up would compete with it.
    let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
    let gate = std::sync::Mutex::new(Some(gate_rx));
    let (criu, peers) = fake_criu(move |mut p| {
        let gate = gate.lock().unwrap().take();
        async move {
            let Some(req) = p.recv().await else {
                return p;
            };
            assert_eq!(req.r#type(), CriuReqType::Dump);
            p.notify("pre-dump", None).await;
            if let Some(gate) = gate {
                gate.await.unwrap();
            }
            p.notify("post-dump", None).await;
            p.send(&resp(CriuReqType::Dump, true)).await;
            p.expect_closed().await;
            p
        }
    });
    let criu = criu.warm(1);
    let dir = images_dir();
    let dump = tokio::spawn({
        let criu = criu.clone();
        let path = dir.path().to_owned();
        async move { criu.dump(DumpOptions::new(TARGET).images_dir(path)).await }
    });
    settle().await;
    assert_eq!(peers.count(), 1, "no replacement while the dump runs");
    gate_tx.send(()).unwrap();
    within("dump", dump).await.unwrap().unwrap();
    settle().await;
    assert_eq!(peers.count(), 2, "replaced once the dump was over");
    drop(criu);
    peers.finish().await;
}
