//! The driver against real criu and real processes (root). Each test checks what a
//! user cares about: the target survives what should not kill it, restored memory is
//! intact, hooks come in criu's order, errors say what was wrong, nothing is left
//! behind.
//!
//! Outside CI these tests skip when root or criu is missing; with `CI=true` they fail.

mod common;

use std::time::Duration;

use criu_swrk::{
    Criu, DumpOptions, Error, Hooks, Notification, PreDumpOptions, Reply, RestoreOptions,
};
use tokio::sync::oneshot;

/// Records the hooks criu passes through.
#[derive(Default)]
struct Recorder(Vec<String>);

impl Hooks for Recorder {
    async fn on_notify(&mut self, n: Notification) -> Reply {
        self.0.push(n.name().to_owned());
        Reply::ok()
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn version_features_and_check() {
    let env = common::env();
    let v = env.criu.version().await.unwrap();
    assert!(v.at_least(4, 0), "criu {v} is older than 4.0");

    // Several keep-open queries on one criu process.
    let mut s = env.criu.session().unwrap();
    let pid = s.criu_pid().unwrap();
    let v2 = s.version().await.unwrap();
    let f1 = s.features().await.unwrap();
    let f2 = s.features().await.unwrap();
    assert_eq!(v, v2);
    assert_eq!(f1, f2);
    assert_eq!(
        s.criu_pid(),
        Some(pid),
        "one criu process served every query"
    );
    s.close().await;
    assert!(!common::exists(pid), "criu {pid} was not reaped");

    env.criu
        .check(criu_swrk::CheckOptions::new())
        .await
        .unwrap();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn dump_leave_running_keeps_the_target() {
    let env = common::env();
    let target = env.workload(32);
    let images = env.subdir("images");
    let out = env
        .criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&images)
                .leave_running(true),
        )
        .await
        .unwrap();
    target.assert_alive_and_intact();
    assert!(images.join("inventory.img").exists());
    let stats = out.stats.expect("dump stats");
    let buffer_pages = target.info.len / 4096;
    assert!(
        stats.pages_written >= buffer_pages,
        "{} pages written, the buffer alone has {buffer_pages}",
        stats.pages_written
    );
    assert!(stats.frozen_time > Duration::ZERO);
    // criu logged to our pipe: no log file among the images.
    assert_eq!(out.log, None);
    for name in ["dump.log", "criu.log"] {
        assert!(!images.join(name).exists(), "{name} in the images dir");
    }
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn dump_then_restore_runs_on_with_memory_intact_and_hooks_in_criu_order() {
    let env = common::env();
    let mut target = env.workload(32);
    let images = env.subdir("images");

    let mut hooks = Recorder::default();
    env.criu
        .dump_with(DumpOptions::new(target.pid).images_dir(&images), &mut hooks)
        .await
        .unwrap();
    // criu's dump order for a tree without its own network namespace.
    assert_eq!(hooks.0, ["pre-dump", "query-ext-files", "post-dump"]);
    target.reap_dumped();

    let mut hooks = Recorder::default();
    let out = env
        .criu
        .restore_with(RestoreOptions::new().images_dir(&images), &mut hooks)
        .await
        .unwrap();
    // criu's restore order for a tree without namespaces of its own.
    assert_eq!(
        hooks.0,
        ["pre-restore", "post-restore", "pre-resume", "post-resume"]
    );
    let restored = target.restored(out.pid);
    restored.assert_alive_and_intact();
    let stats = out.stats.expect("restore stats");
    assert!(stats.pages_restored.unwrap_or(0) >= target.info.len / 4096);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn failing_post_dump_hook_leaves_the_target_running() {
    let env = common::env();
    let target = env.workload(32);
    let images = env.subdir("images");
    let mut seen = Vec::new();
    let mut hooks = |n: Notification| {
        seen.push(n.name().to_owned());
        std::future::ready(match n {
            Notification::PostDump => Reply::fail("images cannot be shipped"),
            _ => Reply::ok(),
        })
    };
    // No leave_running: without the rollback criu would kill the target.
    let err = env
        .criu
        .dump_with(DumpOptions::new(target.pid).images_dir(&images), &mut hooks)
        .await
        .unwrap_err();
    match &err {
        Error::Hook { hook, .. } => assert_eq!(hook, "post-dump"),
        other => panic!("expected a hook error, got {other}"),
    }
    let source = std::error::Error::source(&err).expect("the hook's own error");
    assert_eq!(source.to_string(), "images cannot be shipped");
    assert_eq!(seen.last().map(String::as_str), Some("post-dump"));
    target.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn dropped_dump_leaves_the_target_running() {
    let env = common::env();
    let target = env.workload(256);
    let images = env.subdir("images");
    let session = env.criu.session().unwrap();
    let criu_pid = session.criu_pid().unwrap();

    let (reached_tx, reached_rx) = oneshot::channel();
    let mut reached_tx = Some(reached_tx);
    let opts = DumpOptions::new(target.pid).images_dir(&images);
    let task = tokio::spawn(async move {
        let mut hooks = move |n: Notification| {
            let post_dump = matches!(n, Notification::PostDump);
            if matches!(n, Notification::PreDump)
                && let Some(tx) = reached_tx.take()
            {
                let _ = tx.send(());
            }
            async move {
                // Should criu be faster than the abort below, the drop still lands
                // before the dump is committed: post-dump is never agreed to.
                if post_dump {
                    std::future::pending::<()>().await;
                }
                Reply::ok()
            }
        };
        session.dump_with(opts, &mut hooks).await
    });
    reached_rx.await.expect("criu reached pre-dump");
    // criu is now freezing the tree and copying its 256 MiB.
    tokio::time::sleep(Duration::from_millis(60)).await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    // The rollback runs in the background: criu answers post-dump with failure,
    // resumes the tree, exits and is reaped.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    while common::exists(criu_pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "criu {criu_pid} still there"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    target.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn timed_out_dump_rolls_back_and_leaves_the_target_running() {
    let env = common::env();
    let target = env.workload(256);
    let images = env.subdir("images");
    let err = env
        .criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&images)
                .timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap_err();
    match err {
        Error::Timeout { at, after, .. } => {
            // 50 ms in, criu is either still starting (stopped at once) or holds the
            // tree (rolled back at its next hook).
            assert!(at.state.target_unchanged(), "{at}");
            assert_eq!(after, Duration::from_millis(50));
        }
        other => panic!("expected a timeout, got {other}"),
    }
    target.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn nonexistent_pid_is_refused_with_criu_s_reason() {
    let env = common::env();
    let images = env.subdir("images");
    // A pid beyond pid_max cannot exist.
    let pid = 4_194_304 + 12345;
    let err = env
        .criu
        .dump(DumpOptions::new(pid).images_dir(&images))
        .await
        .unwrap_err();
    eprintln!("{err}");
    let refusal = err
        .refusal()
        .unwrap_or_else(|| panic!("expected a refusal, got {err}"));
    assert_eq!(refusal.pid, Some(pid));
    let text = err.to_string();
    assert!(text.contains(&pid.to_string()), "{text}");
    assert!(text.contains("No such process"), "{text}");
    assert!(!refusal.log_errors.is_empty(), "{text}");
    assert!(
        refusal
            .log_errors
            .iter()
            .all(|l| !l.contains("RLIMIT_NOFILE")),
        "harmless lines should be skipped: {text}"
    );
    // The error lines came through criu's stderr (our pipe).
    assert_eq!(refusal.log_path, None);

    // With a log file asked for, they come from that file, which the error names.
    let err = env
        .criu
        .dump(
            DumpOptions::new(pid)
                .images_dir(&images)
                .log_file("dump.log"),
        )
        .await
        .unwrap_err();
    let refusal = err.refusal().expect("a refusal");
    let log = images.canonicalize().unwrap().join("dump.log");
    assert_eq!(refusal.log_path.as_deref(), Some(log.as_path()));
    assert!(
        refusal
            .log_errors
            .iter()
            .any(|l| l.contains(&pid.to_string())),
        "{err}"
    );
    assert!(
        err.to_string().contains(&log.display().to_string()),
        "{err}"
    );
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn unwritable_images_dir_is_a_clear_error() {
    let env = common::env();
    let target = env.workload(16);
    let ro = env.subdir("read-only");
    nix::mount::mount(
        Some("tmpfs"),
        &ro,
        Some("tmpfs"),
        nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .expect("mounting a read-only tmpfs");
    let res = env
        .criu
        .dump(DumpOptions::new(target.pid).images_dir(&ro))
        .await;
    nix::mount::umount(&ro).expect("umount");
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidOptions {
                option: "images_dir",
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("not writable") && text.contains("Read-only file system"),
        "{text}"
    );
    target.assert_alive_and_intact();
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn missing_criu_binary_is_a_spawn_error_naming_the_path() {
    let _env = common::env();
    let err = Criu::new()
        .with_path("/nonexistent/bin/criu")
        .version()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/bin/criu"), "{err}");
    assert!(err.to_string().contains("No such file"), "{err}");
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn pre_dump_is_refused_clearly_without_memory_tracking() {
    let env = common::env();
    let target = env.workload(16);
    let features = env.criu.features().await.unwrap();
    let images = env.subdir("pre-1");
    let res = env
        .criu
        .pre_dump(PreDumpOptions::new(target.pid).images_dir(&images))
        .await;
    if features.mem_track {
        // This kernel tracks memory: the whole loop must work for real.
        let mut lp = res.unwrap();
        let next = env.subdir("pre-2");
        lp.pre_dump(
            PreDumpOptions::new(target.pid)
                .images_dir(&next)
                .parent_images("../pre-1"),
        )
        .await
        .unwrap();
        let last = env.subdir("final");
        lp.dump(
            DumpOptions::new(target.pid)
                .images_dir(&last)
                .parent_images("../pre-2")
                .leave_running(true),
        )
        .await
        .unwrap();
    } else {
        let err = res.unwrap_err();
        assert!(err.is_unsupported(), "{err}");
        assert!(err.to_string().contains("memory tracking"), "{err}");
    }
    target.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}
