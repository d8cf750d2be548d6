//! The library in a few lines: checkpoint a running process and leave it running.
//!
//! ```text
//! sudo cargo run --example checkpoint -- PID IMAGES_DIR
//! ```
//!
//! It prints each hook criu passes through and criu's stats. For a full round trip
//! (dump, restore, memory checked) on a sample workload, run `scripts/demo`, which
//! runs `criu-swrk demo`.

use std::time::Duration;

use criu_swrk::{Criu, DumpOptions, Notification, Reply};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [pid, dir] = args.as_slice() else {
        return Err("usage: checkpoint PID IMAGES_DIR".into());
    };
    let pid: i32 = pid.parse()?;
    std::fs::create_dir_all(dir)?;

    let criu = Criu::new();
    println!(
        "criu {} at {}",
        criu.version().await?,
        criu.binary()?.display()
    );
    let mut on_hook = |n: Notification| {
        println!("  criu reached {}", n.name());
        std::future::ready(Reply::ok())
    };
    let opts = DumpOptions::new(pid)
        .images_dir(dir)
        .leave_running(true)
        .timeout(Duration::from_secs(60));
    let dumped = criu.dump_with(opts, &mut on_hook).await?;
    let stats = dumped.stats?;
    println!(
        "pid {pid} checkpointed to {dir} and still running: frozen {:?}, {} pages written",
        stats.frozen_time, stats.pages_written
    );
    Ok(())
}
