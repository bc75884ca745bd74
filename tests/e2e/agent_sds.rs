//! The agent's SDS and raw Workload API behaviour, with clients generated
//! from our own protos (as Envoy and any gRPC client would speak them).

use std::time::Duration;

use meshid::proto::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use meshid::proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use meshid::proto::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
use meshid::proto::spiffe_workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use meshid::proto::spiffe_workload::X509svidRequest;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use crate::agent::mesh;
use crate::support::*;

const SECRET_TYPE: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

fn request(names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        version_info: version.to_owned(),
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn secrets(response: &DiscoveryResponse) -> Vec<Secret> {
    assert_eq!(response.type_url, SECRET_TYPE);
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE);
            Secret::decode(any.value.as_slice()).unwrap()
        })
        .collect()
}

fn inline(ds: &Option<meshid::proto::envoy::config::core::v3::DataSource>) -> String {
    use meshid::proto::envoy::config::core::v3::data_source::Specifier;
    match ds.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(Specifier::InlineBytes(b)) => String::from_utf8(b.clone()).unwrap(),
        Some(Specifier::InlineString(s)) => s.clone(),
        other => panic!("not inline: {other:?}"),
    }
}

async fn next(stream: &mut tonic::Streaming<DiscoveryResponse>) -> DiscoveryResponse {
    tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("a response in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn sds_client_gets_default_and_rootca_acks_and_receives_the_rotation() {
    let m = mesh("4s", true, &[]);
    let mut client = SecretDiscoveryServiceClient::new(uds_channel(&m.agent.socket).await);
    let (tx, rx) = mpsc::channel(8);
    tx.send(request(&["default", "ROOTCA", "no-such-secret"], "", ""))
        .await
        .unwrap();
    let mut stream = client
        .stream_secrets(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();

    let first = next(&mut stream).await;
    let got = secrets(&first);
    let default = got.iter().find(|s| s.name == "default").expect("default");
    let rootca = got.iter().find(|s| s.name == "ROOTCA").expect("ROOTCA");
    assert!(
        got.iter().all(|s| s.name != "no-such-secret"),
        "unknown names are skipped"
    );
    let Some(secret::Type::TlsCertificate(tls)) = &default.r#type else {
        panic!("default is a certificate")
    };
    let chain = inline(&tls.certificate_chain);
    let key = inline(&tls.private_key);
    assert!(chain.contains("BEGIN CERTIFICATE") && key.contains("BEGIN PRIVATE KEY"));
    let Some(secret::Type::ValidationContext(vc)) = &rootca.r#type else {
        panic!("ROOTCA is a validation context")
    };
    assert_eq!(inline(&vc.trusted_ca), m.env.root_pem());
    let dir = m.env.dir.path();
    write(dir, "sds-chain.pem", &chain);
    write(dir, "sds-root.pem", &m.env.root_pem());
    let out = openssl(dir, &["verify", "-CAfile", "sds-root.pem", "sds-chain.pem"]);
    assert!(out.contains("OK"), "{out}");

    // ACK, then the rotation arrives on the same stream with a new version.
    tx.send(request(
        &["default", "ROOTCA", "no-such-secret"],
        &first.version_info,
        &first.nonce,
    ))
    .await
    .unwrap();
    let rotated = loop {
        let r = next(&mut stream).await;
        let chain_now = secrets(&r)
            .into_iter()
            .find(|s| s.name == "default")
            .and_then(|s| match s.r#type {
                Some(secret::Type::TlsCertificate(t)) => Some(inline(&t.certificate_chain)),
                _ => None,
            });
        if chain_now.is_some_and(|c| c != chain) {
            break r;
        }
    };
    assert_ne!(rotated.version_info, first.version_info);
    assert_ne!(rotated.nonce, first.nonce);
}

#[tokio::test]
async fn sds_fetch_with_a_workload_token_when_credentials_do_not_attest() {
    let m = mesh("1h", false, &[]);
    let good = m.env.token(
        "default",
        "web",
        Some(("web-1", "uid-web-1")),
        Some("node-a"),
    );
    let foreign = meshid::test_helpers::TestEnv::new().token(
        "default",
        "web",
        Some(("web-1", "uid-web-1")),
        Some("node-a"),
    );
    let mut client = SecretDiscoveryServiceClient::new(uds_channel(&m.agent.socket).await);

    let mut req = tonic::Request::new(request(&["default"], "", ""));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {good}").parse().unwrap());
    let response = client.fetch_secrets(req).await.unwrap().into_inner();
    assert_eq!(secrets(&response)[0].name, "default");

    for bad in [foreign.as_str(), "garbage"] {
        let mut req = tonic::Request::new(request(&["default"], "", ""));
        req.metadata_mut()
            .insert("authorization", format!("Bearer {bad}").parse().unwrap());
        let status = client.fetch_secrets(req).await.unwrap_err();
        assert!(
            matches!(
                status.code(),
                tonic::Code::PermissionDenied | tonic::Code::Unauthenticated
            ),
            "{status:?}"
        );
    }
    // No token and no attestable credentials.
    let status = client
        .fetch_secrets(request(&["default"], "", ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
}

#[tokio::test]
async fn workload_api_without_the_security_header_is_an_invalid_argument() {
    let m = mesh("1h", true, &[]);
    let mut client = SpiffeWorkloadApiClient::new(uds_channel(&m.agent.socket).await);
    let status = client
        .fetch_x509svid(X509svidRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("workload.spiffe.io"),
        "{}",
        status.message()
    );

    // With the header, the first message arrives at once, with a non-empty bundle.
    let mut req = tonic::Request::new(X509svidRequest::default());
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    let mut stream = client.fetch_x509svid(req).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let svid = &first.svids[0];
    assert_eq!(svid.spiffe_id, "spiffe://cluster.local/ns/default/sa/web");
    assert!(
        !svid.bundle.is_empty() && !svid.x509_svid.is_empty() && !svid.x509_svid_key.is_empty()
    );

    // JWT-SVIDs are not served yet.
    let mut req = tonic::Request::new(meshid::proto::spiffe_workload::JwtsvidRequest {
        audience: vec!["x".into()],
        spiffe_id: String::new(),
    });
    req.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().unwrap());
    assert_eq!(
        client.fetch_jwtsvid(req).await.unwrap_err().code(),
        tonic::Code::Unimplemented
    );
}
