//! The agent's mTLS policy stream (`meshid.policy.v1`), as a real process:
//! a proxy-side client sees `meshid mtls set-mode` and a workload policy
//! arrive on one open stream, and an unattested caller is refused.

use std::process::Command;
use std::time::{Duration, Instant};

use meshid::proto::meshid::policy::v1::policy_discovery_client::PolicyDiscoveryClient;
use meshid::proto::meshid::policy::v1::{MtlsMode, PolicyUpdate, WatchPolicyRequest};
use meshid::test_helpers::my_unix_uid;

use crate::agent::mesh;
use crate::support::*;

async fn next(stream: &mut tonic::Streaming<PolicyUpdate>) -> PolicyUpdate {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an update in time")
        .unwrap()
        .expect("the stream is open")
}

#[tokio::test]
async fn a_mode_change_and_a_port_override_reach_an_open_stream() {
    let m = mesh("1h", true, &[]);
    let mut client = PolicyDiscoveryClient::new(uds_channel(&m.agent.socket).await);
    let mut stream = client
        .watch_policy(WatchPolicyRequest {})
        .await
        .unwrap()
        .into_inner();

    let first = next(&mut stream).await;
    assert_eq!(first.mode(), MtlsMode::Permissive);
    assert_eq!(first.source, "default");
    assert_eq!(first.identity, "spiffe://cluster.local/ns/default/sa/web");
    assert_eq!(first.trust_domain, "cluster.local");
    assert!(first.port_modes.is_empty());

    let out = Command::new(BIN)
        .args(["mtls", "set-mode", "-n", "default", "STRICT", "--manifests"])
        .arg(&m.env.manifests)
        .env_remove("MESHID_ROOT_NAMESPACE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let written = Instant::now();
    let strict = next(&mut stream).await;
    let latency = written.elapsed();
    assert_eq!(strict.mode(), MtlsMode::Strict);
    assert_eq!(strict.source, "namespace default/default");
    assert_ne!(strict.version, first.version);
    eprintln!("set-mode → STRICT on the stream: {latency:?}");
    // The local platform polls every second; the push itself adds ~nothing.
    assert!(latency < Duration::from_secs(3), "took {latency:?}");

    // Label the pod and add a workload policy for it with a port override.
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: default\n  uid: uid-web-1\n  \
         labels:\n    app: web\n  annotations:\n    meshid.io/unix-uid: \"{}\"\n\
         spec:\n  nodeName: node-a\n  serviceAccountName: web\nstatus:\n  phase: Running\n",
        my_unix_uid()
    );
    std::fs::write(m.env.manifests.join("pod-default-web-1.yaml"), pod).unwrap();
    let policy = "apiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata:\n  \
                  name: web-ports\n  namespace: default\nspec:\n  selector:\n    matchLabels:\n      \
                  app: web\n  portLevelMtls:\n    8080:\n      mode: DISABLE\n";
    std::fs::write(m.env.manifests.join("pa-web-ports.yaml"), policy).unwrap();
    let ports = next(&mut stream).await;
    assert_eq!(ports.mode(), MtlsMode::Strict, "the namespace's, inherited");
    assert_eq!(ports.source, "namespace default/default");
    assert_eq!(
        ports.port_modes.get(&8080).copied(),
        Some(MtlsMode::Disable as i32)
    );
}

#[tokio::test]
async fn an_unattested_caller_gets_no_policy() {
    let m = mesh("1h", false, &[]);
    let mut client = PolicyDiscoveryClient::new(uds_channel(&m.agent.socket).await);
    let status = client
        .watch_policy(WatchPolicyRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied);
    assert!(status.message().contains("not attested"), "{status:?}");
}
