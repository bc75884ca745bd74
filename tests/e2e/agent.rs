//! The node agent as a real process between a real CA and real clients:
//! the `spiffe` crate (a third-party Workload API client) and an SDS client.

use std::time::{Duration, Instant};

use meshid::test_helpers::{
    my_unix_uid, AgentProcess, CaProcess, InProcessAgent, InProcessCa, TestEnv,
};
use tokio_stream::StreamExt;

use crate::support::*;

/// A CA and an agent on node-a, both built in this process unless the test
/// needs the agent's signals or log (`A` = [`AgentProcess`]); this test
/// process is the workload `default/web` (its pod is annotated with our Unix
/// uid) unless `attestable` is false.
pub(crate) struct Mesh<A = InProcessAgent> {
    pub(crate) env: TestEnv,
    /// Held so the CA lives as long as the mesh.
    pub(crate) _ca: InProcessCa,
    pub(crate) agent: A,
}

pub(crate) fn mesh(workload_ttl: &str, attestable: bool, extra: &[&str]) -> Mesh {
    mesh_with(workload_ttl, attestable, extra, |env, ca, token, args| {
        InProcessAgent::with_flags(env, ca.addr, "node-a", token, args).unwrap()
    })
}

/// [`mesh`] with the agent as a child process.
pub(crate) fn mesh_process(
    workload_ttl: &str,
    attestable: bool,
    extra: &[&str],
) -> Mesh<AgentProcess> {
    mesh_with(workload_ttl, attestable, extra, |env, ca, token, args| {
        AgentProcess::spawn(bin(), env, ca.addr, "node-a", token, args).unwrap()
    })
}

fn mesh_with<A>(
    workload_ttl: &str,
    attestable: bool,
    extra: &[&str],
    agent: impl FnOnce(&TestEnv, &InProcessCa, &std::path::Path, &[&str]) -> A,
) -> Mesh<A> {
    let env = TestEnv::new();
    env.add_node_agent("node-a");
    let unix_uid = if attestable {
        my_unix_uid()
    } else {
        my_unix_uid().wrapping_add(4242)
    };
    env.add_pod_with_unix_uid("default", "web-1", "uid-web-1", "web", "node-a", unix_uid);
    let ca = InProcessCa::with_flags(
        &env,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )
    .unwrap();
    let token = env.node_agent_token_file("node-a");
    let mut args = vec!["--workload-ttl", workload_ttl];
    args.extend_from_slice(extra);
    let agent = agent(&env, &ca, &token, &args);
    Mesh {
        env,
        _ca: ca,
        agent,
    }
}

fn leaf_der(svid: &spiffe::X509Svid) -> Vec<u8> {
    svid.cert_chain()[0].as_ref().to_vec()
}

#[tokio::test]
async fn spiffe_crate_fetches_an_svid_and_receives_the_rotation_on_the_same_stream() {
    let m = mesh("4s", true, &[]);
    let client = spiffe::WorkloadApiClient::connect_to(m.agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("first SVID in time")
        .unwrap()
        .unwrap();
    assert_eq!(
        first.spiffe_id().to_string(),
        "spiffe://cluster.local/ns/default/sa/web"
    );
    let started = Instant::now();
    let second = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("rotated SVID in time")
        .unwrap()
        .unwrap();
    assert_ne!(leaf_der(&first), leaf_der(&second), "a new certificate");
    assert_eq!(second.spiffe_id(), first.spiffe_id());
    assert!(started.elapsed() < Duration::from_secs(15));

    // The bundle the crate sees is the CA's root.
    let bundles = client.fetch_x509_bundles().await.unwrap();
    let td = spiffe::TrustDomain::new("cluster.local").unwrap();
    assert!(bundles.get(&td).is_some());

    // Issued by the CA on the agent's behalf, and audited as such.
    let rows = audit_rows(&m.env);
    assert!(rows.iter().any(|r| r.granted_identity.as_deref()
        == Some("spiffe://cluster.local/ns/default/sa/web")
        && r.caller.as_deref() == Some("spiffe://cluster.local/ns/meshid-system/sa/meshid-agent")));
}

#[tokio::test]
async fn an_unattested_caller_is_denied_and_the_agent_keeps_serving() {
    let m = mesh_process("1h", false, &[]);
    let client = spiffe::WorkloadApiClient::connect_to(m.agent.endpoint())
        .await
        .unwrap();
    let err = client.fetch_x509_svid().await.unwrap_err();
    assert!(format!("{err:?}").contains("PermissionDenied"), "{err:?}");
    assert!(
        m.agent.log_text().contains("attest"),
        "the refusal is logged"
    );
    let (code, _) = http_get(m.agent.metrics_addr, "/healthz");
    assert_eq!(code, 200);
}

#[tokio::test]
async fn the_agent_starts_without_its_ca_and_serves_once_the_ca_is_up() {
    let env = TestEnv::new();
    env.add_node_agent("node-a");
    env.add_pod_with_unix_uid(
        "default",
        "web-1",
        "uid-web-1",
        "web",
        "node-a",
        my_unix_uid(),
    );
    // The CA's root must exist for the agent to trust it: create it with a first CA run.
    let mut first = CaProcess::spawn(
        bin(),
        &env,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )
    .unwrap();
    let port = first.addr.port();
    first.terminate().unwrap();
    let token = env.node_agent_token_file("node-a");
    let agent = AgentProcess::spawn(bin(), &env, first.addr, "node-a", &token, &[]).unwrap();

    let endpoint = agent.endpoint();
    let fetch = tokio::spawn(async move {
        let client = spiffe::WorkloadApiClient::connect_to(endpoint)
            .await
            .unwrap();
        let mut stream = client.stream_x509_svids().await.unwrap();
        tokio::time::timeout(Duration::from_secs(30), stream.next()).await
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let listen = format!("127.0.0.1:{port}");
    let _ca = CaProcess::spawn_at(
        bin(),
        &env,
        &listen,
        &["--trusted-node-accounts", "meshid-system/meshid-agent"],
    )
    .unwrap();
    let svid = fetch
        .await
        .unwrap()
        .expect("served once the CA is up")
        .unwrap()
        .unwrap();
    assert_eq!(
        svid.spiffe_id().to_string(),
        "spiffe://cluster.local/ns/default/sa/web"
    );
    assert!(
        agent.log_text().contains("could not obtain a certificate"),
        "retries were logged"
    );
}

#[tokio::test]
async fn write_certs_keeps_files_current_with_a_private_key() {
    let dir = tempfile::tempdir().unwrap();
    let target = format!(
        "spiffe://cluster.local/ns/default/sa/web={}",
        dir.path().display()
    );
    let m = mesh("4s", true, &["--write-certs", &target]);
    let chain = dir.path().join("cert-chain.pem");
    let key = dir.path().join("key.pem");
    let root = dir.path().join("root-cert.pem");
    let mut first = String::new();
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(&chain) {
            first = text;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(first.contains("BEGIN CERTIFICATE"), "chain written");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&root).unwrap(), m.env.root_pem());
    let mut rotated = false;
    for _ in 0..100 {
        if std::fs::read_to_string(&chain).unwrap() != first {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "files rewritten on rotation");
    // The key on disk matches the certificate on disk.
    let out = openssl(
        dir.path(),
        &["x509", "-in", "cert-chain.pem", "-noout", "-pubkey"],
    );
    let out2 = openssl(dir.path(), &["pkey", "-in", "key.pem", "-pubout"]);
    assert_eq!(out, out2);
}

#[test]
fn a_socket_path_that_is_a_regular_file_stops_the_agent_with_a_clear_message() {
    let env = TestEnv::new();
    env.add_node_agent("node-a");
    let ca = CaProcess::spawn(bin(), &env, &[]).unwrap();
    let token = env.token_file(
        "agent.token",
        "meshid-system",
        "meshid-agent",
        None,
        Some("node-a"),
    );
    let file = env.dir.path().join("not-a-socket");
    std::fs::write(&file, b"keep me").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["agent", "--node", "node-a", "--ca-address"])
        .arg(format!("https://{}", ca.addr))
        .arg("--ca-root")
        .arg(env.data_dir.join("root-cert.pem"))
        .arg("--token-file")
        .arg(&token)
        .arg("--manifests")
        .arg(&env.manifests)
        .arg("--socket")
        .arg(&file)
        .args(["--metrics-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not a socket"), "{stderr}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
}

#[tokio::test]
async fn a_thousand_clients_at_once_all_get_their_svid() {
    // All of them are this process's uid: raise its quota (256 by default)
    // and the total cap (1,024) above the thousand.
    let m = mesh(
        "1h",
        true,
        &[
            "--max-connections-per-uid",
            "1100",
            "--max-connections",
            "1200",
        ],
    );
    let endpoint = m.agent.endpoint();
    // Warm the cache so the test measures delivery, not the first CSR.
    spiffe::WorkloadApiClient::connect_to(&endpoint)
        .await
        .unwrap()
        .fetch_x509_svid()
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..1000 {
        let endpoint = endpoint.clone();
        tasks.spawn(async move {
            let client = spiffe::WorkloadApiClient::connect_to(endpoint).await?;
            client.fetch_x509_svid().await
        });
    }
    let mut ok = 0;
    while let Some(result) = tasks.join_next().await {
        let svid = result.unwrap().unwrap();
        assert_eq!(
            svid.spiffe_id().to_string(),
            "spiffe://cluster.local/ns/default/sa/web"
        );
        ok += 1;
    }
    assert_eq!(ok, 1000);
}

#[tokio::test]
async fn agent_metrics_report_the_cache_and_sigterm_stops_it_cleanly() {
    let mut m = mesh_process("1h", true, &[]);
    let client = spiffe::WorkloadApiClient::connect_to(m.agent.endpoint())
        .await
        .unwrap();
    // An open stream must not hold up shutdown.
    let mut stream = client.stream_x509_svids().await.unwrap();
    stream.next().await.unwrap().unwrap();
    let (code, body) = http_get(m.agent.metrics_addr, "/metrics");
    assert_eq!(code, 200);
    for name in [
        "meshid_agent_cache_identities 1",
        "meshid_agent_rotations_total 1",
        "meshid_agent_cert_expiry_timestamp_seconds{identity=\"spiffe://cluster.local/ns/default/sa/web\"}",
        "meshid_agent_time_to_first_cert_seconds_count 1",
    ] {
        assert!(body.contains(name), "missing {name} in:\n{body}");
    }
    assert_eq!(http_get(m.agent.metrics_addr, "/readyz").0, 200);
    let started = Instant::now();
    let status = m.agent.terminate().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
    assert!(!m.agent.socket.exists(), "the socket is removed on exit");
}

/// Reads from a raw connection until it closes or `within` passes; true if closed.
fn closed_within(stream: &std::os::unix::net::UnixStream, within: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut stream = stream;
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            // The server's SETTINGS and the like, if it got that far.
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

/// Issue 12 part 2: 5,000 idle connections from one uid were held forever and
/// 20,000 exhausted the process's descriptors. Now a uid holds at most its
/// quota, a connection that starts no request is closed, and a watch stream
/// outlives the idle timeout because its request is in flight.
#[tokio::test]
async fn the_agent_socket_bounds_what_one_uid_can_hold_and_keeps_watch_streams() {
    let m = mesh(
        "4s",
        true,
        &[
            "--max-connections-per-uid",
            "4",
            "--first-request-timeout",
            "1s",
            "--idle-timeout",
            "1s",
        ],
    );
    // A watch stream, in flight across several idle timeouts (and a rotation).
    let client = spiffe::WorkloadApiClient::connect_to(m.agent.endpoint())
        .await
        .unwrap();
    let mut stream = client.stream_x509_svids().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    // Raw connections that never speak: with the watch holding one place, three
    // more fit the quota of four; the rest are closed at accept.
    let raw: Vec<_> = (0..6)
        .map(|_| std::os::unix::net::UnixStream::connect(&m.agent.socket).unwrap())
        .collect();
    let refused = raw
        .iter()
        .filter(|s| closed_within(s, Duration::from_millis(500)))
        .count();
    assert!(refused >= 2, "{refused} of 6 closed at once");
    let (_, body) = http_get(m.agent.metrics_addr, "/metrics");
    assert!(
        body.lines()
            .any(|l| l.starts_with("meshid_agent_connections_refused_total") && !l.ends_with(" 0")),
        "{body}"
    );
    // The silent ones that were admitted are closed by --first-request-timeout.
    for s in &raw {
        assert!(
            closed_within(s, Duration::from_secs(10)),
            "a silent connection was kept"
        );
    }

    // The watch stream is still there: the rotation arrives on it.
    let second = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("the watch stream outlives --idle-timeout")
        .unwrap()
        .unwrap();
    assert_ne!(leaf_der(&first), leaf_der(&second));
}
