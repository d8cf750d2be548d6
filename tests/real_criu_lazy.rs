//! Post-copy (lazy pages) against real criu (root).
//!
//! Outside CI these tests skip when root or criu is missing; with `CI=true` they fail.

mod common;

use criu_swrk::lazy::LazyPagesOptions;
use criu_swrk::{DumpOptions, Error, RestoreOptions};

const PIPE_MAX_SIZE: &str = "/proc/sys/fs/pipe-max-size";

/// Sets `fs.pipe-max-size` for the life of the guard.
struct PipeMaxSize(String);

impl PipeMaxSize {
    fn set(value: u64) -> Self {
        let old = std::fs::read_to_string(PIPE_MAX_SIZE).expect("reading pipe-max-size");
        std::fs::write(PIPE_MAX_SIZE, value.to_string()).expect("setting pipe-max-size");
        PipeMaxSize(old.trim().to_owned())
    }
}

impl Drop for PipeMaxSize {
    fn drop(&mut self) {
        let _ = std::fs::write(PIPE_MAX_SIZE, &self.0);
    }
}

#[tokio::test]
async fn lazy_restore_from_local_images_delivers_all_memory() {
    let Some(env) = common::env() else { return };
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
async fn lazy_dump_without_big_enough_pipes_is_refused_before_criu_fails_obscurely() {
    let Some(env) = common::env() else { return };
    let target = env.workload(16);
    let images = env.subdir("images");
    let _limit = PipeMaxSize::set(1024 * 1024);
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
async fn lazy_pages_daemon_without_images_says_why() {
    let Some(env) = common::env() else { return };
    let empty = env.subdir("empty");
    let err = env
        .criu
        .lazy_pages(LazyPagesOptions::new(&empty))
        .await
        .unwrap_err();
    let refusal = err
        .refusal()
        .unwrap_or_else(|| panic!("expected a refusal, got {err}"));
    assert!(!refusal.log_errors.is_empty(), "{err}");
    assert!(
        refusal
            .log_path
            .as_ref()
            .unwrap()
            .ends_with("lazy-pages.log")
    );
    common::assert_no_criu_left().await;
}
