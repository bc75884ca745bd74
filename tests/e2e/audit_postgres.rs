//! The audit store in PostgreSQL, end to end: a throwaway cluster (initdb
//! on a free port), real `meshid ca` processes sharing it, real load.
//!
//! - two replicas issue concurrently into one store and one tree; one is
//!   killed with SIGKILL in the middle of a 20,000-CSR load: every
//!   certificate a client received has its record, the log verifies, a
//!   proof from the store checks with a verifier written from RFC 9162,
//!   and a record changed with `psql` is named by `audit verify`;
//! - PostgreSQL stopped and started during a load: UNAVAILABLE meanwhile,
//!   the CA recovers on its own, nothing is lost;
//! - bad settings at start-up: a wrong password, an unreachable host, a
//!   schema newer than the binary.
//!
//! Skipped, saying why, where PostgreSQL is not installed.

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meshid::test_helpers::postgres::{unavailable, PgCluster, PASSWORD};
use meshid::test_helpers::{key_and_csr, request, CaProcess, TestEnv};

use crate::audit_log::assert_rfc9162_proof;
use crate::support::*;

/// A cluster with database `audit`, its DSN (no password) and a password file.
struct Pg {
    cluster: PgCluster,
    dsn: String,
    password_file: PathBuf,
}

fn pg(fsync: bool) -> Option<Pg> {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let cluster = PgCluster::start(fsync).unwrap().unwrap();
    cluster.create_db("audit").unwrap();
    let password_file = cluster.dir().join("meshid-pw");
    std::fs::write(&password_file, format!("{PASSWORD}\n")).unwrap();
    Some(Pg {
        dsn: cluster.dsn("audit", false),
        cluster,
        password_file,
    })
}

impl Pg {
    fn flags(&self) -> Vec<String> {
        vec![
            "--audit-store".into(),
            self.dsn.clone(),
            "--audit-store-password-file".into(),
            self.password_file.display().to_string(),
            "--audit-checkpoint-every".into(),
            "200ms".into(),
        ]
    }

    /// `meshid audit ARGS` against this store.
    fn audit(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("audit")
            .args(args)
            .arg("--audit-store")
            .arg(&self.dsn)
            .arg("--audit-store-password-file")
            .arg(&self.password_file)
            .output()
            .unwrap()
    }

    /// Every record, as `meshid audit list -o json` prints them.
    fn records(&self) -> Vec<serde_json::Value> {
        let out = self.audit(&["list", "-o", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn web_env() -> TestEnv {
    let env = TestEnv::new();
    env.add_pod("default", "web-1", "uid-web-1", "web", "node-a");
    env.add_node_agent("node-a");
    env
}

fn spawn_ca(env: &TestEnv, flags: &[String]) -> anyhow::Result<CaProcess> {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    CaProcess::spawn(bin(), env, &trusting_the_agent(&flags))
}

/// What a load's clients got.
#[derive(Debug, Default)]
struct Received {
    serials: Vec<String>,
    unavailable: usize,
    other_errors: Vec<String>,
}

/// Shared by the loads of one test: certificates still to get, received,
/// and UNAVAILABLE answers.
#[derive(Clone)]
struct Counters {
    budget: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    unavailable: Arc<AtomicUsize>,
    changed: Arc<tokio::sync::Notify>,
}

impl Counters {
    fn new(budget: usize) -> Self {
        Self {
            budget: Arc::new(AtomicUsize::new(budget)),
            received: Arc::default(),
            unavailable: Arc::default(),
            changed: Arc::default(),
        }
    }

    /// Waits (on the loads' answers) until `done` holds.
    async fn wait(&self, done: impl Fn(&Self) -> bool) {
        loop {
            let changed = self.changed.notified();
            if done(self) {
                return;
            }
            changed.await;
        }
    }
}

/// `clients` concurrent clients of the CA at `ca` sending CSRs until the
/// budget is spent (shared with other loads) or their replica is gone;
/// each certificate's serial.
async fn load(
    ca: std::net::SocketAddr,
    env: &TestEnv,
    clients: usize,
    counters: Counters,
) -> Received {
    let token = web_token(env);
    let root = env.root_pem();
    let csrs: Arc<Vec<String>> = Arc::new(
        (0..8)
            .map(|_| key_and_csr(&env.id("default", "web")).1)
            .collect(),
    );
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (token, root, csrs, counters) = (
            token.clone(),
            root.clone(),
            Arc::clone(&csrs),
            counters.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut got = Received::default();
            let mut client = match meshid::test_helpers::connect(ca, &root, None).await {
                Ok(client) => client,
                Err(e) => {
                    got.other_errors.push(e.to_string());
                    return got;
                }
            };
            let mut i = c;
            loop {
                // Take one certificate from the budget; give it back if not received.
                if counters
                    .budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| b.checked_sub(1))
                    .is_err()
                {
                    return got;
                }
                i += 1;
                let answer = client
                    .create_certificate(request(&csrs[i % csrs.len()], 600, Some(&token), None))
                    .await;
                match answer {
                    Ok(reply) => {
                        got.serials
                            .push(serial_of(&reply.into_inner().cert_chain[0]));
                        counters.received.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(status) => {
                        counters.budget.fetch_add(1, Ordering::SeqCst);
                        if status.code() == tonic::Code::Unavailable
                            && status.message().contains("audit")
                        {
                            got.unavailable += 1;
                            counters.unavailable.fetch_add(1, Ordering::SeqCst);
                        } else {
                            // The replica is gone (killed): this client stops.
                            got.other_errors.push(status.to_string());
                            counters.changed.notify_waiters();
                            return got;
                        }
                    }
                }
                counters.changed.notify_waiters();
            }
        }));
    }
    let mut all = Received::default();
    for task in tasks {
        let got = task.await.unwrap();
        all.serials.extend(got.serials);
        all.unavailable += got.unavailable;
        all.other_errors.extend(got.other_errors);
    }
    all
}

fn serial_of(pem: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The proof of `serial` from `meshid audit prove`, checked by the Python
/// verifier written from RFC 9162.
fn prove_with_the_rfc_alone(pg: &Pg, serial: &str) {
    let proof = pg.audit(&["prove", "--serial", serial, "-o", "json"]);
    assert!(
        proof.status.success(),
        "{}",
        String::from_utf8_lossy(&proof.stderr)
    );
    assert_rfc9162_proof(&proof.stdout, serial);
}

/// Waits until the latest checkpoint covers every record and the log verifies.
fn verified(pg: &Pg) -> String {
    let mut said = String::new();
    poll_until(
        "audit verify passes with every record checkpointed",
        Duration::from_secs(30),
        || {
            let out = pg.audit(&["verify"]);
            said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            out.status.success()
        },
    );
    said
}

/// The serials of issued records.
fn issued(records: &[serde_json::Value]) -> HashSet<&str> {
    records
        .iter()
        .filter(|r| r["outcome"] == "issued")
        .filter_map(|r| r["serial"].as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_log_and_a_kill_9_mid_load_loses_no_record() {
    let Some(pg) = pg(true) else {
        return;
    };
    let env = web_env();
    let a = spawn_ca(&env, &pg.flags()).unwrap();
    let b = spawn_ca(&env, &pg.flags()).unwrap();
    let counters = Counters::new(20_000);
    let b_pid = b.pid().unwrap();
    let killer = {
        let counters = counters.clone();
        async move {
            counters
                .wait(|c| c.received.load(Ordering::SeqCst) >= 6_000)
                .await;
            let killed = Command::new("kill")
                .args(["-9", &b_pid.to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
        }
    };
    let (from_a, from_b, ()) = tokio::join!(
        load(a.addr, &env, 6, counters.clone()),
        load(b.addr, &env, 6, counters.clone()),
        killer,
    );
    assert_eq!(from_a.serials.len() + from_b.serials.len(), 20_000);
    assert!(from_a.other_errors.is_empty(), "{:?}", from_a.other_errors);
    assert!(!from_b.serials.is_empty() && !from_b.other_errors.is_empty());

    // Every certificate a client received has its record: 0 missing.
    let records = pg.records();
    let issued = issued(&records);
    for (replica, got) in [("a", &from_a), ("b", &from_b)] {
        let missing = got
            .serials
            .iter()
            .filter(|s| !issued.contains(s.as_str()))
            .count();
        assert_eq!(missing, 0, "replica {replica}: records missing");
    }

    // One tree: the whole log verifies; proofs of both replicas' records
    // check with the RFC alone.
    let said = verified(&pg);
    assert!(said.contains("audit log verified"), "{said}");
    prove_with_the_rfc_alone(&pg, &from_a.serials[0]);
    prove_with_the_rfc_alone(&pg, from_b.serials.last().unwrap());

    // A record changed with psql is named.
    let edited = &from_b.serials[10];
    pg.cluster
        .psql(
            "audit",
            &format!(
                "UPDATE audit_records SET granted_identity = 'spiffe://cluster.local/ns/x/sa/y' \
                 WHERE serial = '{edited}'"
            ),
        )
        .unwrap();
    let out = pg.audit(&["verify"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("serial {edited}")) && said.contains("changed"),
        "{said}"
    );
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_during_a_load_loses_nothing() {
    let Some(mut pg) = pg(false) else {
        return;
    };
    let env = web_env();
    let ca = spawn_ca(&env, &pg.flags()).unwrap();
    let counters = Counters::new(3_000);
    let controller = {
        let counters = counters.clone();
        let cluster = &mut pg.cluster;
        async move {
            counters
                .wait(|c| c.received.load(Ordering::SeqCst) >= 500)
                .await;
            tokio::task::block_in_place(|| cluster.stop().unwrap());
            // Refused while it is down, without a certificate.
            counters
                .wait(|c| c.unavailable.load(Ordering::SeqCst) >= 20)
                .await;
            tokio::task::block_in_place(|| cluster.start_postmaster().unwrap());
        }
    };
    let (got, ()) = tokio::join!(load(ca.addr, &env, 4, counters.clone()), controller);
    // The CA recovered on its own: the whole budget was received.
    assert_eq!(got.serials.len(), 3_000, "{:?}", got.other_errors);
    assert!(
        got.unavailable >= 20 && got.other_errors.is_empty(),
        "{got:?}"
    );
    let records = pg.records();
    let missing = got
        .serials
        .iter()
        .filter(|s| !issued(&records).contains(s.as_str()))
        .count();
    assert_eq!(missing, 0);
    // The decisions answered UNAVAILABLE were recorded once PostgreSQL came
    // back, as withheld refusals; none of their serials reached a client.
    let received: HashSet<&str> = got.serials.iter().map(String::as_str).collect();
    let withheld: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("withheld"))
        })
        .collect();
    assert!(!withheld.is_empty());
    for r in &withheld {
        assert_eq!(r["outcome"], "refused");
        assert!(
            !r["serial"].as_str().is_some_and(|s| received.contains(s)),
            "{r}"
        );
    }
    let said = verified(&pg);
    assert!(said.contains("audit log verified"), "{said}");
    drop(ca);
}

#[test]
fn bad_store_settings_stop_the_ca_at_start_naming_the_host() {
    let Some(pg) = pg(false) else {
        return;
    };
    let env = web_env();
    let start = |flags: &[String]| match spawn_ca(&env, flags) {
        Ok(_) => panic!("the CA started with {flags:?}"),
        Err(e) => e.to_string(),
    };
    // A wrong password: the host and the reason, never the password.
    let wrong = env.dir.path().join("wrong-pw");
    std::fs::write(&wrong, "not-the-password").unwrap();
    let mut flags = pg.flags();
    flags[3] = wrong.display().to_string();
    let said = start(&flags);
    let host = format!("127.0.0.1:{}", pg.cluster.port);
    assert!(
        said.contains(&host) && said.contains("password authentication failed"),
        "{said}"
    );
    assert!(!said.contains("not-the-password"), "{said}");
    // A password in the DSN is not printed either.
    let said = start(&[
        "--audit-store".into(),
        format!(
            "postgres://postgres:hunter2@127.0.0.1:{}/audit",
            pg.cluster.port
        ),
    ]);
    assert!(
        !said.contains("hunter2") && said.contains("postgres://postgres@"),
        "{said}"
    );
    // An unreachable host.
    let nobody = meshid::test_helpers::free_port().unwrap();
    let said = start(&[
        "--audit-store".into(),
        format!("postgres://meshid@{nobody}/audit"),
    ]);
    assert!(
        said.contains(&nobody.to_string()) && said.contains("connecting"),
        "{said}"
    );
    // A schema newer than this binary.
    drop(spawn_ca(&env, &pg.flags()).unwrap());
    pg.cluster
        .psql("audit", "UPDATE meshid_audit_schema SET version = 99")
        .unwrap();
    let said = start(&pg.flags());
    assert!(said.contains("schema version 99"), "{said}");
    // The password and CA files are for PostgreSQL only.
    let said = start(&["--audit-store-password-file".into(), "/etc/hostname".into()]);
    assert!(
        said.contains("is for a postgres:// --audit-store"),
        "{said}"
    );
}
