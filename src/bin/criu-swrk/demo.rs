//! `criu-swrk demo`: checkpoint a sample workload, restore it, and show it intact.

use std::path::Path;
use std::time::Instant;

use crate::workload::{self, Info};
use criu_swrk::{Criu, DumpOptions, Notification, Reply, RestoreOptions};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

use crate::report::{dump_stats_line, restore_stats_line};

type DemoResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// How much random memory the workload holds.
const MIB: usize = 64;

/// Runs the demo: a workload started from this binary (`criu-swrk workload`),
/// dumped, reaped, restored from its images, checked through `/proc/<pid>/mem`, then
/// killed. Its temporary directory is removed whatever happens.
pub async fn run(criu: &Criu) -> DemoResult {
    if !nix::unistd::Uid::effective().is_root() {
        return Err("the demo needs root, as criu does (try scripts/demo, or sudo)".into());
    }
    // The restored workload is re-parented to us when criu exits, so we can reap it.
    // Only the demo does this: the other commands leave restored trees to whoever
    // started the tool.
    nix::sys::prctl::set_child_subreaper(true)?;
    println!(
        "criu {} at {}",
        criu.version().await?,
        criu.binary()?.display()
    );
    let dir = tempfile::Builder::new()
        .prefix("criu-swrk-demo-")
        .tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir(&images)?;
    let info_path = dir.path().join("workload.info");
    let me = std::env::current_exe()?;
    let mib = MIB.to_string();
    let args = [
        "workload",
        &mib,
        info_path.to_str().ok_or("non-UTF-8 temp dir")?,
    ];
    let (mut child, info) = workload::start(&me, &args, &info_path)?;
    let pid = child.id() as i32;
    let result = checkpoint_and_restore(criu, pid, &info, &images, || {
        // criu killed the workload: reap it so its pid is free for the restore.
        child.wait()
    })
    .await;
    // Whatever went wrong, the original workload does not outlive the demo.
    let _ = child.kill();
    let _ = child.wait();
    result
}

async fn checkpoint_and_restore(
    criu: &Criu,
    pid: i32,
    info: &Info,
    images: &Path,
    reap_original: impl FnOnce() -> std::io::Result<std::process::ExitStatus>,
) -> DemoResult {
    let before = workload::assert_alive_and_intact(pid, info)?;
    println!(
        "workload: pid {pid}, {MIB} MiB of random bytes, checksum {:016x}, counter {}",
        info.sum, before.counter
    );

    let mut hooks = Vec::new();
    let t = Instant::now();
    let dumped = criu
        .dump_with(
            DumpOptions::new(pid).images_dir(images),
            &mut record_into(&mut hooks),
        )
        .await?;
    println!(
        "dumped in {:?} to {}; hooks: {}",
        t.elapsed(),
        images.display(),
        hooks.join(" -> ")
    );
    if let Ok(s) = &dumped.stats {
        println!("  dump stats: {}", dump_stats_line(s));
    }
    println!("original workload gone ({})", reap_original()?);

    let mut hooks = Vec::new();
    let t = Instant::now();
    let restored = criu
        .restore_with(
            RestoreOptions::new().images_dir(images),
            &mut record_into(&mut hooks),
        )
        .await?;
    println!(
        "restored in {:?} as pid {}; hooks: {}",
        t.elapsed(),
        restored.pid,
        hooks.join(" -> ")
    );
    if let Ok(s) = &restored.stats {
        println!("  restore stats: {}", restore_stats_line(s));
    }

    let check = workload::assert_alive_and_intact(restored.pid, info);
    // Stop and reap the restored workload whatever the check found (by pid: tokio
    // reaps its own children).
    let restored_pid = Pid::from_raw(restored.pid);
    let _ = kill(restored_pid, Signal::SIGKILL);
    let _ = waitpid(restored_pid, None);
    let after = check?;
    println!(
        "restored workload: memory intact (checksum {:016x}), counter {} -> {} and counting",
        info.sum, before.counter, after.counter
    );
    Ok(())
}

/// Hooks that note the name of each hook criu passes through.
fn record_into(
    names: &mut Vec<String>,
) -> impl FnMut(Notification) -> std::future::Ready<Reply> + '_ {
    move |n| {
        names.push(n.name().to_owned());
        std::future::ready(Reply::ok())
    }
}
