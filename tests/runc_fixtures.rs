//! The runc fixtures checked against runc itself (no criu-swrk API): each kind of
//! container starts and ticks, runc checkpoints and restores it, and the counter
//! goes on. These also pin down the criu options runc 1.1.5 sends, the spec the
//! library's OCI support must match.

mod common;

use std::path::Path;
use std::time::Duration;

use common::TickReader;
use common::runc::{
    Bundle, BundleSpec, CgroupNs, Container, cgroup_dir, cgroup_of, runc_available, runc_state,
    unique_id,
};
use serde_json::json;

const LINE: Duration = Duration::from_secs(5);

/// The v1 controllers mounted on this machine, each an external bind mount inside
/// a runc container without a cgroup namespace.
const CGROUP_MOUNTS: &[&str] = &[
    "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "systemd",
];

/// Every tick line up to EOF (the container is gone), each within `LINE`.
async fn ticks_to_eof(reader: &mut TickReader) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        match reader.line(LINE).await {
            Ok(line) => out.push(
                common::workload::parse_tick(&line)
                    .unwrap_or_else(|| panic!("not a tick line: {line:?}")),
            ),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return out,
            // A pty master reads EIO once its terminal has no process left.
            Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => return out,
            Err(e) => panic!("reading the container's output: {e}"),
        }
    }
}

/// Asserts consecutive ticks.
fn assert_consecutive(ticks: &[u64]) {
    for w in ticks.windows(2) {
        assert_eq!(w[1], w[0] + 1, "ticks should be consecutive: {ticks:?}");
    }
}

/// The ext_mnt pairs of runc's logged options (`key:"K" val:"V"` repeated).
fn ext_mnt(options: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    let text = options.get("ExtMnt").expect("runc logs ExtMnt");
    text.split("key:\"")
        .skip(1)
        .map(|entry| {
            let (key, rest) = entry.split_once("\" val:\"").expect("key/val");
            let val = rest.split_once('"').expect("val end").0;
            (key.to_string(), val.to_string())
        })
        .collect()
}

fn read_counter(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    common::workload::parse_tick(&text)
        .unwrap_or_else(|| panic!("{}: not a tick: {text:?}", path.display()))
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn pipes_checkpoint_leave_running_and_restore() {
    let env = common::env();
    if !runc_available() {
        return;
    }
    let bundle = Bundle::build(&env.subdir("bundle"), BundleSpec::default());
    let id = unique_id("rf-pipes");
    let mut original = Container::run(&bundle, &id);
    let before = original.output().ticks(3, LINE).await.expect("ticks");
    assert_consecutive(&before);
    let cg = cgroup_of(original.pid(), "freezer").expect("freezer cgroup");
    assert_eq!(cg, format!("/{id}"), "runc's default cgroupsPath is /<id>");

    let images = env.subdir("images");
    let dump = original.checkpoint(&images, true).expect("runc checkpoint");
    let o = &dump.options;
    assert_eq!(o["LeaveRunning"], "true");
    assert_eq!(o["ManageCgroups"], "true");
    assert_eq!(o["OrphanPtsMaster"], "true");
    assert_eq!(o["NotifyScripts"], "true");
    assert_eq!(o["EmptyNs"], (nix::libc::CLONE_NEWNET as u32).to_string());
    assert_eq!(o["Root"], bundle.rootfs.display().to_string());
    assert_eq!(
        o["FreezeCgroup"],
        cgroup_dir("freezer", &cg).display().to_string()
    );
    assert_eq!(
        o["External"], "[]",
        "no net[...] external without a netns path"
    );
    let mnts = ext_mnt(o);
    for ctrl in CGROUP_MOUNTS {
        let key = format!("/sys/fs/cgroup/{ctrl}");
        assert!(
            mnts.contains(&(key.clone(), key.clone())),
            "{key} should be an external: {mnts:?}"
        );
    }
    assert!(mnts.contains(&("/proc/keys".into(), "/dev/null".into())));
    let descriptors: Vec<String> = serde_json::from_slice(
        &std::fs::read(images.join("descriptors.json")).expect("runc writes descriptors.json"),
    )
    .expect("descriptors.json is a list");
    assert!(descriptors[1].starts_with("pipe:["), "{descriptors:?}");

    // Left running: it goes on.
    assert_eq!(runc_state(&id)["status"], "running");
    let after = original.output().ticks(3, LINE).await.expect("ticks after");
    assert!(after[0] > before[2]);

    // runc's restore needs the id free: Container::restore deletes the original.
    let (mut restored, run) = Container::restore(&bundle, &id, &images).expect("runc restore");
    let o = &run.options;
    assert_eq!(o["RstSibling"], "true");
    assert_eq!(o["EvasiveDevices"], "true");
    assert!(o["InheritFd"].contains(&format!("key:\"{}\" fd:1", descriptors[1])));
    assert!(o["CgRoot"].contains(&format!("ctrl:\"freezer\" path:\"/{id}\"")));
    // The original's stdout ends with its death. The restored one ticks on from
    // the checkpoint, taken after `before` was printed (`after` may have been
    // buffered before it).
    ticks_to_eof(original.output()).await;
    let ticks = restored
        .output()
        .ticks(3, LINE)
        .await
        .expect("restored ticks");
    assert_consecutive(&ticks);
    assert!(
        ticks[0] > before[2] && ticks[0] < before[2] + 100,
        "{ticks:?} after {before:?}"
    );
    assert_ne!(restored.pid(), original.pid());
    assert_eq!(runc_state(&id)["pid"], json!(restored.pid()));
    // runc recreated the cgroups its delete removed.
    assert_eq!(cgroup_of(restored.pid(), "freezer"), Some(format!("/{id}")));
    assert!(cgroup_dir("freezer", &format!("/{id}")).is_dir());
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn pipes_checkpoint_and_restore_continue_exactly() {
    let env = common::env();
    if !runc_available() {
        return;
    }
    let bundle = Bundle::build(&env.subdir("bundle"), BundleSpec::default());
    let id = unique_id("rf-plain");
    let mut original = Container::run(&bundle, &id);
    let before = original.output().ticks(2, LINE).await.expect("ticks");
    let cg_dirs: Vec<_> = ["freezer", "memory", "cpu", ""]
        .iter()
        .map(|c| cgroup_dir(c, &cgroup_of(original.pid(), c).expect("cgroup")))
        .collect();

    let images = env.subdir("images");
    let dump = original
        .checkpoint(&images, false)
        .expect("runc checkpoint");
    assert_eq!(dump.options["LeaveRunning"], "false");
    // runc destroys a container it checkpointed: no state, no cgroups.
    assert!(runc_state(&id).is_null());
    for dir in &cg_dirs {
        assert!(!dir.exists(), "{} should be gone", dir.display());
    }
    // Whatever it printed before the dump that we have not read yet, then EOF.
    let printed = ticks_to_eof(original.output()).await;
    let last = printed.last().copied().unwrap_or(before[1]);

    let (mut restored, _) = Container::restore(&bundle, &id, &images).expect("runc restore");
    let ticks = restored
        .output()
        .ticks(3, LINE)
        .await
        .expect("restored ticks");
    assert_eq!(ticks[0], last + 1, "the counter goes on where it stopped");
    assert_consecutive(&ticks);
    for dir in &cg_dirs {
        assert!(dir.is_dir(), "{} should be back", dir.display());
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn volume_and_tmpfs_survive_checkpoint_and_restore() {
    let env = common::env();
    if !runc_available() {
        return;
    }
    let volume = env.subdir("volume");
    let bundle = Bundle::build(
        &env.subdir("bundle"),
        BundleSpec {
            volume: Some(volume.clone()),
            tmpfs: true,
            ..BundleSpec::default()
        },
    );
    let id = unique_id("rf-vol");
    let mut original = Container::run(&bundle, &id);
    let before = original.output().ticks(3, LINE).await.expect("ticks");
    let scratch = |pid: i32| Path::new(&format!("/proc/{pid}/root/scratch")).join("counter");
    assert!(read_counter(&scratch(original.pid())) >= 1);
    assert!(read_counter(&volume.join("counter")) >= 1);

    let images = env.subdir("images");
    let dump = original
        .checkpoint(&images, false)
        .expect("runc checkpoint");
    let mnts = ext_mnt(&dump.options);
    assert!(mnts.contains(&("/data".into(), "/data".into())), "{mnts:?}");
    assert!(
        !mnts.iter().any(|(k, _)| k == "/scratch"),
        "tmpfs is dumped, not external"
    );
    let printed = ticks_to_eof(original.output()).await;
    let last = printed.last().copied().unwrap_or(before[2]);
    assert_eq!(read_counter(&volume.join("counter")), last);

    let (mut restored, run) = Container::restore(&bundle, &id, &images).expect("runc restore");
    let mnts = ext_mnt(&run.options);
    assert!(
        mnts.contains(&("/data".into(), volume.display().to_string())),
        "restore maps /data to the host source: {mnts:?}"
    );
    // The tmpfs came back with the content it had at the dump.
    let at_restore = read_counter(&scratch(restored.pid()));
    assert!(at_restore >= last, "scratch {at_restore} < {last}");
    let ticks = restored
        .output()
        .ticks(3, LINE)
        .await
        .expect("restored ticks");
    assert_eq!(ticks[0], last + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(read_counter(&volume.join("counter")) > last);
    assert!(read_counter(&scratch(restored.pid())) > last);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn terminal_checkpoint_and_restore() {
    let env = common::env();
    if !runc_available() {
        return;
    }
    let bundle = Bundle::build(
        &env.subdir("bundle"),
        BundleSpec {
            terminal: true,
            ..BundleSpec::default()
        },
    );
    let id = unique_id("rf-tty");
    let mut original = Container::run(&bundle, &id);
    assert!(original.stdout.is_none() && original.console.is_some());
    let before = original
        .output()
        .ticks(3, LINE)
        .await
        .expect("ticks on the pty");
    assert_consecutive(&before);
    assert!(
        common::fd_link(original.pid(), 1).starts_with("/dev/pts/"),
        "stdout is the pty"
    );

    let images = env.subdir("images");
    let dump = original.checkpoint(&images, true).expect("runc checkpoint");
    assert_eq!(dump.options["OrphanPtsMaster"], "true");
    assert_eq!(dump.options["ShellJob"], "false");
    original
        .output()
        .ticks(2, LINE)
        .await
        .expect("still ticking");

    let (mut restored, run) = Container::restore(&bundle, &id, &images).expect("runc restore");
    assert_eq!(run.options["InheritFd"], "[]", "no pipes to hand over");
    assert!(run.log.contains("notify: orphan-pts-master"));
    let ticks = restored
        .output()
        .ticks(3, LINE)
        .await
        .expect("restored ticks");
    assert_consecutive(&ticks);
    assert!(ticks[0] > before[2]);
    assert!(common::fd_link(restored.pid(), 0).starts_with("/dev/pts/"));
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn ramfs_mount_fails_the_checkpoint_and_the_container_runs_on() {
    let env = common::env();
    if !runc_available() {
        return;
    }
    let bundle = Bundle::build(
        &env.subdir("bundle"),
        BundleSpec {
            extra_mount: Some(json!({
                "destination": "/cache", "type": "ramfs", "source": "ramfs", "options": []
            })),
            ..BundleSpec::default()
        },
    );
    let id = unique_id("rf-ramfs");
    let mut container = Container::run(&bundle, &id);
    container.output().ticks(2, LINE).await.expect("ticks");
    let images = env.subdir("images");
    let err = match container.checkpoint(&images, true) {
        Ok(_) => panic!("criu cannot dump a ramfs"),
        Err(e) => e,
    };
    assert!(
        err.contains("mnt: FS mnt ./cache") && err.contains("unsupported"),
        "{err}"
    );
    assert_eq!(runc_state(&id)["status"], "running");
    let ticks = container
        .output()
        .ticks(3, LINE)
        .await
        .expect("ticks after");
    assert_consecutive(&ticks);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn joined_cgroup_namespace_checkpoints_but_runc_cannot_restore_it() {
    let env = common::env();
    if !runc_available() {
        return;
    }
    let ns = CgroupNs::create(&env.dir.path().join("cgns"));
    let bundle = Bundle::build(
        &env.subdir("bundle"),
        BundleSpec {
            cgroup_ns_path: Some(ns.path.clone()),
            ..BundleSpec::default()
        },
    );
    let id = unique_id("rf-cgns");
    let mut container = Container::run(&bundle, &id);
    container.output().ticks(2, LINE).await.expect("ticks");
    assert_eq!(
        std::fs::read_link(format!("/proc/{}/ns/cgroup", container.pid())).unwrap(),
        Path::new(&format!("cgroup:[{}]", ns.inode()))
    );
    let images = env.subdir("images");
    let dump = container
        .checkpoint(&images, true)
        .expect("runc checkpoint");
    // With a cgroup namespace the cgroup mounts are real mounts: no externals.
    let mnts = ext_mnt(&dump.options);
    assert!(
        !mnts.iter().any(|(k, _)| k.starts_with("/sys/fs/cgroup")),
        "{mnts:?}"
    );
    let err = match Container::restore(&bundle, &id, &images) {
        Ok(_) => panic!("runc 1.1.5 refuses a cgroup namespace path on restore"),
        Err(e) => e,
    };
    assert!(
        err.contains("Do not know how to handle namespace NEWCGROUP"),
        "{err}"
    );
}
