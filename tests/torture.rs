//! The torture suite, against real criu and real processes (root): every way a dump
//! can be cut short, and whether the driver then tells the truth. After each attempt
//! the suite looks at what really happened: a target that still runs must run intact
//! and leave no images that look complete; a target that is gone must have left a
//! dump that restores intact; and what the driver reported (untouched, rolled back,
//! committed) must match. A lost target or a misreported outcome fails the suite.
//!
//! CI runs a small form; `scripts/torture` runs the long one. Knobs (environment):
//! `TORTURE_MIB` (target size for the timed runs, default 256), `TORTURE_MOMENTS`
//! (moments per way of cutting a dump short, default 5), `TORTURE_KILLS` (SIGKILLs of
//! criu, default 6), `TORTURE_DRIVER_KILLS` (SIGKILLs of the driver, default 5),
//! `TORTURE_SESSIONS` (default 1000). Each test prints one `TORTURE` line with its
//! figures.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criu_swrk::{
    CancellationToken, DumpOptions, Notification, Reply, RequestState, RestoreOptions,
};

const CLI: &str = env!("CARGO_BIN_EXE_criu-swrk");

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the suite saw, for its summary line and its verdict.
#[derive(Default)]
struct Tally {
    runs: usize,
    untouched: usize,
    rolled_back: usize,
    committed: usize,
    unknown: usize,
    /// Dropped requests (nothing reported) whose target ran on.
    dropped_ran_on: usize,
    /// Staging directories a killed driver left beside the images directory.
    staging_left: usize,
    lost: Vec<String>,
    misreported: Vec<String>,
}

impl Tally {
    fn count(&mut self, reported: Option<RequestState>) {
        self.runs += 1;
        match reported {
            Some(RequestState::Untouched) => self.untouched += 1,
            Some(RequestState::RolledBack) => self.rolled_back += 1,
            Some(RequestState::Committed) => self.committed += 1,
            Some(_) => self.unknown += 1,
            None => {}
        }
    }

    /// Prints the summary line and fails on any lost target or misreported outcome.
    fn verdict(&self, test: &str) {
        println!(
            "TORTURE {test}: {} runs: {} untouched, {} rolled back, {} committed (restored \
             intact), {} unknown, {} dropped and ran on, {} staging dirs left; lost {}, \
             misreported {}",
            self.runs,
            self.untouched,
            self.rolled_back,
            self.committed,
            self.unknown,
            self.dropped_ran_on,
            self.staging_left,
            self.lost.len(),
            self.misreported.len()
        );
        assert!(
            self.lost.is_empty(),
            "{test}: lost targets: {:#?}",
            self.lost
        );
        assert!(
            self.misreported.is_empty(),
            "{test}: misreported outcomes: {:#?}",
            self.misreported
        );
    }
}

/// Where a complete dump for `images` is: `images` itself, or a staging sibling left
/// by a driver killed between the commit and the rename.
fn complete_dump(images: &Path) -> Option<PathBuf> {
    if images.join("inventory.img").exists() {
        return Some(images.to_path_buf());
    }
    let name = format!(".{}.partial-", images.file_name()?.to_string_lossy());
    std::fs::read_dir(images.parent()?)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&name))
                && p.join("inventory.img").exists()
        })
}

/// Judges one attempt at dumping `target` (without leave_running) into `images`, which
/// the driver reported as `reported` (`None`: nobody heard, a drop or a killed driver).
async fn judge(
    env: &common::Env,
    target: &mut common::Target,
    images: &Path,
    reported: Option<RequestState>,
    what: &str,
    tally: &mut Tally,
) {
    tally.count(reported);
    common::reap_orphaned_criu().await;
    common::assert_no_criu_left().await;
    let gone = target.gone_within(Duration::from_millis(500)).await;
    let dump = complete_dump(images);
    if !gone {
        if let Err(e) = target.check_alive_and_intact() {
            tally
                .lost
                .push(format!("{what}: the target runs on damaged: {e}"));
        }
        match &dump {
            // A killed driver's staging directory: hidden, never the final name.
            Some(dir) if dir != images => tally.staging_left += 1,
            Some(dir) => tally.misreported.push(format!(
                "{what}: the target runs on, yet {} holds a complete dump",
                dir.display()
            )),
            None => {}
        }
        match reported {
            Some(RequestState::Committed) => tally.misreported.push(format!(
                "{what}: reported committed, yet the target runs on"
            )),
            None => tally.dropped_ran_on += 1,
            _ => {}
        }
        return;
    }
    if reported.is_some_and(RequestState::target_unchanged) {
        tally.misreported.push(format!(
            "{what}: reported {reported:?}, yet the target is gone"
        ));
    }
    let Some(dir) = dump else {
        tally.lost.push(format!(
            "{what}: the target is gone and no complete dump exists"
        ));
        return;
    };
    match env
        .criu
        .restore(RestoreOptions::new().images_dir(&dir))
        .await
    {
        Ok(out) => {
            let restored = target.restored(out.pid);
            if let Err(e) = workload_check(&restored) {
                tally.lost.push(format!("{what}: restored damaged: {e}"));
            }
        }
        Err(e) => tally.lost.push(format!(
            "{what}: the target is gone and its dump does not restore: {e}"
        )),
    }
    if reported.is_none() {
        // A drop past the commit point: nothing to report to, the dump is there.
        tally.committed += 1;
    }
}

fn workload_check(r: &common::Restored) -> Result<(), String> {
    common::workload::assert_alive_and_intact(r.pid, &r.info)
        .map(drop)
        .map_err(|e| e.to_string())
}

/// How long a dump of a `mib` MiB target takes here, from a reference run.
async fn dump_duration(env: &common::Env, mib: usize) -> Duration {
    let target = env.workload(mib);
    let images = env.subdir("reference");
    let started = Instant::now();
    env.criu
        .dump(
            DumpOptions::new(target.pid)
                .images_dir(&images)
                .leave_running(true),
        )
        .await
        .expect("reference dump");
    let took = started.elapsed();
    std::fs::remove_dir_all(&images).unwrap();
    took
}

/// `n` moments spread from 0 to a little past `span`.
fn moments(span: Duration, n: usize) -> Vec<Duration> {
    (0..n)
        .map(|i| span.mul_f64(1.2 * i as f64 / (n.max(2) - 1) as f64))
        .collect()
}

/// The file descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// This process's zombie children that are not `except`.
fn zombies() -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let (state, ppid) = (rest.next()?, rest.next()?);
            (state == "Z" && ppid == me).then_some(pid)
        })
        .collect()
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn every_hook_failed_cancelled_or_dropped_tells_the_truth() {
    let env = common::env();
    let mut tally = Tally::default();
    #[derive(Debug, Clone, Copy)]
    enum How {
        Fail,
        CancelPending,
        DropPending,
        CancelAfter,
        DropAfter,
    }
    let only = std::env::var("TORTURE_ONLY").ok();
    for hook in ["pre-dump", "query-ext-files", "post-dump"] {
        for how in [
            How::Fail,
            How::CancelPending,
            How::DropPending,
            How::CancelAfter,
            How::DropAfter,
        ] {
            let what = format!("{how:?} at {hook}");
            if only.as_ref().is_some_and(|o| !what.contains(o.as_str())) {
                continue;
            }
            let mut target = env.workload(64);
            let images = env.dir.path().join(format!("{hook}-{how:?}"));
            let token = CancellationToken::new();
            let (hit_tx, hit) = tokio::sync::oneshot::channel::<()>();
            let mut hit_tx = Some(hit_tx);
            let cancel = token.clone();
            let hooks = move |n: Notification| {
                let here = n.name() == hook;
                let mut pend = false;
                let mut reply = Reply::ok();
                if here {
                    match how {
                        How::Fail => reply = Reply::fail("torture"),
                        How::CancelPending => {
                            cancel.cancel();
                            pend = true;
                        }
                        How::CancelAfter => cancel.cancel(),
                        How::DropPending => pend = true,
                        How::DropAfter => {}
                    }
                    if let Some(tx) = hit_tx.take() {
                        let _ = tx.send(());
                    }
                }
                async move {
                    if pend {
                        std::future::pending::<()>().await;
                    }
                    reply
                }
            };
            let opts = DumpOptions::new(target.pid)
                .images_dir(&images)
                .staged(true)
                .cancel_on(token.clone());
            let criu = env.criu.clone();
            let dump = tokio::spawn(async move {
                let mut hooks = hooks;
                criu.dump_with(opts, &mut hooks).await
            });
            let reported = match how {
                How::DropPending | How::DropAfter => {
                    hit.await.expect("the hook was reached");
                    if matches!(how, How::DropAfter) {
                        // Let the answer go out before the drop.
                        tokio::task::yield_now().await;
                    }
                    dump.abort();
                    let _ = dump.await;
                    None
                }
                _ => match dump.await.unwrap() {
                    Ok(_) => Some(RequestState::Committed),
                    Err(e) => {
                        let expected = match (how, hook) {
                            (How::Fail, _) => e.is_hook(),
                            (How::CancelPending, "pre-dump") => {
                                e.request_state() == Some(RequestState::Untouched)
                            }
                            _ => e.is_cancelled(),
                        };
                        if !expected {
                            tally.misreported.push(format!("{what}: unexpected {e}"));
                        }
                        e.request_state()
                    }
                },
            };
            if matches!(how, How::CancelAfter)
                && hook == "post-dump"
                && reported != Some(RequestState::Committed)
            {
                tally.misreported.push(format!(
                    "{what}: a cancel after post-dump was answered reported {reported:?}"
                ));
            }
            judge(&env, &mut target, &images, reported, &what, &mut tally).await;
        }
    }
    tally.verdict("hooks");
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn cancels_drops_and_timeouts_spread_over_a_dump_tell_the_truth() {
    let env = common::env();
    let mib = knob("TORTURE_MIB", 256);
    let n = knob("TORTURE_MOMENTS", 5);
    let span = dump_duration(&env, mib).await;
    let mut tally = Tally::default();
    for (i, at) in moments(span, n).into_iter().enumerate() {
        for way in ["cancel", "drop", "timeout"] {
            let what = format!("{way} at {at:?} of a {span:?} dump of {mib} MiB");
            let mut target = env.workload(mib);
            let images = env.dir.path().join(format!("{way}-{i}"));
            let token = CancellationToken::new();
            let mut opts = DumpOptions::new(target.pid)
                .images_dir(&images)
                .staged(true)
                .cancel_on(token.clone());
            if way == "timeout" {
                opts = opts.timeout(at.max(Duration::from_millis(1)));
            }
            let criu = env.criu.clone();
            let dump = tokio::spawn(async move { criu.dump(opts).await });
            let reported = match way {
                "timeout" => state_of(dump.await.unwrap()),
                "cancel" => {
                    tokio::time::sleep(at).await;
                    token.cancel();
                    state_of(dump.await.unwrap())
                }
                _ => {
                    tokio::time::sleep(at).await;
                    if dump.is_finished() {
                        state_of(dump.await.unwrap())
                    } else {
                        dump.abort();
                        let _ = dump.await;
                        None
                    }
                }
            };
            judge(&env, &mut target, &images, reported, &what, &mut tally).await;
        }
    }
    tally.verdict(&format!("moments ({mib} MiB, dump {span:?})"));
}

fn state_of<T>(res: criu_swrk::Result<T>) -> Option<RequestState> {
    match res {
        Ok(_) => Some(RequestState::Committed),
        Err(e) => Some(e.request_state().unwrap_or(RequestState::Unknown)),
    }
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn sigkill_of_criu_at_any_moment_leaves_the_target_running_and_nothing_behind() {
    let env = common::env();
    let mib = knob("TORTURE_MIB", 256);
    let n = knob("TORTURE_KILLS", 6);
    let span = dump_duration(&env, mib).await;
    let fds_before = open_fds();
    let zombies_before = zombies();
    let mut tally = Tally::default();
    let mut parasites = 0;
    for (i, at) in moments(span, n).into_iter().enumerate() {
        let what = format!("SIGKILL of criu at {at:?} of a {span:?} dump");
        let target = env.workload(mib);
        let images = env.subdir(&format!("kill-{i}"));
        let session = env.criu.session().expect("criu");
        let criu_pid = session.criu_pid().expect("criu's pid");
        let opts = DumpOptions::new(target.pid)
            .images_dir(&images)
            .leave_running(true);
        let started = Instant::now();
        let killer = async {
            tokio::time::sleep(at).await;
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(criu_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        let (res, ()) = futures::future::join(session.dump(opts), killer).await;
        if started.elapsed() > at + Duration::from_secs(5) {
            tally
                .misreported
                .push(format!("{what}: the error took {:?}", started.elapsed()));
        }
        let reported = state_of(res);
        tally.count(reported);
        common::assert_no_criu_left().await;
        if let Err(e) = target.check_alive_and_intact() {
            tally.lost.push(format!("{what}: {e}"));
        }
        let complete = images.join("inventory.img").exists();
        match reported {
            Some(RequestState::Committed) if !complete => tally.misreported.push(format!(
                "{what}: reported committed without a complete dump"
            )),
            Some(s) if s != RequestState::Committed && complete => tally.misreported.push(format!(
                "{what}: reported {s:?}, yet a complete dump was left"
            )),
            _ => {}
        }
        let maps =
            std::fs::read_to_string(format!("/proc/{}/maps", target.pid)).unwrap_or_default();
        if maps.contains("CRIUMFD") {
            parasites += 1;
            if reported != Some(RequestState::Unknown) {
                tally.misreported.push(format!(
                    "{what}: criu's parasite is left in the target, reported {reported:?}"
                ));
            }
        }
    }
    let new_zombies: Vec<_> = zombies()
        .into_iter()
        .filter(|z| !zombies_before.contains(z))
        .collect();
    println!(
        "TORTURE sigkill: {parasites} targets left with criu's parasite mapping (reported unknown)"
    );
    assert!(new_zombies.is_empty(), "zombies: {new_zombies:?}");
    assert_eq!(open_fds(), fds_before, "fd count changed");
    tally.verdict(&format!("sigkill of criu ({mib} MiB, dump {span:?})"));
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn sigkill_of_the_driver_at_any_moment_loses_no_target() {
    let env = common::env();
    let mib = knob("TORTURE_MIB", 256);
    let n = knob("TORTURE_DRIVER_KILLS", 5);
    // The span of a whole run of the tool (its start, its criu's, the dump, the
    // rename), from a reference run that leaves its target running.
    let span = {
        let target = env.workload(mib);
        let images = env.dir.path().join("driver-reference");
        let started = Instant::now();
        let status = Command::new(CLI)
            .args([
                "dump",
                "--leave-running",
                "--pid",
                &target.pid.to_string(),
                "--images-dir",
            ])
            .arg(&images)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("criu-swrk");
        assert!(status.success(), "the reference run failed: {status}");
        started.elapsed()
    };
    let mut tally = Tally::default();
    // Up to twice the reference run: a loaded machine slows the tool down, and some
    // kills must land past the commit point.
    for (i, at) in moments(span * 2, n).into_iter().enumerate() {
        let what = format!("SIGKILL of the driver at {at:?}");
        let mut target = env.workload(mib);
        let images = env.dir.path().join(format!("driver-{i}"));
        let mut driver = Command::new(CLI)
            .args(["dump", "--pid", &target.pid.to_string(), "--images-dir"])
            .arg(&images)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(env.dir.path().join(format!("driver-{i}.err"))).unwrap())
            .spawn()
            .expect("criu-swrk");
        tokio::time::sleep(at).await;
        let finished = driver.try_wait().unwrap();
        let reported = match finished {
            Some(status) if status.success() => Some(RequestState::Committed),
            Some(_) => None,
            None => {
                driver.kill().unwrap();
                driver.wait().unwrap();
                None
            }
        };
        // Its criu is ours now (we are a subreaper): judge waits for it to finish.
        judge(&env, &mut target, &images, reported, &what, &mut tally).await;
    }
    tally.verdict("sigkill of the driver");
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_thousand_sessions_leave_no_fd_and_no_zombie() {
    let env = common::env();
    let n = knob("TORTURE_SESSIONS", 1000);
    // Warm up: the runtime's and the first spawn's own fds.
    env.criu.version().await.unwrap();
    // What earlier tests dropped is reaped first: the reaper holds their pidfds until
    // then, and closing one mid-count would look like a change.
    assert!(criu_swrk::reap_dropped(Duration::from_secs(30)));
    let fds_before = open_fds();
    let zombies_before = zombies();
    let started = Instant::now();
    for _ in 0..n {
        env.criu.version().await.unwrap();
    }
    let took = started.elapsed();
    common::assert_no_criu_left().await;
    let new_zombies: Vec<_> = zombies()
        .into_iter()
        .filter(|z| !zombies_before.contains(z))
        .collect();
    println!(
        "TORTURE sessions: {n} sessions in {took:?}; fds {} -> {}; new zombies {}",
        fds_before,
        open_fds(),
        new_zombies.len()
    );
    assert_eq!(open_fds(), fds_before);
    assert!(new_zombies.is_empty(), "{new_zombies:?}");
}

#[tokio::test]
#[ignore = "real criu: needs root and criu; scripts/test runs it (--include-ignored)"]
async fn a_timed_out_dump_ends_within_timeout_plus_grace() {
    let env = common::env();
    let mib = knob("TORTURE_MIB", 256);
    let target = env.workload(mib);
    let mut tally = Tally::default();
    for ms in [10u64, 40, 100] {
        let images = env.subdir(&format!("bound-{ms}"));
        let timeout = Duration::from_millis(ms);
        let grace = Duration::from_secs(5);
        let started = Instant::now();
        let res = env
            .criu
            .clone()
            .grace(grace)
            .dump(
                DumpOptions::new(target.pid)
                    .images_dir(&images)
                    .leave_running(true)
                    .timeout(timeout),
            )
            .await;
        let took = started.elapsed();
        let reported = state_of(res);
        tally.count(reported);
        if took > timeout + grace + Duration::from_secs(1) {
            tally
                .misreported
                .push(format!("timeout {timeout:?} returned after {took:?}"));
        }
        if let Err(e) = target.check_alive_and_intact() {
            tally.lost.push(format!("timeout {timeout:?}: {e}"));
        }
        common::assert_no_criu_left().await;
    }
    tally.verdict("timeouts on a running target");
}
