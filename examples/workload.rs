//! The sample workload the tests checkpoint: `workload MIB INFO_FILE` holds MIB MiB of
//! random bytes and counts up forever, describing itself in INFO_FILE (see
//! `src/bin/criu-swrk/workload.rs`, shared with the CLI's demo and the tests).

#[path = "../src/bin/criu-swrk/workload.rs"]
#[allow(dead_code)]
mod workload;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mib), Some(info)) = (args.get(1).and_then(|m| m.parse().ok()), args.get(2)) else {
        eprintln!("usage: workload MIB INFO_FILE");
        std::process::exit(2);
    };
    workload::run(mib, std::path::Path::new(info));
}
