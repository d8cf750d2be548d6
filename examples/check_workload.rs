//! `check_workload PID INFO_FILE`: whether the `workload` running as PID (e.g. a
//! restored copy) counts on with its memory intact, checked through /proc/PID/mem
//! against INFO_FILE the way the tests check it. For scripts (scripts/bench-migrate):
//! exit status 0 and `intact` on stdout, or 1 and the reason on stderr.

#[path = "../src/bin/criu-swrk/workload.rs"]
#[allow(dead_code)]
mod workload;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(pid), Some(info)) = (args.get(1).and_then(|p| p.parse().ok()), args.get(2)) else {
        eprintln!("usage: check_workload PID INFO_FILE");
        std::process::exit(2);
    };
    let checked = workload::read_info(std::path::Path::new(info))
        .and_then(|info| workload::assert_alive_and_intact(pid, &info));
    match checked {
        Ok(seen) => println!("intact, counter {}", seen.counter),
        Err(e) => {
            eprintln!("check_workload: {e}");
            std::process::exit(1);
        }
    }
}
