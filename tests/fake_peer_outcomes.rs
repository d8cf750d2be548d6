//! What an interrupted or failed request reports, and leaves behind, at each moment of
//! criu's exchange: before the seize point, between the hooks, past the commit point;
//! for dumps (their images included) and restores (their restored tree included).
//! Against the in-process fake criu; no root.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::oneshot;

use criu_swrk::proto::CriuReqType;
use criu_swrk::{
    CancellationToken, DumpOptions, Error, Notification, Reply, RequestState, RestoreOptions,
};

mod fake;
use fake::*;

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

/// Writes files as criu writes images, into the directory behind the request's fd.
fn write_images(images_dir_fd: i32, files: &[&str]) {
    let dir = dir_of_fd(images_dir_fd);
    for f in files {
        std::fs::write(dir.join(f), b"image").unwrap();
    }
}

/// Hooks that answer every notification with success, except that reaching `at`
/// sends on `reached` and then never answers.
fn stuck_at(at: &'static str, reached: oneshot::Sender<()>) -> impl criu_swrk::Hooks {
    let mut reached = Some(reached);
    move |n: Notification| {
        let stuck = n.name() == at;
        if stuck && let Some(tx) = reached.take() {
            let _ = tx.send(());
        }
        async move {
            if stuck {
                std::future::pending::<()>().await;
            }
            Reply::ok()
        }
    }
}

/// A process standing in for a restored tree's root: ours, so the test can see it die.
fn stand_in_root() -> std::process::Child {
    Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("sleep")
}

/// Waits up to 5 s for `child` to exit; its status, or `None` if it still runs.
async fn exit_of(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    for _ in 0..500 {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    None
}

// ---------------------------------------------------------------------------------
// Dumps
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_cancel_right_after_post_dump_lets_the_committed_dump_finish() {
    let dir = images_dir();
    let token = CancellationToken::new();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        assert_eq!(p.notify("pre-dump", None).await.notify_success, Some(true));
        write_images(req.opts.unwrap().images_dir_fd, &["inventory.img"]);
        assert_eq!(p.notify("post-dump", None).await.notify_success, Some(true));
        // The caller cancels now; criu, committed, kills the tree and answers.
        tokio::time::sleep(Duration::from_millis(50)).await;
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let cancel = token.clone();
    let mut hooks = move |n: Notification| {
        if n.name() == "post-dump" {
            // Fires as post-dump is answered with success: the commit point.
            cancel.cancel();
        }
        std::future::ready(Reply::ok())
    };
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .cancel_on(token.clone());
    let out = within("dump", session.dump_with(opts, &mut hooks))
        .await
        .expect("a committed dump is not reported as cancelled");
    finish(peer).await;
    assert!(token.is_cancelled());
    assert_eq!(out.pid, TARGET);
    assert_eq!(names(dir.path()), ["inventory.img"], "the images stay");
}

#[tokio::test]
async fn a_cancel_while_pre_dump_is_pending_stops_criu_before_it_seizes_anything() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.send(&notification("pre-dump", None)).await;
        // No answer: criu is stopped (here: its socket closed) while it waits.
        p.expect_closed().await;
        p
    });
    let token = CancellationToken::new();
    let (reached_tx, reached) = oneshot::channel();
    let mut hooks = stuck_at("pre-dump", reached_tx);
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .cancel_on(token.clone());
    let dump = session.dump_with(opts, &mut hooks);
    let cancel = async {
        within("pre-dump", reached).await.unwrap();
        token.cancel();
    };
    let (res, ()) = within("dump", futures::future::join(dump, cancel)).await;
    let peer = finish(peer).await;
    assert!(peer.answers().is_empty());
    match res.unwrap_err() {
        Error::Cancelled { at, .. } => {
            assert_eq!(at.state, RequestState::Untouched);
            assert_eq!(at.hook.as_deref(), Some("pre-dump"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn criu_gone_after_seizing_is_exited_with_an_unknown_state() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        p.close();
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let err = within("dump", session.dump(opts)).await.unwrap_err();
    finish(peer).await;
    match &err {
        Error::Exited { at, .. } => assert_eq!(at.state, RequestState::Unknown),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("parasite"), "{err}");
}

#[tokio::test]
async fn a_refused_dump_leaves_no_images_behind() {
    let dir = images_dir();
    std::fs::write(dir.path().join("notes.txt"), "the caller's").unwrap();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        write_images(
            req.opts.unwrap().images_dir_fd,
            &["pstree.img", "pages-1.img"],
        );
        p.send(&refused(CriuReqType::Dump, 0, "Dumping FAILED."))
            .await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let err = within("dump", session.dump(opts)).await.unwrap_err();
    finish(peer).await;
    assert!(err.is_refused(), "{err:?}");
    assert_eq!(names(dir.path()), ["notes.txt"]);
}

#[tokio::test]
async fn a_dump_rolled_back_at_post_dump_leaves_no_images_but_its_log() {
    // At post-dump every image is written, inventory.img included: the directory
    // would look like a complete dump of a tree that runs on.
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        let opts = req.opts.unwrap();
        assert_eq!(opts.log_file.as_deref(), Some("dump.log"));
        p.notify("pre-dump", None).await;
        write_images(
            opts.images_dir_fd,
            &["inventory.img", "pages-1.img", "dump.log"],
        );
        p.expect_rollback_at("post-dump").await;
        p
    });
    let mut hooks = |n: Notification| {
        std::future::ready(match n {
            Notification::PostDump => Reply::fail("shipping failed"),
            _ => Reply::ok(),
        })
    };
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .log_file("dump.log");
    let err = within("dump", session.dump_with(opts, &mut hooks))
        .await
        .unwrap_err();
    finish(peer).await;
    assert!(err.is_hook(), "{err:?}");
    assert_eq!(names(dir.path()), ["dump.log"]);
}

#[tokio::test]
async fn a_committed_dump_keeps_its_images() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        write_images(
            req.opts.unwrap().images_dir_fd,
            &["inventory.img", "pages-1.img"],
        );
        p.notify("post-dump", None).await;
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    within("dump", session.dump(opts)).await.unwrap();
    finish(peer).await;
    assert_eq!(names(dir.path()), ["inventory.img", "pages-1.img"]);
}

#[tokio::test]
async fn a_dump_into_a_directory_holding_a_dump_is_refused_before_criu_hears_of_it() {
    let dir = restore_images();
    let (session, peer) = fake(|mut p| async move {
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let err = within("dump", session.dump(opts)).await.unwrap_err();
    let peer = finish(peer).await;
    assert!(peer.received.is_empty());
    assert!(
        matches!(
            &err,
            Error::InvalidOptions {
                option: "images_dir",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("already holds a dump"), "{err}");
    assert_eq!(
        names(dir.path()),
        ["inventory.img"],
        "the old dump is untouched"
    );
}

#[tokio::test]
async fn a_staged_dump_appears_under_its_name_at_the_commit_point() {
    let root = images_dir();
    let target = root.path().join("ckpt");
    let seen_target = target.clone();
    let (session, peer) = fake(move |mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        let fd = req.opts.unwrap().images_dir_fd;
        let staging = dir_of_fd(fd);
        let name = staging.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(".ckpt.partial-"), "{name}");
        p.notify("pre-dump", None).await;
        write_images(fd, &["inventory.img"]);
        assert!(
            !seen_target.exists(),
            "not under its name before the commit"
        );
        assert_eq!(p.notify("post-dump", None).await.notify_success, Some(true));
        // Published as post-dump is answered, before criu's final answer.
        let published = async {
            while !seen_target.join("inventory.img").exists() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        within("publication", published).await;
        // criu goes on writing through its directory fd (stats, here).
        std::fs::write(dir_of_fd(fd).join("stats-dump"), b"").unwrap();
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(&target).staged(true);
    let out = within("dump", session.dump(opts)).await.unwrap();
    finish(peer).await;
    assert_eq!(
        out.images_dir.as_deref(),
        Some(canonical(&target).as_path())
    );
    assert_eq!(names(&target), ["inventory.img", "stats-dump"]);
    assert_eq!(names(root.path()), ["ckpt"], "no staging directory left");
}

#[tokio::test]
async fn a_staged_dump_that_is_rolled_back_leaves_nothing() {
    let root = images_dir();
    let target = root.path().join("ckpt");
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        write_images(req.opts.unwrap().images_dir_fd, &["inventory.img"]);
        p.expect_rollback_at("post-dump").await;
        p
    });
    let mut hooks = |n: Notification| {
        std::future::ready(match n {
            Notification::PostDump => Reply::fail("veto"),
            _ => Reply::ok(),
        })
    };
    let opts = DumpOptions::new(TARGET).images_dir(&target).staged(true);
    let err = within("dump", session.dump_with(opts, &mut hooks))
        .await
        .unwrap_err();
    finish(peer).await;
    assert!(err.is_hook());
    assert!(names(root.path()).is_empty(), "{:?}", names(root.path()));
}

// ---------------------------------------------------------------------------------
// Restores
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_timeout_past_post_restore_returns_the_restored_pid() {
    let dir = restore_images();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Restore).await;
        p.notify("pre-restore", None).await;
        p.notify("post-restore", Some(RESTORED)).await;
        // The caller's pre-resume hook hangs past the timeout: the wind-down agrees
        // to it, since the tree runs whatever it says.
        assert_eq!(
            p.notify("pre-resume", None).await.notify_success,
            Some(true)
        );
        assert_eq!(
            p.notify("post-resume", None).await.notify_success,
            Some(true)
        );
        p.send(&restore_resp(RESTORED)).await;
        p.expect_closed().await;
        p
    });
    let (reached_tx, _reached) = oneshot::channel();
    let mut hooks = stuck_at("pre-resume", reached_tx);
    let opts = RestoreOptions::new()
        .images_dir(dir.path())
        .timeout(Duration::from_millis(200));
    let out = within("restore", session.restore_with(opts, &mut hooks))
        .await
        .expect("a committed restore returns its outcome");
    let peer = finish(peer).await;
    assert_eq!(out.pid, RESTORED);
    assert_eq!(peer.answers(), [true, true, true, true]);
}

#[tokio::test]
async fn a_timeout_before_post_restore_rolls_the_restore_back_and_names_the_pid() {
    let dir = restore_images();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Restore).await;
        p.notify("pre-restore", None).await;
        let answer = p.notify("setup-namespaces", Some(RESTORED)).await;
        assert_eq!(answer.notify_success, Some(false));
        p.send(&refused(CriuReqType::Restore, 0, "Restoring FAILED."))
            .await;
        p.expect_closed().await;
        p
    });
    let (reached_tx, _reached) = oneshot::channel();
    let mut hooks = stuck_at("setup-namespaces", reached_tx);
    let opts = RestoreOptions::new()
        .images_dir(dir.path())
        .timeout(Duration::from_millis(200));
    let err = within("restore", session.restore_with(opts, &mut hooks))
        .await
        .unwrap_err();
    finish(peer).await;
    match err {
        Error::Timeout { at, .. } => {
            assert_eq!(at.state, RequestState::RolledBack);
            assert_eq!(at.hook.as_deref(), Some("setup-namespaces"));
            assert_eq!(at.pid, Some(RESTORED));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_restore_dropped_past_post_restore_has_its_tree_killed() {
    let dir = restore_images();
    let mut root = stand_in_root();
    let pid = root.id() as i32;
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Restore).await;
        p.notify("pre-restore", None).await;
        p.notify("post-restore", Some(pid)).await;
        assert_eq!(
            p.notify("pre-resume", None).await.notify_success,
            Some(true)
        );
        p.send(&restore_resp(pid)).await;
        p.expect_closed().await;
        p
    });
    let (reached_tx, reached) = oneshot::channel();
    let restore = tokio::spawn(async move {
        let mut hooks = stuck_at("pre-resume", reached_tx);
        let opts = RestoreOptions::new().images_dir(dir.path());
        session.restore_with(opts, &mut hooks).await
    });
    within("pre-resume", reached).await.unwrap();
    restore.abort();
    finish(peer).await;
    let status = exit_of(&mut root)
        .await
        .expect("the restored tree was killed");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(nix::libc::SIGKILL));
}

#[tokio::test]
async fn a_restore_dropped_before_post_restore_is_left_to_criu_to_undo() {
    let dir = restore_images();
    let mut root = stand_in_root();
    let pid = root.id() as i32;
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Restore).await;
        p.notify("pre-restore", None).await;
        p.send(&notification("setup-namespaces", Some(pid))).await;
        let answer = p.expect_answer().await;
        assert_eq!(answer.notify_success, Some(false));
        p.send(&refused(CriuReqType::Restore, 0, "Restoring FAILED."))
            .await;
        p.expect_closed().await;
        p
    });
    let (reached_tx, reached) = oneshot::channel();
    let restore = tokio::spawn(async move {
        let mut hooks = stuck_at("setup-namespaces", reached_tx);
        let opts = RestoreOptions::new().images_dir(dir.path());
        session.restore_with(opts, &mut hooks).await
    });
    within("setup-namespaces", reached).await.unwrap();
    restore.abort();
    finish(peer).await;
    // criu kills what it restored on a rollback; the driver does not.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(root.try_wait().unwrap().is_none(), "killed by the driver");
    root.kill().unwrap();
    root.wait().unwrap();
}

/// A restore whose hook `failing` is answered with failure, against a peer that, as
/// criu does for the resume hooks (cr-restore.c), goes on regardless.
async fn restore_failing_at(failing: &'static str) {
    let dir = restore_images();
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Restore).await;
        p.notify("pre-restore", None).await;
        p.notify("post-restore", Some(RESTORED)).await;
        for hook in ["pre-resume", "post-resume"] {
            let answer = p.notify(hook, None).await.notify_success;
            assert_eq!(answer, Some(hook != failing), "{hook}");
        }
        p.send(&restore_resp(RESTORED)).await;
        p.expect_closed().await;
        p
    });
    let mut hooks = move |n: Notification| {
        std::future::ready(if n.name() == failing {
            Reply::fail("too late to matter")
        } else {
            Reply::ok()
        })
    };
    let opts = RestoreOptions::new().images_dir(dir.path());
    let out = within("restore", session.restore_with(opts, &mut hooks))
        .await
        .expect("criu went on: the restore succeeded");
    finish(peer).await;
    assert_eq!(out.pid, RESTORED);
}

#[tokio::test]
async fn a_failed_pre_resume_hook_does_not_fail_the_restore() {
    // criu ignores a failed pre-resume (cr-restore.c): the tree runs, so the restore
    // succeeded, whatever the hook said.
    restore_failing_at("pre-resume").await;
}

#[tokio::test]
async fn a_failed_post_resume_hook_does_not_fail_the_restore() {
    // criu ignores a failed post-resume too: the tree runs on.
    restore_failing_at("post-resume").await;
}

#[tokio::test]
async fn a_failed_network_unlock_hook_does_not_fail_the_dump() {
    // criu ignores a failed network-unlock (it comes after the dump is written): the
    // dump went through, and the outcome says so.
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        p.notify("network-lock", None).await;
        p.notify("post-dump", None).await;
        assert_eq!(
            p.notify("network-unlock", None).await.notify_success,
            Some(false)
        );
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let mut hooks = |n: Notification| {
        std::future::ready(match n {
            Notification::NetworkUnlock => Reply::fail("the firewall is gone"),
            _ => Reply::ok(),
        })
    };
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let out = within("dump", session.dump_with(opts, &mut hooks))
        .await
        .expect("criu went on: the dump succeeded");
    finish(peer).await;
    assert_eq!(out.pid, TARGET);
}

#[tokio::test]
async fn a_dropped_restore_never_kills_a_process_that_is_not_its_tree() {
    // A peer naming someone else's process as the restored root (a mistake, or
    // worse): not a child of criu nor ours, so the drop leaves it alone.
    let out = Command::new("sh")
        .args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
        .output()
        .expect("sh");
    let stranger: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    let dir = restore_images();
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Restore).await;
        p.notify("pre-restore", None).await;
        p.notify("post-restore", Some(stranger)).await;
        p.notify("pre-resume", None).await;
        p.send(&restore_resp(stranger)).await;
        p.expect_closed().await;
        p
    });
    let (reached_tx, reached) = oneshot::channel();
    let restore = tokio::spawn(async move {
        let mut hooks = stuck_at("pre-resume", reached_tx);
        let opts = RestoreOptions::new().images_dir(dir.path());
        session.restore_with(opts, &mut hooks).await
    });
    within("pre-resume", reached).await.unwrap();
    restore.abort();
    finish(peer).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Alive, not a zombie (this machine's init reaps late).
    let alive = std::fs::read_to_string(format!("/proc/{stranger}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(") ")
            .is_some_and(|(_, r)| r.starts_with('Z'))
    });
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stranger),
        nix::sys::signal::Signal::SIGKILL,
    );
    assert!(
        alive,
        "the driver killed pid {stranger}, which criu never restored"
    );
}

#[tokio::test]
async fn a_criu_silent_to_the_version_asked_first_still_ends_within_the_timeout() {
    // leave_stopped needs criu 3.19: the driver asks criu's version before the dump,
    // and that question is bounded by the dump's own timeout.
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Version).await;
        p.expect_closed().await;
        p
    });
    let started = std::time::Instant::now();
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .leave_stopped(true)
        .timeout(Duration::from_millis(100));
    let err = within("dump", session.dump(opts)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    finish(peer).await;
    match err {
        Error::Timeout { request, at, .. } => {
            assert_eq!(request, criu_swrk::RequestKind::Dump);
            assert_eq!(at.state, RequestState::Untouched);
        }
        other => panic!("{other:?}"),
    }
}
