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

    set_mode(&m.env.manifests, "default", "STRICT");
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

/// `meshid mtls status --agent-socket SOCK [extra…]` as the real binary.
fn status_via_agent(socket: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["mtls", "status", "--agent-socket"])
        .arg(socket)
        .args(extra)
        .output()
        .unwrap()
}

#[tokio::test]
async fn status_through_the_agent_shows_its_pods_and_follows_a_mode_change() {
    let m = mesh("1h", true, &[]);
    let out = status_via_agent(&m.agent.socket, &["-n", "default"]);
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("default"))
        .unwrap_or_else(|| panic!("no default row in:\n{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        cells[..5],
        ["default", "web-1", "web", "node-a", "PERMISSIVE"],
        "{row}"
    );
    // -n filters: the agent's own pod is in meshid-system.
    assert!(!table.contains("agent-a"), "{table}");

    set_mode(&m.env.manifests, "default", "STRICT");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = status_via_agent(&m.agent.socket, &["-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let web = rows
            .iter()
            .find(|r| r["pod"] == "web-1")
            .expect("web-1 listed");
        if web["mode"] == "STRICT" {
            assert_eq!(web["source"], "namespace default/default");
            assert_eq!(web["node"], "node-a");
            // Without -n the agent's own pod is listed too.
            assert!(rows.iter().any(|r| r["pod"] == "agent-a"), "{rows:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "STRICT not listed within 10 s: {web}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn status_through_a_missing_agent_socket_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let out = status_via_agent(&socket, &[]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("agent.sock"), "{stderr}");
    assert!(stderr.contains("meshid agent"), "{stderr}");
    // Asking the agent and reading manifests are two different answers: not both.
    let both = status_via_agent(&socket, &["--manifests", "/tmp"]);
    assert!(!both.status.success());
    let stderr = String::from_utf8_lossy(&both.stderr);
    assert!(stderr.contains("--manifests"), "{stderr}");
}

/// The listing is for the node's operator: a process of another uid (a
/// workload) that reaches the socket is refused by the agent, by uid.
#[tokio::test]
async fn status_through_the_agent_is_refused_to_another_uid() {
    use std::os::unix::fs::PermissionsExt as _;
    if my_unix_uid() != 0 {
        eprintln!("not root: cannot run a process as another uid; the rule is unit-tested in agent::policy_push::listing");
        return;
    }
    let m = mesh("1h", true, &[]);
    // Let uid 65534 reach the socket (0666) through its directories.
    let mut dir = m.agent.socket.parent();
    while let Some(d) = dir {
        if d == std::path::Path::new("/tmp") || d.parent().is_none() {
            break;
        }
        let mode = std::fs::metadata(d).unwrap().permissions().mode();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o711)).unwrap();
        dir = d.parent();
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            BIN,
        ])
        .args(["mtls", "status", "--agent-socket"])
        .arg(&m.agent.socket)
        .output()
        .expect("setpriv (util-linux)");
    assert!(
        !out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refused"), "{stderr}");
    assert!(stderr.contains("uid 65534"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing listed");
    let (code, metrics) = http_get(m.agent.metrics_addr, "/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("meshid_agent_policy_listings_refused_total 1"),
        "{metrics}"
    );
}
