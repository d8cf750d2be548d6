//! Post-copy (lazy pages) against real criu (root).
//!
//! Outside CI these tests skip when root or criu is missing; with `CI=true` they fail.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use criu_swrk::lazy::LazyPagesOptions;
use criu_swrk::{DumpOptions, Error, Notification, Reply, RestoreOptions};

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn lazy_restore_from_local_images_delivers_all_memory() {
    let env = common::env();
    let mut target = env.workload(64);
    let images = env.subdir("images");
    env.criu
        .dump(DumpOptions::new(target.pid).images_dir(&images))
        .await
        .unwrap();
    target.reap_dumped();

    let daemon = env
        .criu
        .lazy_pages(LazyPagesOptions::new(&images))
        .await
        .unwrap();
    let daemon_pid = daemon.pid().unwrap();
    let out = env
        .criu
        .restore(RestoreOptions::new().images_dir(&images).lazy_pages(true))
        .await
        .unwrap();
    let restored = target.restored(out.pid);
    // Post-copy for real: the restore itself wrote only a fraction of the buffer.
    let buffer_pages = target.info.len / 4096;
    let eager = out.stats.unwrap().pages_restored.unwrap_or(0);
    assert!(
        eager < buffer_pages / 2,
        "{eager} of {buffer_pages} pages restored eagerly"
    );
    // The daemon exits once it has delivered every page; then all memory is there.
    daemon.wait().await.unwrap();
    assert!(
        !common::exists(daemon_pid),
        "lazy-pages {daemon_pid} not reaped"
    );
    restored.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn lazy_dump_without_big_enough_pipes_is_refused_before_criu_fails_obscurely() {
    let env = common::env();
    let target = env.workload(16);
    let images = env.subdir("images");
    let _limit = common::PipeMaxSize::set(1024 * 1024);
    let err = env
        .criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&images)
                .lazy_pages(true)
                .page_server("127.0.0.1", 0),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("pipe-max-size") && text.contains("4194304"),
        "{text}"
    );
    target.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn lazy_pages_daemon_without_images_says_why() {
    let env = common::env();
    let empty = env.subdir("empty");
    let err = env
        .criu
        .lazy_pages(LazyPagesOptions::new(&empty))
        .await
        .unwrap_err();
    match &err {
        criu_swrk::Error::Daemon {
            daemon,
            failure: criu_swrk::DaemonFailure::ExitedBeforeReady(Some(status)),
            log_path: Some(log),
            log_errors,
        } => {
            assert_eq!(*daemon, "lazy-pages");
            assert!(!status.success(), "{err}");
            assert!(log.ends_with("lazy-pages.log"), "{err}");
            // criu's own reason: no images to serve.
            assert!(
                log_errors.iter().any(|l| l.contains("Unexpected EOF")),
                "{err}"
            );
        }
        other => panic!("expected the daemon's failure, got {other:?}"),
    }
    common::assert_no_criu_left().await;
}

/// A free TCP port on loopback (bound and released).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until something listens on `port` (read from /proc/net/tcp, so no
/// connection is taken from the listener).
async fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let needle = format!(":{port:04X} 00000000:0000 0A");
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        if table.contains(&needle) {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn copy_images(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn remote_post_copy_serves_pages_from_the_dumping_side() {
    let env = common::env();
    // criu needs 4 MiB pipes for a lazy dump (see the notes); put the old limit back
    // afterwards.
    let _pipes = common::PipeMaxSize::set(4 * 1024 * 1024);
    // Its own PID namespace: the original stays (frozen) while its pages are served,
    // and the copy must not clash with its pid.
    let mut target = env.ns_workload(64);
    let src = env.subdir("src");
    let dst = env.subdir("dst");
    let port = free_port();

    let dump = {
        let criu = env.criu.clone();
        let (src, dst) = (src.clone(), dst.clone());
        let opts = DumpOptions::new(target.pid)
            .images_dir(&src)
            .lazy_pages(true)
            .page_server("127.0.0.1", port);
        tokio::spawn(async move {
            // At post-dump every image but the pages is written: ship them.
            let mut hooks = move |n: Notification| {
                if matches!(n, Notification::PostDump) {
                    copy_images(&src, &dst);
                }
                std::future::ready(Reply::ok())
            };
            criu.dump_with(opts, &mut hooks).await
        })
    };
    wait_listening(port).await;

    let daemon = env
        .criu
        .lazy_pages(LazyPagesOptions::new(&dst).page_server("127.0.0.1", port))
        .await
        .unwrap();
    let out = env
        .criu
        .restore(RestoreOptions::new().images_dir(&dst).lazy_pages(true))
        .await
        .unwrap();
    let restored = target.restored(out.pid);
    // Post-copy for real: the restore itself wrote only a fraction of the buffer.
    let buffer_pages = target.info.len / 4096;
    let eager = out.stats.unwrap().pages_restored.unwrap_or(0);
    assert!(
        eager < buffer_pages / 2,
        "{eager} of {buffer_pages} pages restored eagerly"
    );
    daemon.wait().await.unwrap();
    let dumped = dump.await.unwrap().unwrap();
    // criu's counters are reset when it starts serving pages: no stats to report.
    assert!(dumped.stats.unwrap_err().is_unsupported());
    // Without leave_running criu killed the original once its pages were served.
    target.reap_dumped();
    restored.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn criu_killed_while_a_lazy_dump_serves_its_pages_is_unknown_and_the_tree_runs_on() {
    // A lazy dump commits only when criu has served every page: until then it resumes
    // the tree on failure. criu killed after post-dump must not read as committed.
    let env = common::env();
    let _pipes = common::PipeMaxSize::set(4 << 20);
    let target = env.workload(16);
    let images = env.subdir("lazy-killed");
    let session = env.criu.session().expect("criu");
    let criu_pid = session.criu_pid().expect("criu's pid");
    let port = free_port();
    let opts = DumpOptions::new(target.pid)
        .images_dir(&images)
        .staged(true)
        .lazy_pages(true)
        .page_server("127.0.0.1", port);
    let killer = async {
        // Listening means post-dump was answered: criu now waits for the daemon.
        wait_listening(port).await;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(criu_pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    };
    let (res, ()) = futures::future::join(session.dump(opts), killer).await;
    let err = res.expect_err("criu was killed");
    assert_eq!(
        err.request_state(),
        Some(criu_swrk::RequestState::Unknown),
        "{err}"
    );
    common::assert_no_criu_left().await;
    target.assert_alive_and_intact();
    // Not committed: nothing was published as a dump, and the staging went.
    assert!(!images.join("inventory.img").exists());
    let parent = images.parent().unwrap();
    let partial: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(partial.is_empty(), "{partial:?}");
}
