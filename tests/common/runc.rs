//! Fixtures for tests of runc containers: an OCI bundle with a busybox rootfs, a
//! container started by `runc run --detach` with its stdio on pipes or a pty, and
//! runc's own checkpoint and restore, the baseline the library is measured against.
//!
//! Containers are runc's (its state under /run/runc, its cgroups), so ids must be
//! unique on the machine: use [`unique_id`].

use std::collections::BTreeMap;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, kill};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use serde_json::{Value, json};

use super::TickReader;

/// How long any single runc command may take before the fixture gives up on it.
const RUNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What the default loop writes its counter into, under /data and /scratch.
pub const COUNTER_FILE: &str = "counter";

/// The busybox applets the default loop and a debugging shell need.
const APPLETS: &[&str] = &["sh", "sleep", "echo", "cat", "mv", "ls", "ps"];

/// The criu configuration a bundle gets by default. runc 1.1.5 sets no network lock
/// method, so criu would run `iptables-restore` (not installed here) to lock the
/// container's net namespace and fail the dump; a config file named by the bundle's
/// `org.criu.config` annotation is the one way runc offers to change that.
pub const DEFAULT_CRIU_CONFIG: &str = "network-lock nftables\n";

/// What kind of container a [`Bundle`] describes.
#[derive(Clone, Debug)]
pub struct BundleSpec {
    /// `process.terminal`: runc gives the container a pty and sends its master to
    /// a console socket.
    pub terminal: bool,
    /// The container's command; `None` runs [`default_loop`].
    pub args: Option<Vec<String>>,
    /// A host directory bind-mounted read-write at /data.
    pub volume: Option<PathBuf>,
    /// A tmpfs at /scratch.
    pub tmpfs: bool,
    /// One more entry for `mounts`, as given (e.g. a ramfs criu cannot dump).
    pub extra_mount: Option<Value>,
    /// Join the cgroup namespace at this path (see [`CgroupNs`]).
    pub cgroup_ns_path: Option<PathBuf>,
    /// The criu configuration file written into the bundle and named by the
    /// `org.criu.config` annotation; `None` leaves the annotation out (runc then
    /// names /etc/criu/runc.conf).
    pub criu_config: Option<String>,
}

impl Default for BundleSpec {
    fn default() -> Self {
        BundleSpec {
            terminal: false,
            args: None,
            volume: None,
            tmpfs: false,
            extra_mount: None,
            cgroup_ns_path: None,
            criu_config: Some(DEFAULT_CRIU_CONFIG.to_string()),
        }
    }
}

/// The default command: `tick N` once per 100 ms on stdout, N counting from 0, and
/// the same line into /data/counter and /scratch/counter when those are mounted
/// (replaced by rename, so a reader never sees a half-written file).
pub fn default_loop(volume: bool, tmpfs: bool) -> Vec<String> {
    let mut body = String::from(r#"echo "tick $i"; "#);
    for (mounted, dir) in [(volume, "/data"), (tmpfs, "/scratch")] {
        if mounted {
            body += &format!(
                r#"echo "tick $i" > {dir}/{COUNTER_FILE}.new; mv {dir}/{COUNTER_FILE}.new {dir}/{COUNTER_FILE}; "#
            );
        }
    }
    let script = format!("i=0; while :; do {body}i=$((i+1)); sleep 0.1; done");
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// An OCI bundle: `config.json` and a busybox rootfs.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub spec: BundleSpec,
}

impl Bundle {
    /// Builds a bundle in `dir` (created; must not hold a config.json yet): runc
    /// spec's defaults (pid, net, ipc, uts and mount namespaces, the net namespace
    /// with only lo), edited for `spec`, with a writable root.
    pub fn build(dir: &Path, spec: BundleSpec) -> Bundle {
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir rootfs/bin");
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("copying busybox");
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))
                .expect("applet symlink");
        }
        let out = run_bounded(
            Command::new("runc").arg("spec").arg("--bundle").arg(dir),
            RUNC_TIMEOUT,
        );
        assert!(out.ok, "runc spec --bundle {}: {}", dir.display(), out.text);

        let config_path = dir.join("config.json");
        let mut config: Value =
            serde_json::from_slice(&std::fs::read(&config_path).expect("reading config.json"))
                .expect("parsing runc spec's config.json");
        config["process"]["terminal"] = json!(spec.terminal);
        config["process"]["args"] = json!(
            spec.args
                .clone()
                .unwrap_or_else(|| default_loop(spec.volume.is_some(), spec.tmpfs))
        );
        config["root"]["readonly"] = json!(false);
        let mounts = config["mounts"]
            .as_array_mut()
            .expect("config.json has mounts");
        if let Some(volume) = &spec.volume {
            mounts.push(json!({
                "destination": "/data",
                "type": "bind",
                "source": volume,
                "options": ["rbind", "rw"],
            }));
        }
        if spec.tmpfs {
            mounts.push(json!({
                "destination": "/scratch",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777", "size=16m"],
            }));
        }
        if let Some(extra) = &spec.extra_mount {
            mounts.push(extra.clone());
        }
        if let Some(path) = &spec.cgroup_ns_path {
            config["linux"]["namespaces"]
                .as_array_mut()
                .expect("config.json has namespaces")
                .push(json!({"type": "cgroup", "path": path}));
        }
        if let Some(criu_config) = &spec.criu_config {
            let file = dir.join("criu.conf");
            std::fs::write(&file, criu_config).expect("writing criu.conf");
            config["annotations"] = json!({ "org.criu.config": file });
        }
        std::fs::write(
            &config_path,
            serde_json::to_vec_pretty(&config).expect("serializing config.json"),
        )
        .expect("writing config.json");
        Bundle {
            dir: dir.to_path_buf(),
            rootfs,
            spec,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }

    /// The bundle's config.json as it is now.
    pub fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.config_path()).expect("reading config.json"))
            .expect("parsing config.json")
    }
}

/// A container id no other test (nor another test run) is using: `PREFIX-PID-N`.
pub fn unique_id(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether runc can be used. Outside CI a missing runc skips the test (false); in CI
/// it is a failure.
pub fn runc_available() -> bool {
    let ok = Command::new("runc")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // These tests run only when asked for (--include-ignored): missing runc fails them.
    assert!(ok, "runc is missing: scripts/install-deps installs it");
    ok
}

/// What a bounded command did.
pub struct Outcome {
    pub ok: bool,
    /// stdout then stderr.
    pub text: String,
}

/// Runs `cmd` with stdout and stderr captured, killing it after `timeout` (a panic:
/// every runc command here finishes in well under a second).
fn run_bounded(cmd: &mut Command, timeout: Duration) -> Outcome {
    // Files, not pipes: nothing has to drain them while we poll, and a daemon the
    // command leaves behind cannot keep us waiting for EOF.
    let out = tempfile::tempfile().expect("tempfile");
    let err = out.try_clone().expect("dup");
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(err);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let status = wait_bounded(&mut child, timeout)
        .unwrap_or_else(|| panic!("{cmd:?} did not finish within {timeout:?}"));
    let mut out = out;
    let mut text = String::new();
    std::io::Seek::rewind(&mut out).expect("rewind");
    std::io::Read::read_to_string(&mut out, &mut text).expect("reading output");
    Outcome {
        ok: status.success(),
        text,
    }
}

/// Waits for `child` up to `timeout`; on timeout kills and reaps it and returns None.
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("waitpid") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A runc command line with the global flags every invocation gets.
fn runc(log: Option<&Path>, debug: bool) -> Command {
    let mut cmd = Command::new("runc");
    if let Some(log) = log {
        cmd.arg("--log").arg(log);
    }
    if debug {
        cmd.arg("--debug");
    }
    // The criu the library finds, so runc and the library use the same binary.
    if let Ok(criu) = criu_swrk::Criu::new().binary() {
        cmd.arg("--criu").arg(criu);
    }
    cmd
}

/// `runc state ID` as JSON (`ociVersion`, `id`, `pid`, `status`, `bundle`,
/// `rootfs`, `created`, `owner`); `Value::Null` when runc knows no such container.
pub fn runc_state(id: &str) -> Value {
    try_runc_state(id).unwrap_or_else(|e| panic!("{e}"))
}

/// [`runc_state`] without panicking on runc's failures (for drops).
fn try_runc_state(id: &str) -> Result<Value, String> {
    let out = run_bounded(runc(None, false).args(["state", id]), RUNC_TIMEOUT);
    if !out.ok {
        if out.text.contains("does not exist") {
            return Ok(Value::Null);
        }
        return Err(format!("runc state {id}: {}", out.text));
    }
    serde_json::from_str(&out.text).map_err(|e| format!("runc state {id}: {e}: {}", out.text))
}

/// The cgroup of `pid` in `controller` ("memory", "name=systemd", "" for the v2
/// hierarchy), as `/proc/<pid>/cgroup` shows it from here.
pub fn cgroup_of(pid: i32, controller: &str) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let found = if controller.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == controller)
        };
        found.then(|| path.to_string())
    })
}

/// The host directory of cgroup `path` of `controller` on this machine's layout
/// (v1 controllers under /sys/fs/cgroup/<ctrl>, v2 at /sys/fs/cgroup/unified).
pub fn cgroup_dir(controller: &str, path: &str) -> PathBuf {
    let mount = match controller {
        "" => "unified",
        c => c.strip_prefix("name=").unwrap_or(c),
    };
    Path::new("/sys/fs/cgroup")
        .join(mount)
        .join(path.trim_start_matches('/'))
}

/// The criu options runc set, from its `--debug` log: runc logs
/// `CRIU option NAME with value VALUE` for every field of the request (the unset
/// ones with their defaults) just before sending it. Keys are the Go field names
/// (`ExtMnt`, `FreezeCgroup`, ...), values as Go prints them.
pub fn criu_options(runc_debug_log: &str) -> BTreeMap<String, String> {
    runc_debug_log
        .lines()
        .filter_map(|line| {
            let msg = line.split_once("msg=\"CRIU option ")?.1;
            let (name, rest) = msg.split_once(" with value ")?;
            let value = rest.rsplit_once("\" func=").map_or(rest, |(v, _)| v);
            Some((name.to_string(), value.replace("\\\"", "\"")))
        })
        .collect()
}

/// How runc was asked to checkpoint or restore, and what it logged.
pub struct RuncRun {
    /// runc's `--debug` log of the operation.
    pub log: String,
    /// [`criu_options`] of that log.
    pub options: BTreeMap<String, String>,
}

/// A container started (or restored) by runc, detached. On drop: `runc kill ID
/// KILL`, `runc delete -f ID`, the init reaped (it is re-parented to us, the
/// subreaper, when runc exits), the console socket removed.
pub struct Container {
    pub id: String,
    pub bundle: Bundle,
    pid: i32,
    /// The write end of the container's stdin pipe (not a terminal).
    pub stdin: Option<OwnedFd>,
    /// The read end of the container's stdout pipe (not a terminal).
    pub stdout: Option<TickReader>,
    /// The read end of the container's stderr pipe (not a terminal).
    pub stderr: Option<TickReader>,
    /// The pty master runc sent to the console socket (terminal); kept open, since
    /// closing it hangs up the container's terminal.
    pub console: Option<TickReader>,
    console_socket: Option<PathBuf>,
}

/// Sequence numbers for the runc log files of one test process.
static LOG_SEQ: AtomicUsize = AtomicUsize::new(0);

fn log_path(bundle: &Bundle, id: &str, op: &str) -> PathBuf {
    let n = LOG_SEQ.fetch_add(1, Ordering::Relaxed);
    bundle.dir.join(format!("runc-{id}-{op}-{n}.log"))
}

/// The stdio a container gets: pipes (our ends kept), or a console socket.
enum Stdio3 {
    Pipes {
        stdin: OwnedFd,
        stdout: OwnedFd,
        stderr: OwnedFd,
    },
    Console {
        socket: PathBuf,
        listener: UnixListener,
    },
}

impl Stdio3 {
    /// Sets up `cmd`'s stdio for the container and returns what we keep.
    fn prepare(bundle: &Bundle, id: &str, cmd: &mut Command) -> Stdio3 {
        if bundle.spec.terminal {
            let socket = bundle.dir.join(format!("console-{id}.sock"));
            let _ = std::fs::remove_file(&socket);
            let listener = UnixListener::bind(&socket).expect("binding the console socket");
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            cmd.arg("--console-socket").arg(&socket);
            cmd.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            Stdio3::Console { socket, listener }
        } else {
            // CLOEXEC on both ends: the child gets its ends through dup2 only, so no
            // other child (criu) inherits our ends and keeps a pipe from reaching EOF.
            let pipe = || nix::unistd::pipe2(OFlag::O_CLOEXEC).expect("pipe2");
            let (in_r, in_w) = pipe();
            let (out_r, out_w) = pipe();
            let (err_r, err_w) = pipe();
            cmd.stdin(Stdio::from(in_r))
                .stdout(Stdio::from(out_w))
                .stderr(Stdio::from(err_w));
            Stdio3::Pipes {
                stdin: in_w,
                stdout: out_r,
                stderr: err_r,
            }
        }
    }
}

/// Receives the pty master runc sends over the console socket (one SCM_RIGHTS fd,
/// the data being a name runc gives it), within `timeout`.
fn receive_master(listener: &UnixListener, timeout: Duration) -> OwnedFd {
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "runc sent no pty master within {timeout:?}"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accepting on the console socket: {e}"),
        }
    };
    stream.set_nonblocking(false).expect("blocking stream");
    stream.set_read_timeout(Some(timeout)).expect("SO_RCVTIMEO");
    let mut name = [0u8; 256];
    let mut iov = [IoSliceMut::new(&mut name)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .expect("recvmsg on the console socket");
    let mut fds = Vec::new();
    for c in msg.cmsgs().expect("control data truncated") {
        if let ControlMessageOwned::ScmRights(rights) = c {
            // SAFETY: the kernel just installed these fds in our table for us.
            fds.extend(
                rights
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    assert_eq!(
        fds.len(),
        1,
        "runc should send exactly one fd, the pty master"
    );
    fds.pop().unwrap()
}

impl Container {
    /// `runc run --detach --bundle B ID`, stdio on pipes or (terminal) a console
    /// socket. Panics, with runc's log, if the container does not start.
    pub fn run(bundle: &Bundle, id: &str) -> Container {
        let log = log_path(bundle, id, "run");
        let mut cmd = runc(Some(&log), false);
        cmd.args(["run", "--detach"]);
        let stdio = Stdio3::prepare(bundle, id, &mut cmd);
        cmd.arg("--bundle").arg(&bundle.dir).arg(id);
        Self::start(bundle, id, cmd, stdio, &log).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `runc delete -f ID` (if runc still knows it) and `runc --debug restore
    /// --detach --image-path IMAGES --bundle B ID` with fresh pipes or the console
    /// socket. Returns runc's error (its log and criu's) if the restore fails.
    pub fn restore(
        bundle: &Bundle,
        id: &str,
        images: &Path,
    ) -> Result<(Container, RuncRun), String> {
        let _ = run_bounded(runc(None, false).args(["delete", "-f", id]), RUNC_TIMEOUT);
        let log = log_path(bundle, id, "restore");
        let mut cmd = runc(Some(&log), true);
        cmd.args(["restore", "--detach", "--image-path"])
            .arg(images);
        let stdio = Stdio3::prepare(bundle, id, &mut cmd);
        cmd.arg("--bundle").arg(&bundle.dir).arg(id);
        let container = Self::start(bundle, id, cmd, stdio, &log)
            .map_err(|e| format!("{e}\n{}", criu_errors(&images.join("restore.log"))))?;
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        let options = criu_options(&log);
        Ok((container, RuncRun { log, options }))
    }

    fn start(
        bundle: &Bundle,
        id: &str,
        mut cmd: Command,
        stdio: Stdio3,
        log: &Path,
    ) -> Result<Container, String> {
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        // Our copies of the child's pipe ends live in `cmd`: close them now, or the
        // container's stdout would never reach EOF.
        drop(cmd);
        let status = wait_bounded(&mut child, RUNC_TIMEOUT)
            .ok_or_else(|| format!("runc did not finish within {RUNC_TIMEOUT:?}"))?;
        let mut container = Container {
            id: id.to_string(),
            bundle: bundle.clone(),
            pid: 0,
            stdin: None,
            stdout: None,
            stderr: None,
            console: None,
            console_socket: None,
        };
        let runc_log = || std::fs::read_to_string(log).unwrap_or_default();
        match stdio {
            Stdio3::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                container.stdin = Some(stdin);
                container.stdout = Some(TickReader::new(stdout));
                container.stderr = Some(TickReader::new(stderr));
                if !status.success() {
                    return Err(format!("runc failed ({status}): {}", runc_log()));
                }
            }
            Stdio3::Console { socket, listener } => {
                container.console_socket = Some(socket);
                if !status.success() {
                    return Err(format!("runc failed ({status}): {}", runc_log()));
                }
                container.console = Some(TickReader::new(receive_master(
                    &listener,
                    Duration::from_secs(10),
                )));
            }
        }
        let state = runc_state(id);
        container.pid = state["pid"]
            .as_i64()
            .ok_or_else(|| format!("runc state {id} has no pid: {state}"))?
            as i32;
        if state["status"] != "running" {
            return Err(format!("container {id} is not running: {state}"));
        }
        Ok(container)
    }

    /// The container init's host pid (`runc state`'s pid when it started).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// `runc state ID` now.
    pub fn state(&self) -> Value {
        runc_state(&self.id)
    }

    /// The reader of the container's output: its stdout pipe or its pty master.
    pub fn output(&mut self) -> &mut TickReader {
        self.stdout
            .as_mut()
            .or(self.console.as_mut())
            .expect("the container's output was taken")
    }

    /// `runc --debug checkpoint --image-path IMAGES [--leave-running] ID`. Returns
    /// runc's debug log, or its error with criu's error lines. Without
    /// `leave_running` runc destroys the container afterwards (state and cgroups
    /// gone); the killed init is reaped here.
    pub fn checkpoint(&mut self, images: &Path, leave_running: bool) -> Result<RuncRun, String> {
        let log = log_path(&self.bundle, &self.id, "checkpoint");
        let mut cmd = runc(Some(&log), true);
        cmd.args(["checkpoint", "--image-path"]).arg(images);
        if leave_running {
            cmd.arg("--leave-running");
        }
        cmd.arg(&self.id);
        let out = run_bounded(&mut cmd, RUNC_TIMEOUT);
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        if !out.ok {
            return Err(format!(
                "runc checkpoint {}: {}\n{}",
                self.id,
                out.text,
                criu_errors(&images.join("dump.log"))
            ));
        }
        if !leave_running {
            self.reap(Duration::from_secs(10));
        }
        let options = criu_options(&log);
        Ok(RuncRun { log, options })
    }

    /// Reaps the init if it is our child and has exited (or exits within
    /// `within`); true when it is gone.
    fn reap(&mut self, within: Duration) -> bool {
        if self.pid <= 0 {
            return true;
        }
        let deadline = Instant::now() + within;
        loop {
            // By pid, never -1: tokio reaps its own children (criu).
            match waitpid(Pid::from_raw(self.pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(WaitStatus::StillAlive) => return false,
                // Reaped, or not our child (someone else's to reap).
                _ => {
                    self.pid = 0;
                    return true;
                }
            }
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // The id may belong to a newer container by now (this one checkpointed, then
        // restored under the same id): leave a running container with another pid
        // alone.
        let runc_knows_ours = match try_runc_state(&self.id) {
            Ok(Value::Null) => false,
            Ok(state) => {
                (self.pid > 0 && state["pid"].as_i64() == Some(i64::from(self.pid)))
                    || state["status"] != "running"
            }
            Err(_) => true,
        };
        if runc_knows_ours {
            let _ = run_bounded(
                runc(None, false).args(["kill", &self.id, "KILL"]),
                RUNC_TIMEOUT,
            );
            let _ = run_bounded(
                runc(None, false).args(["delete", "-f", &self.id]),
                RUNC_TIMEOUT,
            );
        }
        if !self.reap(Duration::from_secs(5)) {
            // runc lost track of it (e.g. after a dump runc did not make): our child
            // still, so the pid cannot have been reused.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGKILL);
            self.reap(Duration::from_secs(5));
        }
        if let Some(socket) = &self.console_socket {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// criu's `Error` lines in the log at `path` (dump.log / restore.log in the images
/// directory, where runc has criu write them), for failure messages.
pub fn criu_errors(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    format!(
        "{} ({} error lines):\n{}",
        path.display(),
        errors.len(),
        errors.join("\n")
    )
}

/// A cgroup namespace kept alive by a bind mount of its nsfs file (`unshare
/// --cgroup=PATH true`), for [`BundleSpec::cgroup_ns_path`]. Unmounted on drop.
pub struct CgroupNs {
    pub path: PathBuf,
}

impl CgroupNs {
    /// Creates the namespace (rooted at our cgroups) at `path`, a new file.
    pub fn create(path: &Path) -> CgroupNs {
        std::fs::write(path, b"").expect("creating the nsfs mountpoint");
        let mut cmd = Command::new("unshare");
        cmd.arg(format!("--cgroup={}", path.display())).arg("true");
        let out = run_bounded(&mut cmd, RUNC_TIMEOUT);
        assert!(out.ok, "unshare --cgroup: {}", out.text);
        CgroupNs {
            path: path.to_path_buf(),
        }
    }

    /// The namespace's inode, as criu names it (`cgroup[INO]`).
    pub fn inode(&self) -> u64 {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&self.path).expect("stat nsfs"))
    }
}

impl Drop for CgroupNs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
        let _ = std::fs::remove_file(&self.path);
    }
}
