//! Generates the Rust for `lightbulb/v1/lightbulb.proto` (messages, clients and servers) with
//! the vendored `protoc`, so the build needs no system protobuf compiler, and writes the file
//! descriptor set that server reflection serves.
//!
//! The `protoc` path goes through `Config::protoc_executable` rather than the `PROTOC`
//! environment variable: setting process environment is `unsafe` in edition 2024, which the
//! workspace forbids.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("lightbulb_descriptor.bin"))
        .compile_with_config(config, &["lightbulb/v1/lightbulb.proto"], &["."])?;
    Ok(())
}
