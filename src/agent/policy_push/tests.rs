//! The policy stream without sockets: update building and versions, the
//! mode conversions, the status codes, and the per-stream loop driven by a
//! real local platform whose manifest directory the tests edit.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Status};

use super::*;
use crate::agent::attest::Attestor;
use crate::platform::local::{LocalConfig, LocalPlatform};
use crate::policy::ModeSource;
use crate::test_helpers::TestEnv;

const NODE: &str = "node-a";

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::for_service_account(&TrustDomain::default(), ns, sa).unwrap()
}

fn effective(mode: MtlsMode, ports: &[(u32, MtlsMode)], source: ModeSource) -> EffectiveMode {
    EffectiveMode {
        mode,
        ports: ports.iter().copied().collect(),
        source,
        ports_source: None,
    }
}

fn namespace_source(ns: &str) -> ModeSource {
    ModeSource::Namespace {
        namespace: ns.into(),
        name: "default".into(),
    }
}

#[test]
fn an_update_carries_mode_ports_source_identity_and_trust_domain() {
    let e = effective(
        MtlsMode::Strict,
        &[(8080, MtlsMode::Disable), (9090, MtlsMode::Audit)],
        namespace_source("shop"),
    );
    let u = policy_update(&e, &id("shop", "cart"), &TrustDomain::default()).unwrap();
    assert_eq!(u.mode(), proto::MtlsMode::Strict);
    assert_eq!(
        u.port_modes,
        BTreeMap::from([
            (8080, proto::MtlsMode::Disable as i32),
            (9090, proto::MtlsMode::Audit as i32)
        ])
    );
    assert_eq!(u.source, "namespace shop/default");
    assert_eq!(u.identity, "spiffe://cluster.local/ns/shop/sa/cart");
    assert_eq!(u.trust_domain, "cluster.local");
    assert_eq!(u.version.len(), 16);
    assert_eq!(u.version, content_version(&u));
}

#[test]
fn equal_content_has_an_equal_version_and_any_change_a_new_one() {
    let td = TrustDomain::default();
    let base = effective(MtlsMode::Permissive, &[], ModeSource::Default);
    let version = |e: &EffectiveMode, who: &SpiffeId| policy_update(e, who, &td).unwrap().version;
    let v = version(&base, &id("shop", "cart"));
    assert_eq!(v, version(&base.clone(), &id("shop", "cart")));
    let variants = [
        effective(MtlsMode::Strict, &[], ModeSource::Default),
        effective(
            MtlsMode::Permissive,
            &[(80, MtlsMode::Strict)],
            ModeSource::Default,
        ),
        effective(MtlsMode::Permissive, &[], namespace_source("shop")),
    ];
    for other in &variants {
        assert_ne!(v, version(other, &id("shop", "cart")), "{other:?}");
    }
    assert_ne!(v, version(&base, &id("shop", "web")));
    let other_td = TrustDomain::new("example.org").unwrap();
    assert_ne!(
        v,
        policy_update(&base, &id("shop", "cart"), &other_td)
            .unwrap()
            .version
    );
}

#[test]
fn every_resolved_mode_has_a_wire_form_and_unset_has_none() {
    let pairs = [
        (MtlsMode::Disable, proto::MtlsMode::Disable),
        (MtlsMode::Permissive, proto::MtlsMode::Permissive),
        (MtlsMode::Strict, proto::MtlsMode::Strict),
        (MtlsMode::Audit, proto::MtlsMode::Audit),
    ];
    for (mode, wire) in pairs {
        assert_eq!(proto::MtlsMode::try_from(mode).unwrap(), wire);
    }
    assert!(matches!(
        proto::MtlsMode::try_from(MtlsMode::Unset),
        Err(PolicyPushError::UnsetMode)
    ));
    let e = effective(
        MtlsMode::Strict,
        &[(80, MtlsMode::Unset)],
        ModeSource::Default,
    );
    assert!(policy_update(&e, &id("a", "b"), &TrustDomain::default()).is_err());
}

#[test]
fn errors_map_to_status_codes_with_their_reason() {
    let denied = Status::from(PolicyPushError::Unattested(
        crate::agent::socket::caller::Unattested {
            reason: "no pod matches uid 1234".into(),
        },
    ));
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(denied.message().contains("no pod matches uid 1234"));
    let gone = Status::from(PolicyPushError::PodGone {
        pod: "shop/cart-1".into(),
        uid: "u1".into(),
        what: "is gone".into(),
    });
    assert_eq!(gone.code(), Code::NotFound);
    assert!(gone.message().contains("shop/cart-1"));
    assert_eq!(
        Status::from(PolicyPushError::ShuttingDown).code(),
        Code::Unavailable
    );
    assert_eq!(
        Status::from(PolicyPushError::UnsetMode).code(),
        Code::Internal
    );
}

#[tokio::test]
async fn a_caller_without_credentials_or_token_is_refused_with_both_reasons() {
    let f = Fixture::new();
    let attestor = Attestor::new(f.platform.clone(), NODE.into(), TrustDomain::default());
    let metrics = AgentMetrics::register(&prometheus::Registry::new()).unwrap();
    let socket = SocketAttestor::new(Arc::new(attestor), vec![], metrics.clone());
    let request = Request::new(proto::WatchPolicyRequest {});
    let Unattested { reason } = socket
        .attest(AttestPolicy::TokenThenPeer, &request)
        .await
        .unwrap_err();
    assert_eq!(metrics.attestation_failures.get(), 1);
    assert!(reason.contains("no peer credentials"), "{reason}");
    assert!(reason.contains("no bearer token"), "{reason}");
}

// ---- the stream loop, on a real local platform ----------------------------

struct Fixture {
    env: TestEnv,
    platform: Arc<LocalPlatform>,
}

impl Fixture {
    fn new() -> Self {
        let env = TestEnv::new();
        pod(&env, "app: cart");
        let cfg = LocalConfig::new(
            &env.manifests,
            env.issuer().verifier(),
            crate::time::system_clock(),
        );
        let platform = LocalPlatform::open(cfg).unwrap();
        Self { env, platform }
    }

    fn write(&self, file: &str, yaml: &str) {
        std::fs::write(self.env.manifests.join(file), yaml).unwrap();
        assert!(self.platform.reload().unwrap(), "{file} changed nothing");
    }

    fn index(&self) -> Arc<PolicyIndex> {
        Arc::new(PolicyIndex::new(
            self.platform.clone(),
            "meshid-system".into(),
        ))
    }

    /// Starts the loop for `shop/cart-1`; returns its messages and its stop.
    fn follow(
        &self,
    ) -> (
        mpsc::Receiver<Result<proto::PolicyUpdate, Status>>,
        CancellationToken,
    ) {
        let workload = Workload {
            identity: id("shop", "cart"),
            pod: self.platform.pod_by_uid("uid-cart-1").unwrap(),
        };
        let follower = Follower {
            index: self.index(),
            node: NODE.into(),
            trust_domain: TrustDomain::default(),
            workload,
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stop = CancellationToken::new();
        tokio::spawn(follower.run(tx, stop.clone()));
        (rx, stop)
    }
}

/// `shop/cart-1` on node-a, sa `cart`, with `labels` (one `key: value` line).
fn pod(env: &TestEnv, labels: &str) {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cart-1\n  namespace: shop\n  uid: uid-cart-1\n  \
         labels:\n    {labels}\nspec:\n  nodeName: {NODE}\n  serviceAccountName: cart\n"
    );
    std::fs::write(env.manifests.join("pod-cart-1.yaml"), yaml).unwrap();
}

fn namespace_policy(ns: &str, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  \
         namespace: {ns}\nspec:\n  mtls:\n    mode: {mode}\n"
    )
}

fn workload_policy(app: &str, port: u32, mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  name: {app}-ports\n  \
         namespace: shop\nspec:\n  selector:\n    matchLabels:\n      app: {app}\n  portLevelMtls:\n    \
         {port}:\n      mode: {mode}\n"
    )
}

async fn next(
    rx: &mut mpsc::Receiver<Result<proto::PolicyUpdate, Status>>,
) -> Result<proto::PolicyUpdate, Status> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a message in time")
        .expect("stream open")
}

#[tokio::test]
async fn the_first_update_comes_at_once_and_a_namespace_change_follows() {
    let f = Fixture::new();
    let (mut rx, _stop) = f.follow();
    let first = next(&mut rx).await.unwrap();
    assert_eq!(first.mode(), proto::MtlsMode::Permissive);
    assert_eq!(first.source, "default");
    assert_eq!(first.identity, "spiffe://cluster.local/ns/shop/sa/cart");

    f.write("pa-shop.yaml", &namespace_policy("shop", "STRICT"));
    let second = next(&mut rx).await.unwrap();
    assert_eq!(second.mode(), proto::MtlsMode::Strict);
    assert_eq!(second.source, "namespace shop/default");
    assert_ne!(second.version, first.version);
}

#[tokio::test]
async fn changes_that_do_not_touch_the_workload_send_nothing() {
    let f = Fixture::new();
    let (mut rx, _stop) = f.follow();
    next(&mut rx).await.unwrap();
    // Another namespace's policy and another pod: new generations, same answer.
    f.write("pa-bank.yaml", &namespace_policy("bank", "STRICT"));
    f.env
        .add_pod("bank", "teller-1", "uid-teller-1", "teller", NODE);
    assert!(f.platform.reload().unwrap());
    // The next message is the one caused by a change that matters.
    f.write("pa-shop.yaml", &namespace_policy("shop", "AUDIT"));
    assert_eq!(next(&mut rx).await.unwrap().mode(), proto::MtlsMode::Audit);
}

#[tokio::test]
async fn a_workload_policy_with_a_port_override_and_a_relabel_are_followed() {
    let f = Fixture::new();
    let (mut rx, _stop) = f.follow();
    next(&mut rx).await.unwrap();
    f.write("pa-shop.yaml", &namespace_policy("shop", "STRICT"));
    next(&mut rx).await.unwrap();
    f.write("pa-web.yaml", &workload_policy("web", 8080, "DISABLE"));
    // Selects app=web; the pod is app=cart until relabelled.
    pod(&f.env, "app: web");
    assert!(f.platform.reload().unwrap());
    let update = next(&mut rx).await.unwrap();
    assert_eq!(update.mode(), proto::MtlsMode::Strict, "inherited");
    assert_eq!(
        update.port_modes,
        BTreeMap::from([(8080, proto::MtlsMode::Disable as i32)])
    );
    // `source` names where the workload-wide mode came from: the workload
    // policy sets no mode of its own, only the port.
    assert_eq!(update.source, "namespace shop/default");
}

#[tokio::test]
async fn the_stream_ends_with_not_found_when_the_pod_is_gone() {
    let f = Fixture::new();
    let (mut rx, _stop) = f.follow();
    next(&mut rx).await.unwrap();
    std::fs::remove_file(f.env.manifests.join("pod-cart-1.yaml")).unwrap();
    assert!(f.platform.reload().unwrap());
    let status = next(&mut rx).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("shop/cart-1"), "{status:?}");
    assert!(rx.recv().await.is_none(), "and nothing after");
}

#[tokio::test]
async fn shutdown_ends_the_stream_with_unavailable() {
    let f = Fixture::new();
    let (mut rx, stop) = f.follow();
    next(&mut rx).await.unwrap();
    stop.cancel();
    assert_eq!(next(&mut rx).await.unwrap_err().code(), Code::Unavailable);
}

#[test]
fn policies_are_built_once_per_generation_and_never_go_back() {
    let f = Fixture::new();
    let index = f.index();
    let first = index.policies(1);
    assert!(Arc::ptr_eq(&first, &index.policies(1)));
    assert!(
        Arc::ptr_eq(&first, &index.policies(0)),
        "older asks get the newer"
    );
    f.write("pa-shop.yaml", &namespace_policy("shop", "STRICT"));
    let second = index.policies(f.platform.generation());
    assert!(!Arc::ptr_eq(&first, &second));
    let labels = BTreeMap::from([("app".to_owned(), "cart".to_owned())]);
    assert_eq!(
        second.resolve("shop", &labels).effective.mode,
        MtlsMode::Strict
    );
}

#[tokio::test]
async fn the_listing_has_every_running_pod_on_this_node_resolved_and_filters_by_namespace() {
    let f = Fixture::new();
    f.env
        .add_pod("bank", "teller-1", "uid-teller-1", "teller", NODE);
    f.env
        .add_pod("bank", "elsewhere-1", "uid-elsewhere-1", "teller", "node-b");
    std::fs::write(
        f.env.manifests.join("pod-done.yaml"),
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: done-1\n  namespace: bank\n  uid: uid-done-1\n\
             spec:\n  nodeName: {NODE}\n  serviceAccountName: teller\nstatus:\n  phase: Succeeded\n"
        ),
    )
    .unwrap();
    assert!(f.platform.reload().unwrap());
    f.write("pa-shop.yaml", &namespace_policy("shop", "STRICT"));
    f.write("pa-cart.yaml", &workload_policy("cart", 8080, "DISABLE"));
    let index = f.index();

    let all = listing::list(&index, NODE, "").unwrap();
    assert_eq!(all.node, NODE);
    let names: Vec<_> = all
        .workloads
        .iter()
        .map(|w| format!("{}/{}", w.namespace, w.pod))
        .collect();
    // Sorted; node-b's pod and the finished pod are not listed.
    assert_eq!(names, ["bank/teller-1", "shop/cart-1"]);
    let cart = &all.workloads[1];
    assert_eq!(cart.mode(), proto::MtlsMode::Strict);
    assert_eq!(cart.source, "namespace shop/default");
    assert_eq!(
        cart.port_modes,
        BTreeMap::from([(8080, proto::MtlsMode::Disable as i32)])
    );
    assert_eq!(cart.ports_source, "workload shop/cart-ports");
    assert_eq!(all.workloads[0].mode(), proto::MtlsMode::Permissive);
    assert_eq!(all.workloads[0].ports_source, "");

    let bank = listing::list(&index, NODE, "bank").unwrap();
    assert_eq!(bank.workloads.len(), 1);
    assert_eq!(bank.workloads[0].pod, "teller-1");
    assert!(listing::list(&index, NODE, "nowhere")
        .unwrap()
        .workloads
        .is_empty());
}
