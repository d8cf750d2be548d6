//! Real criu against trees that live in namespaces and cgroups of their own: a busybox
//! tree in its own pid, mount, uts, ipc and net namespaces, pivot_rooted into a rootfs
//! with a tmpfs; and a workload in cgroup v1 freezer and memory cgroups.
//!
//! Outside CI these tests skip when root or criu is missing; with `CI=true` they fail.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::fixtures::{self, Cgroup, NsTree, RestoredTree};
use criu_swrk::{CgroupMode, DumpOptions, NetworkLock, RestoreOptions};

/// Our own bound on each criu request: a hung criu fails the test instead of CI.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a restored counter may take to move on.
const COUNTER_WAIT: Duration = Duration::from_secs(5);

/// A tree in its own namespaces, set up and dumped (killed): what a restore needs.
struct Dumped {
    rootfs: std::path::PathBuf,
    images: std::path::PathBuf,
    hostname: String,
    /// Random bytes the test wrote into the tree's tmpfs before the dump.
    payload: Vec<u8>,
    /// The tree's counter read just before the dump, and when.
    counter_before: u64,
    read_at: Instant,
}

/// Builds the rootfs, starts the tree, writes the payload into its tmpfs and dumps it
/// without leave_running.
async fn start_and_dump(env: &common::Env) -> Dumped {
    let rootfs = fixtures::build_rootfs(env.dir.path());
    let hostname = fixtures::unique_name("criu-ns");
    let mut tree = NsTree::start(&rootfs, &hostname);

    // The tree really is where we put it: its namespaces, its hostname, its root.
    for ns in ["pid", "mnt", "uts", "ipc", "net"] {
        assert_ne!(
            fixtures::ns_of(tree.pid, ns),
            fixtures::ns_of(std::process::id() as i32, ns),
            "the tree should have a {ns} namespace of its own"
        );
    }
    assert_eq!(fixtures::hostname_of(tree.pid), hostname);
    assert!(
        Path::new(&format!("/proc/{}/root/bin/busybox", tree.pid)).exists(),
        "the tree's root should be the rootfs"
    );
    assert!(
        !rootfs.join("data/counter").exists(),
        "the counter should be on the tree's tmpfs, not in the rootfs directory"
    );

    let mut payload = vec![0u8; 64 * 1024];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").unwrap(),
        &mut payload,
    )
    .unwrap();
    std::fs::write(format!("/proc/{}/root/data/payload", tree.pid), &payload)
        .expect("writing the payload into the tree's tmpfs");

    let images = env.subdir("images");
    let counter_before = fixtures::counter(tree.pid).expect("counter before the dump");
    let read_at = Instant::now();
    env.criu
        .dump(
            DumpOptions::new(tree.pid)
                .images_dir(&images)
                // criu locks the network of a net namespace it dumps; its default
                // method runs iptables-restore, not installed here ("net: Locking
                // network failed: iptables-restore returned -1"). nftables is done
                // through libnftables, no binary needed. (The lock method is stored in
                // the images: the restore unlocks with it unasked.)
                .network_lock(NetworkLock::Nftables)
                .timeout(REQUEST_TIMEOUT),
        )
        .await
        .unwrap_or_else(|e| panic!("dump of the namespaced tree: {e}"));
    tree.reap_dumped();
    Dumped {
        rootfs,
        images,
        hostname,
        payload,
        counter_before,
        read_at,
    }
}

/// Asserts the restored tree is the dumped one: init of a new PID namespace, same
/// hostname, tmpfs data intact, counter going on from where it was.
fn assert_restored(d: &Dumped, pid: i32) {
    let ns_pids = common::ns_pids(pid);
    assert_eq!(
        ns_pids.last().copied(),
        Some(1),
        "the restored root should be init of its PID namespace: NSpid {ns_pids:?}"
    );
    assert_eq!(ns_pids, [pid, 1]);
    assert_eq!(fixtures::hostname_of(pid), d.hostname, "hostname");
    for ns in ["pid", "mnt", "uts", "ipc", "net"] {
        assert_ne!(
            fixtures::ns_of(pid, ns),
            fixtures::ns_of(std::process::id() as i32, ns),
            "the restored tree should have a {ns} namespace of its own"
        );
    }
    let payload = std::fs::read(format!("/proc/{pid}/root/data/payload"))
        .expect("reading the payload from the restored tmpfs");
    assert!(
        payload == d.payload,
        "the tmpfs payload changed ({} bytes, {} expected)",
        payload.len(),
        d.payload.len()
    );

    // The count lives in the shell's memory and the tmpfs: a restored tree goes on
    // from the dumped value. It counts at most once per 100 ms while it runs, so it
    // cannot be further on than the time since we read it allows.
    let first = fixtures::counter(pid).expect("counter after the restore");
    let most = d.counter_before + d.read_at.elapsed().as_millis() as u64 / 100 + 2;
    assert!(
        (d.counter_before..=most).contains(&first),
        "the restored counter {first} should go on from {} (at most {most})",
        d.counter_before
    );
    let later = fixtures::counter_above(pid, first + 2, COUNTER_WAIT);
    assert!(later > first);
}

/// Asserts nothing under `dir` is mounted in our (the host's) mount namespace: every
/// mount of the test happened in the tree's namespace or criu's.
fn assert_no_host_mount_of(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = dir.to_str().unwrap();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(dir)).collect();
    assert!(left.is_empty(), "host mounts left under {dir}: {left:?}");
}

fn restore_with_root(d: &Dumped) -> RestoreOptions {
    RestoreOptions::new()
        .images_dir(&d.images)
        // The tree's root mount is the rootfs directory; criu bind-mounts it as the
        // restored tree's root (it need not be a mount point).
        .root(d.rootfs.to_str().unwrap())
        .timeout(REQUEST_TIMEOUT)
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn pivot_rooted_tree_in_its_own_namespaces_restores_under_root() {
    let env = common::env();
    let d = start_and_dump(&env).await;

    let out = env
        .criu
        .restore(restore_with_root(&d))
        .await
        .unwrap_or_else(|e| panic!("restore with root: {e}"));
    let restored = RestoredTree { pid: out.pid };
    assert_restored(&d, restored.pid);
    drop(restored);
    common::assert_no_criu_left().await;
    assert_no_host_mount_of(&d.rootfs);
}

/// The names of the files in `dir`, sorted, with their sizes.
fn listing(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn pivot_rooted_tree_restored_without_root_fails_naming_the_bug_then_with_root() {
    let env = common::env();
    let d = start_and_dump(&env).await;
    let images_before = listing(&d.images);

    let err = env
        .criu
        .restore(
            RestoreOptions::new()
                .images_dir(&d.images)
                .timeout(REQUEST_TIMEOUT),
        )
        .await
        .map(|out| RestoredTree { pid: out.pid })
        .err()
        .expect("a restore of a pivot_rooted tree without root should fail");
    let text = err.to_string();
    eprintln!("restore without root: {text}");
    // criu's causal lines: the task restoring the tree's init (pid 1 of the new
    // namespace) hits `mnt: BUG at criu/mount.c:48` setting up the mounts and dies of
    // SIGSEGV; criu itself survives and refuses the request (no cr_errmsg).
    assert!(err.is_refused(), "criu answers the failure itself: {text}");
    assert!(text.contains("mnt: BUG at"), "{text}");
    assert!(
        text.contains("hint: a tree in its own mount namespace"),
        "{text}"
    );
    assert!(text.contains("Segmentation fault"), "{text}");
    assert!(
        err.request_state().unwrap().target_unchanged(),
        "{:?}",
        err.request_state()
    );
    common::assert_no_criu_left().await;
    // criu killed and reaped what it had begun to restore: nothing of the tree was
    // handed to us.
    let ours = common::children_of(std::process::id() as i32);
    assert!(
        ours.is_empty(),
        "children left by the failed restore: {ours:?}"
    );
    // A failed restore removes nothing from the images.
    assert_eq!(listing(&d.images), images_before, "images changed");

    let out = env
        .criu
        .restore(restore_with_root(&d))
        .await
        .unwrap_or_else(|e| panic!("restore with root after the failed one: {e}"));
    let restored = RestoredTree { pid: out.pid };
    assert_restored(&d, restored.pid);
    drop(restored);
    common::assert_no_criu_left().await;
    assert_no_host_mount_of(&d.rootfs);
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn workload_in_freezer_and_memory_cgroups_restores_into_recreated_cgroups() {
    let env = common::env();
    const LIMIT: u64 = 512 * 1024 * 1024;
    let name = fixtures::unique_name("criu-swrk-test");
    // Declared before the workload and the restored task, so dropped after them: the
    // cgroups go once nothing runs in them.
    let freezer = Cgroup::create("freezer", &name);
    let memory = Cgroup::create("memory", &name);
    memory.write("memory.limit_in_bytes", &LIMIT.to_string());

    let mut target = env.workload(16);
    freezer.add(target.pid);
    memory.add(target.pid);
    let want = format!("/{name}");
    assert_eq!(
        fixtures::cgroup_of(target.pid, "freezer").as_deref(),
        Some(want.as_str())
    );
    assert_eq!(
        fixtures::cgroup_of(target.pid, "memory").as_deref(),
        Some(want.as_str())
    );

    let images = env.subdir("images");
    env.criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&images)
                // Freeze the whole cgroup at once instead of seizing task by task.
                .freeze_cgroup(freezer.path.to_str().unwrap())
                // Soft (criu's compiled-in default, named so the test does not lean
                // on it): dump the cgroups' properties; on restore, create missing
                // cgroups and set the properties of those criu creates. Full works as
                // well; None and Props refuse the restore ("cg: Cgroup dir
                // freezer/NAME doesn't exist"), Strict too ("Abort restore of
                // existing cgroups"), and Ignore restores into criu's own cgroups.
                .manage_cgroups(CgroupMode::Soft)
                .timeout(REQUEST_TIMEOUT),
        )
        .await
        .unwrap_or_else(|e| panic!("dump in cgroups: {e}"));
    target.reap_dumped();
    assert!(freezer.procs().is_empty() && memory.procs().is_empty());
    // The cgroups are gone: the restore must bring them back, limit and all.
    freezer.remove().expect("rmdir freezer cgroup");
    memory.remove().expect("rmdir memory cgroup");
    assert!(!freezer.path.exists() && !memory.path.exists());

    let out = env
        .criu
        .restore(
            RestoreOptions::new()
                .images_dir(&images)
                .manage_cgroups(CgroupMode::Soft)
                .timeout(REQUEST_TIMEOUT),
        )
        .await
        .unwrap_or_else(|e| panic!("restore into removed cgroups: {e}"));
    let restored = target.restored(out.pid);
    assert_eq!(
        fixtures::cgroup_of(out.pid, "freezer").as_deref(),
        Some(want.as_str()),
        "restored freezer cgroup"
    );
    assert_eq!(
        fixtures::cgroup_of(out.pid, "memory").as_deref(),
        Some(want.as_str()),
        "restored memory cgroup"
    );
    assert_eq!(memory.read("memory.limit_in_bytes"), LIMIT.to_string());
    assert_eq!(freezer.read("freezer.state"), "THAWED");
    assert_eq!(freezer.procs(), [out.pid]);
    assert_eq!(memory.procs(), [out.pid]);
    restored.assert_alive_and_intact();

    drop(restored);
    for cg in [&freezer, &memory] {
        cg.remove()
            .unwrap_or_else(|e| panic!("rmdir {}: {e}", cg.path.display()));
    }
    common::assert_no_criu_left().await;
}
