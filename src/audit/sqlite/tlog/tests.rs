use base64::Engine as _;
use ring::digest::{digest, SHA256};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::super::SqliteBackend;
use crate::audit::record::{full_record, Outcome};
use crate::audit::store::AuditBackend;
use crate::audit::tlog::note::{NoteSigner, NoteVerifier};
use crate::audit::{AuditError, AuditRecord};

const T0: OffsetDateTime = datetime!(2025-03-01 12:00 UTC);
const ORIGIN: &str = "cluster.local/meshid-audit";

fn records(n: usize) -> Vec<AuditRecord> {
    (0..n)
        .map(|i| {
            let outcome = if i % 5 == 4 {
                Outcome::Refused
            } else {
                Outcome::Issued
            };
            let mut r = full_record(T0 + Duration::seconds(i as i64), "shop", "cart", outcome);
            r.serial = Some(format!("{:04x}", 0xa000 + i));
            r
        })
        .collect()
}

fn signer() -> NoteSigner {
    NoteSigner::from_pkcs8(ORIGIN, &NoteSigner::generate_pkcs8().unwrap()).unwrap()
}

/// An empty store whose checkpoints are signed; its verifier.
fn signing_store() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    NoteVerifier,
    SqliteBackend,
) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let signer = signer();
    let verifier = signer.verifier();
    let backend = SqliteBackend::open(&path)
        .unwrap()
        .with_checkpoints(signer, ORIGIN)
        .unwrap();
    (dir, path, verifier, backend)
}

/// A store with `n` records appended in batches of 7 and checkpoints
/// signed after the first batch and at the end.
fn store(n: usize) -> (tempfile::TempDir, std::path::PathBuf, NoteVerifier) {
    let (dir, path, verifier, mut backend) = signing_store();
    for (i, batch) in records(n).chunks(7).enumerate() {
        backend.append(batch).unwrap();
        if i == 0 {
            assert_eq!(backend.checkpoint(T0).unwrap(), Some(batch.len() as u64));
        }
    }
    assert_eq!(backend.checkpoint(T0).unwrap(), Some(n as u64));
    assert_eq!(backend.checkpoint(T0).unwrap(), None, "nothing new to sign");
    (dir, path, verifier)
}

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let joined: Vec<u8> = parts.concat();
    digest(&SHA256, &joined).as_ref().try_into().unwrap()
}

/// RFC 9162 section 2.1.3.2, written here from the RFC (not through the
/// store's tree code).
fn rfc9162_inclusion(
    index: u64,
    size: u64,
    leaf: &[u8],
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = sha256(&[&[0x00], leaf]);
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = sha256(&[&[0x01], p, &r]);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = sha256(&[&[0x01], &r, p]);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// The checkpoint's size and root, its Ed25519 signature checked with ring
/// directly against the verifier key (C2SP signed-note, read here from the
/// spec).
fn open_note(note: &str, vkey: &str) -> (u64, [u8; 32]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let (text, sigs) = note.split_once("\n\n").unwrap();
    let text = format!("{text}\n");
    let mut vparts = vkey.splitn(3, '+');
    let (name, _id, key) = (
        vparts.next().unwrap(),
        vparts.next().unwrap(),
        vparts.next().unwrap(),
    );
    let key = b64.decode(key).unwrap();
    assert_eq!(key[0], 0x01, "Ed25519 verifier keys start with 0x01");
    let line = sigs
        .lines()
        .find(|l| l.starts_with(&format!("\u{2014} {name} ")))
        .unwrap();
    let sig = b64.decode(line.rsplit(' ').next().unwrap()).unwrap();
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &key[1..])
        .verify(text.as_bytes(), &sig[4..])
        .expect("the checkpoint's signature verifies");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], ORIGIN);
    let root: [u8; 32] = b64.decode(lines[2]).unwrap().try_into().unwrap();
    (lines[1].parse().unwrap(), root)
}

#[test]
fn every_record_is_a_leaf_whose_proof_checks_with_the_rfc_alone() {
    let (_dir, path, verifier) = store(23);
    let backend = SqliteBackend::open_read_only(&path).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    for (i, record) in records(23).iter().enumerate() {
        let serial = record.serial.as_deref().unwrap();
        let proof = backend.prove(serial).unwrap();
        assert_eq!(proof.leaf_index, i as u64);
        let leaf = b64.decode(&proof.leaf).unwrap();
        let shown: AuditRecord = serde_json::from_slice(&leaf).unwrap();
        assert_eq!(&shown, record, "the leaf is the record's JSON");
        let hashes: Vec<[u8; 32]> = proof
            .proof
            .iter()
            .map(|h| b64.decode(h).unwrap().try_into().unwrap())
            .collect();
        let (size, root) = open_note(&proof.checkpoint, &verifier.verifier_key());
        assert_eq!(size, proof.tree_size);
        assert!(
            rfc9162_inclusion(proof.leaf_index, size, &leaf, &hashes, &root),
            "leaf {i}"
        );
        let mut tampered = leaf.clone();
        tampered[10] ^= 1;
        assert!(!rfc9162_inclusion(
            proof.leaf_index,
            size,
            &tampered,
            &hashes,
            &root
        ));
    }
    let verified = backend.verify(&verifier, &mut |_, _| {}).unwrap();
    assert_eq!((verified.records, verified.checkpoints), (23, 2));
}

/// Whether the proof of record `i` of [`records`] checks with the RFC alone.
fn proof_checks(backend: &SqliteBackend, verifier: &NoteVerifier, i: usize) -> bool {
    let b64 = base64::engine::general_purpose::STANDARD;
    let proof = backend.prove(&format!("{:04x}", 0xa000 + i)).unwrap();
    assert_eq!(proof.leaf_index, i as u64);
    let leaf = b64.decode(&proof.leaf).unwrap();
    let hashes: Vec<[u8; 32]> = proof
        .proof
        .iter()
        .map(|h| b64.decode(h).unwrap().try_into().unwrap())
        .collect();
    let (size, root) = open_note(&proof.checkpoint, &verifier.verifier_key());
    rfc9162_inclusion(proof.leaf_index, size, &leaf, &hashes, &root)
}

#[test]
fn proofs_read_from_stored_nodes_check_with_the_rfc_alone() {
    // 700 leaves: two complete nodes of 256 and a partial right edge.
    let (_dir, path, verifier) = store(700);
    let backend = SqliteBackend::open_read_only(&path).unwrap();
    for i in [0, 1, 255, 256, 300, 511, 512, 640, 698, 699] {
        assert!(proof_checks(&backend, &verifier, i), "leaf {i}");
    }
    let verified = backend.verify(&verifier, &mut |_, _| {}).unwrap();
    assert_eq!(verified.records, 700);
}

#[test]
fn verify_names_a_stored_node_changed_behind_the_store() {
    let (_dir, path, verifier) = store(600);
    sql(
        &path,
        "UPDATE tlog_nodes SET hash = zeroblob(32) WHERE level = 1 AND idx = 1",
    );
    let error = verify_error(&path, &verifier);
    assert!(
        error.contains("node 1 of level 1 (leaves 256..512)"),
        "{error}"
    );
    // A proof through the changed node does not check.
    let backend = SqliteBackend::open_read_only(&path).unwrap();
    assert!(!proof_checks(&backend, &verifier, 550));
}

#[test]
fn a_schema_2_store_gets_its_nodes_when_the_ca_opens_it() {
    let (_dir, path, verifier) = store(520);
    sql(
        &path,
        "DROP TABLE tlog_nodes; UPDATE meshid_audit_schema SET version = 2",
    );
    let read_only = SqliteBackend::open_read_only(&path).unwrap();
    let err = read_only.prove("a001").unwrap_err().to_string();
    assert!(err.contains("start the CA on it once"), "{err}");
    drop(read_only);
    drop(SqliteBackend::open(&path).unwrap());
    let backend = SqliteBackend::open_read_only(&path).unwrap();
    assert!(proof_checks(&backend, &verifier, 515));
    assert_eq!(
        backend.verify(&verifier, &mut |_, _| {}).unwrap().records,
        520
    );
}

fn sql(path: &std::path::Path, statement: &str) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(statement).unwrap();
}

fn verify_error(path: &std::path::Path, verifier: &NoteVerifier) -> String {
    let backend = SqliteBackend::open_read_only(path).unwrap();
    match backend.verify(verifier, &mut |_, _| {}) {
        Err(e @ AuditError::Tlog { .. }) => e.to_string(),
        other => panic!("verify should have failed: {other:?}"),
    }
}

#[test]
fn verify_names_a_record_changed_behind_the_store() {
    let (_dir, path, verifier) = store(12);
    sql(
        &path,
        "UPDATE audit_records SET granted_identity = 'spiffe://evil/x' WHERE serial = 'a005'",
    );
    let error = verify_error(&path, &verifier);
    assert!(
        error.contains("serial a005") && error.contains("changed"),
        "{error}"
    );
    // Appending to it is refused too: its checkpoint no longer matches.
    let refused = SqliteBackend::open(&path)
        .unwrap()
        .with_checkpoints(signer(), ORIGIN);
    assert!(refused.is_err());
}

#[test]
fn verify_names_the_record_after_a_deleted_one() {
    let (_dir, path, verifier) = store(12);
    sql(&path, "DELETE FROM audit_records WHERE serial = 'a003'");
    let error = verify_error(&path, &verifier);
    assert!(
        error.contains("leaf 3 is missing") && error.contains("serial a004"),
        "{error}"
    );
}

#[test]
fn a_checkpoint_that_does_not_match_the_tree_stops_appends_and_verify() {
    let (dir, path, verifier) = store(9);
    // A checkpoint signed by the right key over a root that is not the tree's.
    let key = NoteSigner::generate_pkcs8().unwrap();
    let forger = NoteSigner::from_pkcs8(ORIGIN, &key).unwrap();
    let body = crate::audit::tlog::note::Checkpoint {
        origin: ORIGIN.to_owned(),
        size: 12,
        root: [7; 32],
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO tlog_checkpoints (size, time_unix_nanos, note) VALUES (12, 0, ?1)",
        [body.sign(&forger).unwrap()],
    )
    .unwrap();
    drop(conn);
    let err = SqliteBackend::open(&path)
        .unwrap()
        .with_checkpoints(forger, ORIGIN)
        .unwrap_err();
    assert!(err.to_string().contains("size 12"), "{err}");
    let error = verify_error(&path, &verifier);
    assert!(error.contains("checkpoint of size 12"), "{error}");
    drop(dir);
}

#[test]
fn prove_says_when_a_record_is_not_yet_checkpointed_or_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut backend = SqliteBackend::open(&path).unwrap();
    backend.append(&records(3)).unwrap();
    let err = backend.prove("a001").unwrap_err().to_string();
    assert!(err.contains("no checkpoint yet"), "{err}");
    let err = backend.prove("ffff").unwrap_err().to_string();
    assert!(err.contains("no record of serial ffff"), "{err}");
}

#[test]
fn a_schema_1_store_gets_a_leaf_for_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(super::super::SCHEMA).unwrap();
        conn.execute("INSERT INTO meshid_audit_schema (version) VALUES (1)", [])
            .unwrap();
        for r in records(5) {
            conn.execute(
                "INSERT INTO audit_records (time_unix_nanos, serial, namespace, service_account, \
                 outcome) VALUES (?1, ?2, 'shop', 'cart', ?3)",
                rusqlite::params![
                    i64::try_from(r.time.unix_timestamp_nanos()).unwrap(),
                    r.serial,
                    r.outcome.as_str()
                ],
            )
            .unwrap();
        }
    }
    let read_only = SqliteBackend::open_read_only(&path).unwrap();
    let err = read_only.prove("a001").unwrap_err().to_string();
    assert!(err.contains("log is incomplete (schema 1)"), "{err}");
    drop(read_only);
    let signer = signer();
    let verifier = signer.verifier();
    let mut backend = SqliteBackend::open(&path)
        .unwrap()
        .with_checkpoints(signer, ORIGIN)
        .unwrap();
    backend.append(&records(2)).unwrap();
    assert_eq!(backend.checkpoint(T0).unwrap(), Some(7));
    let verified = backend.verify(&verifier, &mut |_, _| {}).unwrap();
    assert_eq!(verified.records, 7);
    assert!(backend.prove("a004").is_ok());
}

#[test]
fn retention_removes_old_bodies_and_the_log_still_verifies() {
    let (_dir, _path, verifier, backend) = signing_store();
    let mut backend = backend.with_retention(Some(std::time::Duration::from_secs(3600)));
    // Records a second apart from T0; a checkpoint covering the first 10.
    let all = records(14);
    backend.append(&all[..10]).unwrap();
    // An hour and 5 s after T0: records 0..5 are older than the retention;
    // the checkpoint signed now covers the first 10.
    let now = T0 + Duration::seconds(3605);
    assert_eq!(backend.checkpoint(now).unwrap(), Some(10));
    backend.append(&all[10..]).unwrap();
    let verified = backend.verify(&verifier, &mut |_, _| {}).unwrap();
    assert_eq!((verified.records, verified.pruned), (14, 5));
    // A pruned record's body is gone; its proof cannot be given, others' can.
    let err = backend.prove("a002").unwrap_err().to_string();
    assert!(err.contains("retention"), "{err}");
    assert!(backend.prove("a007").is_ok());
    let q = crate::audit::AuditQuery {
        serial: Some("a002".to_owned()),
        ..Default::default()
    };
    assert!(backend.query(&q).unwrap().is_empty());
    // Later records are never pruned before a checkpoint covers them.
    assert_eq!(
        backend.checkpoint(now + Duration::days(1)).unwrap(),
        Some(14)
    );
    let verified = backend.verify(&verifier, &mut |_, _| {}).unwrap();
    assert_eq!((verified.records, verified.pruned), (14, 14));
}
