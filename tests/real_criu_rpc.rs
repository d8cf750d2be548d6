//! The rest of criu's RPC surface against real criu (root): fds into and out of
//! criu, consoles, page servers, PID namespaces, lazy pages, cpuinfo, stats.
//!
//! Outside CI these tests skip when root or criu is missing; with `CI=true` they fail.

mod common;

use std::path::Path;

use criu_swrk::{CheckOptions, DumpOptions, PageServerOptions, RestoreOptions};

/// Copies every image file of `from` that `to` does not have yet.
fn copy_missing_images(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if !dest.exists() && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[tokio::test]
async fn cpuinfo_dump_then_check_on_the_same_machine() {
    let Some(env) = common::env() else { return };
    let dir = env.subdir("cpu");
    env.criu
        .cpuinfo_dump(CheckOptions::new().images_dir(&dir))
        .await
        .unwrap();
    assert!(dir.join("cpuinfo.img").exists());
    env.criu
        .cpuinfo_check(CheckOptions::new().images_dir(&dir))
        .await
        .unwrap();
    common::assert_no_criu_left().await;
}

#[tokio::test]
async fn dump_to_a_page_server_then_restore_from_what_it_received() {
    let Some(env) = common::env() else { return };
    let mut target = env.workload(32);
    let local = env.subdir("local");
    let received = env.subdir("received");

    let ps = env
        .criu
        .page_server(
            PageServerOptions::new()
                .images_dir(&received)
                .address("127.0.0.1")
                .port(0),
        )
        .await
        .unwrap();
    assert!(ps.port > 0, "criu should report the port it picked");

    env.criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&local)
                .page_server("127.0.0.1", ps.port),
        )
        .await
        .unwrap();
    target.reap_dumped();
    // criu loses a daemon page server's pid (it reports 0). The daemon exits once
    // the dump is done; it was re-parented to us, the subreaper.
    assert_eq!(ps.pid, None);
    common::reap_orphaned_criu().await;
    let pages_here = std::fs::read_dir(&local)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("pages-")
        })
        .count();
    assert_eq!(pages_here, 0, "pages should have gone to the page server");

    copy_missing_images(&local, &received);
    let out = env
        .criu
        .restore(RestoreOptions::new().images_dir(&received))
        .await
        .unwrap();
    target.restored(out.pid).assert_alive_and_intact();
    common::assert_no_criu_left().await;
}

#[tokio::test]
async fn page_server_child_and_wait_pid() {
    let Some(env) = common::env() else { return };
    let target = env.workload(16);
    let local = env.subdir("local");
    let received = env.subdir("received");

    let mut session = env.criu.session().unwrap();
    let ps = session
        .page_server_child(
            PageServerOptions::new()
                .images_dir(&received)
                .address("127.0.0.1"),
        )
        .await
        .unwrap();
    env.criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&local)
                .page_server("127.0.0.1", ps.port)
                .leave_running(true),
        )
        .await
        .unwrap();
    let status = session.wait_pid(ps.pid.unwrap()).await.unwrap();
    assert!(status.success(), "page server child: {status}");
    assert!(std::fs::read_dir(&received).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("pages-")
    }));
    target.assert_alive_and_intact();
    common::assert_no_criu_left().await;
}
