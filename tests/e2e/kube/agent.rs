//! `meshid agent --platform kube`: watches its node's pods only, and serves
//! the SPIFFE Workload API with SVIDs the CA issues on its behalf.

use std::time::Duration;

use axum::http::Method;
use meshid::test_helpers::{my_unix_uid, AgentProcess, CaProcess, TestEnv};

use super::{eventually, pod, seed_cluster, service_account_jwt, until_some};
use crate::support::{audit_rows, bin, http_get};
use meshid::test_helpers::kube_api::{FakeApi, TokenIdentity, PODS};

#[tokio::test]
async fn agent_on_kube_watches_only_its_node_and_serves_the_workload_api() {
    let api = FakeApi::start();
    seed_cluster(&api);
    api.put(
        &PODS,
        pod("shop", "stock", "uid-stock", "stock", "node-b", &[]),
    );
    api.put(
        &PODS,
        pod(
            "meshid-system",
            "agent-a",
            "uid-agent-a",
            "meshid-agent",
            "node-a",
            &[],
        ),
    );
    let env = TestEnv::new();
    let kubeconfig = api.kubeconfig(env.dir.path());
    let ca = CaProcess::spawn_kube(
        bin(),
        &env,
        &kubeconfig,
        "ca-0",
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )
    .unwrap();

    let agent_token = service_account_jwt(
        "system:serviceaccount:meshid-system:meshid-agent",
        "agent-a",
    );
    api.add_token(
        &agent_token,
        TokenIdentity::service_account("meshid-system", "meshid-agent").bound_to(
            "agent-a",
            "uid-agent-a",
            "node-a",
        ),
    );
    let token_file = env.dir.path().join("agent.token");
    std::fs::write(&token_file, &agent_token).unwrap();
    let agent_env = TestEnv::new();
    let agent = AgentProcess::spawn_kube(
        bin(),
        &agent_env,
        &kubeconfig,
        ca.addr,
        &env.data_dir.join("root-cert.pem"),
        "node-a",
        &token_file,
    )
    .unwrap();
    eventually("the agent ready", Duration::from_secs(30), || {
        http_get(agent.metrics_addr, "/readyz").0 == 200
    })
    .await;

    // The agent lists, then watches, only node-a's pods; the CA every pod.
    let node_a = |watch: bool| {
        api.calls_to(&Method::GET, "/api/v1/pods").iter().any(|r| {
            r.is_watch() == watch && r.query("fieldSelector") == Some("spec.nodeName=node-a")
        })
    };
    assert!(node_a(false), "a list of node-a's pods: {:?}", api.calls());
    // The watch starts just after the list that made the agent ready.
    eventually("a watch of node-a's pods", Duration::from_secs(10), || {
        node_a(true)
    })
    .await;
    let pod_requests = api.calls_to(&Method::GET, "/api/v1/pods");
    assert!(
        pod_requests.iter().all(|r| matches!(
            r.query("fieldSelector"),
            None | Some("spec.nodeName=node-a")
        )),
        "{pod_requests:?}"
    );

    // This test process is the workload `shop/cart` (its pod carries our
    // uid); the pod appears only now, so the agent and the CA learn of it
    // over their watches.
    let uid = my_unix_uid().to_string();
    let annotation = [("meshid.io/unix-uid", uid.as_str())];
    api.put(
        &PODS,
        pod("shop", "cart", "uid-cart", "cart", "node-a", &annotation),
    );
    let client = spiffe::WorkloadApiClient::connect_to(agent.endpoint())
        .await
        .unwrap();
    let svid = until_some(
        "an SVID over the Workload API",
        Duration::from_secs(20),
        || {
            let client = client.clone();
            async move { client.fetch_x509_svid().await.ok() }
        },
    )
    .await;
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );

    // Issued by the CA to the agent, on the workload's behalf, after a TokenReview of the agent's token.
    let rows = audit_rows(&env);
    assert!(
        rows.iter().any(|r| r.granted_identity.as_deref()
            == Some("spiffe://cluster.local/ns/shop/sa/cart")
            && r.caller.as_deref()
                == Some("spiffe://cluster.local/ns/meshid-system/sa/meshid-agent")),
        "{rows:?}"
    );
    let reviews = api.calls_to(&Method::POST, "/apis/authentication.k8s.io/v1/tokenreviews");
    assert!(reviews
        .iter()
        .all(|r| r.body["spec"]["token"] == agent_token.as_str()));
    assert!(!reviews.is_empty());
    api.assert_all_served();
}
