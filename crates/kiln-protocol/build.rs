//! Compiles proto/inference.proto with protox (pure Rust: no protoc needed) and generates
//! the tonic service and client, plus the descriptor set that gRPC reflection serves.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: a build script compiled in another checkout must not look there.
    let proto_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", proto_dir.join("inference.proto").display());
    let fds = protox::compile(["inference.proto"], [&proto_dir])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("inference_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Tensor bytes arrive as slices of the request buffer instead of fresh Vec<u8>s.
        .bytes(".inference")
        .compile_fds(fds)?;
    Ok(())
}
