//! scripts/bench's rust-criu contender: one dump or restore through the rust-criu
//! crate, used as its README and tests show (it spawns `criu swrk` itself).
//!
//! ```text
//! rust-criu-peer [--criu PATH] [--log-file NAME] dump PID DIR     (leave running)
//! rust-criu-peer [--criu PATH] [--log-file NAME] restore DIR      (detached; prints its pid)
//! ```
//!
//! Exit status 0 on success, 1 with criu's error on failure, 2 on usage errors.

use std::fs::File;
use std::os::unix::io::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

use rust_criu::rust_criu_protobuf::rpc::Criu_notify;
use rust_criu::{Criu, CriuError};

const USAGE: &str = "usage: rust-criu-peer [--criu PATH] [--log-file NAME] dump PID DIR\n       \
                     rust-criu-peer [--criu PATH] [--log-file NAME] restore DIR";

/// criu's log file in DIR when the request names none (criu's DEFAULT_LOG_FILENAME).
const CRIU_DEFAULT_LOG: &str = "criu.log";

/// The restored root's pid: rust-criu's `restore()` returns `()` (it drops criu's
/// answer, which holds the pid), so it comes from criu's "post-restore"
/// notification. The callback is a plain `fn`, hence a static.
static RESTORED_PID: AtomicI32 = AtomicI32::new(0);

fn on_notify(script: &str, notify: &Criu_notify, _fd: Option<RawFd>) -> i32 {
    if script == "post-restore" && notify.has_pid() {
        RESTORED_PID.store(notify.pid(), Ordering::SeqCst);
    }
    0
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut criu_path = std::env::var("CRIU_BIN").unwrap_or_else(|_| "criu".to_owned());
    let mut log_file: Option<String> = None;
    while args.len() >= 2 && args[0].starts_with("--") {
        let value = args.remove(1);
        match args.remove(0).as_str() {
            "--criu" => criu_path = value,
            "--log-file" => log_file = Some(value),
            _ => return usage(),
        }
    }
    let (dir, pid) = match args.as_slice() {
        [cmd, pid, dir] if cmd == "dump" => match pid.parse::<i32>() {
            Ok(pid) if pid > 0 => (dir.clone(), Some(pid)),
            _ => return usage(),
        },
        [cmd, dir] if cmd == "restore" => (dir.clone(), None),
        _ => return usage(),
    };

    // criu opens the directory through /proc/<our pid>/fd/<fd>: close-on-exec is fine.
    let images = match File::open(&dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("rust-criu-peer: {dir}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut criu = match Criu::new_with_criu_path(criu_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rust-criu-peer: {e}");
            return ExitCode::FAILURE;
        }
    };
    criu.set_images_dir_fd(images.as_raw_fd());
    if let Some(name) = &log_file {
        criu.set_log_file(name.clone());
    }
    let result = match pid {
        Some(pid) => {
            criu.set_pid(pid);
            criu.set_leave_running(true);
            criu.dump()
        }
        None => {
            criu.set_notify_scripts(true);
            criu.set_notify_cb(on_notify);
            criu.restore()
        }
    };
    if let Err(e) = result {
        // rust-criu's error carries only criu's errno; criu's own words are in its log
        // (when criu ran at all).
        let log = format!("{dir}/{}", log_file.as_deref().unwrap_or(CRIU_DEFAULT_LOG));
        eprintln!("rust-criu-peer: {e}");
        if !matches!(e, CriuError::RpcFailed { .. } | CriuError::Io(_)) {
            return ExitCode::FAILURE;
        }
        if let Ok(text) = std::fs::read_to_string(&log) {
            for line in text.lines().filter(|l| l.contains("Error")) {
                eprintln!("  {line}");
            }
            eprintln!("  (criu's log: {log})");
        }
        return ExitCode::FAILURE;
    }
    if pid.is_none() {
        match RESTORED_PID.load(Ordering::SeqCst) {
            0 => {
                eprintln!("rust-criu-peer: criu restored but never told the pid (no post-restore)");
                return ExitCode::FAILURE;
            }
            restored => println!("{restored}"),
        }
    }
    ExitCode::SUCCESS
}

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(2)
}
