//! CA rotation with `--platform kube`: two CA replicas (each its own data
//! directory and admin socket) sharing their authorities through Secret
//! `istio-ca-secret` of the fake API server, an agent on node-a, and a
//! proxy pair under continuous traffic, while the CA goes prepare (through
//! one replica) → activate (through the other) → taint → revoke.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meshid::test_helpers::{
    key_and_csr, my_unix_uid, request, AgentProcess, CaProcess, ProxyProcess, TestEnv,
};
use tokio_stream::StreamExt as _;
use x509_parser::prelude::FromDer as _;

use super::{eventually, pod, seed_cluster, service_account_jwt, until_some};
use crate::proxy::rotation::{id_in, Traffic};
use crate::proxy::{echo_server, get};
use crate::support::{bin, http_get};
use meshid::test_helpers::kube_api::{FakeApi, TokenIdentity, CONFIGMAPS, LEASES, PODS};

const FRONTEND: &str = "spiffe://cluster.local/ns/default/sa/frontend";
const BACKEND: &str = "spiffe://cluster.local/ns/default/sa/backend";
const ROOT_CM: &str = "istio-ca-root-cert";
/// How long a change made through one replica may take to reach the other
/// (they re-read the Secret every 2 s).
const FOLLOW: Duration = Duration::from_secs(10);

/// `meshid ca <args> --data-dir DATA_DIR` (one replica's admin socket);
/// returns (success, stdout, stderr).
async fn admin(data_dir: &Path, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    cmd.arg("ca").args(args).arg("--data-dir").arg(data_dir);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `meshid ca authority list -o json` through one replica, as (id, state, tainted).
async fn authorities(data_dir: &Path) -> Vec<(String, String, bool)> {
    let (ok, out, err) = admin(data_dir, &["authority", "list", "-o", "json"]).await;
    assert!(ok, "authority list: {err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
                a["tainted"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Waits (up to [`FOLLOW`]) until both replicas list exactly `wanted`.
async fn both_list(what: &str, replicas: [&Path; 2], wanted: &[(String, String, bool)]) {
    let mut wanted = wanted.to_vec();
    wanted.sort();
    let started = Instant::now();
    until_some(what, FOLLOW, || {
        let wanted = wanted.clone();
        async move {
            for dir in replicas {
                let mut list = authorities(dir).await;
                list.sort();
                if list != wanted {
                    return None;
                }
            }
            Some(())
        }
    })
    .await;
    eprintln!("{what}: after {:?}", started.elapsed());
}

fn der_certs(pem: &str) -> Vec<Vec<u8>> {
    meshid::pki::parse_pem_certs(pem)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

fn file_roots(path: &Path) -> Vec<Vec<u8>> {
    der_certs(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The roots in ConfigMap `istio-ca-root-cert` of `ns`.
fn configmap_roots(api: &FakeApi, ns: &str) -> Vec<Vec<u8>> {
    api.get(&CONFIGMAPS, ns, ROOT_CM)
        .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(der_certs))
        .unwrap_or_default()
}

/// Whether `leaf` (DER) is signed by `issuer`'s (DER) key.
fn signed_by(leaf: &[u8], issuer: &[u8]) -> bool {
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(leaf).unwrap();
    let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(issuer).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).is_ok()
}

/// What the agent last sent this test process (the workload `shop/cart`)
/// over one open Workload API stream: its leaf and the trust domain's roots.
#[derive(Default)]
struct WorkloadView {
    leaf: Vec<u8>,
    roots: Vec<Vec<u8>>,
    updates: usize,
}

/// Keeps one Workload API stream open (so the agent keeps the SVID cached
/// and re-issues it on a taint, rather than issuing a new one per fetch)
/// and records every update.
async fn watch_workload_api(endpoint: String) -> Arc<Mutex<WorkloadView>> {
    let view = Arc::new(Mutex::new(WorkloadView::default()));
    let client = spiffe::WorkloadApiClient::connect_to(endpoint)
        .await
        .unwrap();
    let mut stream = until_some(
        "a Workload API stream with an SVID",
        Duration::from_secs(30),
        || {
            let client = client.clone();
            async move { client.stream_x509_contexts().await.ok() }
        },
    )
    .await;
    let td = spiffe::TrustDomain::new("cluster.local").unwrap();
    let seen = view.clone();
    tokio::spawn(async move {
        while let Some(Ok(context)) = stream.next().await {
            let Some(svid) = context.default_svid() else {
                continue;
            };
            let roots = context
                .bundle_set()
                .get(&td)
                .map(|b| {
                    b.authorities()
                        .iter()
                        .map(|c| c.as_bytes().to_vec())
                        .collect()
                })
                .unwrap_or_default();
            let mut view = seen.lock().unwrap();
            view.leaf = svid.cert_chain()[0].as_bytes().to_vec();
            view.roots = roots;
            view.updates += 1;
        }
    });
    eventually(
        "the first Workload API update",
        Duration::from_secs(30),
        || view.lock().unwrap().updates > 0,
    )
    .await;
    view
}

/// A bound service-account token for pod `ns/pod` (sa `sa`) on node-a,
/// known to the fake TokenReview, in a file.
fn bound_token(api: &FakeApi, dir: &Path, ns: &str, sa: &str, pod: &str) -> PathBuf {
    let jwt = service_account_jwt(&format!("system:serviceaccount:{ns}:{sa}"), pod);
    api.add_token(
        &jwt,
        TokenIdentity::service_account(ns, sa).bound_to(pod, &format!("uid-{pod}"), "node-a"),
    );
    let path = dir.join(format!("{pod}.token"));
    std::fs::write(&path, &jwt).unwrap();
    path
}

async fn spawn_proxy(dir: &Path, name: &str, socket: &Path, args: Vec<String>) -> ProxyProcess {
    let (dir, name, socket) = (dir.to_owned(), name.to_owned(), socket.to_owned());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ProxyProcess::spawn(bin(), &dir, &name, &socket, &args)
    })
    .await
    .unwrap()
    .unwrap()
}

/// The times the agent logged a certificate obtained for `identity`.
fn obtained(agent: &AgentProcess, identity: &str) -> usize {
    agent
        .log_text()
        .lines()
        .filter(|l| l.contains("workload certificate obtained") && l.contains(identity))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_kube_replicas_follow_one_rotation_under_traffic() {
    let api = FakeApi::start();
    seed_cluster(&api);
    let uid = my_unix_uid().to_string();
    for (ns, name, sa, annotations) in [
        ("meshid-system", "agent-a", "meshid-agent", vec![]),
        ("default", "frontend-1", "frontend", vec![]),
        ("default", "backend-1", "backend", vec![]),
        // This test process, for the Workload API.
        (
            "shop",
            "cart",
            "cart",
            vec![("meshid.io/unix-uid", uid.as_str())],
        ),
    ] {
        api.put(
            &PODS,
            pod(ns, name, &format!("uid-{name}"), sa, "node-a", &annotations),
        );
    }
    let env_a = TestEnv::new();
    let env_b = TestEnv::new();
    let (dir_a, dir_b) = (env_a.data_dir.as_path(), env_b.data_dir.as_path());
    let kubeconfig = api.kubeconfig(env_a.dir.path());
    let flags = ["--trusted-node-accounts", "meshid-system/meshid-agent"];
    let ca_a = CaProcess::spawn_kube(bin(), &env_a, &kubeconfig, "ca-0", &flags).unwrap();
    eventually("ca-0 holds the Lease", Duration::from_secs(20), || {
        api.get(&LEASES, "meshid-system", "meshid-ca-root-cert")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "ca-0")
    })
    .await;
    let ca_b = CaProcess::spawn_kube(bin(), &env_b, &kubeconfig, "ca-1", &flags).unwrap();
    for ca in [&ca_a, &ca_b] {
        eventually("the replica ready", Duration::from_secs(30), || {
            http_get(ca.metrics_addr, "/readyz").0 == 200
        })
        .await;
    }

    // The agent on node-a, a client of replica ca-0.
    let dir = env_a.dir.path();
    let agent_token = bound_token(&api, dir, "meshid-system", "meshid-agent", "agent-a");
    let agent_env = TestEnv::new();
    let agent = AgentProcess::spawn_kube(
        bin(),
        &agent_env,
        &kubeconfig,
        ca_a.addr,
        &dir_a.join("root-cert.pem"),
        "node-a",
        &agent_token,
    )
    .unwrap();
    eventually("the agent ready", Duration::from_secs(30), || {
        http_get(agent.metrics_addr, "/readyz").0 == 200
    })
    .await;

    // The proxy pair, each attested by its own bound token.
    let app = echo_server().await;
    let backend_token = bound_token(&api, dir, "default", "backend", "backend-1");
    let frontend_token = bound_token(&api, dir, "default", "frontend", "frontend-1");
    let backend = spawn_proxy(
        dir,
        "backend",
        &agent.socket,
        vec![
            "--inbound".into(),
            format!("127.0.0.1:0={app}"),
            "--token-file".into(),
            backend_token.display().to_string(),
        ],
    )
    .await;
    let frontend = spawn_proxy(
        dir,
        "frontend",
        &agent.socket,
        vec![
            "--outbound".into(),
            format!("127.0.0.1:0={}@{BACKEND}", backend.inbound[0]),
            "--token-file".into(),
            frontend_token.display().to_string(),
        ],
    )
    .await;
    let via_frontend = frontend.outbound[0];
    until_some(
        "a request through the pair",
        Duration::from_secs(30),
        || async { get(via_frontend).await.ok() },
    )
    .await;
    let traffic = Traffic::start(via_frontend);
    let workload = watch_workload_api(agent.endpoint()).await;

    // One authority, the same through both replicas.
    let list = authorities(dir_a).await;
    assert_eq!(list.len(), 1, "{list:?}");
    let first = id_in(&list, "active").unwrap();
    assert_eq!(authorities(dir_b).await, list);
    let old_root = file_roots(&dir_a.join("root-cert.pem"));
    assert_eq!(old_root.len(), 1);
    let old_root = old_root.into_iter().next().unwrap();
    assert!(signed_by(&workload.lock().unwrap().leaf, &old_root));

    // Prepare through ca-0: both replicas list it; every bundle holds both roots.
    let (ok, _, err) = admin(dir_a, &["authority", "prepare"]).await;
    assert!(ok, "prepare: {err}");
    let next = id_in(&authorities(dir_a).await, "prepared").unwrap();
    both_list(
        "both replicas list the prepared authority",
        [dir_a, dir_b],
        &[
            (first.clone(), "active".into(), false),
            (next.clone(), "prepared".into(), false),
        ],
    )
    .await;
    eventually(
        "the root ConfigMaps, both data directories and the agent hold both roots",
        Duration::from_secs(20),
        || {
            ["default", "shop", "meshid-system"]
                .iter()
                .all(|ns| configmap_roots(&api, ns).len() == 2)
                && file_roots(&dir_a.join("root-cert.pem")).len() == 2
                && file_roots(&dir_b.join("root-cert.pem")).len() == 2
                && workload.lock().unwrap().roots.len() == 2
        },
    )
    .await;
    let roots = configmap_roots(&api, "default");
    assert!(roots.contains(&old_root), "the old root is still trusted");
    let new_root = roots.into_iter().find(|r| *r != old_root).unwrap();
    let leaf_before_activation = workload.lock().unwrap().leaf.clone();

    // Activate through ca-1: both replicas switch and sign with the new authority.
    let (ok, _, err) = admin(dir_b, &["authority", "activate"]).await;
    assert!(ok, "activate: {err}");
    both_list(
        "both replicas list the activation",
        [dir_a, dir_b],
        &[
            (first.clone(), "old".into(), false),
            (next.clone(), "active".into(), false),
        ],
    )
    .await;
    let web = service_account_jwt("system:serviceaccount:default:web", "web-direct");
    api.add_token(
        &web,
        TokenIdentity::service_account("default", "web").bound_to("web", "uid-web", "node-a"),
    );
    for (env, ca) in [(&env_a, &ca_a), (&env_b, &ca_b)] {
        let mut client = ca.client(&env.root_pem()).await.unwrap();
        let (_key, csr) = key_and_csr(&env.id("default", "web"));
        let chain = client
            .create_certificate(request(&csr, 600, Some(&web), None))
            .await
            .unwrap()
            .into_inner()
            .cert_chain;
        assert_eq!(
            der_certs(chain.last().unwrap()).len(),
            2,
            "the answer's bundle holds both roots"
        );
        assert!(
            signed_by(&der_certs(&chain[0])[0], &new_root),
            "a new leaf from {} chains to the new authority",
            env.data_dir.display()
        );
    }
    assert_eq!(
        workload.lock().unwrap().leaf,
        leaf_before_activation,
        "activation alone re-issues nothing"
    );

    // Taint through ca-0: the agent re-issues what chains to the old root.
    let before = (obtained(&agent, FRONTEND), obtained(&agent, BACKEND));
    let (ok, _, err) = admin(dir_a, &["authority", "taint"]).await;
    assert!(ok, "taint: {err}");
    both_list(
        "both replicas list the taint",
        [dir_a, dir_b],
        &[
            (first.clone(), "old".into(), true),
            (next.clone(), "active".into(), false),
        ],
    )
    .await;
    eventually(
        "the agent re-issued the Workload API SVID and both proxies' certificates",
        Duration::from_secs(30),
        || {
            signed_by(&workload.lock().unwrap().leaf, &new_root)
                && obtained(&agent, FRONTEND) > before.0
                && obtained(&agent, BACKEND) > before.1
        },
    )
    .await;

    // Revoke through ca-1: the old root is in no bundle any more.
    let (ok, _, err) = admin(dir_b, &["authority", "revoke"]).await;
    assert!(ok, "revoke: {err}");
    both_list(
        "both replicas list the revocation",
        [dir_a, dir_b],
        &[(next.clone(), "active".into(), false)],
    )
    .await;
    eventually(
        "the revoked root is in no ConfigMap, data directory or agent bundle",
        Duration::from_secs(20),
        || {
            let only_new = |roots: Vec<Vec<u8>>| roots == vec![new_root.clone()];
            ["default", "shop", "meshid-system"]
                .iter()
                .all(|ns| only_new(configmap_roots(&api, ns)))
                && only_new(file_roots(&dir_a.join("root-cert.pem")))
                && only_new(file_roots(&dir_b.join("root-cert.pem")))
                && only_new(workload.lock().unwrap().roots.clone())
        },
    )
    .await;
    // More traffic with the old root gone: every handshake now rests on the new root.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests of {}: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    assert!(ok >= 100, "only {ok} requests");
    eprintln!("{ok} requests, none failed");
    api.assert_all_served();
}
