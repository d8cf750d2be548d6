//! Fixtures for real-criu tests of namespaced trees and cgroups: a busybox rootfs, a
//! tree in its own namespaces pivot_rooted into it, and cgroup v1 directories.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use super::{children_of, exists, ns_pids};

/// The busybox applets the namespaced tree runs (as symlinks to /bin/busybox).
const APPLETS: &[&str] = &["sh", "sleep", "cat", "echo", "mv", "mount", "umount"];

/// Builds a minimal rootfs under `dir/rootfs`: a static busybox with the applets
/// above, the usual top-level dirs, `oldroot` for pivot_root, and a `/dev/null` node
/// of its own (stdio on the host's /dev/null would be a file on a mount the tree
/// cannot see, which criu cannot dump: `Can't lookup mount=N for fd=0`).
pub fn build_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "data", "oldroot"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir in rootfs");
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copying busybox");
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet))
            .expect("applet symlink");
    }
    let null = root.join("dev/null");
    nix::sys::stat::mknod(
        &null,
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(1, 3),
    )
    .expect("mknod dev/null");
    // mknod's mode is cut by the umask.
    std::fs::set_permissions(&null, std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .expect("chmod dev/null");
    root
}

/// Run by the host's sh as init of the new namespaces, `$1` the rootfs and `$2` the
/// hostname. unshare has made every mount private already, so nothing here reaches
/// the host. The tmpfs is mounted before pivot_root, under the rootfs. `lo` stays
/// down: criu needs it up only in the namespace criu itself runs in, not in the
/// tree's.
const SETUP: &str = r#"set -e
mount --bind "$1" "$1"
mount -t tmpfs -o size=8m tmpfs "$1/data"
hostname "$2"
cd "$1"
pivot_root . oldroot
exec /bin/busybox sh -c "$3"
"#;

/// Runs inside the rootfs: drops the host's mounts, gets stdio from the rootfs's own
/// /dev/null, then counts up in the tmpfs (the count lives in the shell's memory:
/// after a restore it goes on from the dumped value, not from 0). Renamed into place
/// so a reader never sees a half-written file.
const LOOP: &str = "umount -l /oldroot
mount -t proc proc /proc
exec </dev/null >/dev/null 2>&1
n=0
while :; do
  n=$((n+1))
  echo $n > /data/counter.tmp
  mv /data/counter.tmp /data/counter
  sleep 0.1
done";

/// A busybox tree in its own pid, mount, uts, ipc and net namespaces, pivot_rooted
/// into a rootfs with a tmpfs at /data, started as
/// `unshare --pid --mount --uts --ipc --net --fork setsid sh -c SETUP`. The
/// namespace's init and unshare are killed and reaped on drop.
pub struct NsTree {
    unshare: Option<Child>,
    /// The namespace's init (the child of unshare), as seen from here.
    pub pid: i32,
}

impl NsTree {
    /// Starts the tree and waits (up to 10 s) until it counts in its tmpfs.
    pub fn start(rootfs: &Path, hostname: &str) -> NsTree {
        let mut cmd = Command::new("unshare");
        cmd.args(["--pid", "--mount", "--uts", "--ipc", "--net", "--fork"])
            // setsid inside the namespace: a session leader outside it makes the dump
            // fail ("A session leader of <pid>(1) is outside of its pid namespace").
            .args(["setsid", "sh", "-c", SETUP, "sh"])
            .arg(rootfs)
            .args([hostname, LOOP])
            // The host's tools before pivot_root, the rootfs's /bin after.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: close_range is async-signal-safe and touches only this child.
        unsafe {
            cmd.pre_exec(|| {
                // fds the test process inherited without CLOEXEC (from whatever ran
                // cargo) point at host files the pivot_rooted tree cannot see: criu
                // could not dump them. Keep only stdio.
                nix::libc::close_range(3, u32::MAX, nix::libc::CLOSE_RANGE_CLOEXEC as i32);
                Ok(())
            });
        }
        let unshare = cmd.spawn().expect("starting unshare");
        let mut tree = NsTree {
            pid: 0,
            unshare: Some(unshare),
        };
        let unshare_pid = tree.unshare.as_ref().unwrap().id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if tree.pid == 0 {
                tree.pid = children_of(unshare_pid).first().copied().unwrap_or(0);
            }
            if tree.pid != 0 && counter(tree.pid).is_some_and(|n| n >= 2) {
                break;
            }
            if let Ok(Some(status)) = tree.unshare.as_mut().unwrap().try_wait() {
                panic!("the namespaced tree exited during its setup: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "the namespaced tree (unshare {unshare_pid}, init {}) did not start counting \
                 within 10 s",
                tree.pid
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            ns_pids(tree.pid).last().copied(),
            Some(1),
            "pid {} should be init of its PID namespace",
            tree.pid
        );
        tree
    }

    /// Reaps unshare (and the init, if it was re-parented to us) after criu killed
    /// the tree, within 10 s.
    pub fn reap_dumped(&mut self) {
        let mut unshare = self.unshare.take().expect("tree already reaped");
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = unshare.try_wait().expect("waitpid unshare") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
                let _ = unshare.kill();
                let _ = unshare.wait();
                panic!("unshare did not exit within 10 s of the dump");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(
            !status.success(),
            "unshare should report its killed child: {status}"
        );
        let _ = waitpid(Pid::from_raw(self.pid), None);
        assert!(!exists(self.pid), "init {} still exists", self.pid);
    }
}

impl Drop for NsTree {
    fn drop(&mut self) {
        if let Some(mut unshare) = self.unshare.take() {
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            let _ = unshare.kill();
            let _ = unshare.wait();
            // If unshare died before reaping the init, the init is ours now.
            let _ = waitpid(Pid::from_raw(self.pid), None);
        }
    }
}

/// The tree's counter, read through `/proc/<pid>/root` (its tmpfs is in its own mount
/// namespace), or `None` when there is none yet.
pub fn counter(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/root/data/counter"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits up to `within` for `pid`'s counter to exceed `than`; returns the value.
pub fn counter_above(pid: i32, than: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let now = counter(pid);
        if let Some(n) = now
            && n > than
        {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "counter of {pid} did not pass {than} within {within:?} (now {now:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The hostname in `pid`'s uts namespace (the host's `hostname`, run by nsenter in
/// that namespace only).
pub fn hostname_of(pid: i32) -> String {
    let out = Command::new("nsenter")
        .args(["--target", &pid.to_string(), "--uts", "hostname"])
        .stdin(Stdio::null())
        .output()
        .expect("running nsenter");
    assert!(out.status.success(), "nsenter hostname: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A unique name for this test's cgroups and hostnames.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos:08x}", std::process::id())
}

/// A cgroup v1 directory of this test (`/sys/fs/cgroup/<controller>/<name>`). On
/// drop, whatever still runs in it is thawed, killed and reaped, and the directory is
/// removed.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    /// Creates `/sys/fs/cgroup/<controller>/<name>`.
    pub fn create(controller: &str, name: &str) -> Cgroup {
        let path = Path::new("/sys/fs/cgroup").join(controller).join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Cgroup { path }
    }

    /// Moves `pid` into this cgroup.
    pub fn add(&self, pid: i32) {
        self.write("cgroup.procs", &pid.to_string());
    }

    pub fn write(&self, file: &str, value: &str) {
        let p = self.path.join(file);
        std::fs::write(&p, value).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    }

    pub fn read(&self, file: &str) -> String {
        let p = self.path.join(file);
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
            .trim()
            .to_owned()
    }

    /// The pids in this cgroup (none when it is gone).
    pub fn procs(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// Removes the directory, retrying for up to 5 s while exiting tasks still hold
    /// it (EBUSY). Returns the last error, if it never went.
    pub fn remove(&self) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        // A frozen task cannot die: thaw first (a failed dump may leave it frozen).
        let _ = std::fs::write(self.path.join("freezer.state"), "THAWED");
        for pid in self.procs() {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            // By pid: our child (a target, a restored task) or not ours (ECHILD).
            let _ = waitpid(Pid::from_raw(pid), None);
        }
        if let Err(e) = self.remove() {
            eprintln!("cannot remove {}: {e}", self.path.display());
        }
    }
}

/// The cgroup path of `pid` for a v1 `controller` (from `/proc/<pid>/cgroup`).
pub fn cgroup_of(pid: i32, controller: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()?
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == controller)
                .then(|| path.to_owned())
        })
}

/// A restored tree's root, re-parented to us: killed and reaped (by pid) on drop.
/// Killing a PID namespace's init takes the rest of its namespace with it.
pub struct RestoredTree {
    pub pid: i32,
}

impl Drop for RestoredTree {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.pid);
        let _ = kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
    }
}

/// The namespace `/proc/<pid>/ns/<ns>` names (e.g. `mnt:[4026531841]`).
pub fn ns_of(pid: i32, ns: &str) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/ns/{ns}: {e}"))
        .to_string_lossy()
        .into_owned()
}
