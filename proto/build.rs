//! Compiles `rlhf/v1/*.proto` with protox (pure Rust, no `protoc` needed).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["rlhf/v1/learner.proto", "rlhf/v1/reward.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["."])?;
    // Weight chunks are `Bytes`, so the learner slices one shared buffer instead of copying it.
    tonic_prost_build::configure().bytes(".rlhf.v1.WeightsChunk.data").compile_fds(descriptors)?;
    Ok(())
}
