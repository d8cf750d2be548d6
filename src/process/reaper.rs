//! The one orphan reaper: children dropped before they were reaped (killed first) are
//! handed to a single thread that reaps them, with the helpers of their process
//! group, whether or not a Tokio runtime is still running. One thread for the whole
//! process, started on first use, instead of a task or a thread per dropped child.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::eventfd::{EfdFlags, EventFd};

use nix::libc;

use super::{exited_unreaped, group_members, is_subreaper, reap_now};

/// A killed child nobody waits for.
struct Orphan {
    pid: libc::pid_t,
    /// Readable once it has exited; without one (kernels before 5.3) it is polled.
    pidfd: Option<OwnedFd>,
}

struct Reaper {
    tx: Mutex<Sender<Orphan>>,
    wake: EventFd,
}

static REAPER: OnceLock<io::Result<Reaper>> = OnceLock::new();

/// Orphans handed over and not reaped yet.
static PENDING: AtomicUsize = AtomicUsize::new(0);

/// Waits up to `within` until every child handed to the reaper is reaped; whether
/// none is left.
pub(crate) fn settle(within: Duration) -> bool {
    let until = Instant::now() + within;
    while PENDING.load(Ordering::SeqCst) > 0 {
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Hands `pid` (our child, already sent SIGKILL with its group) to the reaper.
/// Falls back to a blocking wait on a thread of its own if the reaper cannot start.
pub(super) fn adopt(pid: libc::pid_t, pidfd: Option<OwnedFd>) {
    PENDING.fetch_add(1, Ordering::SeqCst);
    if !hand(Orphan { pid, pidfd }) {
        let _ = std::thread::Builder::new()
            .name("criu-waitpid".into())
            .spawn(move || {
                let mut raw = 0;
                // SAFETY: waitpid on our own unreaped child.
                unsafe { libc::waitpid(pid, &mut raw, 0) };
                PENDING.fetch_sub(1, Ordering::SeqCst);
            });
    }
}

fn hand(orphan: Orphan) -> bool {
    let reaper = REAPER.get_or_init(start);
    reaper.as_ref().ok().is_some_and(|r| {
        let sent =
            r.tx.lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(orphan)
                .is_ok();
        sent && r.wake.write(1).is_ok()
    })
}

fn start() -> io::Result<Reaper> {
    let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
    let thread_wake = wake.as_fd().try_clone_to_owned()?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("criu-reaper".into())
        .spawn(move || run(rx, thread_wake))?;
    Ok(Reaper {
        tx: Mutex::new(tx),
        wake,
    })
}

/// Groups whose leader died: members re-parented to us (a subreaper) are reaped until
/// none is left or the deadline passes (SIGKILLed members die within moments).
struct Group {
    pgid: libc::pid_t,
    until: Instant,
}

fn run(rx: Receiver<Orphan>, wake: OwnedFd) {
    let mut orphans: Vec<Orphan> = Vec::new();
    let mut groups: Vec<Group> = Vec::new();
    loop {
        // Drain the wake-up counter, then take what was handed over.
        let mut counter = [0u8; 8];
        // SAFETY: reading 8 bytes into our buffer from our non-blocking eventfd.
        unsafe { libc::read(wake.as_raw_fd(), counter.as_mut_ptr().cast(), 8) };
        orphans.extend(rx.try_iter());

        orphans.retain(|o| {
            match exited_unreaped(o.pid) {
                Ok(None) => true,
                Ok(Some(_)) => {
                    // SAFETY: the leader is a zombie of ours: its group id cannot have
                    // been reused; its helpers die with the group.
                    unsafe { libc::kill(-o.pid, libc::SIGKILL) };
                    let _ = reap_now(o.pid);
                    PENDING.fetch_sub(1, Ordering::SeqCst);
                    tracing::debug!(pid = o.pid, "reaped a dropped child");
                    if is_subreaper() {
                        groups.push(Group {
                            pgid: o.pid,
                            until: Instant::now() + Duration::from_millis(500),
                        });
                    }
                    false
                }
                // Not our child any more (reaped elsewhere): nothing to do.
                Err(_) => {
                    PENDING.fetch_sub(1, Ordering::SeqCst);
                    false
                }
            }
        });
        let me = std::process::id() as libc::pid_t;
        groups.retain(|g| {
            let mut waiting = false;
            // Never the leader: reaped already, its pid may be a new child of ours
            // (a new criu leads a group of the same number) whose status is not ours
            // to take.
            for (pid, ppid) in group_members(g.pgid) {
                if pid != g.pgid {
                    waiting |= ppid != me || matches!(reap_now(pid), Ok(None));
                }
            }
            waiting && Instant::now() < g.until
        });

        let polled = groups.is_empty() && orphans.iter().all(|o| o.pidfd.is_some());
        let timeout = if polled {
            PollTimeout::NONE
        } else {
            PollTimeout::from(10u16)
        };
        let mut fds = vec![PollFd::new(wake.as_fd(), PollFlags::POLLIN)];
        fds.extend(
            orphans
                .iter()
                .filter_map(|o| o.pidfd.as_ref())
                .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)),
        );
        let _ = poll(&mut fds, timeout);
    }
}
