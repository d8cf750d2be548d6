//! The rest of criu's RPC surface against real criu (root): fds into and out of
//! criu, consoles, page servers, PID namespaces, lazy pages, cpuinfo, stats.
//!
//! Outside CI these tests skip when root or criu is missing; with `CI=true` they fail.

mod common;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use criu_swrk::{
    CpuinfoOptions, DumpOptions, Notification, PageServerOptions, Reply, RestoreOptions,
};
use nix::fcntl::{FcntlArg, FdFlag, fcntl};

/// How long to wait for one tick line (the workload writes one every 100 ms).
const TICK_WAIT: Duration = Duration::from_secs(5);

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
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn cpuinfo_dump_then_check_on_the_same_machine() {
    let env = common::env();
    let dir = env.subdir("cpu");
    env.criu
        .cpuinfo_dump(CpuinfoOptions::new().images_dir(&dir))
        .await
        .unwrap();
    assert!(dir.join("cpuinfo.img").exists());
    env.criu
        .cpuinfo_check(CpuinfoOptions::new().images_dir(&dir))
        .await
        .unwrap();
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn dump_to_a_page_server_then_restore_from_what_it_received() {
    let env = common::env();
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
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn page_server_child_and_wait_pid() {
    let env = common::env();
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

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn restore_with_inherit_fd_replaces_the_stdout_pipe_in_a_criu_spawned_first() {
    let env = common::env();
    let (old_r, old_w) = std::io::pipe().unwrap();
    let mut target = env.workload_with_stdio(16, Stdio::null(), Stdio::from(old_w), Stdio::null());
    let mut old = common::TickReader::new(old_r);
    let before = old.ticks(3, TICK_WAIT).await.unwrap();
    let key = common::fd_link(target.pid, 1);
    assert!(key.starts_with("pipe:["), "stdout should be a pipe: {key}");

    let images = env.subdir("images");
    env.criu
        .dump(DumpOptions::new(target.pid).images_dir(&images))
        .await
        .unwrap();
    target.reap_dumped();
    // Whatever the original wrote before it died (the last ticks before the dump).
    let mut last_before = *before.last().unwrap();
    while let Ok(line) = old.line(Duration::from_millis(200)).await {
        last_before = common::workload::parse_tick(&line).unwrap();
    }
    drop(old);

    let (new_r, new_w) = std::io::pipe().unwrap();
    let new_ino = nix::sys::stat::fstat(&new_r).unwrap().st_ino;
    // criu started first, as a runtime starts it (to move it into a cgroup before it
    // restores anything): its pid is known and our pipe is in its table already.
    let spawned = env
        .criu
        .spawn_restore(
            RestoreOptions::new()
                .images_dir(&images)
                .inherit_fd(key.clone(), new_w),
        )
        .unwrap();
    let criu_pid = spawned.criu_pid();
    assert_eq!(common::fd_link(criu_pid, 4), format!("pipe:[{new_ino}]"));
    let out = spawned.run().await.unwrap();
    let restored = target.restored(out.pid);
    assert_eq!(
        common::fd_link(out.pid, 1),
        format!("pipe:[{new_ino}]"),
        "the restored stdout should be our new pipe, not {key}"
    );
    // The restored task goes on counting where the original stopped, and writes to
    // the pipe we gave criu.
    let mut new = common::TickReader::new(new_r);
    assert_ticks_continue(&mut new, last_before).await;
    restored.assert_alive_and_intact();
    drop(restored);
    common::assert_no_criu_left().await;
}

/// Makes `fd` close-on-exec (openpty's fds are not), so no other child inherits it.
fn cloexec(fd: OwnedFd) -> OwnedFd {
    fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).unwrap();
    fd
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn orphan_pts_master_hands_over_a_working_console() {
    let env = common::env();
    // The console: we hold the master, as runc does; the slave is the workload's
    // stdio and controlling terminal.
    let pty = nix::pty::openpty(None, None).unwrap();
    let (master, slave) = (cloexec(pty.master), cloexec(pty.slave));
    let slave_path = common::fd_link(std::process::id() as i32, slave.as_raw_fd());
    assert!(slave_path.starts_with("/dev/pts/"), "{slave_path}");
    let mut target = env.workload_with_stdio(
        16,
        Stdio::from(slave.try_clone().unwrap()),
        Stdio::from(slave.try_clone().unwrap()),
        Stdio::from(slave),
    );
    assert_ne!(common::tty_nr(target.pid), 0, "the pty should be the ctty");
    for fd in 0..3 {
        assert_eq!(common::fd_link(target.pid, fd), slave_path);
    }
    let mut console = common::TickReader::new(master);
    let before = console.ticks(3, TICK_WAIT).await.unwrap();

    let images = env.subdir("images");
    env.criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&images)
                .orphan_pts_master(true),
        )
        .await
        .unwrap();
    target.reap_dumped();
    let mut last_before = *before.last().unwrap();
    while let Ok(line) = console.line(Duration::from_millis(200)).await {
        if let Some(tick) = common::workload::parse_tick(&line) {
            last_before = tick;
        }
    }
    // Closing the old console frees the pty's index, which criu restores the slave
    // with.
    drop(console);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&slave_path).exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{slave_path} still exists after its master was closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut hooks_seen = Vec::new();
    let mut new_master = None;
    let mut hooks = |n: Notification| {
        hooks_seen.push(n.name().to_owned());
        if let Notification::OrphanPtsMaster { master } = n {
            new_master = Some(master);
        }
        std::future::ready(Reply::ok())
    };
    let out = env
        .criu
        .restore_with(
            RestoreOptions::new()
                .images_dir(&images)
                .orphan_pts_master(true),
            &mut hooks,
        )
        .await
        .unwrap();
    let restored = target.restored(out.pid);
    assert!(
        hooks_seen.iter().any(|h| h == "orphan-pts-master"),
        "{hooks_seen:?}"
    );
    let new_master = new_master.expect("the orphan-pts-master hook carries the master");
    // The restored task has the same terminal back, as stdio and controlling tty...
    for fd in 0..3 {
        assert_eq!(common::fd_link(out.pid, fd), slave_path);
    }
    assert_ne!(
        common::tty_nr(out.pid),
        0,
        "the pty should be the ctty again"
    );
    // ...and what it writes arrives through the master criu handed us.
    let mut console = common::TickReader::new(new_master);
    assert_ticks_continue(&mut console, last_before).await;
    restored.assert_alive_and_intact();
    // Kill the restored task before its console goes: a closed master hangs it up.
    drop(restored);
    drop(console);
    common::assert_no_criu_left().await;
}

/// Records each hook criu passes through, with the pid it carries.
fn hook_recorder(
    seen: &mut Vec<(String, Option<i32>)>,
) -> impl FnMut(Notification) -> std::future::Ready<Reply> + Send + '_ {
    |n: Notification| {
        seen.push((n.name().to_owned(), n.pid()));
        std::future::ready(Reply::ok())
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn pid_namespace_restore_while_the_original_runs() {
    let env = common::env();
    let target = env.ns_workload(16);
    let images = env.subdir("images");
    env.criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&images)
                .leave_running(true),
        )
        .await
        .unwrap();
    target.assert_alive_and_intact();

    let mut seen = Vec::new();
    let out = env
        .criu
        .restore_with(
            RestoreOptions::new().images_dir(&images),
            &mut hook_recorder(&mut seen),
        )
        .await
        .unwrap();
    let restored = target.restored(out.pid);
    assert_ne!(out.pid, target.pid, "the copy needs a pid of its own");
    // criu's restore order for a tree with namespaces of its own; the pid is the
    // restored root's, as seen from here.
    let pid = Some(out.pid);
    assert_eq!(
        seen,
        [
            ("pre-restore".to_owned(), None),
            ("setup-namespaces".to_owned(), pid),
            ("post-setup-namespaces".to_owned(), None),
            ("post-restore".to_owned(), pid),
            ("pre-resume".to_owned(), None),
            ("post-resume".to_owned(), None),
        ]
    );
    assert_eq!(
        common::ns_pids(out.pid),
        [out.pid, 1],
        "the copy should be init of a new PID namespace"
    );
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/pid", out.pid)).unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/pid", target.pid)).unwrap(),
        "the copy should not share the original's PID namespace"
    );
    // Both run on, each with its memory intact.
    target.assert_alive_and_intact();
    restored.assert_alive_and_intact();
    drop(restored);
    drop(target);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn two_restores_of_the_same_images_side_by_side() {
    let env = common::env();
    let mut target = env.ns_workload(16);
    let images = env.subdir("images");
    env.criu
        .dump(DumpOptions::new(target.pid).images_dir(&images))
        .await
        .unwrap();
    target.reap_dumped();

    // Two criu processes restore from the same images at once; each logs to a file
    // in its own work directory.
    let (work_a, work_b) = (env.subdir("work-a"), env.subdir("work-b"));
    let restore = |work| {
        RestoreOptions::new()
            .images_dir(&images)
            .work_dir(work)
            .log_file("restore.log")
    };
    let (a, b) = tokio::join!(
        env.criu.restore(restore(&work_a)),
        env.criu.restore(restore(&work_b)),
    );
    // Wrapped before either is unwrapped: one failing still kills the other.
    let a = a.map(|out| target.restored(out.pid));
    let b = b.map(|out| target.restored(out.pid));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.pid, b.pid);
    assert!(work_a.join("restore.log").exists() && work_b.join("restore.log").exists());
    // Each copy is the init of a PID namespace of its own.
    assert_eq!(common::ns_pids(a.pid), [a.pid, 1]);
    assert_eq!(common::ns_pids(b.pid), [b.pid, 1]);
    assert_ne!(
        std::fs::read_link(format!("/proc/{}/ns/pid", a.pid)).unwrap(),
        std::fs::read_link(format!("/proc/{}/ns/pid", b.pid)).unwrap(),
    );
    a.assert_alive_and_intact();
    b.assert_alive_and_intact();
    // Killing one leaves the other running.
    drop(a);
    b.assert_alive_and_intact();
    drop(b);
    common::assert_no_criu_left().await;
}

/// Asserts the next three tick lines on `reader` count on from `last_before`.
async fn assert_ticks_continue(reader: &mut common::TickReader, last_before: u64) {
    let after = reader.ticks(3, TICK_WAIT).await.unwrap();
    assert!(
        after[0] > last_before,
        "ticks after the restore {after:?} should continue after {last_before}"
    );
    assert!(after.windows(2).all(|w| w[0] < w[1]), "{after:?}");
}
