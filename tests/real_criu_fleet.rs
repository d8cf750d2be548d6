//! Batches of dumps and restores through the library's `Fleet`, against real criu
//! (root).
//!
//! Outside CI these tests skip when root or criu is missing; with `CI=true` they fail.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;

use criu_swrk::fleet::{Event, Fleet};
use criu_swrk::{DumpOptions, Error, Notification, Reply, RestoreOptions};

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_batch_dumps_and_restores_every_target_and_reports_each() {
    let env = common::env();
    let mut targets: Vec<_> = (0..4).map(|_| env.workload(16)).collect();
    let dirs: Vec<_> = (0..4).map(|i| env.subdir(&format!("t{i}"))).collect();
    let fleet = Fleet::new(env.criu.clone()).jobs(2);

    let mut batch = fleet.dump(
        targets
            .iter()
            .zip(&dirs)
            .map(|(t, d)| DumpOptions::new(t.pid).images_dir(d)),
    );
    let mut hooks = vec![Vec::new(); 4];
    let mut finished = HashSet::new();
    while let Some(event) = batch.next().await {
        match event {
            Event::Hook { target, name } => hooks[target].push(name),
            Event::Finished { target, result } => {
                let out = result.unwrap_or_else(|e| panic!("target {target}: {e}"));
                assert_eq!(out.pid, targets[target].pid);
                assert!(out.stats.unwrap().pages_written > 0);
                assert!(finished.insert(target), "target {target} finished twice");
            }
            _ => {}
        }
    }
    assert_eq!(finished.len(), 4);
    for h in &hooks {
        assert_eq!(h, &["pre-dump", "query-ext-files", "post-dump"]);
    }
    for t in &mut targets {
        t.reap_dumped();
    }

    let mut batch = fleet.restore(dirs.iter().map(|d| RestoreOptions::new().images_dir(d)));
    let mut restored = Vec::new();
    while let Some(event) = batch.next().await {
        if let Event::Finished { target, result } = event {
            let out = result.unwrap_or_else(|e| panic!("restore {target}: {e}"));
            restored.push(targets[target].restored(out.pid));
        }
    }
    assert_eq!(restored.len(), 4);
    for r in &restored {
        r.assert_alive_and_intact();
    }
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn one_failing_target_does_not_break_the_others() {
    let env = common::env();
    let targets: Vec<_> = (0..3).map(|_| env.workload(16)).collect();
    let bad_pid = 4_194_304 + 777;
    let mut pids: Vec<i32> = targets.iter().map(|t| t.pid).collect();
    pids.insert(1, bad_pid);
    let fleet = Fleet::new(env.criu.clone()).jobs(4);
    let mut batch = fleet.dump(pids.iter().map(|pid| {
        DumpOptions::new(*pid)
            .images_dir(env.subdir(&pid.to_string()))
            .leave_running(true)
    }));
    let mut results = vec![None; pids.len()];
    while let Some(event) = batch.next().await {
        if let Event::Finished { target, result } = event {
            results[target] = Some(result.map(|_| ()).map_err(|e| e.to_string()));
        }
    }
    for (i, r) in results.iter().enumerate() {
        let r = r.as_ref().expect("every target finishes");
        if pids[i] == bad_pid {
            let e = r.as_ref().unwrap_err();
            assert!(e.contains(&bad_pid.to_string()), "{e}");
        } else {
            assert!(r.is_ok(), "target {}: {r:?}", pids[i]);
        }
    }
    for t in &targets {
        t.assert_alive_and_intact();
    }
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn cancelling_a_batch_rolls_back_every_dump() {
    let env = common::env();
    let targets: Vec<_> = (0..3).map(|_| env.workload(256)).collect();
    // One slot fewer than targets: one target is still queued when we cancel.
    let fleet = Fleet::new(env.criu.clone()).jobs(2);
    let mut batch = fleet.dump(
        targets
            .iter()
            .map(|t| DumpOptions::new(t.pid).images_dir(env.subdir(&t.pid.to_string()))),
    );
    let mut in_dump = HashSet::new();
    let mut results = Vec::new();
    while let Some(event) = tokio::time::timeout(Duration::from_secs(60), batch.next())
        .await
        .expect("the batch makes progress")
    {
        match event {
            Event::Hook { target, name } if name == "pre-dump" => {
                in_dump.insert(target);
                // Both slots are dumping 256 MiB: cancel mid-way.
                if in_dump.len() == 2 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    batch.cancel();
                }
            }
            Event::Finished { target, result } => results.push((target, result)),
            _ => {}
        }
    }
    assert_eq!(results.len(), 3);
    for (target, result) in results {
        match result {
            Err(Error::Cancelled { at, .. }) => assert!(
                at.state.target_unchanged(),
                "target {target} not confirmed untouched or rolled back: {at}"
            ),
            other => panic!("target {target}: expected a cancellation, got {other:?}"),
        }
    }
    for t in &targets {
        t.assert_alive_and_intact();
    }
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn each_target_answers_its_own_hooks_and_a_veto_rolls_back_only_it() {
    let env = common::env();
    let mut targets: Vec<_> = (0..3).map(|_| env.workload(16)).collect();
    let seen: Vec<Arc<Mutex<Vec<String>>>> = (0..3).map(|_| Arc::default()).collect();
    let fleet = Fleet::new(env.criu.clone()).jobs(3);
    let mut batch = fleet.dump_with(targets.iter().zip(&seen).enumerate().map(|(i, (t, seen))| {
        let opts = DumpOptions::new(t.pid).images_dir(env.subdir(&t.pid.to_string()));
        let seen = seen.clone();
        let hooks = move |n: Notification| {
            seen.lock().unwrap().push(n.name().to_owned());
            // Target 1 vetoes its dump at pre-dump; the others agree to everything.
            let reply = if i == 1 && n.name() == "pre-dump" {
                Reply::fail("not now")
            } else {
                Reply::ok()
            };
            std::future::ready(reply)
        };
        (opts, hooks)
    }));
    let mut results: Vec<Option<Result<_, Error>>> = (0..3).map(|_| None).collect();
    let mut events = vec![Vec::new(); 3];
    while let Some(event) = batch.next().await {
        match event {
            Event::Hook { target, name } => events[target].push(name),
            Event::Finished { target, result } => results[target] = Some(result),
            _ => {}
        }
    }
    let all = ["pre-dump", "query-ext-files", "post-dump"];
    for i in [0, 2] {
        let out = results[i]
            .take()
            .unwrap()
            .unwrap_or_else(|e| panic!("target {i}: {e}"));
        assert_eq!(out.pid, targets[i].pid);
        // The target's own hooks ran in criu's order, each once, and the progress
        // events name the same hooks.
        assert_eq!(*seen[i].lock().unwrap(), all, "target {i}");
        assert_eq!(events[i], all, "target {i}");
    }
    match results[1].take().unwrap() {
        Err(e @ Error::Hook { .. }) => {
            assert!(e.to_string().contains("pre-dump"), "{e}");
            let source = std::error::Error::source(&e).expect("the hook's own error");
            assert_eq!(source.to_string(), "not now");
        }
        other => panic!("target 1: expected its hook's veto, got {other:?}"),
    }
    assert_eq!(*seen[1].lock().unwrap(), ["pre-dump"]);
    // The vetoed target was rolled back: still running, memory intact.
    targets[1].assert_alive_and_intact();
    for i in [0, 2] {
        targets[i].reap_dumped();
    }
    common::assert_no_criu_left().await;
}
