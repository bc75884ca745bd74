//! Against a real PostgreSQL (a throwaway cluster per test); skipped, with
//! the reason printed, where PostgreSQL is not installed.

use base64::Engine as _;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::{PgOptions, PgStore};
use crate::audit::record::{full_record, Outcome};
use crate::audit::store::AuditBackend;
use crate::audit::tlog::merkle;
use crate::audit::tlog::note::{Checkpoint, NoteSigner};
use crate::audit::{AuditError, AuditQuery, AuditRecord};
use crate::test_helpers::postgres::{unavailable, PgCluster, PASSWORD};

const T0: OffsetDateTime = datetime!(2025-03-01 12:00 UTC);
const ORIGIN: &str = "cluster.local/meshid-audit";

fn records(from: usize, n: usize) -> Vec<AuditRecord> {
    (from..from + n)
        .map(|i| {
            let outcome = if i % 5 == 4 {
                Outcome::Refused
            } else {
                Outcome::Issued
            };
            let ns = if i % 2 == 0 { "shop" } else { "bank" };
            let mut r = full_record(T0 + Duration::seconds(i as i64), ns, "cart", outcome);
            r.serial = Some(format!("{:05x}", 0xa0000 + i));
            r
        })
        .collect()
}

/// A cluster with database `audit`, and options reaching it with the
/// password in a file; None (skip) without PostgreSQL.
fn cluster() -> Option<(PgCluster, PgOptions)> {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return None;
    }
    let cluster = PgCluster::start(false).unwrap().unwrap();
    cluster.create_db("audit").unwrap();
    let pw = cluster.dir().join("client-pw");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let opts = PgOptions {
        dsn: cluster.dsn("audit", false),
        password_file: Some(pw),
        ca_file: None,
    };
    Some((cluster, opts))
}

fn signer() -> NoteSigner {
    NoteSigner::from_pkcs8(ORIGIN, &NoteSigner::generate_pkcs8().unwrap()).unwrap()
}

fn message(e: &AuditError) -> String {
    crate::audit::store::error_chain(e)
}

#[test]
fn two_writers_append_concurrently_into_one_tree_whose_proofs_check() {
    let Some((_cluster, opts)) = cluster() else {
        return;
    };
    let key = NoteSigner::generate_pkcs8().unwrap();
    let replica = |from: usize| {
        let opts = opts.clone();
        let key = key.clone();
        std::thread::spawn(move || {
            let signer = NoteSigner::from_pkcs8(ORIGIN, &key).unwrap();
            let mut store = PgStore::open(&opts)
                .unwrap()
                .with_checkpoints(signer, ORIGIN)
                .unwrap();
            for batch in records(from, 400).chunks(13) {
                store.append(batch).unwrap();
                store.checkpoint(T0).unwrap();
            }
        })
    };
    let (a, b) = (replica(0), replica(1000));
    a.join().unwrap();
    b.join().unwrap();
    let mut reader = PgStore::open_read_only(&opts).unwrap();
    let verifier = signer_of(&key).verifier();
    let verified = reader.verify(&verifier, &mut |_, _| {}).unwrap();
    assert_eq!(verified.records, 800);
    assert!(verified.checkpoints >= 2, "{verified:?}");
    let b64 = base64::engine::general_purpose::STANDARD;
    for serial in ["a0000", "a018f", "a03e8", "a0577"] {
        let proof = reader.prove(serial).unwrap();
        let checkpoint = Checkpoint::open(&proof.checkpoint, &verifier).unwrap();
        let leaf = b64.decode(&proof.leaf).unwrap();
        let hashes: Vec<merkle::Hash> = proof
            .proof
            .iter()
            .map(|h| b64.decode(h).unwrap().try_into().unwrap())
            .collect();
        merkle::verify_inclusion(
            proof.leaf_index,
            proof.tree_size,
            &merkle::leaf_hash(&leaf),
            &hashes,
            &checkpoint.root,
        )
        .unwrap();
    }
    // Both replicas' records are listed, each once.
    let all = reader.query(&AuditQuery::default()).unwrap();
    assert_eq!(all.len(), 800);
}

fn signer_of(key: &[u8]) -> NoteSigner {
    NoteSigner::from_pkcs8(ORIGIN, key).unwrap()
}

#[test]
fn list_filters_match_the_reference_filter() {
    let Some((_cluster, opts)) = cluster() else {
        return;
    };
    let mut store = PgStore::open(&opts).unwrap();
    let all = records(0, 40);
    store.append(&all).unwrap();
    let queries = [
        AuditQuery::default(),
        AuditQuery {
            namespace: Some("shop".into()),
            ..Default::default()
        },
        AuditQuery {
            outcome: Some(Outcome::Refused),
            since: Some(T0 + Duration::seconds(10)),
            ..Default::default()
        },
        AuditQuery {
            serial: Some("a0007".into()),
            ..Default::default()
        },
    ];
    for q in queries {
        let expected: Vec<_> = all.iter().filter(|r| q.matches(r)).cloned().collect();
        assert_eq!(store.query(&q).unwrap(), expected, "{q:?}");
    }
    let newest = store
        .query(&AuditQuery {
            limit: Some(3),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(newest, all[37..].to_vec());
}

#[test]
fn a_wrong_password_fails_naming_the_host_never_the_password() {
    let Some((cluster, mut opts)) = cluster() else {
        return;
    };
    std::fs::write(opts.password_file.as_ref().unwrap(), "not-the-password").unwrap();
    let e = PgStore::open(&opts).unwrap_err();
    let text = message(&e);
    assert!(
        text.contains(&format!("127.0.0.1:{}", cluster.port)) && text.contains("password"),
        "{text}"
    );
    assert!(!text.contains("not-the-password"), "{text}");
    // A password in the DSN is never shown either.
    opts.password_file = None;
    opts.dsn = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/audit",
        cluster.port
    );
    let text = message(&PgStore::open(&opts).unwrap_err());
    assert!(
        !text.contains("hunter2") && text.contains("postgres://postgres@"),
        "{text}"
    );
}

#[test]
fn an_unreachable_host_fails_naming_it() {
    let port = crate::test_helpers::free_port().unwrap().port();
    let opts = PgOptions {
        dsn: format!("postgres://meshid:secret@127.0.0.1:{port}/audit"),
        password_file: None,
        ca_file: None,
    };
    let text = message(&PgStore::open(&opts).unwrap_err());
    assert!(
        text.contains(&format!("127.0.0.1:{port}")) && text.contains("connecting"),
        "{text}"
    );
    assert!(!text.contains("secret"), "{text}");
}

#[test]
fn bad_settings_are_named_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let cases = [
        (
            PgOptions {
                dsn: "postgres://u@127.0.0.1:1/db?sslmode=verify-full".into(),
                password_file: None,
                ca_file: None,
            },
            "--audit-store-ca-file",
        ),
        (
            PgOptions {
                dsn: "postgres://u@127.0.0.1:1/db".into(),
                password_file: Some(empty.clone()),
                ca_file: None,
            },
            "is empty",
        ),
        (
            PgOptions {
                dsn: "postgres://u@127.0.0.1:1/db".into(),
                password_file: Some(dir.path().join("missing")),
                ca_file: None,
            },
            "reading the password file",
        ),
        (
            PgOptions {
                dsn: "postgres://u@127.0.0.1:1/db".into(),
                password_file: None,
                ca_file: Some(empty),
            },
            "holds no certificate",
        ),
        (
            PgOptions {
                dsn: "postgres://u:pw@127.0.0.1:1/db?sslmode=bogus".into(),
                password_file: None,
                ca_file: None,
            },
            "not valid",
        ),
    ];
    for (opts, expected) in cases {
        let text = message(&PgStore::open(&opts).unwrap_err());
        assert!(text.contains(expected), "{expected}: {text}");
        assert!(!text.contains(":pw@"), "{text}");
    }
}

#[test]
fn a_schema_newer_than_this_build_is_refused() {
    let Some((cluster, opts)) = cluster() else {
        return;
    };
    drop(PgStore::open(&opts).unwrap());
    cluster
        .psql("audit", "UPDATE meshid_audit_schema SET version = 99")
        .unwrap();
    for e in [
        PgStore::open(&opts).unwrap_err(),
        PgStore::open_read_only(&opts).unwrap_err(),
    ] {
        let text = message(&e);
        assert!(text.contains("schema version 99"), "{text}");
    }
}

#[test]
fn verify_names_records_changed_or_deleted_with_sql() {
    let Some((cluster, opts)) = cluster() else {
        return;
    };
    let signer = signer();
    let verifier = signer.verifier();
    let mut store = PgStore::open(&opts)
        .unwrap()
        .with_checkpoints(signer, ORIGIN)
        .unwrap();
    store.append(&records(0, 300)).unwrap();
    assert_eq!(store.checkpoint(T0).unwrap(), Some(300));
    cluster
        .psql(
            "audit",
            "UPDATE audit_records SET granted_identity = 'spiffe://evil/x' WHERE serial = 'a0105'",
        )
        .unwrap();
    let text = message(&store.verify(&verifier, &mut |_, _| {}).unwrap_err());
    assert!(
        text.contains("serial a0105") && text.contains("changed"),
        "{text}"
    );
    cluster
        .psql("audit", "DELETE FROM audit_records WHERE serial = 'a0003'")
        .unwrap();
    let text = message(&store.verify(&verifier, &mut |_, _| {}).unwrap_err());
    assert!(
        text.contains("leaf 3 is missing") && text.contains("a0004"),
        "{text}"
    );
}

#[test]
fn a_checkpoint_that_does_not_match_the_tree_stops_appends() {
    let Some((cluster, opts)) = cluster() else {
        return;
    };
    let key = NoteSigner::generate_pkcs8().unwrap();
    let mut store = PgStore::open(&opts)
        .unwrap()
        .with_checkpoints(signer_of(&key), ORIGIN)
        .unwrap();
    store.append(&records(0, 9)).unwrap();
    store.checkpoint(T0).unwrap();
    let forged = Checkpoint {
        origin: ORIGIN.to_owned(),
        size: 9,
        root: [7; 32],
    }
    .sign(&signer_of(&key))
    .unwrap();
    cluster
        .psql(
            "audit",
            &format!("UPDATE tlog_checkpoints SET note = '{forged}' WHERE size = 9"),
        )
        .unwrap();
    let text = message(
        &PgStore::open(&opts)
            .unwrap()
            .with_checkpoints(signer_of(&key), ORIGIN)
            .unwrap_err(),
    );
    assert!(text.contains("does not match the stored tree"), "{text}");
    // Another replica's key: refused too, saying so.
    let text = message(
        &PgStore::open(&opts)
            .unwrap()
            .with_checkpoints(signer(), ORIGIN)
            .unwrap_err(),
    );
    assert!(
        text.contains("checkpoints are signed by cluster.local"),
        "{text}"
    );
}

#[test]
fn the_store_reconnects_after_postgres_restarts() {
    let Some((mut cluster, opts)) = cluster() else {
        return;
    };
    let mut store = PgStore::open(&opts).unwrap();
    store.append(&records(0, 5)).unwrap();
    cluster.stop().unwrap();
    // The batch in flight fails, naming the store; so does the next (its
    // reconnection is refused).
    for _ in 0..2 {
        let text = message(&store.append(&records(5, 5)).unwrap_err());
        assert!(text.contains("127.0.0.1"), "{text}");
    }
    cluster.start_postmaster().unwrap();
    // Within RECONNECT_EVERY of a failure the store answers with it at once.
    let text = message(&store.append(&records(5, 5)).unwrap_err());
    assert!(text.contains("unreachable"), "{text}");
    // Then it tries again, and the append goes through.
    store.reconnect_every = std::time::Duration::ZERO;
    store.append(&records(5, 5)).unwrap();
    assert_eq!(store.query(&AuditQuery::default()).unwrap(), records(0, 10));
}

#[test]
fn text_with_nul_is_stored_with_a_replacement_character() {
    let Some((_cluster, opts)) = cluster() else {
        return;
    };
    let signer = signer();
    let verifier = signer.verifier();
    let mut store = PgStore::open(&opts)
        .unwrap()
        .with_checkpoints(signer, ORIGIN)
        .unwrap();
    let mut hostile = records(0, 1);
    hostile[0].requested_identity = Some("spiffe://td/ns/a\0b".into());
    store.append(&hostile).unwrap();
    store.checkpoint(T0).unwrap();
    let stored = store.query(&AuditQuery::default()).unwrap();
    assert_eq!(
        stored[0].requested_identity.as_deref(),
        Some("spiffe://td/ns/a\u{FFFD}b")
    );
    assert_eq!(store.verify(&verifier, &mut |_, _| {}).unwrap().records, 1);
}

#[test]
fn tls_to_postgres_verifies_the_server_against_the_ca_file() {
    let Some((mut cluster, mut opts)) = cluster() else {
        return;
    };
    let ca = cluster.restart_with_tls().unwrap();
    let ca_file = cluster.dir().join("pg-ca.pem");
    std::fs::write(&ca_file, ca).unwrap();
    opts.ca_file = Some(ca_file);
    let mut store = PgStore::open(&opts).unwrap();
    store.append(&records(0, 3)).unwrap();
    let over_tls: String = store
        .client()
        .unwrap()
        .query_one(
            "SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(over_tls, "true");
    // A CA that did not sign the server's certificate: refused, saying why.
    let other = tempfile::NamedTempFile::new().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let stranger = params
        .self_signed(&rcgen::KeyPair::generate().unwrap())
        .unwrap();
    std::fs::write(other.path(), stranger.pem()).unwrap();
    opts.ca_file = Some(other.path().to_owned());
    let text = message(&PgStore::open(&opts).unwrap_err());
    assert!(
        text.contains("127.0.0.1") && text.to_lowercase().contains("certificate"),
        "{text}"
    );
}

/// A tmpfs mounted for one test (root only), unmounted on drop.
struct SmallDisk(tempfile::TempDir);

impl SmallDisk {
    fn mount(size: &str) -> Option<Self> {
        if crate::test_helpers::my_unix_uid() != 0 {
            eprintln!("skipped: mounting a small file system needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "meshid-test"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mount -t tmpfs");
        Some(Self(dir))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

#[test]
fn a_full_disk_fails_the_batch_and_the_store_takes_writes_once_there_is_room() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let Some(disk) = SmallDisk::mount("160m") else {
        return;
    };
    let cluster = PgCluster::start_in(disk.0.path(), true).unwrap().unwrap();
    cluster.create_db("audit").unwrap();
    let opts = PgOptions {
        dsn: cluster.dsn("audit", true),
        password_file: None,
        ca_file: None,
    };
    let mut store = PgStore::open(&opts).unwrap();
    store.reconnect_every = std::time::Duration::ZERO;
    store.append(&records(0, 10)).unwrap();
    // Fill the file system.
    let filler = disk.0.path().join("filler");
    {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
    }
    let mut failed = None;
    for from in (10..20_000).step_by(500) {
        if let Err(e) = store.append(&records(from, 500)) {
            failed = Some(message(&e));
            break;
        }
    }
    let text = failed.expect("appends kept succeeding on a full disk");
    assert!(text.contains("No space left on device"), "{text}");
    // Room again: the store takes writes (PostgreSQL may be recovering
    // from a crash on a full WAL: wait for it to accept connections).
    std::fs::remove_file(&filler).unwrap();
    let mut tries = 0;
    while let Err(e) = store.append(&records(30_000, 5)) {
        tries += 1;
        assert!(tries < 200, "never recovered: {}", message(&e));
        std::thread::park_timeout(std::time::Duration::from_millis(50));
    }
    let all = store.query(&AuditQuery::default()).unwrap();
    assert!(all.iter().any(|r| r.serial.as_deref() == Some("a7530")));
    drop(cluster);
}

/// A revocation of the certificate of `records(0, n)[i]` (same serial).
fn revocation(i: usize) -> AuditRecord {
    let issued = &records(i, 1)[0];
    let mut r = full_record(
        T0 + Duration::hours(1),
        issued.namespace.as_deref().unwrap(),
        "cart",
        Outcome::Revoked,
    );
    r.serial = issued.serial.clone();
    r.caller = Some("uid 0 (admin socket)".to_owned());
    r
}

/// The outcome constraint as PostgreSQL shows it: (definition, validated).
fn outcome_check(cluster: &PgCluster) -> String {
    cluster
        .psql(
            "audit",
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'audit_records'::regclass AND conname = 'audit_records_outcome_check'",
        )
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn a_revoked_record_round_trips_verifies_and_is_selected_by_outcome() {
    let Some((_cluster, opts)) = cluster() else {
        return;
    };
    let signer = signer();
    let verifier = signer.verifier();
    let mut store = PgStore::open(&opts)
        .unwrap()
        .with_checkpoints(signer, ORIGIN)
        .unwrap();
    let mut all = records(0, 10);
    all.push(revocation(3));
    store.append(&all).unwrap();
    assert_eq!(store.checkpoint(T0).unwrap(), Some(11));
    assert_eq!(store.verify(&verifier, &mut |_, _| {}).unwrap().records, 11);
    let q = AuditQuery {
        outcome: Some(Outcome::Revoked),
        ..Default::default()
    };
    assert_eq!(store.query(&q).unwrap(), [revocation(3)]);
    let mut reader = PgStore::open_read_only(&opts).unwrap();
    assert_eq!(reader.query(&q).unwrap(), [revocation(3)]);
    // The serial's proof is of its issuance.
    assert_eq!(reader.prove("a0003").unwrap().leaf_index, 3);
}

#[test]
fn a_schema_1_store_takes_revocations_after_the_ca_opens_it_and_its_log_still_verifies() {
    let Some((cluster, opts)) = cluster() else {
        return;
    };
    // What the previous build left: migration 1 at version 1, records
    // appended and checkpointed through the same append path.
    cluster.psql("audit", super::MIGRATIONS[0]).unwrap();
    cluster
        .psql("audit", "UPDATE meshid_audit_schema SET version = 1")
        .unwrap();
    assert_eq!(
        outcome_check(&cluster),
        "CHECK ((outcome = ANY (ARRAY['issued'::text, 'refused'::text])))"
    );
    let key = NoteSigner::generate_pkcs8().unwrap();
    let mut previous = PgStore::connected(&opts)
        .unwrap()
        .with_checkpoints(signer_of(&key), ORIGIN)
        .unwrap();
    previous.append(&records(0, 20)).unwrap();
    assert_eq!(previous.checkpoint(T0).unwrap(), Some(20));
    let text = message(&previous.append(&[revocation(3)]).unwrap_err());
    assert!(text.contains("audit_records_outcome_check"), "{text}");
    drop(previous);

    let mut store = PgStore::open(&opts)
        .unwrap()
        .with_checkpoints(signer_of(&key), ORIGIN)
        .unwrap();
    assert_eq!(
        cluster
            .psql("audit", "SELECT MAX(version) FROM meshid_audit_schema")
            .unwrap()
            .trim(),
        super::SCHEMA_VERSION.to_string()
    );
    assert_eq!(
        outcome_check(&cluster),
        "CHECK ((outcome = ANY (ARRAY['issued'::text, 'refused'::text, 'revoked'::text]))) NOT VALID"
    );
    store.append(&[revocation(3)]).unwrap();
    assert_eq!(store.checkpoint(T0).unwrap(), Some(21));
    let verifier = signer_of(&key).verifier();
    let verified = store.verify(&verifier, &mut |_, _| {}).unwrap();
    assert_eq!((verified.records, verified.checkpoints), (21, 2));
    let q = AuditQuery {
        outcome: Some(Outcome::Revoked),
        ..Default::default()
    };
    assert_eq!(store.query(&q).unwrap(), [revocation(3)]);
    // The wider check still refuses anything else.
    let text = cluster
        .psql(
            "audit",
            "INSERT INTO audit_records (id, time_unix_nanos, outcome, leaf_hash) \
             VALUES (999, 0, 'granted', '')",
        )
        .unwrap_err()
        .to_string();
    assert!(text.contains("audit_records_outcome_check"), "{text}");
    // Opening again migrates nothing more.
    drop(PgStore::open(&opts).unwrap());
}
