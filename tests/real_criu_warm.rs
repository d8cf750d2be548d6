//! A warm criu (`Criu::warm`) against real criu (root): the waiting criu processes
//! are there, a dump and a restore through them leave the tree intact, and they go
//! (reaped) with the pool. A test binary of its own: the waiting criu processes would
//! otherwise count as left behind in other suites' checks.

mod common;

use std::time::{Duration, Instant};

use criu_swrk::{DumpOptions, RestoreOptions};

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_warm_criu_dumps_and_restores_intact_and_goes_with_its_pool() {
    let env = common::env();
    let criu = env.criu.clone().warm(2);
    until("two warm criu processes", || {
        common::criu_children().len() == 2
    })
    .await;
    let waiting = common::criu_children();

    let v = criu.version().await.unwrap();
    assert!(v.at_least(4, 2), "{v}");

    let mut target = env.workload(32);
    let images = env.subdir("images");
    let out = criu
        .dump(DumpOptions::new(target.pid).images_dir(&images))
        .await
        .unwrap();
    assert_eq!(out.pid, target.pid);
    target.reap_dumped();
    let out = criu
        .restore(RestoreOptions::new().images_dir(&images))
        .await
        .unwrap();
    target.restored(out.pid).assert_alive_and_intact();

    // Both first waiting processes served a request and were reaped; two new ones wait.
    until("the pool refilled", || {
        let now = common::criu_children();
        now.len() == 2 && now.iter().all(|p| !waiting.contains(p))
    })
    .await;
    assert_eq!(criu.warm_count(), 2);

    drop(criu);
    common::assert_no_criu_left().await;
}
