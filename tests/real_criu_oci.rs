//! OCI containers made by Debian's runc, checkpointed and restored through
//! `criu_swrk::oci` from their bundle (real criu, root): a counter on pipes, a volume
//! and a tmpfs, a terminal, a mount criu cannot handle; and a container migrated, by the
//! library and by `criu-swrk migrate --bundle`.

mod common;

use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::TickReader;
use common::fixtures::RestoredTree;
use common::runc::{Bundle, BundleSpec, Container, cgroup_of, unique_id};
use criu_swrk::oci::{self, ContainerRestore};
use criu_swrk::{DumpOptions, Error};

const LINE: Duration = Duration::from_secs(5);

/// The v1 hierarchies runc puts every container in on this machine.
const CONTROLLERS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
];

/// How /proc/PID/cgroup names the hierarchy mounted at /sys/fs/cgroup/`dir`.
fn listed(dir: &str) -> &str {
    if dir == "systemd" {
        "name=systemd"
    } else {
        dir
    }
}

fn runc(args: &[&str]) {
    let out = Command::new("runc").args(args).output().expect("runc");
    assert!(
        out.status.success() || args[0] == "delete",
        "runc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The last tick a reader gets before its writer goes away, `seen` being the last
/// one read already.
async fn last_tick(reader: &mut TickReader, seen: u64) -> u64 {
    let mut last = seen;
    loop {
        match reader.line(LINE).await {
            Ok(line) => last = common::workload::parse_tick(&line).unwrap_or(last),
            Err(_) => return last,
        }
    }
}

/// The next tick line, skipping what a terminal echoes besides.
async fn next_tick(reader: &mut TickReader) -> u64 {
    loop {
        let line = reader.line(LINE).await.expect("a tick");
        if let Some(n) = common::workload::parse_tick(&line) {
            return n;
        }
    }
}

/// Removes the cgroup directories criu re-created for a restored container once it is
/// gone (runc does not know it, so `runc delete` does not).
struct Cgroups(Vec<String>);

impl Cgroups {
    fn of(pid: i32) -> Cgroups {
        let paths = CONTROLLERS
            .iter()
            .filter_map(|c| Some(format!("/sys/fs/cgroup/{c}{}", cgroup_of(pid, listed(c))?)))
            .collect();
        Cgroups(paths)
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for dir in &self.0 {
            for _ in 0..50 {
                if std::fs::remove_dir(dir).is_ok() || !Path::new(dir).exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// Dumps the runc container `id` through the library (the container stops), and lets
/// runc forget it, as after any dump runc did not make.
async fn dump(env: &common::Env, container: &mut Container, images: &Path) {
    let found = oci::Container::from_runc(&container.id).expect("runc knows the container");
    assert_eq!(found.pid(), container.pid());
    let opts = found
        .dump_options()
        .expect("derived")
        .images_dir(images)
        .staged(true);
    env.criu
        .dump(opts)
        .await
        .unwrap_or_else(|e| panic!("dump: {e}"));
    runc(&["delete", "-f", &container.id]);
    for c in ["freezer", "pids"] {
        assert!(
            !Path::new(&format!("/sys/fs/cgroup/{c}/{}", container.id)).exists(),
            "runc delete removed the {c} cgroup"
        );
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_container_on_pipes_restored_from_its_bundle_counts_on_in_its_cgroups() {
    let env = common::env();
    let id = unique_id("oci-pipes");
    let bundle = Bundle::build(&env.subdir("bundle"), BundleSpec::default());
    let mut container = Container::run(&bundle, &id);
    let seen = next_tick(container.output()).await;
    let images = env.dir.path().join("images");
    dump(&env, &mut container, &images).await;
    let last = last_tick(container.output(), seen).await;

    let (out_r, out_w) = std::io::pipe().unwrap();
    let restored = ContainerRestore::new(&bundle.dir, &images)
        .stdout(out_w)
        .run(&env.criu)
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let _cgroups = Cgroups::of(restored.pid);
    let _tree = RestoredTree { pid: restored.pid };
    let mut out = TickReader::new(OwnedFd::from(out_r));
    let first = next_tick(&mut out).await;
    assert!(
        first == last + 1,
        "the counter goes on from {last}: {first}"
    );
    assert!(next_tick(&mut out).await > first);
    assert_eq!(
        common::ns_pids(restored.pid).last().copied(),
        Some(1),
        "NSpid 1"
    );
    for c in CONTROLLERS {
        let path = cgroup_of(restored.pid, listed(c)).unwrap_or_default();
        assert!(path.ends_with(&format!("/{id}")), "{c} cgroup {path:?}");
        assert!(Path::new(&format!("/sys/fs/cgroup/{c}{path}")).is_dir());
    }
    drop(_tree);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_volume_and_a_tmpfs_come_back_intact_and_writes_go_on() {
    let env = common::env();
    let id = unique_id("oci-volume");
    let volume = env.subdir("volume");
    std::fs::write(volume.join("kept"), b"data on the volume").unwrap();
    let spec = BundleSpec {
        volume: Some(volume.clone()),
        tmpfs: true,
        args: Some(common::runc::default_loop(true, true)),
        ..Default::default()
    };
    let bundle = Bundle::build(&env.subdir("bundle"), spec);
    let mut container = Container::run(&bundle, &id);
    next_tick(container.output()).await;
    let payload: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(
        format!("/proc/{}/root/scratch/payload", container.pid()),
        &payload,
    )
    .unwrap();
    let images = env.dir.path().join("images");
    dump(&env, &mut container, &images).await;
    let counter = |path: &Path| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|l| common::workload::parse_tick(&l))
    };
    let on_volume = counter(&volume.join("counter")).expect("the counter on the volume");

    let restored = ContainerRestore::new(&bundle.dir, &images)
        .run(&env.criu)
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let _cgroups = Cgroups::of(restored.pid);
    let _tree = RestoredTree { pid: restored.pid };
    assert_eq!(
        std::fs::read(volume.join("kept")).unwrap(),
        b"data on the volume"
    );
    let tmpfs = format!("/proc/{}/root/scratch", restored.pid);
    assert_eq!(
        std::fs::read(format!("{tmpfs}/payload")).unwrap(),
        payload,
        "tmpfs data"
    );
    // Writes go on, to the volume on the host and to the restored tmpfs.
    let deadline = std::time::Instant::now() + LINE;
    loop {
        let v = counter(&volume.join("counter")).unwrap_or(0);
        let t = counter(&Path::new(&tmpfs).join("counter")).unwrap_or(0);
        if v > on_volume && t > on_volume {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "volume {v}, tmpfs {t}, before {on_volume}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(_tree);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_terminal_container_comes_back_with_its_console_handed_over() {
    let env = common::env();
    let id = unique_id("oci-tty");
    let spec = BundleSpec {
        terminal: true,
        ..Default::default()
    };
    let bundle = Bundle::build(&env.subdir("bundle"), spec);
    let mut container = Container::run(&bundle, &id);
    let before = next_tick(container.output()).await;
    let images = env.dir.path().join("images");
    dump(&env, &mut container, &images).await;

    let restored = ContainerRestore::new(&bundle.dir, &images)
        .run(&env.criu)
        .await
        .unwrap_or_else(|e| panic!("restore: {e}"));
    let _cgroups = Cgroups::of(restored.pid);
    let _tree = RestoredTree { pid: restored.pid };
    let console = restored.console.expect("the console master, handed over");
    let mut out = TickReader::new(console);
    let tick = next_tick(&mut out).await;
    assert!(
        tick > before,
        "the container's output, through its new console: {tick}"
    );
    assert!(next_tick(&mut out).await > tick);
    drop(_tree);
    common::assert_no_criu_left().await;
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_bundle_with_a_mount_criu_cannot_handle_is_refused_before_the_container_is_touched() {
    let env = common::env();
    let id = unique_id("oci-ramfs");
    let spec = BundleSpec {
        extra_mount: Some(serde_json::json!({
            "destination": "/cache", "type": "ramfs", "source": "ramfs", "options": []
        })),
        ..Default::default()
    };
    let bundle = Bundle::build(&env.subdir("bundle"), spec);
    let mut container = Container::run(&bundle, &id);
    let before = next_tick(container.output()).await;
    let found = oci::Container::from_runc(&id).unwrap();
    let err = found.dump_options().unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("mount /cache (type ramfs)"), "{text}");
    assert!(
        text.contains("criu cannot checkpoint ramfs mounts"),
        "{text}"
    );
    // Nothing reached criu: the container ticks on, still runc's and running.
    assert!(next_tick(container.output()).await > before);
    assert_eq!(container.state()["status"], "running");
    // Asked to dump it anyway (options by hand), criu fails as predicted and the
    // container still runs.
    let images = env.subdir("images");
    let raw = env
        .criu
        .dump(
            DumpOptions::new(container.pid())
                .images_dir(&images)
                .leave_running(true)
                .network_lock(criu_swrk::NetworkLock::Nftables),
        )
        .await
        .unwrap_err();
    assert!(raw.to_string().contains("unsupported"), "{raw}");
    let later = next_tick(container.output()).await;
    assert!(later > before);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_container_migrates_from_its_bundle_and_writes_on_to_its_volume() {
    let env = common::env();
    migrate_container(&env, false).await;
    // The same through `criu-swrk migrate --bundle`.
    migrate_container(&env, true).await;
}

/// A runc container with a volume migrated over loopback into a destination in this
/// process, by the library or (`cli`) by `criu-swrk --json migrate --bundle`: the
/// source's init is gone, and the copy writes on to the volume, with NSpid 1.
async fn migrate_container(env: &common::Env, cli: bool) {
    use criu_swrk::migrate::{Destination, Migration, Security};
    let tag = if cli { "-cli" } else { "" };
    let id = unique_id(&format!("oci-migrate{tag}"));
    let sub = |name: &str| env.subdir(&format!("{name}{tag}"));
    let volume = sub("volume");
    let spec = BundleSpec {
        volume: Some(volume.clone()),
        args: Some(common::runc::default_loop(true, false)),
        ..Default::default()
    };
    let bundle = Bundle::build(&sub("bundle"), spec);
    let mut container = Container::run(&bundle, &id);
    next_tick(container.output()).await;
    let root = sub("incoming");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dest = Destination::new(env.criu.clone(), &root, Security::Insecure);
    let served = tokio::spawn(async move { dest.accept(&listener).await });
    let moved_pid = if cli {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_criu-swrk"))
            .args([
                "--json",
                "migrate",
                "--insecure",
                "--id",
                "container",
                "--bundle",
            ])
            .arg(&bundle.dir)
            .args([
                "--pid",
                &container.pid().to_string(),
                "--to",
                &addr.to_string(),
            ])
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let result: serde_json::Value = text
            .lines()
            .last()
            .and_then(|l| serde_json::from_str(l).ok())
            .unwrap_or_else(|| {
                panic!(
                    "no result line: {text}; {}",
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        assert_eq!(result["ok"], true, "{result}");
        result["restored_pid"].as_i64().expect("restored_pid") as i32
    } else {
        let found = oci::Container::from_bundle(&bundle.dir, container.pid()).unwrap();
        Migration::new(container.pid(), addr, Security::Insecure)
            .container(found)
            .id("container")
            .run(&env.criu)
            .await
            .unwrap_or_else(|e| panic!("migration: {e}"))
            .pid
    };
    let arrived = served.await.unwrap().unwrap();
    assert_eq!(arrived.pid, moved_pid);
    let _cgroups = Cgroups::of(moved_pid);
    let _tree = RestoredTree { pid: moved_pid };
    // The source container is gone; runc still lists it, stopped.
    assert!(
        !Path::new(&format!("/proc/{}", container.pid())).exists() || {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", container.pid()))
                .unwrap_or_default();
            stat.contains(") Z ")
        }
    );
    runc(&["delete", "-f", &id]);
    // The copy writes on to the volume, from where the source left off.
    let counter = || {
        std::fs::read_to_string(volume.join("counter"))
            .ok()
            .and_then(|l| common::workload::parse_tick(&l))
    };
    let at = counter().expect("the counter on the volume");
    let deadline = std::time::Instant::now() + LINE;
    while counter().unwrap_or(0) <= at {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy wrote nothing after {at}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = std::fs::read_to_string(format!("/proc/{moved_pid}/status")).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1")),
        "{status}"
    );
    drop(_tree);
    common::assert_no_criu_left().await;
}
