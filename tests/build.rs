//! Compiles the test protos with the vendored `protoc`, so the build needs no system protobuf
//! compiler: `proto/echo.proto` (the fake gRPC upstream) and `proto/inference.proto` (the
//! Open Inference Protocol subset the `demo-model` server speaks).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &["proto/echo.proto", "proto/inference.proto"],
        &["proto"],
    )?;
    Ok(())
}
