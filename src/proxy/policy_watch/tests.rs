//! The proxy's policy watch: conversions and backoff as pure functions, and
//! the reconnect loop against a scripted agent on a real Unix socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use super::*;
use crate::test_helpers::Calls;
use proto::policy_discovery_server::{PolicyDiscovery, PolicyDiscoveryServer};

fn update(
    mode: proto::MtlsMode,
    ports: &[(u32, proto::MtlsMode)],
    version: &str,
) -> proto::PolicyUpdate {
    proto::PolicyUpdate {
        version: version.into(),
        mode: mode.into(),
        port_modes: ports.iter().map(|(p, m)| (*p, i32::from(*m))).collect(),
        source: "namespace shop/default".into(),
        identity: "spiffe://cluster.local/ns/shop/sa/cart".into(),
        trust_domain: "cluster.local".into(),
    }
}

#[test]
fn an_update_becomes_a_policy_and_ports_override_the_workload_mode() {
    let u = update(
        proto::MtlsMode::Strict,
        &[
            (8080, proto::MtlsMode::Disable),
            (9090, proto::MtlsMode::Audit),
        ],
        "v1",
    );
    let p = ProxyPolicy::try_from(u).unwrap();
    assert_eq!(p.mode, MtlsMode::Strict);
    assert_eq!(
        p.ports,
        BTreeMap::from([(8080, MtlsMode::Disable), (9090, MtlsMode::Audit)])
    );
    assert_eq!(p.mode_for_port(8080), MtlsMode::Disable);
    assert_eq!(p.mode_for_port(9090), MtlsMode::Audit);
    assert_eq!(p.mode_for_port(80), MtlsMode::Strict);
    assert_eq!(p.source, "namespace shop/default");
    assert_eq!(
        p.identity.to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    assert_eq!(p.trust_domain.as_str(), "cluster.local");
    assert_eq!(p.version, "v1");
}

#[test]
fn every_wire_mode_converts_and_unspecified_is_refused() {
    let pairs = [
        (proto::MtlsMode::Disable, MtlsMode::Disable),
        (proto::MtlsMode::Permissive, MtlsMode::Permissive),
        (proto::MtlsMode::Strict, MtlsMode::Strict),
        (proto::MtlsMode::Audit, MtlsMode::Audit),
    ];
    for (wire, mode) in pairs {
        assert_eq!(MtlsMode::try_from(wire).unwrap(), mode);
    }
    assert!(MtlsMode::try_from(proto::MtlsMode::Unspecified).is_err());
}

#[test]
fn an_update_with_any_bad_field_is_refused_whole() {
    let field = |u: proto::PolicyUpdate| match ProxyPolicy::try_from(u).unwrap_err() {
        PolicyWatchError::InvalidUpdate { field, .. } => field,
    };
    let good = || update(proto::MtlsMode::Strict, &[], "v1");
    assert_eq!(
        field(update(proto::MtlsMode::Unspecified, &[], "v1")),
        "mode"
    );
    assert_eq!(
        field(update(
            proto::MtlsMode::Strict,
            &[(8080, proto::MtlsMode::Unspecified)],
            "v1"
        )),
        "port_modes[8080]"
    );
    let mut unknown = good();
    unknown.mode = 42;
    assert_eq!(field(unknown), "mode");
    assert_eq!(
        field(update(
            proto::MtlsMode::Strict,
            &[(0, proto::MtlsMode::Strict)],
            "v1"
        )),
        "port_modes[0]"
    );
    let mut bad_id = good();
    bad_id.identity = "https://cluster.local/ns/shop/sa/cart".into();
    assert_eq!(field(bad_id), "identity");
    let mut other_td = good();
    other_td.trust_domain = "example.org".into();
    assert_eq!(field(other_td), "identity");
    let mut bad_td = good();
    bad_td.trust_domain = String::new();
    assert_eq!(field(bad_td), "trust_domain");
    assert_eq!(field(update(proto::MtlsMode::Strict, &[], "")), "version");
}

// ---- the reconnect loop against a scripted agent --------------------------

/// An agent that answers each call with the next script: its updates, then
/// the end of the stream (or, with no script left, `UNAVAILABLE`). It counts
/// the calls, so a test can wait for the proxy's next attempt, which it makes
/// only once the previous stream has been read to its end.
#[derive(Clone, Default)]
struct ScriptedAgent {
    scripts: Arc<Mutex<Vec<Vec<proto::PolicyUpdate>>>>,
    calls: Arc<Calls>,
}

impl ScriptedAgent {
    /// Waits until the proxy has called at least `n` times.
    async fn calls_reach(&self, n: usize) {
        self.calls.reach(n, "the proxy's policy calls").await;
    }
}

#[tonic::async_trait]
impl PolicyDiscovery for ScriptedAgent {
    type WatchPolicyStream = ReceiverStream<Result<proto::PolicyUpdate, Status>>;

    async fn watch_policy(
        &self,
        _request: Request<proto::WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        self.calls.hit();
        let script = {
            let mut scripts = self.scripts.lock().unwrap();
            if scripts.is_empty() {
                return Err(Status::unavailable("no script"));
            }
            scripts.remove(0)
        };
        let (tx, rx) = mpsc::channel(script.len().max(1));
        for u in script {
            tx.send(Ok(u)).await.unwrap();
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_workload_policies(
        &self,
        _request: Request<proto::ListWorkloadPoliciesRequest>,
    ) -> Result<Response<proto::ListWorkloadPoliciesResponse>, Status> {
        Err(Status::unimplemented("the proxy never lists"))
    }
}

/// Serves `agent` on `path` until the returned shutdown triggers.
fn serve(agent: ScriptedAgent, path: &Path) -> Shutdown {
    let listener = UnixListener::bind(path).unwrap();
    let stop = Shutdown::new();
    let signal = stop.triggered_owned();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PolicyDiscoveryServer::new(agent))
            .serve_with_incoming_shutdown(UnixListenerStream::new(listener), signal),
    );
    stop
}

async fn changed_to(rx: &mut watch::Receiver<Option<ProxyPolicy>>) -> ProxyPolicy {
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .expect("a policy in time")
        .unwrap();
    rx.borrow_and_update().clone().expect("a policy")
}

fn socket(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("agent.sock")
}

#[tokio::test]
async fn a_refusing_agent_is_retried_and_the_policy_kept_across_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let agent = ScriptedAgent::default();
    let _server = serve(agent.clone(), &path);
    let (tx, mut rx) = watch::channel(None);
    let shutdown = Shutdown::new();
    let watcher = tokio::spawn(watch_policy(
        AgentLink::new(&path, None).unwrap(),
        tx,
        shutdown.clone(),
    ));

    // The agent refuses (no script yet): the proxy tries again, and has no policy.
    agent.calls_reach(2).await;
    assert!(rx.borrow().is_none());

    // Its next stream sends STRICT, then ends.
    let script = |s: Vec<proto::PolicyUpdate>| agent.scripts.lock().unwrap().push(s);
    script(vec![update(proto::MtlsMode::Strict, &[], "a")]);
    assert_eq!(changed_to(&mut rx).await.mode, MtlsMode::Strict);

    // The stream ended; the proxy reconnects. The repeated "a" is not news.
    script(vec![
        update(proto::MtlsMode::Strict, &[], "a"),
        update(
            proto::MtlsMode::Audit,
            &[(8080, proto::MtlsMode::Disable)],
            "b",
        ),
    ]);
    let b = changed_to(&mut rx).await;
    assert_eq!((b.mode, b.version.as_str()), (MtlsMode::Audit, "b"));
    assert_eq!(b.mode_for_port(8080), MtlsMode::Disable);

    // The agent refuses again, twice over: the last policy stays.
    let before = agent.calls.count();
    agent.calls_reach(before + 2).await;
    assert!(!rx.has_changed().unwrap());
    assert_eq!(
        rx.borrow().as_ref().map(|p| p.version.clone()),
        Some("b".into())
    );

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), watcher)
        .await
        .expect("stops at shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_refused_update_leaves_the_current_policy_in_force() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket(&dir);
    let agent = ScriptedAgent::default();
    let script = |s: Vec<proto::PolicyUpdate>| agent.scripts.lock().unwrap().push(s);
    script(vec![
        update(proto::MtlsMode::Strict, &[], "a"),
        update(proto::MtlsMode::Unspecified, &[], "bad"),
    ]);
    let _server = serve(agent.clone(), &path);
    let (tx, mut rx) = watch::channel(None);
    let shutdown = Shutdown::new();
    tokio::spawn(watch_policy(
        AgentLink::new(&path, None).unwrap(),
        tx,
        shutdown.clone(),
    ));
    assert_eq!(changed_to(&mut rx).await.version, "a");
    // A second call comes only after the first stream, bad update and all,
    // was read to its end.
    agent.calls_reach(2).await;
    assert!(!rx.has_changed().unwrap(), "the bad update changed nothing");
    script(vec![update(proto::MtlsMode::Permissive, &[], "c")]);
    assert_eq!(
        changed_to(&mut rx).await.version,
        "c",
        "later good ones apply"
    );
    shutdown.trigger();
}
