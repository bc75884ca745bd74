//! The Workload API without sockets: the header check, the messages, the push
//! loop driven through `watch` channels, and the error codes.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::convert::{self, check_security_header};
use super::stream::{push_changes, Feed};
use super::WorkloadApiError;
use crate::agent::cache::{Svid, TrustBundle};
use crate::identity::{SpiffeId, TrustDomain};
use crate::pki::key::{KeyAlgorithm, PrivateKey};
use crate::proto::spiffe_workload::{X509BundlesResponse, X509svidResponse};

fn der(tag: &str) -> CertificateDer<'static> {
    CertificateDer::from(tag.as_bytes().to_vec())
}

fn svid(serial: &str) -> Svid {
    Svid {
        identity: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/cart").expect("id"),
        chain_der: vec![der(&format!("leaf-{serial}")), der("intermediate")],
        chain_pem: String::new(),
        key: PrivateKey::generate(KeyAlgorithm::EcdsaP256).expect("key"),
        not_before: OffsetDateTime::UNIX_EPOCH,
        not_after: OffsetDateTime::UNIX_EPOCH,
        serial_hex: serial.to_owned(),
    }
}

fn bundle(roots: &[&str]) -> TrustBundle {
    TrustBundle::from_roots(roots.iter().map(|r| der(r)).collect(), roots.join(","))
}

#[test]
fn requests_without_the_security_header_are_invalid() {
    let with = |value: &str| {
        let mut md = MetadataMap::new();
        md.insert("workload.spiffe.io", value.parse().expect("ascii"));
        md
    };
    assert!(check_security_header(&with("true")).is_ok());
    for md in [MetadataMap::new(), with("false"), with("")] {
        let status = Status::from(check_security_header(&md).expect_err("refused"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "missing workload.spiffe.io: true metadata"
        );
    }
}

#[test]
fn x509_svid_is_the_der_chain_leaf_first_with_pkcs8_key_and_concatenated_roots() {
    let s = svid("01");
    let b = bundle(&["root-a", "root-b"]);
    let response = convert::x509_svid_response(&s, &b).expect("built");
    assert_eq!(response.svids.len(), 1);
    let x = &response.svids[0];
    assert_eq!(x.spiffe_id, "spiffe://cluster.local/ns/shop/sa/cart");
    assert_eq!(x.x509_svid, b"leaf-01intermediate");
    assert_eq!(x.x509_svid_key, s.key.secret_pkcs8_der());
    assert_eq!(x.bundle, b"root-aroot-b");
    assert!(response.federated_bundles.is_empty() && response.crl.is_empty());
}

#[test]
fn an_empty_bundle_is_never_sent() {
    let s = svid("01");
    assert!(convert::x509_svid_response(&s, &bundle(&[])).is_none());
    assert!(convert::x509_bundles_response(&TrustDomain::default(), &bundle(&[])).is_none());
}

#[test]
fn bundles_are_keyed_by_the_trust_domain_id() {
    let td = TrustDomain::new("example.org").expect("td");
    let response = convert::x509_bundles_response(&td, &bundle(&["r1", "r2"])).expect("built");
    assert_eq!(response.bundles.len(), 1);
    assert_eq!(
        response
            .bundles
            .get("spiffe://example.org")
            .map(Vec::as_slice),
        Some(&b"r1r2"[..])
    );
}

#[test]
fn debug_of_an_svid_message_never_shows_the_key() {
    let s = svid("01");
    let response = convert::x509_svid_response(&s, &bundle(&["r"])).expect("built");
    let printed = format!("{response:?}");
    assert!(printed.contains("[redacted]"));
    let key_bytes = format!("{:?}", s.key.secret_pkcs8_der());
    assert!(!printed.contains(&key_bytes));
}

#[test]
fn jwt_rpcs_are_unimplemented_and_say_why() {
    let status = Status::from(WorkloadApiError::JwtNotServed {
        rpc: "FetchJWTSVID",
    });
    assert_eq!(status.code(), Code::Unimplemented);
    assert!(status.message().contains("JWT-SVIDs are not served"));
    let denied = Status::from(WorkloadApiError::Unattested(
        crate::agent::socket::caller::Unattested {
            reason: "pid 42 maps to no pod".into(),
        },
    ));
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("pid 42 maps to no pod"));
}

type SvidTx = watch::Sender<Option<Arc<Svid>>>;
type BundleTx = watch::Sender<Option<Arc<TrustBundle>>>;

fn spawn<M: Send + 'static>(
    feed: Feed,
    make: impl Fn(Option<&Svid>, &TrustBundle) -> Option<M> + Send + 'static,
) -> (
    SvidTx,
    BundleTx,
    mpsc::Receiver<Result<M, Status>>,
    tokio::task::JoinHandle<()>,
) {
    let (svid_tx, svid_rx) = watch::channel(None);
    let (bundle_tx, bundle_rx) = watch::channel(None);
    let (tx, rx) = mpsc::channel(4);
    let task = tokio::spawn(push_changes(
        feed,
        svid_rx,
        bundle_rx,
        tx,
        CancellationToken::new(),
        make,
    ));
    (svid_tx, bundle_tx, rx, task)
}

async fn next<M>(rx: &mut mpsc::Receiver<Result<M, Status>>) -> M {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message in time")
        .expect("stream open")
        .unwrap_or_else(|status| panic!("error status {status}"))
}

async fn nothing<M: std::fmt::Debug>(rx: &mut mpsc::Receiver<Result<M, Status>>) {
    let got = tokio::time::timeout(Duration::from_millis(150), rx.recv()).await;
    assert!(got.is_err(), "unexpected message: {got:?}");
}

fn x509(svid: Option<&Svid>, bundle: &TrustBundle) -> Option<X509svidResponse> {
    svid.and_then(|s| convert::x509_svid_response(s, bundle))
}

#[tokio::test]
async fn x509_stream_sends_full_state_when_ready_and_on_every_change() {
    let (svid_tx, bundle_tx, mut rx, _task) = spawn(Feed::SvidAndBundle, x509);
    nothing(&mut rx).await;
    svid_tx.send_replace(Some(Arc::new(svid("01"))));
    nothing(&mut rx).await;
    bundle_tx.send_replace(Some(Arc::new(bundle(&["r1"]))));
    assert_eq!(
        next(&mut rx).await.svids[0].x509_svid,
        b"leaf-01intermediate"
    );

    // The same bundle again (a new Arc from the next CA answer) is not news.
    bundle_tx.send_replace(Some(Arc::new(bundle(&["r1"]))));
    nothing(&mut rx).await;

    svid_tx.send_replace(Some(Arc::new(svid("02"))));
    assert_eq!(
        next(&mut rx).await.svids[0].x509_svid,
        b"leaf-02intermediate"
    );
    bundle_tx.send_replace(Some(Arc::new(bundle(&["r1", "r2"]))));
    assert_eq!(next(&mut rx).await.svids[0].bundle, b"r1r2");
}

#[tokio::test]
async fn bundle_stream_follows_the_bundle_and_ignores_rotations() {
    let td = TrustDomain::default();
    let (svid_tx, bundle_tx, mut rx, _task) = spawn(Feed::BundleOnly, move |_, b| {
        convert::x509_bundles_response(&td, b)
    });
    bundle_tx.send_replace(Some(Arc::new(bundle(&["r1"]))));
    let first: X509BundlesResponse = next(&mut rx).await;
    assert_eq!(
        first
            .bundles
            .get("spiffe://cluster.local")
            .map(Vec::as_slice),
        Some(&b"r1"[..])
    );
    svid_tx.send_replace(Some(Arc::new(svid("02"))));
    nothing(&mut rx).await;
    bundle_tx.send_replace(Some(Arc::new(bundle(&["r2"]))));
    let second = next(&mut rx).await;
    assert_eq!(
        second
            .bundles
            .get("spiffe://cluster.local")
            .map(Vec::as_slice),
        Some(&b"r2"[..])
    );
}

#[test]
fn both_responses_carry_the_crls_as_der() {
    let mut b = bundle(&["r"]);
    assert!(convert::x509_svid_response(&svid("01"), &b)
        .expect("built")
        .crl
        .is_empty());
    b.crls_der = vec![b"crl-a".to_vec(), b"crl-b".to_vec()];
    let svid_response = convert::x509_svid_response(&svid("01"), &b).expect("built");
    assert_eq!(svid_response.crl, b.crls_der);
    let bundles = convert::x509_bundles_response(&TrustDomain::default(), &b).expect("built");
    assert_eq!(bundles.crl, b.crls_der);
}

#[tokio::test]
async fn a_crl_change_is_pushed_to_both_streams() {
    let td = TrustDomain::default();
    let (_svid_tx, bundle_tx, mut rx, _task) = spawn(Feed::BundleOnly, move |_, b| {
        convert::x509_bundles_response(&td, b)
    });
    bundle_tx.send_replace(Some(Arc::new(bundle(&["r1"]))));
    assert!(next(&mut rx).await.crl.is_empty());
    let mut revoked = bundle(&["r1"]);
    revoked.crls_der = vec![b"crl-1".to_vec()];
    bundle_tx.send_replace(Some(Arc::new(revoked)));
    assert_eq!(next(&mut rx).await.crl, vec![b"crl-1".to_vec()]);

    let (svid_tx, bundle_tx, mut rx, _task) = spawn(Feed::SvidAndBundle, x509);
    svid_tx.send_replace(Some(Arc::new(svid("01"))));
    bundle_tx.send_replace(Some(Arc::new(bundle(&["r1"]))));
    assert!(next(&mut rx).await.crl.is_empty());
    let mut revoked = bundle(&["r1"]);
    revoked.crls_der = vec![b"crl-1".to_vec()];
    bundle_tx.send_replace(Some(Arc::new(revoked)));
    assert_eq!(next(&mut rx).await.crl, vec![b"crl-1".to_vec()]);
}

#[tokio::test]
async fn stream_ends_when_the_client_goes_away() {
    let (_svid_tx, _bundle_tx, rx, task) = spawn(Feed::SvidAndBundle, x509);
    drop(rx);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("task ends")
        .expect("no panic");
}
