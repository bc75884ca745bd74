//! CA rotation and revocation with real processes: the proxy pair under
//! continuous traffic while the CA goes prepare → activate → taint → revoke
//! (`meshid ca authority …` over the admin socket); a CA restarted in the
//! middle of its schedule; one certificate revoked by serial and refused by
//! a STRICT inbound proxy; and every bad input the admin commands refuse.

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use x509_parser::prelude::FromDer as _;

use super::*;

/// Runs `meshid ca <args> --data-dir DATA_DIR`; returns (success, stdout, stderr).
fn admin(env: &TestEnv, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin())
        .arg("ca")
        .args(args)
        .arg("--data-dir")
        .arg(&env.data_dir)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `meshid ca authority list -o json`, as (id, state, tainted).
fn authorities(env: &TestEnv) -> Vec<(String, String, bool)> {
    let (ok, out, err) = admin(env, &["authority", "list", "-o", "json"]);
    assert!(ok, "authority list: {err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            for key in ["id", "state", "tainted", "not_after", "subject_key_id"] {
                assert!(a.get(key).is_some(), "{key} in {a}");
            }
            (
                a["id"].as_str().unwrap().to_owned(),
                a["state"].as_str().unwrap().to_owned(),
                a["tainted"].as_bool().unwrap(),
            )
        })
        .collect()
}

pub(crate) fn id_in(list: &[(String, String, bool)], state: &str) -> Option<String> {
    list.iter()
        .find(|(_, s, _)| s == state)
        .map(|(id, _, _)| id.clone())
}

fn certs_in(path: &Path) -> Vec<Vec<u8>> {
    certs_in_text(&std::fs::read_to_string(path).unwrap_or_default())
}

fn certs_in_text(text: &str) -> Vec<Vec<u8>> {
    meshid::pki::parse_pem_certs(text)
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.to_vec())
        .collect()
}

/// Whether the first certificate of `chain` is signed by `issuer`'s key.
fn signed_by(chain: &Path, issuer: &[u8]) -> bool {
    let certs = certs_in(chain);
    let Some(leaf) = certs.first() else {
        return false;
    };
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(leaf).unwrap();
    let (_, issuer) = x509_parser::certificate::X509Certificate::from_der(issuer).unwrap();
    leaf.verify_signature(Some(issuer.public_key())).is_ok()
}

fn serial_of(chain: &Path) -> String {
    let certs = certs_in(chain);
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&certs[0]).unwrap();
    leaf.raw_serial()
        .iter()
        .skip_while(|b| **b == 0)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Requests through the frontend, one new connection each, every 40 ms
/// (25 a second), until stopped.
pub(crate) struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub(crate) fn start(addr: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            while !s.load(Ordering::Relaxed) {
                tick.tick().await;
                match get(addr).await {
                    Ok(_) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => f.lock().unwrap().push(e),
                }
            }
        });
        Self {
            stop,
            ok,
            failures,
            task,
        }
    }

    pub(crate) async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepare_activate_taint_revoke_under_traffic_fails_no_request() {
    let p = setup_full("1h", &[], &["--authority-ttl", "2h"]).await;
    let agent_bundle = p.client_certs.join("root-cert.pem");
    let ca_bundle = p.env.data_dir.join("root-cert.pem");
    let client_chain = p.client_certs.join("cert-chain.pem");
    let traffic = Traffic::start(p.via_frontend());

    let list = authorities(&p.env);
    assert_eq!(list.len(), 1, "{list:?}");
    let first = id_in(&list, "active").unwrap();

    let (ok, _, err) = admin(&p.env, &["authority", "prepare"]);
    assert!(ok, "{err}");
    let next = id_in(&authorities(&p.env), "prepared").unwrap();
    eventually("the prepared root reaches the agent's bundle", async || {
        certs_in(&agent_bundle).len() == 2 && certs_in(&ca_bundle).len() == 2
    })
    .await;
    let new_root = certs_in(&ca_bundle)
        .into_iter()
        .find(|r| !signed_by(&client_chain, r))
        .expect("the new root");

    let (ok, _, err) = admin(&p.env, &["authority", "activate"]);
    assert!(ok, "{err}");
    let list = authorities(&p.env);
    assert_eq!(id_in(&list, "active"), Some(next.clone()));
    assert_eq!(id_in(&list, "old"), Some(first.clone()));
    // A certificate issued from now on chains to the new authority.
    let mut ca_client =
        p.ca.client(&std::fs::read_to_string(&ca_bundle).unwrap())
            .await
            .unwrap();
    let token = p.env.token(
        "default",
        "client",
        Some(("client-1", "uid-client-1")),
        Some("node-a"),
    );
    let (_key, csr) = meshid::test_helpers::key_and_csr(&p.env.id("default", "client"));
    let chain = ca_client
        .create_certificate(meshid::test_helpers::request(&csr, 600, Some(&token), None))
        .await
        .unwrap()
        .into_inner()
        .cert_chain;
    assert_eq!(
        certs_in_text(chain.last().unwrap()).len(),
        2,
        "the answer's bundle holds both roots"
    );
    let fresh_path = p.env.dir.path().join("fresh.pem");
    std::fs::write(&fresh_path, &chain[0]).unwrap();
    assert!(
        signed_by(&fresh_path, &new_root),
        "new leaves chain to the new authority"
    );

    let (ok, _, err) = admin(&p.env, &["authority", "taint"]);
    assert!(ok, "{err}");
    assert!(authorities(&p.env).contains(&(first.clone(), "old".to_owned(), true)));
    eventually(
        "the agent re-issued the certificate that chained to the tainted authority",
        async || signed_by(&client_chain, &new_root),
    )
    .await;
    eventually(
        "both proxies use certificates of the new authority",
        async || {
            p.backend.log_text().contains("new certificate in force")
                && p.frontend.log_text().contains("new certificate in force")
        },
    )
    .await;

    let (ok, _, err) = admin(&p.env, &["authority", "revoke"]);
    assert!(ok, "{err}");
    assert_eq!(
        authorities(&p.env),
        vec![(next, "active".to_owned(), false)]
    );
    eventually("the revoked root is in no bundle", async || {
        certs_in(&agent_bundle) == vec![new_root.clone()]
            && certs_in(&ca_bundle) == vec![new_root.clone()]
    })
    .await;
    assert!(
        !p.env.data_dir.join("ca-key.pem").exists(),
        "the revoked first root's key is removed from the data directory"
    );
    // A little more traffic with the old root gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(get(p.via_frontend()).await.is_ok());
    let (ok, failures) = traffic.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed requests of {}: {failures:?}",
        failures.len(),
        ok + failures.len()
    );
    assert!(ok >= 50, "only {ok} requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_restarted_mid_schedule_resumes_it() {
    // 40 s roots: prepared with 20 s left, activated with 40/6 s left.
    let flags = ["--authority-ttl", "40s"];
    let (env, mut ca) = env_and_ca_with(&flags);
    let first = id_in(&authorities(&env), "active").unwrap();
    let start = Instant::now();
    let mut prepared = None;
    while prepared.is_none() && start.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        prepared = id_in(&authorities(&env), "prepared");
    }
    let prepared = prepared.expect("prepared on schedule");
    let status = tokio::task::spawn_blocking(move || {
        let status = ca.terminate();
        (ca, status)
    })
    .await
    .unwrap();
    assert!(status.1.unwrap().success());
    drop(status.0);
    let mut flags_again = vec!["--trusted-node-accounts", "meshid-system/meshid-agent"];
    flags_again.extend_from_slice(&flags);
    let _ca = CaProcess::spawn(bin(), &env, &flags_again).unwrap();
    let list = authorities(&env);
    assert_eq!(id_in(&list, "active"), Some(first.clone()), "{list:?}");
    assert_eq!(
        id_in(&list, "prepared"),
        Some(prepared.clone()),
        "the restart kept the prepared authority"
    );
    let start = Instant::now();
    while id_in(&authorities(&env), "active").as_deref() != Some(prepared.as_str()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not activated on schedule"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(id_in(&authorities(&env), "old"), Some(first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_revoked_by_serial_is_refused_by_strict_inbound_and_replaced() {
    let p = setup().await;
    p.set_mode("STRICT");
    eventually("plaintext refused", async || {
        get(p.backend_inbound()).await.is_err()
    })
    .await;
    let out = s_client(p.backend_inbound(), Some(&p.client_certs)).await;
    assert!(out.contains(BODY), "before: {out}");
    // The stolen copy of the client's certificate and key.
    let stolen = p.env.dir.path().join("stolen");
    std::fs::create_dir_all(&stolen).unwrap();
    for f in ["cert-chain.pem", "key.pem", "root-cert.pem"] {
        std::fs::copy(p.client_certs.join(f), stolen.join(f)).unwrap();
    }
    let serial = serial_of(&stolen.join("cert-chain.pem"));
    // A live mTLS connection through the frontend, whose certificate is revoked next.
    let mut live = TcpStream::connect(p.via_frontend()).await.unwrap();
    request(&mut live, false).await.unwrap();

    let (ok, _, err) = admin(
        &p.env,
        &[
            "revoke",
            "--serial",
            &serial.to_uppercase(),
            "--reason",
            "keyCompromise",
        ],
    );
    assert!(ok, "{err}");
    let revoked_at = Instant::now();
    eventually("the revoked certificate is refused", async || {
        !s_client(p.backend_inbound(), Some(&stolen))
            .await
            .contains(BODY)
    })
    .await;
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(5), "refused only after {took:?}");
    eventually("the agent replaced the revoked certificate", async || {
        serial_of(&p.client_certs.join("cert-chain.pem")) != serial
    })
    .await;
    let out = s_client(p.backend_inbound(), Some(&p.client_certs)).await;
    assert!(out.contains(BODY), "the replacement works: {out}");
    let log = p.backend.log_text();
    assert!(
        log.contains(&serial),
        "the backend names the revoked serial: {log}"
    );

    // The frontend's own certificate, revoked: the backend closes the live
    // connection made with it, and the frontend gets a new one.
    let agent_log = p.agent.log_text();
    let frontend_serial = agent_log
        .lines()
        .rev()
        .filter(|l| l.contains("workload certificate obtained") && l.contains(FRONTEND))
        .filter_map(|l| l.split("serial=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .next()
        .expect("the agent logs the frontend's serial")
        .trim_matches('"')
        .to_owned();
    let (ok, _, err) = admin(&p.env, &["revoke", "--serial", &frontend_serial]);
    assert!(ok, "{err}");
    eventually("the live connection made with it is closed", async || {
        request(&mut live, false).await.is_err()
    })
    .await;
    eventually(
        "new connections work with the frontend's new certificate",
        async || get(p.via_frontend()).await.is_ok(),
    )
    .await;

    let audit = Command::new(bin())
        .args([
            "audit",
            "list",
            "--outcome",
            "revoked",
            "-o",
            "json",
            "--data-dir",
        ])
        .arg(&p.env.data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&audit.stdout);
    assert!(
        text.contains(&serial) && text.contains("keyCompromise"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_refuse_bad_input_with_a_message_naming_it() {
    let (env, _ca) = env_and_ca();
    let active = id_in(&authorities(&env), "active").unwrap();
    let refused = |args: &[&str], wanted: &str| {
        let (ok, _, err) = admin(&env, args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.contains(wanted), "{args:?}: {err}");
    };
    refused(
        &["authority", "activate"],
        "no prepared authority to activate",
    );
    refused(
        &["authority", "taint", "--id", &active],
        "only an old authority can be tainted",
    );
    refused(
        &["authority", "revoke", "--id", &active],
        "only a tainted old authority can be revoked",
    );
    refused(
        &["authority", "taint", "--id", "feedface"],
        "no authority feedface",
    );
    assert!(admin(&env, &["authority", "prepare"]).0);
    refused(&["authority", "prepare"], "already prepared");
    assert!(admin(&env, &["authority", "activate"]).0);
    refused(
        &["authority", "revoke", "--id", &active],
        "is not tainted: taint it first",
    );
    refused(
        &["revoke", "--serial", "deadbeef"],
        "no certificate with serial deadbeef was issued by this CA",
    );
    refused(
        &["revoke", "--serial", "xyz"],
        "is not a certificate serial number",
    );
    refused(
        &["revoke", "--serial", "01", "--reason", "bored"],
        "unknown revocation reason",
    );
    assert_eq!(authorities(&env).len(), 2, "nothing changed");

    // Another user: the socket is the CA user's alone.
    if my_uid() != 0 {
        eprintln!("not root: the other-user case of the admin socket is skipped");
        return;
    }
    let as_nobody = |env: &TestEnv| {
        let out = Command::new(bin())
            .args(["ca", "authority", "list", "--data-dir"])
            .arg(&env.data_dir)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = as_nobody(&env);
    assert!(!ok && err.contains("permission denied"), "{err}");
    // Even with the directory and the socket opened up, the CA refuses the
    // peer by its credentials.
    std::fs::set_permissions(&env.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = env.data_dir.join("ca-admin.sock");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let (ok, err) = as_nobody(&env);
    assert!(
        !ok && err.contains("refused: uid 65534 is not the CA's user"),
        "{err}"
    );
}

fn my_uid() -> u32 {
    meshid::test_helpers::my_unix_uid()
}
