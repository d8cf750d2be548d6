//! Checkpoint a running process, restore it, and show that it runs on with its memory
//! intact.
//!
//! ```text
//! sudo cargo run --example demo            # or: scripts/demo
//! ```
//!
//! The demo starts a sample workload (64 MiB of random bytes and a counter), dumps it
//! with criu (recording the hooks criu passes through), restores it from the images,
//! checks the restored memory through `/proc/<pid>/mem`, and prints criu's stats.

use std::path::PathBuf;
use std::time::Instant;

use criu_swrk::workload;
use criu_swrk::{Criu, DumpOptions, Notification, Reply, RestoreOptions};

const MIB: usize = 64;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("workload") {
        workload::run(MIB, std::path::Path::new(&args[2]));
    }
    if !nix::unistd::Uid::effective().is_root() {
        return Err("the demo needs root: criu does (try scripts/demo, or sudo)".into());
    }
    // Restored processes are re-parented to us when criu exits, so we can reap them.
    nix::sys::prctl::set_child_subreaper(true)?;

    let criu = Criu::new();
    println!(
        "criu {} at {}",
        criu.version().await?,
        criu.binary()?.display()
    );

    let dir = std::env::temp_dir().join(format!("criu-swrk-demo-{}", std::process::id()));
    let images = dir.join("images");
    std::fs::create_dir_all(&images)?;
    let result = run(&criu, &dir, &images).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run(
    criu: &Criu,
    dir: &std::path::Path,
    images: &PathBuf,
) -> Result<(), Box<dyn std::error::Error>> {
    let me = std::env::current_exe()?;
    let info_path = dir.join("workload.info");
    let (mut child, info) =
        workload::start(&me, &["workload", info_path.to_str().unwrap()], &info_path)?;
    let pid = child.id() as i32;
    let before = workload::assert_alive_and_intact(pid, &info)?;
    println!(
        "workload: pid {pid}, {MIB} MiB of random bytes, checksum {:016x}, counter {}",
        info.sum, before.counter
    );

    let mut hooks_seen = Vec::new();
    let mut record = |n: Notification| {
        hooks_seen.push(n.name().to_owned());
        std::future::ready(Reply::ok())
    };
    let t = Instant::now();
    let dumped = criu
        .dump_with(DumpOptions::new(pid).images_dir(images), &mut record)
        .await?;
    println!(
        "dumped in {:?} to {}; hooks: {}",
        t.elapsed(),
        images.display(),
        hooks_seen.join(" -> ")
    );
    if let Ok(s) = &dumped.stats {
        println!(
            "  dump stats: frozen {:?} (freezing {:?}, memdump {:?}, memwrite {:?}), {} pages written of {} scanned",
            s.frozen_time,
            s.freezing_time,
            s.memdump_time,
            s.memwrite_time,
            s.pages_written,
            s.pages_scanned
        );
    }
    // criu killed the workload; reap it so its pid is free for the restore.
    let status = child.wait()?;
    println!("original workload gone ({status})");

    hooks_seen.clear();
    let mut record = |n: Notification| {
        hooks_seen.push(n.name().to_owned());
        std::future::ready(Reply::ok())
    };
    let t = Instant::now();
    let restored = criu
        .restore_with(RestoreOptions::new().images_dir(images), &mut record)
        .await?;
    println!(
        "restored in {:?} as pid {}; hooks: {}",
        t.elapsed(),
        restored.pid,
        hooks_seen.join(" -> ")
    );
    if let Ok(s) = &restored.stats {
        println!(
            "  restore stats: forking {:?}, restore {:?}, {} pages restored",
            s.forking_time,
            s.restore_time,
            s.pages_restored.unwrap_or(0)
        );
    }

    let check = workload::assert_alive_and_intact(restored.pid, &info);
    // Stop and reap the restored workload whatever the check said.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(restored.pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(restored.pid), None);
    let after = check?;
    println!(
        "restored workload: memory intact (checksum {:016x}), counter {} -> {} and counting",
        info.sum, before.counter, after.counter
    );
    Ok(())
}
