use super::*;
use std::io::Read;
use std::os::fd::FromRawFd;

type Starter = fn(&Path, &[String], FdPlan) -> io::Result<libc::pid_t>;

fn starters() -> Vec<(&'static str, Starter)> {
    let mut v: Vec<(&'static str, Starter)> = vec![("fork_exec", fork_exec)];
    #[cfg(target_env = "gnu")]
    v.push(("posix_spawn", posix_spawn));
    v
}

/// The child's fd table (as `ls` of the shell's own fds) and what fd 3 and 4 are.
async fn fd_table_of_child(start: Starter) -> (String, ExitStatus, String, String) {
    let (sock_ours, sock_theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let (pipe_r, pipe_w) = std::io::pipe().unwrap();
    // A stray fd without close-on-exec, as a careless library of the caller might
    // leave: it must not reach the child.
    // SAFETY: dup of our own stdin, owned right away.
    let stray = unsafe { OwnedFd::from_raw_fd(libc::dup(0)) };
    let (mut err_r, err_w) = std::io::pipe().unwrap();
    let script = "exec >&2; ls /proc/$$/fd; readlink /proc/$$/fd/3 /proc/$$/fd/4";
    let plan = FdPlan {
        stderr: err_w.into(),
        first_mapped: 3,
        mapped: vec![sock_theirs.into(), pipe_w.into()],
    };
    let pid = start(
        Path::new("/bin/sh"),
        &["-c".to_string(), script.to_string()],
        plan,
    )
    .unwrap();
    let mut child = Child::new(pid);
    let status = child.wait().await.unwrap();
    let mut out = String::new();
    err_r.read_to_string(&mut out).unwrap();
    drop(stray);
    let ino = |fd: &dyn AsRawFd| {
        std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    };
    let (sock, pipe) = (ino(&sock_ours), ino(&pipe_r));
    (out, status, sock, pipe)
}

#[tokio::test]
async fn the_child_gets_exactly_the_planned_fds() {
    for (name, start) in starters() {
        let (out, status, sock, pipe) = fd_table_of_child(start).await;
        assert!(status.success(), "{name}: {status:?} {out}");
        let mut lines = out.lines();
        let fds: Vec<&str> = lines.by_ref().take(5).collect();
        assert_eq!(fds, ["0", "1", "2", "3", "4"], "{name}: {out}");
        // fd 3 is the other end of our socket pair (same inode number, socket:[N]
        // differs by one end, so compare the kind) and fd 4 is our pipe.
        let fd3 = lines.next().unwrap_or_default();
        let fd4 = lines.next().unwrap_or_default();
        assert!(
            fd3.starts_with("socket:[") && sock.starts_with("socket:["),
            "{name}: {out}"
        );
        assert_eq!(fd4, pipe, "{name}: {out}");
    }
}

#[tokio::test]
async fn fds_sitting_on_each_others_target_numbers_are_not_clobbered() {
    // mapped[0] is at 201 and goes to 200; mapped[1] is at 200 and goes to 201.
    // Placing them one by one in place would overwrite one with the other.
    for (name, start) in starters() {
        let (r_a, w_a) = std::io::pipe().unwrap();
        let (r_b, w_b) = std::io::pipe().unwrap();
        let at = |fd: std::io::PipeWriter, n: RawFd| {
            // SAFETY: dup2 onto a high number this test owns; the result is owned.
            let r = unsafe { libc::dup2(fd.as_raw_fd(), n) };
            assert_eq!(r, n);
            unsafe { OwnedFd::from_raw_fd(n) }
        };
        let (a, b) = (at(w_a, 201), at(w_b, 200));
        let (mut err_r, err_w) = std::io::pipe().unwrap();
        let plan = FdPlan {
            stderr: err_w.into(),
            first_mapped: 200,
            mapped: vec![a, b],
        };
        let script = "exec >&2; readlink /proc/$$/fd/200 /proc/$$/fd/201";
        let pid = start(Path::new("/bin/sh"), &["-c".into(), script.into()], plan).unwrap();
        let status = Child::new(pid).wait().await.unwrap();
        let mut out = String::new();
        err_r.read_to_string(&mut out).unwrap();
        assert!(status.success(), "{name}: {status:?} {out}");
        let ino = |fd: &dyn AsRawFd| {
            std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
                .unwrap()
                .to_string_lossy()
                .into_owned()
        };
        let want = format!("{}\n{}\n", ino(&r_a), ino(&r_b));
        assert_eq!(out, want, "{name}");
    }
}

#[tokio::test]
async fn a_missing_program_is_an_error_not_a_child() {
    for (name, start) in starters() {
        let (_r, w) = std::io::pipe().unwrap();
        let plan = FdPlan {
            stderr: w.into(),
            first_mapped: 3,
            mapped: vec![],
        };
        let err = start(Path::new("/nonexistent/criu"), &[], plan).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{name}: {err}");
    }
}

#[tokio::test]
async fn kill_then_wait_reports_the_signal() {
    let mut child = sleeper();
    assert!(child.try_wait().unwrap().is_none());
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    // Reaped: the pid is gone, not a zombie.
    assert!(!Path::new(&format!("/proc/{}", child.id())).exists());
}

#[tokio::test]
async fn a_dropped_child_is_killed_and_reaped() {
    let child = sleeper();
    let pid = child.id();
    drop(child);
    let gone = async {
        while Path::new(&format!("/proc/{pid}")).exists() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("the dropped child is reaped in the background");
}

#[test]
fn a_child_dropped_outside_a_runtime_is_reaped_too() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let child = rt.block_on(async { sleeper() });
    let pid = child.id();
    drop(rt);
    drop(child);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(std::time::Instant::now() < deadline, "pid {pid} not reaped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[tokio::test]
async fn dropped_children_share_one_reaper_thread() {
    let reapers = || {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                std::fs::read_to_string(t.path().join("comm"))
                    .is_ok_and(|c| c.trim_end() == "criu-reaper" || c.trim_end() == "criu-waitpid")
            })
            .count()
    };
    let mut pids = Vec::new();
    for _ in 0..20 {
        let child = sleeper();
        pids.push(child.id());
        drop(child);
    }
    let gone = async {
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), gone)
        .await
        .expect("every dropped child is reaped");
    assert_eq!(reapers(), 1, "one reaper thread for every orphan");
}

/// `sleep 60`, with a stderr nobody reads and no fds mapped.
fn sleeper() -> Child {
    let (_r, w) = std::io::pipe().unwrap();
    let plan = FdPlan {
        stderr: w.into(),
        first_mapped: 3,
        mapped: vec![],
    };
    start(Path::new("/bin/sleep"), &["60".into()], plan).unwrap()
}
