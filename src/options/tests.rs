//! Every option reaches criu's wire format; the plan's defaults and fd mapping.

use super::plan::*;
use super::*;
use crate::error::Result;
use crate::kind::RequestKind;
use crate::proto::*;
use crate::spawn::FIRST_PASSED_FD;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[test]
fn log_file_with_a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = DumpOptions::new(12345)
        .images_dir(dir.path())
        .log_file("logs/dump.log")
        .prepare()
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::InvalidOptions {
                option: "log_file",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("logs/dump.log"));
}

#[test]
fn dump_without_images_dir_is_refused() {
    let err = DumpOptions::new(12345).prepare().unwrap_err();
    assert!(err.to_string().contains("images directory"), "{err}");
}

#[test]
fn dumping_ourselves_is_refused() {
    let err = DumpOptions::new(std::process::id() as i32)
        .prepare()
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidOptions { option: "pid", .. }),
        "{err}"
    );
}

#[test]
fn restore_from_a_dir_without_images_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = RestoreOptions::new()
        .images_dir(dir.path())
        .prepare()
        .unwrap_err();
    assert!(err.to_string().contains("inventory.img"), "{err}");
}

#[test]
fn missing_images_dir_names_the_path() {
    let err = DumpOptions::new(12345)
        .images_dir("/nonexistent/criu-swrk")
        .prepare()
        .unwrap_err();
    assert!(err.to_string().contains("/nonexistent/criu-swrk"), "{err}");
}

#[test]
fn images_dir_that_is_a_file_is_refused_and_symlinks_resolve() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, b"").unwrap();
    let err = DumpOptions::new(12345)
        .images_dir(&file)
        .prepare()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{} is not a directory", file.display())),
        "{err}"
    );

    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let p = DumpOptions::new(12345).images_dir(&link).prepare().unwrap();
    assert_eq!(p.images_dir, Some(std::fs::canonicalize(&real).unwrap()));
}

#[test]
fn an_old_criu_log_is_found_only_when_fresh() {
    // criu before 3.19 ignores log_to_stderr and writes criu.log in the work dir.
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("criu.log");
    std::fs::write(&log, "Error (x.c:1): stale\n").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&log)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let p = DumpOptions::new(7)
        .images_dir(dir.path())
        .prepare()
        .unwrap();
    assert_eq!(
        p.fallback_log(),
        None,
        "a stale criu.log is not this request's"
    );
    std::fs::write(&log, "Error (x.c:1): fresh\n").unwrap();
    assert_eq!(
        p.fallback_log(),
        Some(std::fs::canonicalize(dir.path()).unwrap().join("criu.log"))
    );
    // Not when the caller chose the log's place.
    let p = DumpOptions::new(7)
        .images_dir(dir.path())
        .log_file("dump.log")
        .prepare()
        .unwrap();
    assert_eq!(p.fallback_log(), None);
}

#[test]
fn defaults_and_fd_plan() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _w) = std::io::pipe().unwrap();
    std::fs::write(dir.path().join("inventory.img"), b"").unwrap();
    let p = RestoreOptions::new()
        .images_dir(dir.path())
        .inherit_fd("pipe:[1]", r)
        .prepare()
        .unwrap();
    assert_eq!(p.opts.notify_scripts, Some(true));
    // criu logs to our pipe, not into the images directory, unless asked to.
    assert_eq!(p.opts.log_file, None);
    assert_eq!(p.opts.log_to_stderr, Some(true));
    assert!(p.log_piped_by_default);
    assert_eq!(p.log_path(), None);
    assert_eq!(p.opts.log_level, Some(2));
    assert_eq!(p.opts.inherit_fd[0].fd, FIRST_PASSED_FD);
    assert_eq!(p.passed.len(), 1);
    assert_eq!(p.held.len(), 1);
    assert_eq!(p.opts.images_dir_fd, p.held[0].as_raw_fd());

    // A named log file goes to the work dir (the images dir here), and so does
    // the default one when the caller turns stderr logging off.
    for (opts, name) in [
        (RestoreOptions::new().log_file("mine.log"), "mine.log"),
        (RestoreOptions::new().log_to_stderr(false), "restore.log"),
        (RestoreOptions::new().exec_cmd(["/bin/true"]), "restore.log"),
    ] {
        let p = opts.images_dir(dir.path()).prepare().unwrap();
        assert_eq!(p.opts.log_file.as_deref(), Some(name));
        assert!(!p.log_piped_by_default);
        assert_eq!(
            p.log_path().unwrap(),
            std::fs::canonicalize(dir.path()).unwrap().join(name)
        );
    }
    std::fs::remove_file(dir.path().join("inventory.img")).unwrap();
    for (p, name) in [
        (DumpOptions::new(7).images_dir(dir.path()).prepare(), None),
        (
            PreDumpOptions::new(7)
                .images_dir(dir.path())
                .prepare(RequestKind::PreDump),
            None,
        ),
        (
            PageServerOptions::new()
                .images_dir(dir.path())
                .prepare(RequestKind::PageServer),
            Some("page-server.log"),
        ),
        (
            CpuinfoOptions::new()
                .images_dir(dir.path())
                .prepare(RequestKind::CpuinfoDump),
            Some("cpuinfo.log"),
        ),
    ] {
        let p = p.unwrap();
        assert_eq!(p.opts.log_file.as_deref(), name, "{}", p.kind);
        assert_eq!(p.opts.log_to_stderr, name.is_none().then_some(true));
    }
}

#[test]
fn raw_edits_apply_last() {
    let dir = tempfile::tempdir().unwrap();
    let p = DumpOptions::new(12345)
        .images_dir(dir.path())
        .ghost_limit(7)
        .raw(|o| o.ghost_limit = Some(9))
        .prepare()
        .unwrap();
    assert_eq!(p.opts.ghost_limit, Some(9));
}

/// Every public typed setter of every builder goes through `prepare` and onto the
/// wire: the request is encoded as criu receives it, decoded, and the field the
/// setter names is compared with the value criu expects (enums as criu's numbers,
/// fds as the numbers criu is told). Last, this file's source is scanned for
/// setters, so a new one without a row here fails the test.
#[test]
fn every_option_round_trips_through_the_encoder() {
    use std::collections::BTreeSet;
    use std::os::unix::fs::MetadataExt;

    use prost::Message;

    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (d, other) = (dirs[0].path(), dirs[1].path());
    // Restores need images in the directories; dumps refuse directories with them.
    let images = |there: bool| {
        for dir in [d, other] {
            let inventory = dir.join("inventory.img");
            if there {
                std::fs::write(inventory, b"").unwrap();
            } else {
                let _ = std::fs::remove_file(inventory);
            }
        }
    };
    let other_real = std::fs::canonicalize(other).unwrap();
    let mut covered = BTreeSet::<&'static str>::new();

    /// The options as criu decodes them, and the prepared request (its fds).
    fn wire(p: Result<Prepared>) -> (CriuOpts, Prepared) {
        let p = p.unwrap_or_else(|e| panic!("prepare: {e}"));
        let bytes = p.opts.encode_to_vec();
        (CriuOpts::decode(bytes.as_slice()).expect("decoding"), p)
    }
    /// The options without the numbers of the directory fds (new on each prepare).
    fn sans_dir_fds(mut o: CriuOpts) -> CriuOpts {
        o.images_dir_fd = -1;
        o.work_dir_fd = None;
        o
    }
    /// What fd `n` of ours is open on.
    fn target_of(n: i32) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{n}")).unwrap()
    }
    /// The inode fd `n` of ours is open on.
    fn ino(n: i32) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{n}"))
            .unwrap()
            .ino()
    }
    /// Whether fd `n` is one of the fds the request holds for criu.
    fn holds(p: &Prepared, n: i32) -> bool {
        p.held.iter().any(|f| f.as_raw_fd() == n)
    }

    // One row: a setter (and its arguments) applied to a fresh builder, then
    // checks on the decoded options `o` and the prepared request `p`.
    macro_rules! row {
            ($new:expr, $prep:expr; $setter:ident($($arg:expr),*) $(.$then:ident($($targ:expr),*))*
                => |$o:ident, $p:ident| $body:block) => {{
                covered.insert(stringify!($setter));
                let built = $new.$setter($($arg),*)$(.$then($($targ),*))*;
                #[allow(unused_variables)]
                let ($o, $p) = wire(($prep)(built));
                $body
            }};
        }
    // Flags: each one set to true and to false, alone.
    macro_rules! flags {
            ($new:expr, $prep:expr; $($f:ident),+ $(,)?) => {$(
                for on in [true, false] {
                    row!($new, $prep; $f(on) => |o, p| {
                        assert_eq!(o.$f, Some(on), "{}({on})", stringify!($f));
                    });
                }
            )+};
        }
    // Optional strings whose setter is named like the field.
    macro_rules! strings {
            ($new:expr, $prep:expr; $($f:ident),+ $(,)?) => {$(
                row!($new, $prep; $f(concat!("/etc/criu/", stringify!($f))) => |o, p| {
                    assert_eq!(
                        o.$f.as_deref(),
                        Some(concat!("/etc/criu/", stringify!($f))),
                        "{}", stringify!($f)
                    );
                });
            )+};
        }

    macro_rules! base_rows {
            ($new:expr, $prep:expr) => {{
                let baseline = sans_dir_fds(wire(($prep)($new)).0);
                assert_eq!(baseline.notify_scripts, Some(true));
                assert_eq!(baseline.log_level, Some(2));
                row!($new, $prep; images_dir(other) => |o, p| {
                    assert!(holds(&p, o.images_dir_fd), "images_dir_fd {}", o.images_dir_fd);
                    assert_eq!(target_of(o.images_dir_fd), other_real);
                    assert_eq!(o.images_dir, None, "sent as an fd, not a path");
                });
                row!($new, $prep; images_dir_fd(File::open(other).unwrap()) => |o, p| {
                    assert!(holds(&p, o.images_dir_fd), "images_dir_fd {}", o.images_dir_fd);
                    assert_eq!(target_of(o.images_dir_fd), other_real);
                });
                row!($new, $prep; work_dir(other) => |o, p| {
                    let n = o.work_dir_fd.expect("work_dir_fd");
                    assert!(holds(&p, n), "work_dir_fd {n}");
                    assert_eq!(target_of(n), other_real);
                });
                row!($new, $prep; work_dir_fd(File::open(other).unwrap()) => |o, p| {
                    let n = o.work_dir_fd.expect("work_dir_fd");
                    assert!(holds(&p, n), "work_dir_fd {n}");
                    assert_eq!(target_of(n), other_real);
                });
                row!($new, $prep; log_file("mine.log") => |o, p| {
                    assert_eq!(o.log_file.as_deref(), Some("mine.log"));
                });
                row!($new, $prep; log_level(1) => |o, p| {
                    assert_eq!(o.log_level, Some(1));
                });
                flags!($new, $prep; log_to_stderr);
                row!($new, $prep; log_to_stderr(true) => |o, p| {
                    assert_eq!(o.log_file, None, "no default log file with log_to_stderr");
                });
                row!($new, $prep; timeout(Duration::from_secs(7)) => |o, p| {
                    assert_eq!(p.timeout, Some(Duration::from_secs(7)));
                    assert_eq!(sans_dir_fds(o), baseline, "ours, not criu's");
                });
                row!($new, $prep; cancel_on(CancellationToken::new()) => |o, p| {
                    assert!(p.cancel.is_some());
                    assert_eq!(sans_dir_fds(o), baseline, "ours, not criu's");
                });
                row!($new, $prep; raw(|o| o.ghost_limit = Some(77))
                        .raw(|o| o.notify_scripts = Some(false)) => |o, p| {
                    assert_eq!(o.ghost_limit, Some(77));
                    assert_eq!(o.notify_scripts, Some(true), "hooks stay on");
                });
            }};
        }

    macro_rules! tree_rows {
            ($new:expr, $prep:expr) => {{
                flags!($new, $prep;
                    shell_job, ext_unix_sk, tcp_established, tcp_close, file_locks,
                    link_remap, evasive_devices, auto_ext_mnt, ext_sharing, ext_masters,
                    auto_dedup, leave_stopped, lazy_pages, display_stats, unprivileged,
                    skip_file_rwx_check, orphan_pts_master, tls, tls_no_cn_verify,
                );
                strings!($new, $prep;
                    config_file, cgroup_yard, tls_cacert, tls_cacrl, tls_cert, tls_key,
                );
                row!($new, $prep; external("mnt[/data]:data").external("file[1f:42]") => |o, p| {
                    assert_eq!(o.external, ["mnt[/data]:data", "file[1f:42]"]);
                });
                row!($new, $prep; enable_fs("nfs").enable_fs("fuse") => |o, p| {
                    assert_eq!(o.enable_fs, ["nfs", "fuse"]);
                });
                row!($new, $prep; skip_mnt("/a").skip_mnt("/b") => |o, p| {
                    assert_eq!(o.skip_mnt, ["/a", "/b"]);
                });
                row!($new, $prep; ghost_limit(123_456) => |o, p| {
                    assert_eq!(o.ghost_limit, Some(123_456));
                });
                row!($new, $prep; cpu_cap(0x5) => |o, p| {
                    assert_eq!(o.cpu_cap, Some(0x5));
                });
                row!($new, $prep; freeze_timeout(9) => |o, p| {
                    assert_eq!(o.timeout, Some(9));
                });
                // criu's criu_cg_mode numbers.
                for (mode, n) in [
                    (CgroupMode::Ignore, 0),
                    (CgroupMode::None, 1),
                    (CgroupMode::Props, 2),
                    (CgroupMode::Soft, 3),
                    (CgroupMode::Full, 4),
                    (CgroupMode::Strict, 5),
                    (CgroupMode::Default, 6),
                ] {
                    row!($new, $prep; manage_cgroups(mode) => |o, p| {
                        assert_eq!(o.manage_cgroups_mode, Some(n), "{mode:?}");
                        assert_eq!(o.manage_cgroups, None, "the deprecated bool stays unset");
                    });
                }
                // criu's criu_network_lock_method numbers.
                for (method, n) in [
                    (NetworkLock::Iptables, 1),
                    (NetworkLock::Nftables, 2),
                    (NetworkLock::Skip, 3),
                ] {
                    row!($new, $prep; network_lock(method) => |o, p| {
                        assert_eq!(o.network_lock, Some(n), "{method:?}");
                    });
                }
            }};
        }

    macro_rules! dump_rows {
            ($new:expr, $prep:expr) => {{
                flags!($new, $prep; leave_running, track_mem, tcp_skip_in_flight, force_irmap);
                strings!($new, $prep; freeze_cgroup);
                row!($new, $prep; parent_images("../1") => |o, p| {
                    assert_eq!(o.parent_img.as_deref(), Some("../1"));
                });
                row!($new, $prep; cgroup_dump_controller("cpu").cgroup_dump_controller("memory")
                        => |o, p| {
                    assert_eq!(o.cgroup_dump_controller, ["cpu", "memory"]);
                });
                row!($new, $prep; irmap_scan_path("/usr").irmap_scan_path("/etc") => |o, p| {
                    assert_eq!(o.irmap_scan_paths, ["/usr", "/etc"]);
                });
                row!($new, $prep; page_server("192.0.2.7", 2775) => |o, p| {
                    let ps = o.ps.expect("ps");
                    assert_eq!(ps.address.as_deref(), Some("192.0.2.7"));
                    assert_eq!(ps.port, Some(2775));
                    assert_eq!(ps.fd, None);
                });
                let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
                let sock_ino = ino(sock.as_raw_fd());
                row!($new, $prep; page_server_fd(sock) => |o, p| {
                    assert_eq!(o.ps.expect("ps").fd, Some(4), "criu's first passed fd");
                    assert_eq!(p.passed.len(), 1);
                    assert_eq!(ino(p.passed[0].as_raw_fd()), sock_ino);
                });
                let (store, _peer) = std::os::unix::net::UnixDatagram::pair().unwrap();
                let store_ino = ino(store.as_raw_fd());
                row!($new, $prep; pidfd_store(OwnedFd::from(store)) => |o, p| {
                    let n = o.pidfd_store_sk.expect("pidfd_store_sk");
                    assert!(holds(&p, n), "pidfd_store_sk {n} is ours, held");
                    assert_eq!(ino(n), store_ino);
                });
            }};
        }

    // Dump.
    let dump = |b: DumpOptions| {
        images(false);
        b.prepare()
    };
    base_rows!(DumpOptions::new(4242).images_dir(d), dump);
    tree_rows!(DumpOptions::new(4242).images_dir(d), dump);
    dump_rows!(DumpOptions::new(4242).images_dir(d), dump);
    assert_eq!(
        wire(DumpOptions::new(4242).images_dir(d).prepare()).0.pid,
        Some(4242)
    );
    let dump_new = || DumpOptions::new(4242).images_dir(d);
    strings!(dump_new(), dump; cgroup_props, cgroup_props_file);
    row!(dump_new(), dump; empty_ns(nix::libc::CLONE_NEWNET as u32) => |o, p| {
        assert_eq!(o.empty_ns, Some(0x4000_0000));
    });
    row!(dump_new(), dump; ext_mount("/data", "vol") => |o, p| {
        assert_eq!(o.ext_mnt, [ExtMountMap { key: "/data".into(), val: "vol".into() }]);
    });
    row!(dump_new(), dump; ext_unix_sk_inode(77).ext_unix_sk_inode(78) => |o, p| {
        assert_eq!(o.unix_sk_ino, [UnixSk { inode: 77 }, UnixSk { inode: 78 }]);
    });
    for on in [true, false] {
        row!(dump_new(), dump; record(on) => |o, p| {
            assert_eq!(p.record, on, "the record is ours to write, not criu's");
        });
    }
    // Staged: criu writes into a staging sibling, the outcome names the target.
    let staged_target = d.join("staged");
    row!(dump_new(), dump; staged(true).images_dir(&staged_target) => |o, p| {
        let staging = std::fs::read_link(format!("/proc/self/fd/{}", o.images_dir_fd)).unwrap();
        assert!(staging.to_string_lossy().contains(".staged.partial-"), "{staging:?}");
        assert_eq!(p.images_dir.as_deref(), Some(staged_target.as_path()));
    });

    // Pre-dump (a single one: the loop refuses lazy_pages, checked below).
    let pre = |b: PreDumpOptions| {
        images(false);
        b.prepare(RequestKind::SinglePreDump)
    };
    base_rows!(PreDumpOptions::new(4242).images_dir(d), pre);
    tree_rows!(PreDumpOptions::new(4242).images_dir(d), pre);
    dump_rows!(PreDumpOptions::new(4242).images_dir(d), pre);
    for (mode, n) in [(PreDumpMode::Splice, 1), (PreDumpMode::VmRead, 2)] {
        row!(PreDumpOptions::new(4242).images_dir(d), pre; pre_dump_mode(mode) => |o, p| {
            assert_eq!(o.pre_dump_mode, Some(n), "{mode:?}");
        });
    }
    assert!(
        PreDumpOptions::new(4242)
            .images_dir(d)
            .lazy_pages(true)
            .prepare(RequestKind::PreDump)
            .is_err()
    );

    // Restore.
    let rst = |b: RestoreOptions| {
        images(true);
        b.prepare()
    };
    let rst_new = || RestoreOptions::new().images_dir(d);
    base_rows!(rst_new(), rst);
    tree_rows!(rst_new(), rst);
    flags!(rst_new(), rst; rst_sibling, weak_sysctls, mntns_compat_mode);
    strings!(rst_new(), rst; root, lsm_profile, lsm_mount_context);
    row!(rst_new(), rst; veth("eth0", "veth42").veth("eth1", "veth43") => |o, p| {
        assert_eq!(
            o.veths,
            [
                CriuVethPair { if_in: "eth0".into(), if_out: "veth42".into() },
                CriuVethPair { if_in: "eth1".into(), if_out: "veth43".into() },
            ]
        );
    });
    row!(rst_new(), rst; ext_mount("vol", "/srv/v") => |o, p| {
        assert_eq!(o.ext_mnt, [ExtMountMap { key: "vol".into(), val: "/srv/v".into() }]);
    });
    let (r1, _w1) = std::io::pipe().unwrap();
    let (_r2, w2) = std::io::pipe().unwrap();
    let inos = [ino(r1.as_raw_fd()), ino(w2.as_raw_fd())];
    row!(rst_new(), rst; inherit_fd("pipe:[1]", r1).inherit_fd("pipe:[2]", w2) => |o, p| {
        assert_eq!(
            o.inherit_fd,
            [
                InheritFd { key: "pipe:[1]".into(), fd: 4 },
                InheritFd { key: "pipe:[2]".into(), fd: 5 },
            ]
        );
        let passed: Vec<u64> = p.passed.iter().map(|f| ino(f.as_raw_fd())).collect();
        assert_eq!(passed, inos, "fd 4 and 5 in criu's table are our pipes, in order");
    });
    let (status, _peer) = std::io::pipe().unwrap();
    let status_ino = ino(status.as_raw_fd());
    row!(rst_new(), rst; status_fd(status) => |o, p| {
        let n = o.status_fd.expect("status_fd");
        assert!(holds(&p, n), "status_fd {n} is ours, held");
        assert_eq!(ino(n), status_ino);
    });
    row!(rst_new(), rst; cgroup_root(Some("cpu"), "/a").cgroup_root(None, "/b") => |o, p| {
        assert_eq!(
            o.cg_root,
            [
                CgroupRoot { ctrl: Some("cpu".into()), path: "/a".into() },
                CgroupRoot { ctrl: None, path: "/b".into() },
            ]
        );
    });
    row!(rst_new(), rst; join_ns("net", "/proc/1/ns/net") => |o, p| {
        assert_eq!(
            o.join_ns,
            [JoinNamespace {
                ns: "net".into(),
                ns_file: "/proc/1/ns/net".into(),
                extra_opt: None,
            }]
        );
    });
    row!(rst_new(), rst; join_user_ns("/proc/1/ns/user", 1000, 100) => |o, p| {
        assert_eq!(
            o.join_ns,
            [JoinNamespace {
                ns: "user".into(),
                ns_file: "/proc/1/ns/user".into(),
                extra_opt: Some("1000,100".into()),
            }]
        );
    });
    row!(rst_new(), rst; empty_ns(nix::libc::CLONE_NEWNET as u32) => |o, p| {
        assert_eq!(o.empty_ns, Some(0x4000_0000));
    });
    row!(rst_new(), rst; exec_cmd(["/bin/true", "--x"]) => |o, p| {
        assert_eq!(o.exec_cmd, ["/bin/true", "--x"]);
    });

    // Check.
    let chk = |b: CheckOptions| b.prepare();
    base_rows!(CheckOptions::new().images_dir(d), chk);

    // Cpuinfo.
    let cpu = |b: CpuinfoOptions| b.prepare(RequestKind::CpuinfoCheck);
    base_rows!(CpuinfoOptions::new().images_dir(d), cpu);
    row!(CpuinfoOptions::new().images_dir(d), cpu; cpu_cap(0x3) => |o, p| {
        assert_eq!(o.cpu_cap, Some(3));
    });

    // Page server.
    let ps = |b: PageServerOptions| b.prepare(RequestKind::PageServer);
    let ps_new = || PageServerOptions::new().images_dir(d);
    base_rows!(ps_new(), ps);
    flags!(ps_new(), ps; tls, tls_no_cn_verify, lazy_pages);
    strings!(ps_new(), ps; tls_cacert, tls_cacrl, tls_cert, tls_key);
    row!(ps_new(), ps; address("127.0.0.1") => |o, p| {
        let ps = o.ps.expect("ps");
        assert_eq!(ps.address.as_deref(), Some("127.0.0.1"));
        assert_eq!(ps.port, Some(0), "any free port unless told");
    });
    row!(ps_new(), ps; port(2775) => |o, p| {
        assert_eq!(o.ps.expect("ps").port, Some(2775));
    });
    let (sock, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
    let sock_ino = ino(sock.as_raw_fd());
    row!(ps_new(), ps; socket_fd(sock) => |o, p| {
        assert_eq!(o.ps.expect("ps").fd, Some(4), "criu's first passed fd");
        assert_eq!(ino(p.passed[0].as_raw_fd()), sock_ino);
    });

    // Every setter in this file has a row above.
    let source = [
        include_str!("mod.rs"),
        include_str!("setters.rs"),
        include_str!("plan.rs"),
        include_str!("dump.rs"),
        include_str!("pre_dump.rs"),
        include_str!("restore.rs"),
        include_str!("check.rs"),
        include_str!("page_server.rs"),
    ]
    .concat();
    let source = source.as_str();
    let mut setters = BTreeSet::new();
    for (_, rest) in source
        .match_indices("pub fn ")
        .map(|(i, _)| source.split_at(i + 7))
    {
        // The name, then the generics and parameters up to the first `)`.
        let name = rest.split(['(', '<']).next().unwrap();
        let params = &rest[..rest.find(')').unwrap()];
        if params.contains("mut self") && !name.starts_with('$') {
            setters.insert(name);
        }
    }
    let mut lines = source.lines().map(str::trim);
    while let Some(line) = lines.next() {
        if line == "flag!(" {
            let name = lines.by_ref().find(|l| !l.starts_with("///")).unwrap();
            setters.insert(name);
        }
    }
    assert!(
        setters.len() > 60,
        "the scan found too few setters: {setters:?}"
    );
    let missing: Vec<_> = setters.difference(&covered).collect();
    assert!(missing.is_empty(), "setters without a row: {missing:?}");
}

#[test]
fn a_page_server_can_link_its_parent_images() {
    let dir = tempfile::tempdir().unwrap();
    let p = PageServerOptions::new()
        .images_dir(dir.path())
        .parent_images("../1")
        .prepare(RequestKind::PageServer)
        .unwrap();
    assert_eq!(p.opts.parent_img.as_deref(), Some("../1"));
}
