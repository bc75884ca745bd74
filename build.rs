//! Generates the gRPC code in `proto/` with the protoc binary shipped by the
//! `protoc-bin-vendored` crate, so that a build needs nothing installed by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    std::env::set_var("PROTOC", protoc);

    let protos = [PathBuf::from("proto/ca.proto")];
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_protos(&protos, &[PathBuf::from("proto"), include])?;
    Ok(())
}
