//! The driver against an in-process fake criu over a socketpair: every request type,
//! every notification, hook failures, malformed and silent peers, cancellation and
//! refusals. No root, no criu.
//!
//! The fake peer is the other end of `UnixSeqpacket::pair()`, run as a Tokio task from
//! a script. It behaves as criu's `cr-service.c` does (one request per datagram,
//! notifications as `criu_resp` of type NOTIFY, a final answer of the request's type)
//! and records every request it received, so each test asserts both on what the API
//! returned and on what the driver put on the wire.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tokio::sync::oneshot;
use tokio_seqpacket::UnixSeqpacket;

use criu_swrk::notify::{self, HOOK_NAMES};
use criu_swrk::proto::{
    CriuFeatures, CriuReq, CriuReqType, CriuResp, DumpStatsEntry, RestoreStatsEntry, StatsEntry,
};
use criu_swrk::{
    CheckOptions, CpuinfoOptions, DumpOptions, Error, Hooks, Notification, PreDumpOptions, Reply,
    RequestKind, RequestState, RestoreOptions, Session, Version,
};

mod fake;
use fake::*;

// ---------------------------------------------------------------------------------
// 1. Every request type
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn version_queries_share_one_session_through_keep_open() {
    let (mut session, peer) = fake(|mut p| async move {
        for minor in [1, 2, 3] {
            p.expect(CriuReqType::Version).await;
            p.send(&version_resp(4, minor, 1)).await;
        }
        p.expect_closed().await;
        p
    });
    let mut versions = Vec::new();
    for _ in 0..3 {
        versions.push(within("version", session.version()).await);
    }
    assert_eq!(session.close().await, None, "no child to reap");
    let peer = finish(peer).await;
    let v: Vec<Version> = versions.into_iter().map(Result::unwrap).collect();

    // Each answer went to its own query, in order, and compares as a version.
    assert_eq!(v[0], Version::new(4, 1, 1));
    assert_eq!(v[1], Version::new(4, 2, 1));
    assert_eq!(v[2], Version::new(4, 3, 1));
    assert!(v[0] < v[1] && v[1] < v[2]);
    assert!(v[1] > Version::new(4, 1, 9) && v[1] < Version::new(4, 2, 2));
    assert!(v[1].at_least(4, 2) && !v[1].at_least(4, 3) && v[1].at_least(3, 17));
    assert_eq!(v[1].to_string(), "4.2.1");
    assert_eq!(v[1].gitid.as_deref(), Some("v4.2-7-gdeadbeef"));
    assert_eq!(v[1].name.as_deref(), Some("CRIUsalem"));

    assert_eq!(peer.types(), vec![CriuReqType::Version; 3]);
    for req in &peer.received {
        assert_eq!(
            req.keep_open,
            Some(true),
            "a query must keep criu open: {req:?}"
        );
    }
}

#[tokio::test]
async fn features_asks_for_everything_and_returns_criu_s_answer() {
    let (mut session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::FeatureCheck).await;
        p.send(&features_resp(false)).await;
        // Still open: a second query on the same criu.
        p.expect(CriuReqType::Version).await;
        p.send(&version_resp(4, 2, 0)).await;
        p.expect_closed().await;
        p
    });
    let features = within("features", session.features()).await;
    let version = within("version", session.version()).await;
    session.close().await;
    let peer = finish(peer).await;

    let f = features.unwrap();
    // The request asked for all three; criu's answer differs from it in two places.
    assert!(
        !f.mem_track,
        "mem_track is criu's false, not the request's true"
    );
    assert!(f.lazy_pages);
    assert!(!f.pidfd_store, "a feature criu did not answer for is false");
    assert_eq!(version.unwrap(), Version::new(4, 2, 0));

    assert_eq!(
        peer.types(),
        vec![CriuReqType::FeatureCheck, CriuReqType::Version]
    );
    let req = &peer.received[0];
    assert_eq!(req.keep_open, Some(true));
    assert_eq!(
        req.features,
        Some(CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(true),
            pidfd_store: Some(true),
        }),
        "the driver must ask for every feature"
    );
}

#[tokio::test]
async fn check_sends_one_check_request() {
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Check).await;
        p.send(&resp(CriuReqType::Check, true)).await;
        p.expect_closed().await;
        p
    });
    let res = within("check", session.check(CheckOptions::new())).await;
    let peer = finish(peer).await;
    res.unwrap();
    assert_eq!(peer.types(), vec![CriuReqType::Check]);
    let req = &peer.received[0];
    assert_ne!(req.keep_open, Some(true), "CHECK ends criu");
    let opts = req.opts.as_ref().expect("CHECK carries options");
    assert_eq!(opts.log_level, Some(2), "criu's own default level");
}

#[tokio::test]
async fn dump_sends_its_options_answers_hooks_and_reads_stats() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        let opts = req.opts.clone().expect("DUMP carries options");
        // As criu does: find the images directory through the client's fd table.
        let images = dir_of_fd(opts.images_dir_fd);
        assert_eq!(p.notify("pre-dump", None).await.notify_success, Some(true));
        assert_eq!(
            p.notify("network-lock", None).await.notify_success,
            Some(true)
        );
        assert_eq!(p.notify("post-dump", None).await.notify_success, Some(true));
        let entry = StatsEntry {
            dump: Some(DumpStatsEntry {
                freezing_time: 1500,
                frozen_time: 20_000,
                pages_scanned: 5000,
                pages_written: 4096,
                ..Default::default()
            }),
            restore: None,
        };
        write_stats(&images, "stats-dump", &entry);
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .leave_running(true)
        .tcp_established(true);
    let mut hooks = Recorder::default();
    let res = within("dump", session.dump_with(opts, &mut hooks)).await;
    let peer = finish(peer).await;
    let out = res.unwrap();

    assert_eq!(out.pid, TARGET);
    assert_eq!(out.images_dir, Some(canonical(dir.path())));
    assert_eq!(out.log, None, "criu logs to our pipe unless told otherwise");
    let stats = out.stats.expect("the stats the fake wrote");
    assert_eq!(stats.frozen_time, Duration::from_millis(20));
    assert_eq!(stats.freezing_time, Duration::from_micros(1500));
    assert_eq!(stats.pages_written, 4096);
    let names: Vec<_> = hooks.seen.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["pre-dump", "network-lock", "post-dump"]);

    assert_eq!(
        peer.types(),
        [
            CriuReqType::Dump,
            CriuReqType::Notify,
            CriuReqType::Notify,
            CriuReqType::Notify
        ]
    );
    let opts = peer.received[0].opts.as_ref().unwrap();
    assert_eq!(opts.pid, Some(TARGET));
    assert_eq!(
        opts.notify_scripts,
        Some(true),
        "hooks are the rollback point"
    );
    assert_eq!(opts.leave_running, Some(true));
    assert_eq!(opts.tcp_established, Some(true));
    assert_eq!(opts.log_file, None);
    assert_eq!(opts.log_to_stderr, Some(true));
    assert_eq!(opts.log_level, Some(2));
    assert_ne!(peer.received[0].keep_open, Some(true));
    // Notify answers carry no options when there is nothing to declare.
    assert!(peer.received[1..].iter().all(|r| r.opts.is_none()));
}

#[tokio::test]
async fn restore_returns_the_restored_pid() {
    let dir = restore_images();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Restore).await;
        let images = dir_of_fd(req.opts.as_ref().unwrap().images_dir_fd);
        p.notify("pre-restore", None).await;
        p.notify("setup-namespaces", Some(RESTORED)).await;
        p.notify("post-setup-namespaces", None).await;
        p.notify("post-restore", Some(RESTORED)).await;
        p.notify("pre-resume", None).await;
        p.notify("post-resume", None).await;
        let entry = StatsEntry {
            dump: None,
            restore: Some(RestoreStatsEntry {
                pages_compared: 3,
                pages_skipped_cow: 2,
                forking_time: 700,
                restore_time: 9000,
                pages_restored: Some(8192),
            }),
        };
        write_stats(&images, "stats-restore", &entry);
        p.send(&restore_resp(RESTORED)).await;
        p.expect_closed().await;
        p
    });
    let mut hooks = Recorder::default();
    let opts = RestoreOptions::new()
        .images_dir(dir.path())
        .rst_sibling(true);
    let res = within("restore", session.restore_with(opts, &mut hooks)).await;
    let peer = finish(peer).await;
    let out = res.unwrap();

    assert_eq!(out.pid, RESTORED);
    assert_eq!(out.log, None);
    let stats = out.stats.expect("the stats the fake wrote");
    assert_eq!(stats.restore_time, Duration::from_millis(9));
    assert_eq!(stats.pages_restored, Some(8192));
    let pids: Vec<_> = hooks.seen.iter().map(|s| (s.variant, s.pid)).collect();
    assert_eq!(
        pids,
        [
            ("PreRestore", None),
            ("SetupNamespaces", Some(RESTORED)),
            ("PostSetupNamespaces", None),
            ("PostRestore", Some(RESTORED)),
            ("PreResume", None),
            ("PostResume", None),
        ]
    );
    assert_eq!(peer.types()[0], CriuReqType::Restore);
    assert_eq!(peer.answers(), [true; 6]);
    let opts = peer.received[0].opts.as_ref().unwrap();
    assert_eq!(opts.rst_sibling, Some(true));
    assert_eq!(opts.notify_scripts, Some(true));
    assert_eq!(opts.log_file, None);
    assert_eq!(opts.log_to_stderr, Some(true));
}

#[tokio::test]
async fn restore_answer_without_a_pid_is_a_protocol_error() {
    let dir = restore_images();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Restore).await;
        p.send(&resp(CriuReqType::Restore, true)).await;
        p.expect_closed().await;
        p
    });
    let res = within(
        "restore",
        session.restore(RestoreOptions::new().images_dir(dir.path())),
    )
    .await;
    finish(peer).await;
    let err = res.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    assert!(err.to_string().contains("restored pid"), "{err}");
}

#[tokio::test]
async fn single_pre_dump_checks_mem_track_first_on_the_same_criu() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        let fc = p.expect(CriuReqType::FeatureCheck).await;
        assert_eq!(fc.keep_open, Some(true), "criu must stay for the pre-dump");
        p.send(&features_resp(true)).await;
        p.expect(CriuReqType::SinglePreDump).await;
        p.notify("pre-dump", None).await;
        // criu answers a SINGLE_PRE_DUMP with its own type.
        p.send(&resp(CriuReqType::SinglePreDump, true)).await;
        p.expect_closed().await;
        p
    });
    let opts = PreDumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("single pre-dump", session.single_pre_dump(opts)).await;
    let peer = finish(peer).await;
    let out = res.unwrap();
    assert_eq!(out.pid, TARGET);
    assert_eq!(out.log, None);
    assert!(out.stats.is_err(), "the fake wrote no stats");
    assert_eq!(
        peer.types(),
        [
            CriuReqType::FeatureCheck,
            CriuReqType::SinglePreDump,
            CriuReqType::Notify
        ]
    );
    let opts = peer.received[1].opts.as_ref().unwrap();
    assert_eq!(opts.pid, Some(TARGET));
    assert_eq!(opts.log_to_stderr, Some(true));
}

#[tokio::test]
async fn pre_dump_loop_runs_n_pre_dumps_then_a_dump_on_one_connection() {
    const N: usize = 3;
    let root = images_dir();
    let dirs: Vec<PathBuf> = (0..=N)
        .map(|i| {
            let d = root.path().join(format!("{i}"));
            std::fs::create_dir(&d).unwrap();
            d
        })
        .collect();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::FeatureCheck).await;
        p.send(&features_resp(true)).await;
        loop {
            let req = p.recv().await.expect("a PRE_DUMP or the DUMP");
            match req.r#type() {
                CriuReqType::PreDump => {
                    p.notify("pre-dump", None).await;
                    p.send(&resp(CriuReqType::PreDump, true)).await;
                }
                CriuReqType::Dump => {
                    p.notify("pre-dump", None).await;
                    p.notify("post-dump", None).await;
                    p.send(&resp(CriuReqType::Dump, true)).await;
                    break;
                }
                other => {
                    // What criu does with anything else in the loop.
                    p.send(&refused(CriuReqType::Empty, 0, "Bad req seq")).await;
                    panic!("unexpected {other:?} in the pre-dump loop");
                }
            }
        }
        p.expect_closed().await;
        p
    });

    let first = PreDumpOptions::new(TARGET).images_dir(&dirs[0]);
    let mut lp = within("first pre-dump", session.pre_dump(first))
        .await
        .unwrap();
    assert_eq!(lp.iterations(), 1);
    for (i, dir) in dirs.iter().enumerate().take(N).skip(1) {
        let opts = PreDumpOptions::new(TARGET)
            .images_dir(dir)
            .parent_images(format!("../{}", i - 1));
        let out = within("pre-dump", lp.pre_dump(opts)).await.unwrap();
        assert_eq!(out.images_dir, Some(canonical(dir)));
        assert_eq!(lp.iterations() as usize, i + 1);
    }
    let last = DumpOptions::new(TARGET)
        .images_dir(&dirs[N])
        .parent_images(format!("../{}", N - 1));
    let res = within("final dump", lp.dump(last)).await;
    let peer = finish(peer).await;
    let out = res.unwrap();
    assert_eq!(out.images_dir, Some(canonical(&dirs[N])));

    let requests: Vec<_> = peer
        .types()
        .into_iter()
        .filter(|t| *t != CriuReqType::Notify)
        .collect();
    let mut expected = vec![CriuReqType::FeatureCheck];
    expected.extend([CriuReqType::PreDump; N]);
    expected.push(CriuReqType::Dump);
    assert_eq!(requests, expected);
    assert!(peer.answers().iter().all(|ok| *ok));

    let parents: Vec<_> = peer
        .received
        .iter()
        .filter(|r| matches!(r.r#type(), CriuReqType::PreDump | CriuReqType::Dump))
        .map(|r| r.opts.as_ref().unwrap().parent_img.clone())
        .collect();
    assert_eq!(
        parents,
        [
            None,
            Some("../0".into()),
            Some("../1".into()),
            Some("../2".into())
        ]
    );
}

#[tokio::test]
async fn pre_dumps_are_refused_as_unsupported_without_mem_track() {
    for single in [false, true] {
        let dir = images_dir();
        let (session, peer) = fake(|mut p| async move {
            p.expect(CriuReqType::FeatureCheck).await;
            p.send(&features_resp(false)).await;
            p.expect_closed().await;
            p
        });
        let opts = PreDumpOptions::new(TARGET).images_dir(dir.path());
        let err = if single {
            within("single pre-dump", session.single_pre_dump(opts))
                .await
                .unwrap_err()
        } else {
            within("pre-dump", session.pre_dump(opts))
                .await
                .unwrap_err()
        };
        let peer = finish(peer).await;
        assert!(err.is_unsupported(), "{err:?}");
        assert!(err.to_string().contains("mem_track"), "{err}");
        assert_eq!(
            peer.types(),
            [CriuReqType::FeatureCheck],
            "no pre-dump may reach a criu without memory tracking (single: {single})"
        );
    }
}

// ---------------------------------------------------------------------------------
// 2. Every notification kind
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn all_fourteen_hooks_arrive_in_order_with_their_variant_and_pid() {
    const VARIANTS: [(&str, &str); 14] = [
        ("pre-stream", "PreStream"),
        ("pre-dump", "PreDump"),
        ("post-dump", "PostDump"),
        ("pre-restore", "PreRestore"),
        ("post-restore", "PostRestore"),
        ("network-lock", "NetworkLock"),
        ("network-unlock", "NetworkUnlock"),
        ("setup-namespaces", "SetupNamespaces"),
        ("post-setup-namespaces", "PostSetupNamespaces"),
        ("pre-resume", "PreResume"),
        ("post-resume", "PostResume"),
        ("orphan-pts-master", "OrphanPtsMaster"),
        ("status-ready", "StatusReady"),
        ("query-ext-files", "QueryExtFiles"),
    ];
    assert_eq!(HOOK_NAMES, VARIANTS.map(|(name, _)| name).as_slice());
    let with_pid = |name: &str| matches!(name, "setup-namespaces" | "post-restore");

    let (pipe_r, pipe_w) = std::io::pipe().unwrap();
    let dir = restore_images();
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Restore).await;
        for &name in HOOK_NAMES {
            let pid = with_pid(name).then_some(RESTORED);
            if name == "orphan-pts-master" {
                p.notify_with_fd(name, pid, pipe_w.as_fd()).await;
            } else {
                p.notify(name, pid).await;
            }
        }
        drop(pipe_w);
        p.send(&restore_resp(RESTORED)).await;
        p.expect_closed().await;
        p
    });
    let mut hooks = Recorder::default();
    let opts = RestoreOptions::new()
        .images_dir(dir.path())
        .orphan_pts_master(true);
    let res = within("restore", session.restore_with(opts, &mut hooks)).await;
    let peer = finish(peer).await;
    assert_eq!(res.unwrap().pid, RESTORED);

    let expected: Vec<Seen> = VARIANTS
        .iter()
        .map(|&(name, variant)| Seen {
            name: name.to_owned(),
            variant,
            pid: with_pid(name).then_some(RESTORED),
            had_fd: name == "orphan-pts-master",
        })
        .collect();
    assert_eq!(hooks.seen, expected);
    assert_eq!(
        peer.answers(),
        [true; 14],
        "every hook answered, with success"
    );
    assert_eq!(
        peer.received[0].opts.as_ref().unwrap().orphan_pts_master,
        Some(true)
    );

    // The pts master works: what we write through it comes out at criu's end.
    let master = hooks.fds.pop().expect("the orphan-pts-master fd");
    let mut w = std::fs::File::from(master);
    w.write_all(b"through the master").unwrap();
    drop(w);
    let mut got = String::new();
    // EOF only once every copy of the write end is closed: the driver kept none.
    let mut r = pipe_r;
    r.read_to_string(&mut got).unwrap();
    assert_eq!(got, "through the master");
}

#[tokio::test]
async fn orphan_pts_master_delivers_a_usable_fd() {
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let dir = restore_images();
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Restore).await;
        p.notify_with_fd("orphan-pts-master", None, theirs.as_fd())
            .await;
        drop(theirs);
        p.send(&restore_resp(RESTORED)).await;
        p.expect_closed().await;
        p
    });
    let (mut hooks, mut stream) = notify::channel();
    let restore = tokio::spawn(async move {
        let opts = RestoreOptions::new()
            .images_dir(dir.path())
            .orphan_pts_master(true);
        let res = session.restore_with(opts, &mut hooks).await;
        drop(dir);
        res
    });
    let mut pending = within("orphan-pts-master", stream.next())
        .await
        .expect("a notification");
    let Notification::OrphanPtsMaster { master } = pending.take_notification() else {
        panic!("not an orphan-pts-master notification");
    };
    pending.ok();
    assert!(within("stream end", stream.next()).await.is_none());
    let res = within("restore", restore).await.unwrap();
    let peer = finish(peer).await;
    assert_eq!(res.unwrap().pid, RESTORED);
    assert_eq!(peer.answers(), [true]);

    // Both directions work through the received fd.
    let mut master = std::os::unix::net::UnixStream::from(master);
    let mut mine = mine;
    master.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    mine.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    mine.write_all(b"pong").unwrap();
    master.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

#[tokio::test]
async fn query_ext_files_answer_carries_the_externals() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        p.notify("query-ext-files", None).await;
        p.notify("post-dump", None).await;
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let mut hooks = Recorder {
        externals: vec!["file[1a:2b3c]".into(), "unix[123456]".into()],
        ..Default::default()
    };
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("dump", session.dump_with(opts, &mut hooks)).await;
    let peer = finish(peer).await;
    res.unwrap();

    let answers: Vec<_> = peer
        .received
        .iter()
        .filter(|r| r.r#type() == CriuReqType::Notify)
        .collect();
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(|a| a.notify_success == Some(true)));
    assert!(answers[0].opts.is_none() && answers[2].opts.is_none());
    let ext = &answers[1]
        .opts
        .as_ref()
        .expect("externals in opts")
        .external;
    assert_eq!(ext, &["file[1a:2b3c]", "unix[123456]"]);
}

#[tokio::test]
async fn unknown_hooks_arrive_as_other_and_are_answered() {
    let (pipe_r, pipe_w) = std::io::pipe().unwrap();
    let dir = images_dir();
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-teleport", Some(77)).await;
        p.notify_with_fd("post-teleport", None, pipe_w.as_fd())
            .await;
        drop(pipe_w);
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let mut hooks = Recorder::default();
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("dump", session.dump_with(opts, &mut hooks)).await;
    let peer = finish(peer).await;
    res.unwrap();
    assert_eq!(
        hooks.seen,
        [
            Seen {
                name: "pre-teleport".into(),
                variant: "Other",
                pid: Some(77),
                had_fd: false
            },
            Seen {
                name: "post-teleport".into(),
                variant: "Other",
                pid: None,
                had_fd: true
            },
        ]
    );
    assert_eq!(peer.answers(), [true, true]);
    // The unknown hook's fd is passed through intact.
    let mut w = std::fs::File::from(hooks.fds.pop().unwrap());
    w.write_all(b"x").unwrap();
    drop(w);
    let mut got = Vec::new();
    let mut r = pipe_r;
    r.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"x");
}

// ---------------------------------------------------------------------------------
// 3. Hook failures and the stream API
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_failed_hook_rolls_back_and_names_the_hook() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        let pre = p.notify("pre-dump", None).await;
        assert_eq!(pre.notify_success, Some(true));
        let post = p.notify("post-dump", None).await;
        if post.notify_success == Some(false) {
            // criu rolls back: the tree resumes, the dump fails.
            p.send(&refused(CriuReqType::Dump, 0, "post-dump script failed"))
                .await;
        } else {
            p.send(&resp(CriuReqType::Dump, true)).await;
        }
        p.expect_closed().await;
        p
    });
    let mut hooks = |n: Notification| {
        std::future::ready(match n {
            Notification::PostDump => Reply::fail("images could not be shipped"),
            _ => Reply::ok(),
        })
    };
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("dump", session.dump_with(opts, &mut hooks)).await;
    let peer = finish(peer).await;
    assert_eq!(peer.answers(), [true, false]);
    let err = res.unwrap_err();
    assert!(err.is_hook(), "{err:?}");
    match &err {
        Error::Hook {
            request,
            hook,
            source,
            criu_message,
            ..
        } => {
            assert_eq!(*request, RequestKind::Dump);
            assert_eq!(hook, "post-dump");
            assert_eq!(source.to_string(), "images could not be shipped");
            assert_eq!(criu_message.as_deref(), Some("post-dump script failed"));
        }
        other => panic!("{other:?}"),
    }
    // The message names the hook; the hook's own error is its source, not repeated.
    let text = err.to_string();
    assert!(text.contains("post-dump"), "{text}");
    assert!(!text.contains("images could not be shipped"), "{text}");
    let source = std::error::Error::source(&err).expect("the hook's error as the source");
    assert_eq!(source.to_string(), "images could not be shipped");
}

#[tokio::test]
async fn the_notification_stream_answers_through_pending() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        p.notify("network-lock", None).await;
        p.notify("post-dump", None).await;
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let (mut hooks, mut notifications) = notify::channel();
    let dump = tokio::spawn(async move {
        let opts = DumpOptions::new(TARGET).images_dir(dir.path());
        let res = session.dump_with(opts, &mut hooks).await;
        drop(dir);
        res
    });
    let mut names = Vec::new();
    while let Some(pending) = within("next notification", notifications.next()).await {
        names.push(pending.notification().name().to_owned());
        pending.ok();
    }
    let res = within("dump", dump).await.unwrap();
    let peer = finish(peer).await;
    assert_eq!(res.unwrap().pid, TARGET);
    assert_eq!(names, ["pre-dump", "network-lock", "post-dump"]);
    assert_eq!(peer.answers(), [true, true, true]);
}

#[tokio::test]
async fn a_pending_dropped_unanswered_answers_failure() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        let answer = p.notify("pre-dump", None).await;
        if answer.notify_success == Some(false) {
            p.send(&refused(CriuReqType::Dump, 0, "pre-dump script failed"))
                .await;
        } else {
            p.send(&resp(CriuReqType::Dump, true)).await;
        }
        p.expect_closed().await;
        p
    });
    let (mut hooks, mut notifications) = notify::channel();
    let dump = tokio::spawn(async move {
        let opts = DumpOptions::new(TARGET).images_dir(dir.path());
        let res = session.dump_with(opts, &mut hooks).await;
        drop(dir);
        res
    });
    let pending = within("pre-dump", notifications.next())
        .await
        .expect("a notification");
    assert!(matches!(pending.notification(), Notification::PreDump));
    drop(pending);
    let res = within("dump", dump).await.unwrap();
    let peer = finish(peer).await;
    assert_eq!(peer.answers(), [false]);
    match res.unwrap_err() {
        Error::Hook { hook, source, .. } => {
            assert_eq!(hook, "pre-dump");
            assert!(source.to_string().contains("without an answer"), "{source}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_dropped_notification_stream_answers_failure() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.expect_rollback_at("pre-dump").await;
        p
    });
    let (mut hooks, notifications) = notify::channel();
    drop(notifications);
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("dump", session.dump_with(opts, &mut hooks)).await;
    let peer = finish(peer).await;
    assert_eq!(peer.answers(), [false]);
    let err = res.unwrap_err();
    assert!(err.is_hook(), "{err:?}");
}

// ---------------------------------------------------------------------------------
// 4. Malformed, closing and silent peers
// ---------------------------------------------------------------------------------

/// How long a session waits for a rollback answer in tests whose peer gives none.
const SHORT_GRACE: Duration = Duration::from_millis(100);

#[tokio::test]
async fn garbage_is_a_decode_error() {
    // An over-long varint: no protobuf decoder accepts it.
    let garbage = [0xffu8; 16];
    assert!(CriuResp::decode(&garbage[..]).is_err());
    let (mut session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Version).await;
        p.send_raw(&garbage).await;
        p.expect_closed().await;
        p
    });
    session.set_grace(SHORT_GRACE);
    let res = within("version", session.version()).await;
    let peer = finish(peer).await;
    let err = res.unwrap_err();
    assert!(matches!(err, Error::Decode { len: 16, .. }), "{err:?}");
    assert_eq!(peer.types(), [CriuReqType::Version]);
}

#[tokio::test]
async fn a_truncated_response_is_a_decode_error() {
    let whole = version_resp(4, 2, 1).encode_to_vec();
    let cut = whole[..whole.len() - 5].to_vec();
    assert!(CriuResp::decode(&cut[..]).is_err(), "the cut must break it");
    let len = cut.len();
    let (mut session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Version).await;
        p.send_raw(&cut).await;
        p.expect_closed().await;
        p
    });
    session.set_grace(SHORT_GRACE);
    let res = within("version", session.version()).await;
    finish(peer).await;
    let err = res.unwrap_err();
    match err {
        Error::Decode { len: got, .. } => assert_eq!(got, len),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn an_oversized_response_arrives_whole() {
    let message: String = (0..150 * 1024)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let expected = message.clone();
    let dir = images_dir();
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Dump).await;
        let big = refused(CriuReqType::Dump, 0, &message);
        assert!(big.encoded_len() > 150 * 1024);
        p.send(&big).await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("dump", session.dump(opts)).await;
    finish(peer).await;
    let err = res.unwrap_err();
    let refusal = err.refusal().expect("a refusal");
    assert_eq!(refusal.message.as_deref(), Some(expected.as_str()));
    assert!(err.to_string().contains(&expected));
}

#[tokio::test]
async fn a_response_of_the_wrong_type_is_a_protocol_error() {
    let (mut session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Version).await;
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    // The default grace (30 s) stays: criu has answered, however wrongly, so the error
    // must come at once, not after waiting out the grace for another answer.
    let res = within("version", session.version()).await;
    session.close().await;
    let peer = finish(peer).await;
    assert_eq!(peer.types(), [CriuReqType::Version]);
    let err = res.unwrap_err();
    match &err {
        Error::Protocol { expected, got } => {
            assert!(expected.contains("VERSION"), "{err}");
            assert!(got.contains("DUMP"), "{err}");
        }
        other => panic!("{other:?}"),
    }
    assert!(
        err.to_string()
            .contains("expected a VERSION response, got a DUMP response"),
        "{err}"
    );
}

#[tokio::test]
async fn malformed_notifications_are_protocol_errors_answered_with_failure() {
    let (_pipe_r, pipe_w) = std::io::pipe().unwrap();
    let pipe_w = OwnedFd::from(pipe_w);
    // (hook, pid, with an fd, what the error must mention)
    let cases = [
        ("post-dump", None, true, "no fd with post-dump"),
        (
            "setup-namespaces",
            Some(RESTORED),
            true,
            "no fd with setup-namespaces",
        ),
        (
            "orphan-pts-master",
            None,
            false,
            "an fd with orphan-pts-master",
        ),
        ("post-restore", None, false, "a pid with post-restore"),
    ];
    for (hook, pid, with_fd, mention) in cases {
        let fd = pipe_w.try_clone().unwrap();
        let dir = images_dir();
        let (session, peer) = fake(move |mut p| async move {
            p.expect(CriuReqType::Dump).await;
            let msg = notification(hook, pid);
            if with_fd {
                p.send_with_fd(&msg, fd.as_fd()).await;
            } else {
                p.send(&msg).await;
            }
            // criu waits for an answer to every notification it sends.
            let answer = p.expect_answer().await;
            assert_eq!(answer.notify_success, Some(false), "{hook}");
            p.send(&refused(CriuReqType::Dump, 0, "notify failed"))
                .await;
            p.expect_closed().await;
            p
        });
        let mut hooks = Recorder::default();
        let opts = DumpOptions::new(TARGET).images_dir(dir.path());
        let res = within("dump", session.dump_with(opts, &mut hooks)).await;
        let peer = finish(peer).await;
        let err = res.unwrap_err();
        let state = err.request_state();
        assert!(
            state.is_some_and(RequestState::target_unchanged),
            "{hook}: {state:?}"
        );
        let cause = match &err {
            Error::Aborted { source, .. } => source,
            other => other,
        };
        assert!(matches!(cause, Error::Protocol { .. }), "{hook}: {err:?}");
        assert!(cause.to_string().contains(mention), "{hook}: {err}");
        assert!(
            hooks.seen.is_empty(),
            "{hook}: no hook runs on a bad message"
        );
        assert_eq!(peer.answers(), [false], "{hook}");
    }
}

#[tokio::test]
async fn criu_closing_early_is_exited() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.close();
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("dump", session.dump(opts)).await;
    let peer = finish(peer).await;
    assert_eq!(peer.types(), [CriuReqType::Dump]);
    match res.unwrap_err() {
        Error::Exited {
            request, status, ..
        } => {
            assert_eq!(request, RequestKind::Dump);
            assert_eq!(status, None, "no child was supervised");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn criu_closing_mid_notification_is_exited() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        p.close();
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("dump", session.dump(opts)).await;
    finish(peer).await;
    let err = res.unwrap_err();
    assert!(matches!(err, Error::Exited { .. }), "{err:?}");
    assert!(err.to_string().contains("dump"), "{err}");
}

#[tokio::test]
async fn a_silent_criu_times_out_at_once_since_nothing_was_touched() {
    let dir = images_dir();
    let (mut session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        // Silence: no notification, no answer, until the driver gives up.
        p.expect_closed().await;
        p
    });
    // Before pre-dump nothing is seized: the timeout ends criu at once, whatever the
    // grace.
    session.set_grace(Duration::from_secs(3600));
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .timeout(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let res = within("dump", session.dump(opts)).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let peer = finish(peer).await;
    assert_eq!(peer.types(), [CriuReqType::Dump]);
    let err = res.unwrap_err();
    match &err {
        Error::Timeout { request, after, at } => {
            assert_eq!(*request, RequestKind::Dump);
            assert_eq!(*after, Duration::from_millis(100));
            assert_eq!(at.state, RequestState::Untouched);
            assert_eq!(at.hook, None);
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_timeout());
    assert!(
        err.to_string()
            .contains("stopped before criu touched the target"),
        "{err}"
    );
}

#[tokio::test]
async fn a_criu_silent_after_seizing_is_waited_for_up_to_the_grace_then_unknown() {
    let dir = images_dir();
    let (mut session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        // Busy (seized, writing memory) and never heard of again.
        p.expect_closed().await;
        p
    });
    session.set_grace(SHORT_GRACE);
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .timeout(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let err = within("dump", session.dump(opts)).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= SHORT_GRACE,
        "the grace was not waited for: {took:?}"
    );
    finish(peer).await;
    match &err {
        Error::Timeout { at, .. } => {
            assert_eq!(at.state, RequestState::Unknown);
            assert_eq!(at.hook, None, "no hook was pending");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("parasite"), "{err}");
    assert_eq!(err.request_state(), Some(RequestState::Unknown));
}

#[tokio::test]
async fn a_timeout_during_a_hook_answers_it_with_failure() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        // The hook never finishes: the answer comes from the timeout's rollback.
        p.expect_rollback_at("post-dump").await;
        p
    });
    let (started_tx, started) = oneshot::channel();
    // Stuck at the second hook, post-dump.
    let mut hooks = stuck_after_first(started_tx);
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .timeout(Duration::from_millis(250));
    let res = within("dump", session.dump_with(opts, &mut hooks)).await;
    let peer = finish(peer).await;
    within("hook start", started).await.expect("post-dump ran");
    assert_eq!(peer.answers(), [true, false]);
    match res.unwrap_err() {
        Error::Timeout { at, .. } => {
            assert_eq!(
                at.state,
                RequestState::RolledBack,
                "criu confirmed the rollback"
            );
            assert_eq!(at.hook.as_deref(), Some("post-dump"));
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------
// 5. Drop behaviour
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn dropping_a_dump_while_a_hook_runs_answers_failure_in_the_background() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.expect_rollback_at("post-dump").await;
        p
    });
    let (started_tx, started) = oneshot::channel();
    let dump = tokio::spawn(async move {
        let mut hooks = stuck_hook(started_tx);
        let opts = DumpOptions::new(TARGET).images_dir(dir.path());
        session.dump_with(opts, &mut hooks).await
    });
    let hook = within("the hook to start", started).await.unwrap();
    assert_eq!(hook, "post-dump");
    dump.abort();
    assert!(dump.await.unwrap_err().is_cancelled());
    // The fake peer's script asserts that the failure answer arrives.
    let peer = finish(peer).await;
    assert_eq!(peer.answers(), [false]);
}

#[tokio::test]
async fn dropping_a_dump_before_any_hook_stops_criu_at_once() {
    let dir = images_dir();
    let (sent_tx, sent) = oneshot::channel();
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Dump).await;
        sent_tx.send(()).unwrap();
        // criu is still starting up when the caller gives up: it hears nothing more.
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let mut hooks = Recorder::default();
    let mut dump = Box::pin(session.dump_with(opts, &mut hooks));
    tokio::select! {
        _ = &mut dump => panic!("the dump finished without criu"),
        r = sent => r.unwrap(),
    }
    drop(dump);
    let peer = finish(peer).await;
    assert_eq!(peer.answers(), Vec::<bool>::new());
    assert!(hooks.seen.is_empty(), "the caller's hooks are gone");
}

#[tokio::test]
async fn dropping_a_dump_between_hooks_fails_the_next_one() {
    let dir = images_dir();
    let (seized_tx, seized) = oneshot::channel();
    let (go_tx, go) = oneshot::channel::<()>();
    let (session, peer) = fake(move |mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        seized_tx.send(()).unwrap();
        // criu is busy writing memory until the caller has given up.
        go.await.unwrap();
        p.expect_rollback_at("post-dump").await;
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let mut hooks = Recorder::default();
    let mut dump = Box::pin(session.dump_with(opts, &mut hooks));
    tokio::select! {
        _ = &mut dump => panic!("the dump finished without criu"),
        r = seized => r.unwrap(),
    }
    drop(dump);
    go_tx.send(()).unwrap();
    let peer = finish(peer).await;
    assert_eq!(peer.answers(), [true, false]);
    assert_eq!(
        hooks.seen.len(),
        1,
        "only pre-dump reached the caller's hooks"
    );
}

// ---------------------------------------------------------------------------------
// 6. Refusals
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_refusal_carries_errno_message_and_log_errors() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        let opts = req.opts.unwrap();
        let work = dir_of_fd(opts.images_dir_fd);
        let log = work.join(opts.log_file.as_deref().unwrap());
        std::fs::write(
            &log,
            "(00.000010) Version: 4.2.1\n\
             (00.000300) Error (criu/util.c:1053): rlimit: Can't setup RLIMIT_NOFILE for self\n\
             (00.002000) Error (criu/cr-dump.c:1970): No process with such pid 999999\n",
        )
        .unwrap();
        p.send(&refused(
            CriuReqType::Dump,
            nix::libc::ESRCH,
            "No process with such pid 999999",
        ))
        .await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .log_file("dump.log");
    let res = within("dump", session.dump(opts)).await;
    finish(peer).await;
    let err = res.unwrap_err();
    assert!(err.is_refused(), "{err:?}");
    let r = err.refusal().unwrap();
    assert_eq!(r.request, RequestKind::Dump);
    assert_eq!(r.pid, Some(TARGET));
    assert_eq!(r.errno, Some(nix::libc::ESRCH));
    assert_eq!(
        r.message.as_deref(),
        Some("No process with such pid 999999")
    );
    let log = canonical(dir.path()).join("dump.log");
    assert_eq!(r.log_path.as_deref(), Some(log.as_path()));
    assert_eq!(
        r.log_errors,
        ["(00.002000) Error (criu/cr-dump.c:1970): No process with such pid 999999"]
    );
    let text = err.to_string();
    for part in [
        "dump",
        "999999",
        "No process with such pid 999999",
        "ESRCH",
        &log.display().to_string(),
    ] {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

#[tokio::test]
async fn a_criu_too_old_to_log_to_stderr_has_its_criu_log_read() {
    // criu before 3.19 ignores log_to_stderr (an unknown field) and logs to criu.log
    // in its work dir; a refusal then carries that file's error lines.
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::Dump).await;
        let opts = req.opts.unwrap();
        assert_eq!(opts.log_to_stderr, Some(true));
        assert_eq!(opts.log_file, None);
        let log = dir_of_fd(opts.images_dir_fd).join("criu.log");
        std::fs::write(
            &log,
            "Error (criu/cr-dump.c:1970): No process with such pid 999999\n",
        )
        .unwrap();
        p.send(&refused(CriuReqType::Dump, nix::libc::ESRCH, ""))
            .await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET).images_dir(dir.path());
    let res = within("dump", session.dump(opts)).await;
    finish(peer).await;
    let err = res.unwrap_err();
    let r = err.refusal().expect("a refusal");
    assert_eq!(
        r.log_errors,
        ["Error (criu/cr-dump.c:1970): No process with such pid 999999"]
    );
    assert_eq!(
        r.log_path.as_deref(),
        Some(canonical(dir.path()).join("criu.log").as_path())
    );
}

#[tokio::test]
async fn a_refusal_without_errno_or_message_still_says_what_was_refused() {
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Check).await;
        p.send(&resp(CriuReqType::Check, false)).await;
        p.expect_closed().await;
        p
    });
    let res = within("check", session.check(CheckOptions::new())).await;
    finish(peer).await;
    let err = res.unwrap_err();
    let r = err.refusal().expect("a refusal");
    assert_eq!(r.request, RequestKind::Check);
    assert_eq!((r.errno, r.message.as_deref(), r.pid), (None, None, None));
    assert!(err.to_string().contains("check"), "{err}");
}

#[tokio::test]
async fn bad_req_seq_in_the_pre_dump_loop_is_a_refusal() {
    let root = images_dir();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::FeatureCheck).await;
        p.send(&features_resp(true)).await;
        p.expect(CriuReqType::PreDump).await;
        p.send(&resp(CriuReqType::PreDump, true)).await;
        // This criu does not accept the next step: EMPTY, success = false.
        p.expect(CriuReqType::Dump).await;
        p.send(&refused(CriuReqType::Empty, 0, "Bad req seq")).await;
        p.expect_closed().await;
        p
    });
    let lp = within(
        "pre-dump",
        session.pre_dump(PreDumpOptions::new(TARGET).images_dir(&a)),
    )
    .await
    .unwrap();
    let res = within("dump", lp.dump(DumpOptions::new(TARGET).images_dir(&b))).await;
    finish(peer).await;
    let err = res.unwrap_err();
    let r = err.refusal().expect("EMPTY + success=false is a refusal");
    assert_eq!(r.request, RequestKind::Dump);
    assert_eq!(r.message.as_deref(), Some("Bad req seq"));
    assert!(err.to_string().contains("Bad req seq"), "{err}");
}

#[tokio::test]
async fn invalid_req_is_a_refusal() {
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Check).await;
        p.send(&refused(CriuReqType::Empty, 0, "Invalid req")).await;
        p.expect_closed().await;
        p
    });
    let res = within("check", session.check(CheckOptions::new())).await;
    finish(peer).await;
    let err = res.unwrap_err();
    assert_eq!(
        err.refusal().and_then(|r| r.message.as_deref()),
        Some("Invalid req")
    );
}

#[tokio::test]
async fn a_failed_pre_dump_ends_the_loop() {
    let root = images_dir();
    let (a, b) = (root.path().join("a"), root.path().join("b"));
    std::fs::create_dir(&a).unwrap();
    std::fs::create_dir(&b).unwrap();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::FeatureCheck).await;
        p.send(&features_resp(true)).await;
        p.expect(CriuReqType::PreDump).await;
        p.send(&resp(CriuReqType::PreDump, true)).await;
        p.expect(CriuReqType::PreDump).await;
        p.send(&refused(
            CriuReqType::PreDump,
            nix::libc::ENOMEM,
            "Can't dump pages",
        ))
        .await;
        // criu leaves the loop; the driver must not keep talking to it.
        p.expect_closed().await;
        p
    });
    let mut lp = within(
        "pre-dump",
        session.pre_dump(PreDumpOptions::new(TARGET).images_dir(&a)),
    )
    .await
    .unwrap();
    let second = within(
        "second pre-dump",
        lp.pre_dump(
            PreDumpOptions::new(TARGET)
                .images_dir(&b)
                .parent_images("../a"),
        ),
    )
    .await;
    let peer = finish(peer).await;
    let err = second.unwrap_err();
    assert_eq!(
        err.refusal().map(|r| (r.request, r.errno)),
        Some((RequestKind::PreDump, Some(nix::libc::ENOMEM)))
    );
    assert_eq!(lp.iterations(), 1);
    let third = within(
        "third pre-dump",
        lp.pre_dump(PreDumpOptions::new(TARGET).images_dir(&b)),
    )
    .await;
    assert!(matches!(third, Err(Error::Closed { .. })), "{third:?}");
    assert_eq!(
        peer.types(),
        [
            CriuReqType::FeatureCheck,
            CriuReqType::PreDump,
            CriuReqType::PreDump
        ]
    );
}

// ---------------------------------------------------------------------------------
// 5b. Drops outside a running runtime
// ---------------------------------------------------------------------------------

/// Whether the driver's end of the socket is closed, seen from `theirs` without a
/// runtime: after the datagrams already read, the next read is end-of-stream.
fn closed_from_the_other_end(theirs: &UnixSeqpacket) -> bool {
    use nix::sys::socket::{MsgFlags, recv};
    let mut buf = [0u8; 64];
    matches!(
        recv(theirs.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT),
        Ok(0) | Err(nix::errno::Errno::ECONNRESET)
    )
}

#[test]
fn dropping_a_session_outside_a_runtime_closes_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (session, theirs) = rt.block_on(async {
        let (ours, theirs) = UnixSeqpacket::pair().unwrap();
        (
            Session::from_fd(ours.into()).expect("a seqpacket socket"),
            theirs,
        )
    });
    // No runtime is current here: the drop has to do its work synchronously.
    drop(session);
    assert!(closed_from_the_other_end(&theirs));
    drop(theirs);
    drop(rt);
}

#[test]
fn runtime_shutdown_during_a_background_rollback_closes_the_session() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = images_dir();
    let theirs = rt.block_on(async {
        let (ours, theirs) = UnixSeqpacket::pair().unwrap();
        let session = Session::from_fd(ours.into()).expect("a seqpacket socket");
        let dump = session.dump(DumpOptions::new(TARGET).images_dir(dir.path()));
        let mut buf = vec![0u8; 1 << 16];
        tokio::select! {
            _ = dump => panic!("the dump finished without criu"),
            r = theirs.recv(&mut buf) => {
                let n = r.unwrap().bytes_read();
                let req = CriuReq::decode(&buf[..n]).unwrap();
                assert_eq!(req.r#type(), CriuReqType::Dump);
            }
        }
        // The dump is dropped with the request in flight: a background rollback now
        // waits for criu's next message, which never comes.
        theirs
    });
    // Shutting the runtime down drops that rollback unfinished.
    drop(rt);
    assert!(closed_from_the_other_end(&theirs));
}

// ---------------------------------------------------------------------------------
// 7. Page servers, WAIT_PID, cpuinfo, version gates, cancellation
// ---------------------------------------------------------------------------------

fn page_server_resp(pid: i32, port: i32) -> CriuResp {
    CriuResp {
        ps: Some(criu_swrk::proto::CriuPageServerInfo {
            pid: Some(pid),
            port: Some(port),
            ..Default::default()
        }),
        ..resp(CriuReqType::PageServer, true)
    }
}

#[tokio::test]
async fn page_server_daemon_waits_for_status_ready_sent_before_the_answer() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::PageServer).await;
        // No keep_open: criu would otherwise read the socket while the daemon waits
        // for our answer, and take it.
        assert_eq!(req.keep_open, None);
        let opts = req.opts.expect("opts");
        assert_eq!(opts.notify_scripts, Some(true));
        let ps = opts.ps.expect("ps");
        assert_eq!(ps.address.as_deref(), Some("127.0.0.1"));
        assert_eq!(ps.port, Some(0));
        assert_eq!(
            p.notify("status-ready", None).await.notify_success,
            Some(true)
        );
        // criu 4.x loses the daemon's pid and says 0.
        p.send(&page_server_resp(0, 40123)).await;
        p.expect_closed().await;
        p
    });
    let opts = criu_swrk::PageServerOptions::new()
        .images_dir(dir.path())
        .address("127.0.0.1");
    let mut seen = Vec::new();
    let mut hooks = |n: Notification| {
        seen.push(n.name().to_owned());
        std::future::ready(Reply::ok())
    };
    let ps = within("page server", session.page_server_with(opts, &mut hooks))
        .await
        .unwrap();
    finish(peer).await;
    assert_eq!(ps.port, 40123);
    assert_eq!(ps.pid, None, "pid 0 means criu does not know it");
    assert_eq!(seen, ["status-ready"]);
}

#[tokio::test]
async fn page_server_daemon_answers_status_ready_arriving_after_the_answer() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::PageServer).await;
        // The daemon's status-ready comes after criu's answer: the driver must not
        // close yet, or the daemon dies waiting for its answer.
        p.send(&page_server_resp(0, 40124)).await;
        assert_eq!(
            p.notify("status-ready", None).await.notify_success,
            Some(true)
        );
        p.expect_closed().await;
        p
    });
    let opts = criu_swrk::PageServerOptions::new().images_dir(dir.path());
    let ps = within("page server", session.page_server(opts))
        .await
        .unwrap();
    let peer = finish(peer).await;
    assert_eq!(ps.port, 40124);
    assert_eq!(peer.answers(), [true]);
}

#[tokio::test]
async fn page_server_child_then_wait_pid() {
    let dir = images_dir();
    let (mut session, peer) = fake(|mut p| async move {
        let req = p.expect(CriuReqType::PageServerChld).await;
        assert_eq!(req.keep_open, Some(true));
        // The child would race criu for our answers: no notifications.
        assert_eq!(req.opts.expect("opts").notify_scripts, Some(false));
        p.send(&page_server_resp(777, 40125)).await;
        let wait = p.expect(CriuReqType::WaitPid).await;
        assert_eq!(wait.pid, Some(777));
        // criu does not keep WAIT_PID open: it exits after answering.
        assert_eq!(wait.keep_open, None);
        p.send(&CriuResp {
            status: Some(3 << 8),
            ..resp(CriuReqType::WaitPid, true)
        })
        .await;
        p.expect_closed().await;
        p
    });
    let opts = criu_swrk::PageServerOptions::new().images_dir(dir.path());
    let ps = within("page server child", session.page_server_child(opts))
        .await
        .unwrap();
    assert_eq!((ps.pid, ps.port), (Some(777), 40125));
    let status = within("wait_pid", session.wait_pid(777)).await.unwrap();
    finish(peer).await;
    assert_eq!(status.code(), Some(3));
}

#[tokio::test]
async fn cpuinfo_requests_carry_the_images_dir() {
    let dir = images_dir();
    for (ty, check) in [
        (CriuReqType::CpuinfoDump, false),
        (CriuReqType::CpuinfoCheck, true),
    ] {
        let expected = canonical(dir.path());
        let (session, peer) = fake(move |mut p| async move {
            let req = p.expect(ty).await;
            let opts = req.opts.expect("opts");
            assert_eq!(dir_of_fd(opts.images_dir_fd), expected);
            assert_eq!(opts.log_file.as_deref(), Some("cpuinfo.log"));
            if check {
                p.send(&refused(ty, nix::libc::ENOTSUP, "CPU mismatch"))
                    .await;
            } else {
                p.send(&resp(ty, true)).await;
            }
            p.expect_closed().await;
            p
        });
        let opts = CpuinfoOptions::new().images_dir(dir.path());
        let res = if check {
            within("cpuinfo check", session.cpuinfo_check(opts)).await
        } else {
            within("cpuinfo dump", session.cpuinfo_dump(opts)).await
        };
        finish(peer).await;
        if check {
            let err = res.unwrap_err();
            assert_eq!(
                err.refusal().unwrap().errno,
                Some(nix::libc::ENOTSUP),
                "{err}"
            );
        } else {
            res.unwrap();
        }
    }
    let err = within("cpuinfo without images", async {
        let (session, _peer) = fake(|p| async move { p });
        session.cpuinfo_check(CpuinfoOptions::new()).await
    })
    .await
    .unwrap_err();
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
}

#[tokio::test]
async fn options_newer_than_criu_are_refused_without_sending_the_request() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        let v = p.expect(CriuReqType::Version).await;
        assert_eq!(v.keep_open, Some(true));
        p.send(&version_resp(3, 18, 0)).await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .leave_stopped(true);
    let err = within("dump", session.dump(opts)).await.unwrap_err();
    let peer = finish(peer).await;
    assert_eq!(peer.types(), [CriuReqType::Version], "no DUMP may follow");
    assert!(err.is_unsupported(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("leave_stopped") && text.contains("criu 3.18") && text.contains("3.19"),
        "{text}"
    );

    // A criu that knows the option gets the request, on the same process.
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Version).await;
        p.send(&version_resp(4, 1, 1)).await;
        let dump = p.expect(CriuReqType::Dump).await;
        assert_eq!(dump.opts.expect("opts").leave_stopped, Some(true));
        p.send(&resp(CriuReqType::Dump, true)).await;
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .leave_stopped(true);
    within("dump", session.dump(opts)).await.unwrap();
    finish(peer).await;
}

#[tokio::test]
async fn a_cancelled_dump_is_rolled_back_in_the_foreground() {
    let dir = images_dir();
    let (session, peer) = fake(|mut p| async move {
        p.expect(CriuReqType::Dump).await;
        p.notify("pre-dump", None).await;
        // The hook is stuck when the token fires: the rollback answers it.
        p.expect_rollback_at("post-dump").await;
        p
    });
    let token = criu_swrk::CancellationToken::new();
    let (started_tx, started) = oneshot::channel();
    let mut hooks = stuck_after_first(started_tx);
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .cancel_on(token.clone());
    let dump = session.dump_with(opts, &mut hooks);
    let cancel = async {
        within("post-dump reached", started)
            .await
            .expect("hook ran");
        token.cancel();
    };
    let (res, ()) = within("dump", futures::future::join(dump, cancel)).await;
    let peer = finish(peer).await;
    assert_eq!(peer.answers(), [true, false]);
    match res.unwrap_err() {
        Error::Cancelled { request, at } => {
            assert_eq!(request, RequestKind::Dump);
            assert_eq!(at.state, RequestState::RolledBack);
            assert_eq!(at.hook.as_deref(), Some("post-dump"));
        }
        other => panic!("{other:?}"),
    }
}

/// Hooks that answer the first notification and hang on the second, signalling it.
fn stuck_after_first(started: oneshot::Sender<()>) -> impl Hooks {
    let mut started = Some(started);
    let mut calls = 0;
    move |_n: Notification| {
        calls += 1;
        let stuck = calls > 1;
        if stuck && let Some(tx) = started.take() {
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

#[tokio::test]
async fn a_lazy_dump_is_refused_up_front_or_carries_lazy_pages_and_the_port() {
    let dir = images_dir();
    // criu grows its page pipe to 4 MiB; that needs fs.pipe-max-size >= 4 MiB or
    // CAP_SYS_RESOURCE. Which branch runs depends on this machine; both can fail.
    let max: u64 = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let caps = std::fs::read_to_string("/proc/self/status").unwrap();
    let cap_eff = caps
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let pipes_ok = max >= 4 << 20 || cap_eff & (1 << 24) != 0;
    let (session, peer) = fake(move |mut p| async move {
        if pipes_ok {
            let req = p.expect(CriuReqType::Dump).await;
            let opts = req.opts.expect("opts");
            assert_eq!(opts.lazy_pages, Some(true));
            assert_eq!(opts.ps.expect("ps").port, Some(27000));
            // What criu says when its pipe stayed small: misleading, passed on whole.
            p.send(&refused(
                CriuReqType::Dump,
                nix::libc::EPERM,
                "page-pipe: tee: 65536: Operation not permitted",
            ))
            .await;
        }
        p.expect_closed().await;
        p
    });
    let opts = DumpOptions::new(TARGET)
        .images_dir(dir.path())
        .lazy_pages(true)
        .page_server("127.0.0.1", 27000);
    let err = within("lazy dump", session.dump(opts)).await.unwrap_err();
    let peer = finish(peer).await;
    let text = err.to_string();
    if pipes_ok {
        assert!(err.is_refused(), "{text}");
        assert!(text.contains("tee: 65536"), "{text}");
    } else {
        assert!(err.is_unsupported(), "{text}");
        assert!(
            text.contains("pipe-max-size") && text.contains(&max.to_string()),
            "{text}"
        );
        assert!(
            peer.received.is_empty(),
            "nothing may reach criu: {:?}",
            peer.types()
        );
    }
}
