//! Generates the protobuf types from `proto/` with prost-build, using a descriptor set
//! made by protox (pure Rust), so building the crate needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/rpc.proto", "proto/stats.proto"];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
