//! A warm criu against a cold one and against the criu command line, paired per
//! repetition (this machine drifts by more than the differences measured):
//!
//! 1. `version`: `Criu::new().warm(1)` against `Criu::new()` (each request starting
//!    its own criu);
//! 2. one dump at a time of a MIB MiB workload (left running): warm, cold, and
//!    `criu dump -t PID -D DIR --leave-running`.
//!
//! Each repetition runs every contender once, rotating who goes first, and a pause
//! before each lets a warm pool refill as it would between a service's requests.
//! Prints each contender's median and, per pair, the median ratio, its interquartile
//! range and the win count. Needs root and criu, and the `workload` example built
//! (`scripts/bench` does both): `cargo bench --bench warm`. Settings: REPS=21 MIB=16
//! BENCH_DIR=/var/tmp.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criu_swrk::{Criu, DumpOptions};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// "median q1-q3 wins/n" of a[i] / b[i].
fn paired(a: &[f64], b: &[f64]) -> String {
    let mut r: Vec<f64> = a.iter().zip(b).map(|(x, y)| x / y).collect();
    let wins = a.iter().zip(b).filter(|(x, y)| x < y).count();
    r.sort_by(f64::total_cmp);
    let n = r.len();
    format!(
        "{:.3}x {:.3}-{:.3} {wins}/{n}",
        r[n / 2],
        r[n / 4],
        r[(3 * n) / 4]
    )
}

/// A workload of `mib` MiB in a session of its own, stdio on /dev/null.
struct Workload {
    child: std::process::Child,
}

impl Workload {
    fn start(exe: &Path, mib: usize, dir: &Path) -> Self {
        let info = dir.join("workload.info");
        // setsid(1) does not fork here (we are not a group leader): the pid is the
        // workload's, and criu wants the tree's root to lead its session.
        let child = Command::new("setsid")
            .arg(exe)
            .arg(mib.to_string())
            .arg(&info)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !info.exists() {
            assert!(Instant::now() < deadline, "the workload did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Workload { child }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this binary too,
    // without it, and gets a line saying so rather than minutes of benchmarking.
    if !std::env::args().any(|a| a == "--bench") {
        println!("warm: a benchmark; run it with `cargo bench --bench warm`");
        return;
    }
    if !nix::unistd::geteuid().is_root() {
        eprintln!("warm: needs root, as criu does; skipped");
        return;
    }
    let reps: usize = env_or("REPS", 21);
    let mib: usize = env_or("MIB", 16);
    let root = PathBuf::from(env_or("BENCH_DIR", "/var/tmp".to_string()));
    let work = tempfile::Builder::new()
        .prefix("criu-swrk-warm.")
        .tempdir_in(&root)
        .expect("a work directory");
    let workload = std::env::var("WORKLOAD")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/examples/workload")
        });
    assert!(
        workload.exists(),
        "{} is missing: cargo build --release --examples",
        workload.display()
    );

    let cold = Criu::new();
    let criu_bin = cold.binary().expect("criu");
    let warm = Criu::new().warm(1);
    let version = cold.version().await.expect("criu version");
    println!(
        "warm criu bench: criu {version}, {} CPUs, {reps} repetitions",
        std::thread::available_parallelism().map_or(1, usize::from)
    );

    let pause = Duration::from_millis(100);
    let (mut vw, mut vc) = (Vec::new(), Vec::new());
    for rep in 0..reps {
        for k in 0..2 {
            tokio::time::sleep(pause).await;
            let warm_turn = (rep + k) % 2 == 0;
            let t = Instant::now();
            if warm_turn {
                warm.version().await.unwrap();
                vw.push(t.elapsed().as_secs_f64());
            } else {
                cold.version().await.unwrap();
                vc.push(t.elapsed().as_secs_f64());
            }
        }
    }
    println!(
        "version:  warm {:.2} ms, cold {:.2} ms; warm/cold {}",
        median(&vw) * 1e3,
        median(&vc) * 1e3,
        paired(&vw, &vc)
    );

    let target = Workload::start(&workload, mib, work.path());
    let mut times: [Vec<f64>; 3] = Default::default();
    let names = ["warm", "cold", "criu dump"];
    for rep in 0..reps {
        for k in 0..3 {
            let who = (rep + k) % 3;
            let dir = work.path().join(format!("images-{rep}-{who}"));
            std::fs::create_dir(&dir).unwrap();
            tokio::time::sleep(pause).await;
            let t = Instant::now();
            match who {
                0 | 1 => {
                    let criu = if who == 0 { &warm } else { &cold };
                    criu.dump(
                        DumpOptions::new(target.pid())
                            .images_dir(&dir)
                            .leave_running(true),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:?}", names[who]));
                }
                _ => {
                    let st = Command::new(&criu_bin)
                        .args(["dump", "-t", &target.pid().to_string(), "-D"])
                        .arg(&dir)
                        .arg("--leave-running")
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .unwrap();
                    assert!(st.success(), "criu dump: {st}");
                }
            }
            times[who].push(t.elapsed().as_secs_f64());
            assert!(
                dir.join("inventory.img").exists(),
                "{}: no images",
                names[who]
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    println!(
        "dump {mib} MiB: warm {:.1} ms, cold {:.1} ms, criu dump {:.1} ms",
        median(&times[0]) * 1e3,
        median(&times[1]) * 1e3,
        median(&times[2]) * 1e3
    );
    println!(
        "  warm/criu dump {}; cold/criu dump {}; warm/cold {}",
        paired(&times[0], &times[2]),
        paired(&times[1], &times[2]),
        paired(&times[0], &times[1])
    );
}
