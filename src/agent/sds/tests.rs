//! SDS without sockets: resources, versions, the ACK/NACK/nonce rules and the
//! push loop driven through channels.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::resources::{self, SdsResource, ROOT_CA_NAME, SECRET_TYPE_URL, WORKLOAD_CERT_NAME};
use super::state::{RequestKind, StreamState};
use super::{stream, SdsError};
use crate::agent::cache::{Svid, TrustBundle};
use crate::identity::SpiffeId;
use crate::pki::key::{KeyAlgorithm, PrivateKey};
use crate::proto::envoy::config::core::v3::data_source::Specifier;
use crate::proto::envoy::extensions::transport_sockets::tls::v3::{secret, Secret};
use crate::proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use crate::proto::google::rpc;

fn svid(serial: &str) -> Svid {
    Svid {
        identity: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/cart").expect("id"),
        chain_der: vec![CertificateDer::from(serial.as_bytes().to_vec())],
        chain_pem: format!("-----BEGIN CERTIFICATE-----\n{serial}\n-----END CERTIFICATE-----\n"),
        key: PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key"),
        not_before: OffsetDateTime::UNIX_EPOCH,
        not_after: OffsetDateTime::UNIX_EPOCH,
        serial_hex: serial.to_owned(),
    }
}

fn bundle(tag: &str) -> TrustBundle {
    TrustBundle::from_roots(
        vec![CertificateDer::from(tag.as_bytes().to_vec())],
        format!("-----BEGIN CERTIFICATE-----\n{tag}\n-----END CERTIFICATE-----\n"),
    )
}

fn request(names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
        type_url: SECRET_TYPE_URL.to_owned(),
        response_nonce: nonce.to_owned(),
        ..Default::default()
    }
}

fn nack(names: &[&str], nonce: &str, message: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(rpc::Status {
            code: 3,
            message: message.to_owned(),
            details: Vec::new(),
        }),
        ..request(names, nonce)
    }
}

fn decode(response: &DiscoveryResponse) -> Vec<Secret> {
    response
        .resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, SECRET_TYPE_URL);
            Secret::decode(any.value.as_slice()).expect("a Secret")
        })
        .collect()
}

fn inline(source: Option<&crate::proto::envoy::config::core::v3::DataSource>) -> Vec<u8> {
    match source.and_then(|s| s.specifier.clone()) {
        Some(Specifier::InlineBytes(bytes)) => bytes,
        other => panic!("expected inline bytes, got {other:?}"),
    }
}

#[test]
fn default_carries_the_chain_and_pkcs8_key_as_inline_pem() {
    let s = svid("01");
    let any = resources::secret_any(resources::workload_cert_secret(&s));
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    );
    let secret = Secret::decode(any.value.as_slice()).expect("decodes");
    assert_eq!(secret.name, "default");
    let Some(secret::Type::TlsCertificate(cert)) = secret.r#type else {
        panic!("not a tls_certificate");
    };
    assert_eq!(
        inline(cert.certificate_chain.as_ref()),
        s.chain_pem.as_bytes()
    );
    let key = inline(cert.private_key.as_ref());
    assert_eq!(key, s.key.secret_pkcs8_pem().as_bytes());
    assert!(key.starts_with(b"-----BEGIN PRIVATE KEY-----"));
}

#[test]
fn rootca_carries_the_bundle_as_trusted_ca() {
    let b = bundle("root");
    let secret = resources::root_ca_secret(&b);
    assert_eq!(secret.name, "ROOTCA");
    let Some(secret::Type::ValidationContext(ctx)) = secret.r#type else {
        panic!("not a validation_context");
    };
    assert_eq!(inline(ctx.trusted_ca.as_ref()), b.pem.as_bytes());
}

#[test]
fn rootca_carries_the_crls_as_pem_only_when_there_are_some() {
    let without = bundle("root");
    let Some(secret::Type::ValidationContext(ctx)) = resources::root_ca_secret(&without).r#type
    else {
        panic!("not a validation_context");
    };
    assert!(ctx.crl.is_none(), "no CRL, no crl field");

    let mut with = bundle("root");
    with.crls_der = vec![b"crl-one".to_vec(), b"crl-two".to_vec()];
    let Some(secret::Type::ValidationContext(ctx)) = resources::root_ca_secret(&with).r#type else {
        panic!("not a validation_context");
    };
    let pem = String::from_utf8(inline(ctx.crl.as_ref()).to_vec()).expect("utf-8");
    assert_eq!(pem.matches("-----BEGIN X509 CRL-----").count(), 2);
    let ders: Vec<Vec<u8>> = crate::pki::pem::parse_blocks(&pem)
        .expect("parses")
        .into_iter()
        .map(|b| b.der.to_vec())
        .collect();
    assert_eq!(ders, with.crls_der);
    assert_eq!(inline(ctx.trusted_ca.as_ref()), with.pem.as_bytes());
}

#[test]
fn a_crl_change_is_a_new_rootca_version() {
    let rootca = [SdsResource::RootCa];
    let v = |b: &TrustBundle| resources::version(&rootca, None, Some(b)).expect("complete");
    let plain = bundle("r1");
    let mut one = bundle("r1");
    one.crls_der = vec![b"crl-1".to_vec()];
    let mut other = bundle("r1");
    other.crls_der = vec![b"crl-2".to_vec()];
    assert_ne!(v(&plain), v(&one), "a CRL appears");
    assert_ne!(v(&one), v(&other), "the CRL changes");
    assert_eq!(v(&one), v(&one.clone()), "same CRL, same version");
}

#[test]
fn a_new_crl_pushes_a_new_rootca_response() {
    let mut state = StreamState::default();
    state.on_request(&request(&["ROOTCA"], "")).expect("ok");
    let first = state
        .next_response(None, Some(&bundle("r1")))
        .expect("first response");
    let ack = request(&["ROOTCA"], &first.nonce);
    state.on_request(&ack).expect("ack");
    assert!(state.next_response(None, Some(&bundle("r1"))).is_none());
    let mut revoked = bundle("r1");
    revoked.crls_der = vec![b"crl-1".to_vec()];
    let pushed = state
        .next_response(None, Some(&revoked))
        .expect("a CRL change is pushed");
    assert_ne!(pushed.version_info, first.version_info);
}

#[test]
fn debug_of_a_certificate_secret_never_shows_the_key() {
    let s = svid("01");
    let printed = format!("{:?}", resources::workload_cert_secret(&s));
    assert!(printed.contains("[redacted]"));
    assert!(!printed.contains("PRIVATE KEY"));
}

#[test]
fn version_changes_exactly_when_content_changes() {
    let (a, a_again, b) = (svid("01"), svid("01"), svid("02"));
    let (r1, r2) = (bundle("r1"), bundle("r2"));
    let both = [SdsResource::WorkloadCert, SdsResource::RootCa];
    let cert_only = [SdsResource::WorkloadCert];
    let v = |set: &[SdsResource], s: &Svid, r: &TrustBundle| {
        resources::version(set, Some(s), Some(r)).expect("complete")
    };
    assert_eq!(
        v(&both, &a, &r1),
        v(&both, &a_again, &r1),
        "same content, same version"
    );
    assert_ne!(v(&both, &a, &r1), v(&both, &b, &r1), "rotation");
    assert_ne!(v(&both, &a, &r1), v(&both, &a, &r2), "bundle change");
    assert_eq!(
        v(&cert_only, &a, &r1),
        v(&cert_only, &a, &r2),
        "bundle not subscribed"
    );
    assert_ne!(
        v(&both, &a, &r1),
        v(&cert_only, &a, &r1),
        "other resource set"
    );
    assert_eq!(resources::version(&both, Some(&a), None), None);
}

#[test]
fn first_response_waits_for_certificate_and_bundle() {
    let (s, b) = (svid("01"), bundle("r1"));
    let mut state = StreamState::default();
    let outcome = state
        .on_request(&request(&["default", "ROOTCA"], ""))
        .expect("ok");
    assert_eq!(outcome.kind, RequestKind::Subscribe);
    assert!(state.next_response(None, None).is_none());
    assert!(state.next_response(Some(&s), None).is_none());
    let response = state.next_response(Some(&s), Some(&b)).expect("due");
    assert_eq!(response.type_url, SECRET_TYPE_URL);
    assert!(!response.nonce.is_empty() && !response.version_info.is_empty());
    let names: Vec<_> = decode(&response).into_iter().map(|s| s.name).collect();
    assert_eq!(names, [WORKLOAD_CERT_NAME, ROOT_CA_NAME]);
    assert!(
        state.next_response(Some(&s), Some(&b)).is_none(),
        "nothing new"
    );
}

#[test]
fn ack_is_recorded_and_sends_nothing() {
    let (s, b) = (svid("01"), bundle("r1"));
    let mut state = StreamState::default();
    state.on_request(&request(&["default"], "")).expect("ok");
    let sent = state.next_response(Some(&s), Some(&b)).expect("due");
    let outcome = state
        .on_request(&request(&["default"], &sent.nonce))
        .expect("ok");
    assert_eq!(
        outcome.kind,
        RequestKind::Ack {
            version: sent.version_info.clone()
        }
    );
    assert_eq!(state.acked_version(), Some(sent.version_info.as_str()));
    assert!(state.next_response(Some(&s), Some(&b)).is_none());
}

#[test]
fn nack_does_not_resend_the_same_version_but_the_next_change_goes_out() {
    let (s1, s2, b) = (svid("01"), svid("02"), bundle("r1"));
    let mut state = StreamState::default();
    state.on_request(&request(&["default"], "")).expect("ok");
    let sent = state.next_response(Some(&s1), Some(&b)).expect("due");
    let outcome = state
        .on_request(&nack(&["default"], &sent.nonce, "bad key"))
        .expect("ok");
    assert_eq!(
        outcome.kind,
        RequestKind::Nack {
            version: sent.version_info.clone(),
            message: "bad key".to_owned()
        }
    );
    assert_eq!(state.nacked_version(), Some(sent.version_info.as_str()));
    assert!(
        state.next_response(Some(&s1), Some(&b)).is_none(),
        "no resend of a NACKed version"
    );
    let next = state
        .next_response(Some(&s2), Some(&b))
        .expect("rotation goes out");
    assert_ne!(next.version_info, sent.version_info);
    assert_ne!(next.nonce, sent.nonce, "fresh nonce");
}

#[test]
fn a_request_with_a_stale_nonce_is_ignored() {
    let (s1, s2, b) = (svid("01"), svid("02"), bundle("r1"));
    let mut state = StreamState::default();
    state.on_request(&request(&["default"], "")).expect("ok");
    let first = state.next_response(Some(&s1), Some(&b)).expect("due");
    let second = state.next_response(Some(&s2), Some(&b)).expect("rotation");
    // An ACK (and a NACK, and a name change) of the superseded response: ignored.
    for stale in [
        request(&["default"], &first.nonce),
        nack(&["default"], &first.nonce, "late"),
        request(&["ROOTCA"], &first.nonce),
    ] {
        let outcome = state.on_request(&stale).expect("ok");
        assert_eq!(
            outcome.kind,
            RequestKind::Stale {
                nonce: first.nonce.clone()
            }
        );
    }
    assert_eq!(state.resources(), [SdsResource::WorkloadCert]);
    assert_eq!(state.acked_version(), None);
    assert!(state.next_response(Some(&s2), Some(&b)).is_none());
    let outcome = state
        .on_request(&request(&["default"], &second.nonce))
        .expect("ok");
    assert_eq!(
        outcome.kind,
        RequestKind::Ack {
            version: second.version_info
        }
    );
}

#[test]
fn unknown_names_are_skipped_and_reported_once_per_stream() {
    let (s, b) = (svid("01"), bundle("r1"));
    let mut state = StreamState::default();
    let outcome = state
        .on_request(&request(&["default", "file-cert:/x", "nope"], ""))
        .expect("ok");
    assert_eq!(outcome.newly_unknown, ["file-cert:/x", "nope"]);
    let sent = state
        .next_response(Some(&s), Some(&b))
        .expect("known ones answered");
    assert_eq!(decode(&sent).len(), 1);
    let outcome = state
        .on_request(&request(&["default", "nope"], &sent.nonce))
        .expect("ok");
    assert!(outcome.newly_unknown.is_empty(), "warned once");
    assert!(matches!(outcome.kind, RequestKind::Ack { .. }));
}

#[test]
fn only_unknown_names_get_no_response() {
    let (s, b) = (svid("01"), bundle("r1"));
    let mut state = StreamState::default();
    state.on_request(&request(&["nope"], "")).expect("ok");
    assert!(state.next_response(Some(&s), Some(&b)).is_none());
}

#[test]
fn changing_resource_names_answers_for_the_new_set() {
    let (s, b) = (svid("01"), bundle("r1"));
    let mut state = StreamState::default();
    state.on_request(&request(&["default"], "")).expect("ok");
    let sent = state.next_response(Some(&s), Some(&b)).expect("due");
    let outcome = state
        .on_request(&request(&["ROOTCA", "default"], &sent.nonce))
        .expect("ok");
    assert_eq!(outcome.kind, RequestKind::Subscribe);
    let next = state
        .next_response(Some(&s), Some(&b))
        .expect("new set answered");
    assert_eq!(decode(&next).len(), 2);
    assert_ne!(next.version_info, sent.version_info);
}

#[test]
fn a_re_request_with_an_empty_nonce_is_answered_again() {
    let (s, b) = (svid("01"), bundle("r1"));
    let mut state = StreamState::default();
    state.on_request(&request(&["default"], "")).expect("ok");
    let sent = state.next_response(Some(&s), Some(&b)).expect("due");
    state.on_request(&request(&["default"], "")).expect("ok");
    let again = state.next_response(Some(&s), Some(&b)).expect("answered");
    assert_eq!(again.version_info, sent.version_info);
    assert_ne!(again.nonce, sent.nonce);
}

#[test]
fn empty_names_mean_every_resource() {
    let (s, b) = (svid("01"), bundle("r1"));
    let mut state = StreamState::default();
    state.on_request(&request(&[], "")).expect("ok");
    let sent = state.next_response(Some(&s), Some(&b)).expect("due");
    assert_eq!(decode(&sent).len(), 2);
}

#[test]
fn another_type_url_is_refused() {
    let mut state = StreamState::default();
    let mut req = request(&["default"], "");
    req.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".to_owned();
    let err = state.on_request(&req).expect_err("refused");
    assert_eq!(Status::from(err).code(), Code::InvalidArgument);
}

#[test]
fn errors_map_to_the_right_codes() {
    let denied = Status::from(SdsError::Unattested(
        crate::agent::socket::caller::Unattested {
            reason: "uid 1234 maps to no pod".into(),
        },
    ));
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("uid 1234 maps to no pod"));
    assert_eq!(
        Status::from(SdsError::DeltaUnsupported).code(),
        Code::Unimplemented
    );
    assert_eq!(
        Status::from(SdsError::ShuttingDown).code(),
        Code::Unavailable
    );
}

struct Harness {
    requests: mpsc::Sender<Result<DiscoveryRequest, Status>>,
    responses: mpsc::Receiver<Result<DiscoveryResponse, Status>>,
    svid: watch::Sender<Option<Arc<Svid>>>,
    bundle: watch::Sender<Option<Arc<TrustBundle>>>,
    task: tokio::task::JoinHandle<()>,
}

fn harness() -> Harness {
    let (req_tx, req_rx) = mpsc::channel(8);
    let (resp_tx, resp_rx) = mpsc::channel(8);
    let (svid_tx, svid_rx) = watch::channel(None);
    let (bundle_tx, bundle_rx) = watch::channel(None);
    let task = tokio::spawn(stream::serve(
        ReceiverStream::new(req_rx),
        svid_rx,
        bundle_rx,
        resp_tx,
        CancellationToken::new(),
    ));
    Harness {
        requests: req_tx,
        responses: resp_rx,
        svid: svid_tx,
        bundle: bundle_tx,
        task,
    }
}

impl Harness {
    async fn send(&self, req: DiscoveryRequest) {
        self.requests.send(Ok(req)).await.expect("stream alive");
    }

    async fn next(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(5), self.responses.recv())
            .await
            .expect("a response in time")
            .expect("stream open")
            .expect("not an error")
    }

    async fn nothing(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(150), self.responses.recv()).await;
        assert!(got.is_err(), "unexpected response: {got:?}");
    }
}

#[tokio::test]
async fn stream_answers_when_ready_pushes_rotations_and_respects_nack() {
    let mut h = harness();
    h.send(request(&["default", "ROOTCA"], "")).await;
    h.nothing().await;
    h.bundle.send_replace(Some(Arc::new(bundle("r1"))));
    h.svid.send_replace(Some(Arc::new(svid("01"))));
    let first = h.next().await;
    assert_eq!(decode(&first).len(), 2);
    h.send(request(&["default", "ROOTCA"], &first.nonce)).await;
    h.nothing().await;

    h.svid.send_replace(Some(Arc::new(svid("02"))));
    let rotated = h.next().await;
    assert_ne!(rotated.version_info, first.version_info);
    h.send(nack(&["default", "ROOTCA"], &rotated.nonce, "rejected"))
        .await;
    h.nothing().await;
    // The same content again (a new Arc) is not news.
    h.svid.send_replace(Some(Arc::new(svid("02"))));
    h.nothing().await;
    h.bundle.send_replace(Some(Arc::new(bundle("r2"))));
    let rebundled = h.next().await;
    assert_ne!(rebundled.version_info, rotated.version_info);
}

#[tokio::test]
async fn stream_ends_when_the_client_goes_away() {
    let h = harness();
    h.send(request(&["default"], "")).await;
    drop(h.responses);
    tokio::time::timeout(Duration::from_secs(5), h.task)
        .await
        .expect("task ends")
        .expect("no panic");
}

#[tokio::test]
async fn stream_keeps_pushing_after_the_client_half_closes() {
    let mut h = harness();
    h.send(request(&["default"], "")).await;
    // Dropping the only sender ends the request stream.
    h.requests = mpsc::channel(1).0;
    h.svid.send_replace(Some(Arc::new(svid("01"))));
    h.bundle.send_replace(Some(Arc::new(bundle("r1"))));
    assert_eq!(decode(&h.next().await).len(), 1);
}

#[tokio::test]
async fn stream_ends_with_unavailable_at_shutdown() {
    let (_req_tx, req_rx) = mpsc::channel::<Result<DiscoveryRequest, Status>>(1);
    let (resp_tx, mut resp_rx) = mpsc::channel(1);
    let (_svid_tx, svid_rx) = watch::channel(None);
    let (_bundle_tx, bundle_rx) = watch::channel(None);
    let stop = CancellationToken::new();
    let task = tokio::spawn(stream::serve(
        ReceiverStream::new(req_rx),
        svid_rx,
        bundle_rx,
        resp_tx,
        stop.clone(),
    ));
    stop.cancel();
    let status = resp_rx
        .recv()
        .await
        .expect("a message")
        .expect_err("an error");
    assert_eq!(status.code(), Code::Unavailable);
    task.await.expect("no panic");
}
