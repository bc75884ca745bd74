//! Generates the gRPC code in `proto/` with the protoc binary shipped by the
//! `protoc-bin-vendored` crate, so that a build needs nothing installed by hand.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let include = protoc_bin_vendored::include_path()?;
    std::env::set_var("PROTOC", protoc);

    // protoc follows imports (Envoy's core and discovery types, google.rpc.Status)
    // and prost writes one file per package. `secret.proto` is listed because
    // nothing imports it: SDS carries the Secret inside a google.protobuf.Any.
    let protos = [
        PathBuf::from("proto/ca.proto"),
        PathBuf::from("proto/envoy/service/secret/v3/sds.proto"),
        PathBuf::from("proto/envoy/extensions/transport_sockets/tls/v3/secret.proto"),
        PathBuf::from("proto/workload.proto"),
        PathBuf::from("proto/policy.proto"),
        PathBuf::from("proto/destination.proto"),
        PathBuf::from("proto/trust.proto"),
    ];
    // Imported files are compiled too: rebuild when any of them changes.
    println!("cargo:rerun-if-changed=proto");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Our policy stream's port map as a BTreeMap: ordered, so the agent's
        // content version (a hash over the ports in order) is deterministic.
        .btree_map(".meshid.policy.v1")
        // Messages that carry private keys get a hand-written, redacted `Debug`
        // (in src/proto.rs): key material is never Debug-printed.
        .skip_debug([
            ".X509SVID",
            ".envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
        ])
        .compile_protos(&protos, &[PathBuf::from("proto"), include])?;
    Ok(())
}
