//! A sample workload for criu-swrk's demo and tests: `criu-swrk-workload MIB INFO_FILE`.
//!
//! Fills MIB MiB with random bytes, writes where they live (and their checksum) to
//! INFO_FILE, then counts up forever, writing `tick <counter>` to stdout every 100 ms.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: {} MIB INFO_FILE", args[0]);
        std::process::exit(2);
    }
    let Ok(mib) = args[1].parse::<usize>() else {
        eprintln!("MIB must be a number, not {:?}", args[1]);
        std::process::exit(2);
    };
    criu_swrk::workload::run(mib, std::path::Path::new(&args[2]));
}
