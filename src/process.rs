//! Starting a program with an exact fd table, and reaping it without a thread.
//!
//! criu must get our socket end (and the fds passed on purpose) at fixed numbers and
//! nothing else of ours, even when other tasks of the same process spawn at the same
//! moment. On glibc this is one `posix_spawn` (a `vfork`-style clone: no copy of our
//! page tables, which a fork of a busy async process pays on every spawn) with dup2
//! file actions and `closefrom`. Elsewhere a fork with a `close_range` pre-exec step does
//! the same job. Either way the child is reaped through a pidfd watched by the runtime.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::fcntl::{FcntlArg, fcntl};
use nix::libc;
use tokio::io::unix::AsyncFd;

/// What the child's fd table holds: stdin and stdout on `/dev/null`, `stderr` at 2 and
/// `mapped[i]` at `first_mapped + i`; nothing else.
pub(crate) struct FdPlan {
    pub(crate) stderr: OwnedFd,
    pub(crate) first_mapped: RawFd,
    pub(crate) mapped: Vec<OwnedFd>,
}

/// Starts `path` with `args` (argv[0] is `path`), our environment, its own process
/// group and default signal handling, and the fd table of `plan`.
pub(crate) fn start(path: &Path, args: &[String], plan: FdPlan) -> io::Result<Child> {
    #[cfg(target_env = "gnu")]
    let pid = posix_spawn(path, args, plan)?;
    #[cfg(not(target_env = "gnu"))]
    let pid = fork_exec(path, args, plan)?;
    Ok(Child::new(pid))
}

/// Moves every fd of the plan to a number at or above `floor`, close-on-exec, so that
/// placing them at their low target numbers in the child never overwrites one that is
/// still to be placed.
fn lift(fd: OwnedFd, floor: RawFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() >= floor {
        return Ok(fd);
    }
    let raw = fcntl(&fd, FcntlArg::F_DUPFD_CLOEXEC(floor)).map_err(io::Error::from)?;
    // SAFETY: F_DUPFD_CLOEXEC returned a new fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

fn cstring(s: &OsStr) -> io::Result<CString> {
    CString::new(s.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains a NUL byte", s.to_string_lossy()),
        )
    })
}

/// argv and envp as owned C strings; the pointer arrays borrow them.
struct Argv {
    path: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

impl Argv {
    fn new(path: &Path, args: &[String]) -> io::Result<Self> {
        let path = cstring(path.as_os_str())?;
        let mut argv = vec![path.clone()];
        for a in args {
            argv.push(cstring(OsStr::new(a))?);
        }
        // A copy of the environment taken under std's lock, rather than `environ`,
        // which a concurrent `set_var` may be rewriting.
        let envp = std::env::vars_os()
            .map(|(k, v)| {
                let mut kv = k.into_encoded_bytes();
                kv.push(b'=');
                kv.extend(v.into_encoded_bytes());
                CString::new(kv)
            })
            .filter_map(std::result::Result::ok)
            .collect();
        Ok(Argv { path, argv, envp })
    }

    fn ptrs(v: &[CString]) -> Vec<*mut libc::c_char> {
        v.iter()
            .map(|c| c.as_ptr().cast_mut())
            .chain(std::iter::once(std::ptr::null_mut()))
            .collect()
    }
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(r))
    }
}

#[cfg(target_env = "gnu")]
fn posix_spawn(path: &Path, args: &[String], plan: FdPlan) -> io::Result<libc::pid_t> {
    use std::mem::MaybeUninit;

    struct Actions(libc::posix_spawn_file_actions_t);
    impl Drop for Actions {
        fn drop(&mut self) {
            // SAFETY: initialized in `posix_spawn` before this guard exists.
            unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
        }
    }
    struct Attr(libc::posix_spawnattr_t);
    impl Drop for Attr {
        fn drop(&mut self) {
            // SAFETY: as above.
            unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
        }
    }

    let argv = Argv::new(path, args)?;
    let end = plan.first_mapped + plan.mapped.len() as RawFd;
    let stderr = lift(plan.stderr, end)?;
    let mapped = plan
        .mapped
        .into_iter()
        .map(|fd| lift(fd, end))
        .collect::<io::Result<Vec<_>>>()?;
    let dev_null = c"/dev/null";

    // SAFETY: plain libc calls on structures we own; every string and fd outlives the
    // `posix_spawn` call, which copies what it needs into the child.
    unsafe {
        let mut fa = MaybeUninit::uninit();
        check(libc::posix_spawn_file_actions_init(fa.as_mut_ptr()))?;
        let mut fa = Actions(fa.assume_init());
        check(libc::posix_spawn_file_actions_addopen(
            &mut fa.0,
            0,
            dev_null.as_ptr(),
            libc::O_RDONLY,
            0,
        ))?;
        check(libc::posix_spawn_file_actions_addopen(
            &mut fa.0,
            1,
            dev_null.as_ptr(),
            libc::O_WRONLY,
            0,
        ))?;
        check(libc::posix_spawn_file_actions_adddup2(
            &mut fa.0,
            stderr.as_raw_fd(),
            2,
        ))?;
        for (i, fd) in mapped.iter().enumerate() {
            check(libc::posix_spawn_file_actions_adddup2(
                &mut fa.0,
                fd.as_raw_fd(),
                plan.first_mapped + i as RawFd,
            ))?;
        }
        // Whatever their flags here, no other fd of ours reaches the child.
        check(libc::posix_spawn_file_actions_addclosefrom_np(
            &mut fa.0, end,
        ))?;

        let mut attr = MaybeUninit::uninit();
        check(libc::posix_spawnattr_init(attr.as_mut_ptr()))?;
        let mut attr = Attr(attr.assume_init());
        let mut none = MaybeUninit::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        let mut all = MaybeUninit::uninit();
        libc::sigfillset(all.as_mut_ptr());
        check(libc::posix_spawnattr_setsigmask(&mut attr.0, none.as_ptr()))?;
        check(libc::posix_spawnattr_setsigdefault(
            &mut attr.0,
            all.as_ptr(),
        ))?;
        check(libc::posix_spawnattr_setpgroup(&mut attr.0, 0))?;
        check(libc::posix_spawnattr_setflags(
            &mut attr.0,
            (libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF) as libc::c_short,
        ))?;

        let mut pid = 0;
        let argp = Argv::ptrs(&argv.argv);
        let envp = Argv::ptrs(&argv.envp);
        check(libc::posix_spawn(
            &mut pid,
            argv.path.as_ptr(),
            &fa.0,
            &attr.0,
            argp.as_ptr(),
            envp.as_ptr(),
        ))?;
        Ok(pid)
    }
}

/// The portable path (musl and other libcs without `posix_spawn_file_actions_addclosefrom_np`):
/// fork, place the fds, mark the rest close-on-exec, exec.
#[cfg_attr(target_env = "gnu", allow(dead_code))]
fn fork_exec(path: &Path, args: &[String], plan: FdPlan) -> io::Result<libc::pid_t> {
    use command_fds::{CommandFdExt, FdMapping};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};

    let end = plan.first_mapped + plan.mapped.len() as RawFd;
    let mappings = plan
        .mapped
        .into_iter()
        .enumerate()
        .map(|(i, fd)| FdMapping {
            parent_fd: fd,
            child_fd: plan.first_mapped + i as RawFd,
        })
        .collect();
    let mut cmd = Command::new(path);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(plan.stderr))
        .process_group(0);
    cmd.fd_mappings(mappings)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    // SAFETY: the closure only makes syscalls; it does not allocate or take locks.
    unsafe {
        cmd.pre_exec(move || cloexec_from(end));
    }
    let child = cmd.spawn()?;
    // std's `Child` neither waits nor kills on drop: ours reaps it.
    Ok(child.id() as libc::pid_t)
}

/// Marks every fd from `first` up close-on-exec. Runs between fork and exec.
#[cfg_attr(target_env = "gnu", allow(dead_code))]
fn cloexec_from(first: RawFd) -> io::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: a plain syscall on our own fd table.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    // Kernels before 5.11: walk the table up to the soft limit.
    // SAFETY: getrlimit/fcntl on our own process, no allocation.
    unsafe {
        let mut lim = std::mem::zeroed::<libc::rlimit>();
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(65536) as RawFd
        } else {
            1024
        };
        for fd in first..max {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
    Ok(())
}

/// A child process of ours, reaped by [`Child::wait`], or by the one orphan reaper
/// (`reaper.rs`) when dropped before that (killed first). It leads its own process group (see [`start`]): a kill
/// reaches every process in that group, criu's helpers included.
#[derive(Debug)]
pub(crate) struct Child {
    pid: libc::pid_t,
    /// Readable once the child has exited; `None` on kernels before 5.3, where `wait`
    /// polls instead.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    /// We sent SIGKILL to its group.
    killed: bool,
}

impl Child {
    fn new(pid: libc::pid_t) -> Self {
        // SAFETY: pidfd_open on a child we have not reaped (its pid cannot be reused).
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let pidfd = (raw >= 0)
            .then(|| {
                // SAFETY: a fresh fd returned by the kernel, owned by nothing else.
                let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as RawFd) };
                // Watching it needs a runtime; without one `fd` is closed here.
                tokio::runtime::Handle::try_current().ok()?;
                // SAFETY: the OwnedFd keeps that same fd open for the AsyncFd's life.
                unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
            })
            .flatten();
        Child {
            pid,
            pidfd,
            status: None,
            killed: false,
        }
    }

    pub(crate) fn id(&self) -> i32 {
        self.pid
    }

    /// Reaps the child if it has exited.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = reap_now(self.pid)?;
        }
        Ok(self.status)
    }

    /// Waits for the child to exit and reaps it. After a kill, or a death by a signal,
    /// the rest of its process group (criu's helpers) is killed too, while the dead
    /// leader still holds the group's id, and what of it was re-parented to us is
    /// reaped.
    ///
    /// Cancel safe: dropping the future leaves the child as it was.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let mut backoff = Duration::from_millis(1);
        loop {
            if let Some(s) = self.status {
                return Ok(s);
            }
            if let Some(signaled) = exited_unreaped(self.pid)? {
                let group_too = self.killed || signaled;
                if group_too {
                    // SAFETY: the leader is a zombie of ours: the group id cannot
                    // have been reused.
                    unsafe { libc::kill(-self.pid, libc::SIGKILL) };
                }
                let status = reap_now(self.pid)?
                    .ok_or_else(|| io::Error::other("the child exited but could not be reaped"))?;
                self.status = Some(status);
                if group_too {
                    reap_group_orphans(self.pid).await;
                }
                return Ok(status);
            }
            match &self.pidfd {
                Some(fd) => {
                    let mut ready = fd.readable().await?;
                    if exited_unreaped(self.pid)?.is_none() {
                        ready.clear_ready();
                    }
                }
                None => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Completes once the child has exited, without reaping it (so `wait` still
    /// sees it). Pending forever once it is reaped.
    pub(crate) async fn exited(&self) {
        if self.status.is_some() {
            return std::future::pending().await;
        }
        let mut backoff = Duration::from_millis(1);
        loop {
            if matches!(exited_unreaped(self.pid), Ok(Some(_)) | Err(_)) {
                return;
            }
            match &self.pidfd {
                Some(fd) => match fd.readable().await {
                    Ok(mut ready) => {
                        if !matches!(exited_unreaped(self.pid), Ok(Some(_)) | Err(_)) {
                            ready.clear_ready();
                        }
                    }
                    Err(_) => return,
                },
                None => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(50));
                }
            }
        }
    }

    /// Sends SIGKILL to the child's whole process group (criu and the helpers it
    /// forked) unless the child is already reaped; `wait` still has to reap.
    pub(crate) fn start_kill(&mut self) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        self.killed = true;
        // SAFETY: the pid is our unreaped child and the leader of its own group (set
        // at spawn), so the group id names that group still.
        if unsafe { libc::kill(-self.pid, libc::SIGKILL) } == 0 {
            return Ok(());
        }
        // SAFETY: as above, for the child alone (its group is gone if it left it).
        if unsafe { libc::kill(self.pid, libc::SIGKILL) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// After the leader of process group `pgid` died: reaps the members of that group
/// that were re-parented to us. Only a child subreaper (as container runtimes are)
/// inherits them; anyone else leaves them to init, and this returns at once.
async fn reap_group_orphans(pgid: libc::pid_t) {
    if !is_subreaper() {
        return;
    }
    // SIGKILLed members die within moments; re-parenting follows their parent's exit.
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    loop {
        let members = group_members(pgid);
        let me = std::process::id() as libc::pid_t;
        let mut waiting = false;
        for (pid, ppid) in members {
            if ppid == me {
                if matches!(reap_now(pid), Ok(None)) {
                    waiting = true;
                }
            } else {
                waiting = true;
            }
        }
        if !waiting || std::time::Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn is_subreaper() -> bool {
    let mut on: libc::c_int = 0;
    // SAFETY: PR_GET_CHILD_SUBREAPER writes one int through the pointer we own.
    let r = unsafe { libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut on as *mut libc::c_int) };
    r == 0 && on != 0
}

/// The processes in group `pgid`, with their parents, from /proc.
fn group_members(pgid: libc::pid_t) -> Vec<(libc::pid_t, libc::pid_t)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
        let (ppid, pgrp) = parent_and_group(pid)?;
        (pgrp == pgid).then_some((pid, ppid))
    })
    .collect()
}

/// A process's parent and process group, from `/proc/PID/stat` (fields 4 and 5, after
/// the command name, which may hold spaces and parentheses).
fn parent_and_group(pid: libc::pid_t) -> Option<(libc::pid_t, libc::pid_t)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut rest = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let _state = rest.next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgrp = rest.next()?.parse().ok()?;
    Some((ppid, pgrp))
}

/// A process that is not our child (a restored tree's root), held through a pidfd so
/// that a signal never reaches another process that reused its pid.
#[derive(Debug)]
pub(crate) struct Held {
    pid: libc::pid_t,
    fd: OwnedFd,
}

impl Held {
    /// Holds `pid` if it is a child of one of `parents` (criu, or us for a tree
    /// restored as our child): a restored root is, when criu names it. A pid that is
    /// not (a peer's mistake, or worse) is never held, so never killed.
    pub(crate) fn child_of(pid: i32, parents: &[i32]) -> Option<Self> {
        let parent_ok = || parent_and_group(pid).is_some_and(|(ppid, _)| parents.contains(&ppid));
        if pid <= 1 || !parent_ok() {
            return None;
        }
        // SAFETY: pidfd_open has no memory effects; a failure is just -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if raw < 0 {
            return None;
        }
        let held = Held {
            pid,
            // SAFETY: a fresh fd returned by the kernel, owned by nothing else.
            fd: unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw as RawFd) },
        };
        // Checked again now that the pidfd pins the process: the pid was not reused
        // in between by someone else's process.
        parent_ok().then_some(held)
    }

    /// Holds `pid`, a tree root criu is restoring for us (at its `post-restore` hook):
    /// its parent is us or a criu of ours. Held from then on, it can be killed later
    /// wherever it has been re-parented.
    pub(crate) fn restored_here(pid: i32) -> Option<Self> {
        let me = std::process::id() as i32;
        let (ppid, _) = parent_and_group(pid)?;
        let ours = ppid == me || parent_and_group(ppid).is_some_and(|(pp, _)| pp == me);
        if !ours {
            return None;
        }
        Self::child_of(pid, &[ppid])
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// SIGKILLs the process and every descendant it has now.
    pub(crate) fn kill_tree(&self) {
        let descendants = descendants(self.pid);
        // SAFETY: a signal through our own pidfd; no memory is passed.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        for pid in descendants {
            // SAFETY: plain kill; these were the root's live descendants a moment ago.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Every descendant of `pid`, from `/proc/PID/task/TID/children`.
fn descendants(pid: libc::pid_t) -> Vec<libc::pid_t> {
    let mut out = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let path = task.path().join("children");
            let Ok(children) = std::fs::read_to_string(path) else {
                continue;
            };
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                if !out.contains(&child) {
                    out.push(child);
                    todo.push(child);
                }
            }
        }
    }
    out
}

/// Whether the child has exited, without reaping it (`waitid` with `WNOWAIT`): `None`
/// while it runs, else whether a signal ended it.
fn exited_unreaped(pid: libc::pid_t) -> io::Result<Option<bool>> {
    // SAFETY: a zeroed siginfo_t is a valid out-parameter for waitid.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child, writing into `info`, which we own.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: waitid filled in si_pid (0 when the child has not exited).
    if unsafe { info.si_pid() } == 0 {
        return Ok(None);
    }
    Ok(Some(matches!(
        info.si_code,
        libc::CLD_KILLED | libc::CLD_DUMPED
    )))
}

/// `waitpid(pid, WNOHANG)`: the status if the child had exited (it is reaped now).
fn reap_now(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    let mut raw = 0;
    // SAFETY: waitpid on our own unreaped child.
    match unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) } {
        0 => Ok(None),
        r if r < 0 => Err(io::Error::last_os_error()),
        _ => Ok(Some(ExitStatus::from_raw(raw))),
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if !matches!(self.try_wait(), Ok(None)) {
            return;
        }
        let _ = self.start_kill();
        // Stop watching the pidfd here (the reaper polls it on its own thread).
        let pidfd = self.pidfd.take().map(AsyncFd::into_inner);
        reaper::adopt(self.pid, pidfd);
    }
}

mod reaper;
pub(crate) use reaper::settle;
#[cfg(test)]
mod tests;

/// For a program about to exit: waits up to `within` until the criu processes it
/// dropped earlier (killed, and handed to a background thread to reap) are reaped,
/// so that none outlives it as a zombie of its own parent. Returns whether none is
/// left.
///
/// Dropping a [`Session`](crate::Session), a [`LazyPages`](crate::lazy::LazyPages)
/// or an unfinished request kills criu at once; the reaping happens on a thread of
/// the crate's, which the process exiting would cut short.
///
/// # Example
/// ```no_run
/// # async fn work() {}
/// # async fn run() {
/// work().await;
/// criu_swrk::reap_dropped(std::time::Duration::from_secs(2));
/// # }
/// ```
pub fn reap_dropped(within: std::time::Duration) -> bool {
    settle(within)
}
