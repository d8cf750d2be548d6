//! A sample workload for the demo and the tests, and the means to check its memory
//! from outside. Not part of the library: the CLI's demo runs it (`criu-swrk
//! workload`, hidden), the tests run it as the `workload` example, and both include
//! this one file.
//!
//! The workload fills a buffer with random bytes, writes where the buffer and a
//! progress counter live (and the buffer's checksum) to an info file, then counts up
//! forever. A checker reads the buffer and the counter through `/proc/<pid>/mem`, so a
//! restored copy is checked without its cooperation.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the workload's memory is, and what it should hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Info {
    /// The buffer's address.
    pub addr: u64,
    /// The buffer's length in bytes.
    pub len: u64,
    /// The buffer's checksum.
    pub sum: u64,
    /// The progress counter's address.
    pub counter: u64,
}

/// A fast checksum (word-wise multiply-xor), quick enough in debug builds.
pub fn checksum(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
        h = (h ^ w).wrapping_mul(0x0100_0000_01b3).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Runs the workload: `mib` MiB of random bytes, info written to `info_path`, then
/// counts up forever, writing `tick <counter>` to stdout about every 100 ms
/// ([`TICK_EVERY`]). Never returns.
pub fn run(mib: usize, info_path: &Path) -> ! {
    let mut seed = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .is_err()
    {
        seed = (std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15).to_le_bytes();
    }
    let mut x = u64::from_le_bytes(seed) | 1;
    let mut buf = vec![0u8; mib * 1024 * 1024].into_boxed_slice();
    for c in buf.chunks_exact_mut(8) {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        c.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    let buf: &'static [u8] = Box::leak(buf);
    let counter: &'static mut u64 = Box::leak(Box::new(0u64));
    let info = Info {
        addr: buf.as_ptr() as u64,
        len: buf.len() as u64,
        sum: checksum(buf),
        counter: counter as *mut u64 as u64,
    };
    // Next to the info file, under a name of its own (`with_extension` would map
    // `info.1` and `info.2` to the same `info.tmp`).
    let mut tmp = info_path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(
        &tmp,
        format!(
            "addr={:x} len={:x} sum={:x} counter={:x}\n",
            info.addr, info.len, info.sum, info.counter
        ),
    )
    .and_then(|()| std::fs::rename(&tmp, info_path))
    .expect("writing the workload info file");
    let mut last_tick = Instant::now();
    loop {
        // SAFETY: `counter` is ours; volatile so the count lands in memory each time.
        unsafe { std::ptr::write_volatile(counter, std::ptr::read_volatile(counter) + 1) };
        if last_tick.elapsed() >= TICK_EVERY {
            last_tick = Instant::now();
            // SAFETY: as above.
            let line = format!("tick {}\n", unsafe { std::ptr::read_volatile(counter) });
            // Straight to fd 1, unbuffered: nothing is held back in a buffer across a
            // checkpoint. Errors (no reader, a hung-up terminal) are ignored; SIGPIPE
            // is already ignored by Rust's runtime.
            let _ = nix::unistd::write(io::stdout(), line.as_bytes());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// How often [`run`] writes a `tick <counter>` line to its stdout.
pub const TICK_EVERY: Duration = Duration::from_millis(100);

/// Parses a `tick <counter>` line written by [`run`] (a trailing `\r`, as a terminal
/// writes it, is ignored).
pub fn parse_tick(line: &str) -> Option<u64> {
    line.trim_end_matches(['\r', '\n'])
        .strip_prefix("tick ")?
        .parse()
        .ok()
}

/// Reads an info file written by [`run`].
pub fn read_info(path: &Path) -> io::Result<Info> {
    let text = std::fs::read_to_string(path)?;
    let field = |name: &str| -> io::Result<u64> {
        text.split_whitespace()
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .and_then(|v| u64::from_str_radix(v, 16).ok())
            .ok_or_else(|| io::Error::other(format!("no {name} in {}", path.display())))
    };
    Ok(Info {
        addr: field("addr")?,
        len: field("len")?,
        sum: field("sum")?,
        counter: field("counter")?,
    })
}

/// Starts `exe args...` as a workload: its own session (`setsid`), stdio on
/// `/dev/null`, and waits for `info_path` to appear.
pub fn start(exe: &Path, args: &[&str], info_path: &Path) -> io::Result<(Child, Info)> {
    start_with_stdio(
        exe,
        args,
        info_path,
        Stdio::null(),
        Stdio::null(),
        Stdio::null(),
    )
}

/// Like [`start`], with the given stdio.
///
/// When `stdin` is a terminal it becomes the workload's controlling terminal
/// (`TIOCSCTTY` right after `setsid`), and the start fails if it cannot: pass a
/// terminal only when it is free to be taken, e.g. a fresh pty slave.
pub fn start_with_stdio(
    exe: &Path,
    args: &[&str],
    info_path: &Path,
    stdin: Stdio,
    stdout: Stdio,
    stderr: Stdio,
) -> io::Result<(Child, Info)> {
    let _ = std::fs::remove_file(info_path);
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(stdin).stdout(stdout).stderr(stderr);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            use nix::libc;
            // Whatever fds the caller leaked to us stay out of the workload: a dump
            // should see only the workload's own files.
            libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
            nix::unistd::setsid().map_err(io::Error::from)?;
            if libc::isatty(0) == 1 && libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(info) = read_info(info_path) {
            return Ok((child, info));
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!("workload exited early: {status}")));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::other("workload did not start within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `len` bytes at `addr` of process `pid`.
pub fn read_memory(pid: i32, addr: u64, len: u64) -> io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem"))?;
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, addr)?;
    Ok(buf)
}

/// What a check of a (restored) workload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// Whether the buffer's checksum matches the info file.
    pub intact: bool,
    /// The progress counter's value.
    pub counter: u64,
    /// The process state letter from `/proc/<pid>/stat` (R, S, T, Z, ...).
    pub state: char,
}

/// Checks the workload's memory in process `pid` against `info`.
pub fn observe(pid: i32, info: &Info) -> io::Result<Observed> {
    let bytes = read_memory(pid, info.addr, info.len)?;
    let counter = read_memory(pid, info.counter, 8)?;
    Ok(Observed {
        intact: checksum(&bytes) == info.sum,
        counter: u64::from_le_bytes(counter.try_into().expect("8 bytes")),
        state: process_state(pid)?,
    })
}

/// The state letter of `pid` from `/proc/<pid>/stat`.
pub fn process_state(pid: i32) -> io::Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .ok_or_else(|| io::Error::other("unreadable /proc/pid/stat"))
}

/// Checks that `pid` runs on with its memory intact: checksum equal and the counter
/// moving.
pub fn assert_alive_and_intact(pid: i32, info: &Info) -> io::Result<Observed> {
    let first = observe(pid, info)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let now = observe(pid, info)?;
        if !now.intact {
            return Err(io::Error::other(format!(
                "pid {pid}: memory checksum differs"
            )));
        }
        if now.counter > first.counter {
            return Ok(now);
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "pid {pid} makes no progress (state {}, counter {})",
                now.state, now.counter
            )));
        }
    }
}
