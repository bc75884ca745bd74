//! The audit store's transparency log at scale: N records (default
//! 1,000,000) appended to a SQLite store through the CA's backend in
//! batches of 1,000, one checkpoint, then the latency of `audit list
//! --serial` (the serial index) and of `audit prove` (an inclusion proof,
//! whose subtree hashes are recomputed from the stored leaf hashes: no
//! tiles are stored yet), and the disk per record.
//!
//! `cargo bench --bench audit_log -- [--records 1000000] [--lookups 50]`

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::time::Instant;

use meshid::audit::store::AuditBackend;
use meshid::audit::tlog::note::NoteSigner;
use meshid::audit::{AuditQuery, AuditRecord, Outcome, SqliteBackend};
use meshid::test_helpers::cli_arg;

fn record(i: u64) -> AuditRecord {
    let t0 = time::macros::datetime!(2026-01-01 00:00 UTC);
    let mut r = AuditRecord::new(t0 + time::Duration::milliseconds(i as i64), Outcome::Issued);
    let id = format!("spiffe://cluster.local/ns/shop/sa/app-{}", i % 500);
    r.caller = Some(id.clone());
    r.requested_identity = Some(id.clone());
    r.granted_identity = Some(id);
    r.namespace = Some("shop".to_owned());
    r.service_account = Some(format!("app-{}", i % 500));
    r.node = Some(format!("node-{}", i % 50));
    r.pod_name = Some(format!("app-{}-{i:x}", i % 500));
    r.pod_uid = Some(format!("{i:032x}"));
    r.serial = Some(format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
    r.public_key_sha256 = Some(format!("{:064x}", i));
    r.requested_ttl_secs = Some(86400);
    r.granted_ttl_secs = Some(86400);
    r.peer = Some("10.0.0.1:40000".to_owned());
    r
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let n: u64 = cli_arg("--records", 1_000_000);
    let lookups: u64 = cli_arg("--lookups", 50);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let signer =
        NoteSigner::from_pkcs8("bench/meshid-audit", &NoteSigner::generate_pkcs8().unwrap())
            .unwrap();
    let mut backend = SqliteBackend::open(&path)
        .unwrap()
        .with_checkpoints(signer, "bench/meshid-audit")
        .unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<AuditRecord> = (i..(i + 1000).min(n)).map(record).collect();
        backend.append(&batch).unwrap();
        i += batch.len() as u64;
    }
    let append_secs = started.elapsed().as_secs_f64();
    backend.checkpoint(time::OffsetDateTime::now_utc()).unwrap();
    drop(backend);
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    let (mut list, mut prove) = (Vec::new(), Vec::new());
    let mut reader = SqliteBackend::open_read_only(&path).unwrap();
    for k in 0..lookups {
        let serial = record((k * 7919 + 13) % n).serial.unwrap();
        let t = Instant::now();
        let found = reader
            .query(&AuditQuery {
                serial: Some(serial.clone()),
                ..AuditQuery::default()
            })
            .unwrap();
        list.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(found.len(), 1);
        let t = Instant::now();
        reader.prove(&serial).unwrap();
        prove.push(t.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "{n} records appended in {append_secs:.1} s ({:.1} µs each, batches of 1,000); {:.0} bytes per record on disk",
        append_secs * 1e6 / n as f64,
        bytes as f64 / n as f64
    );
    println!(
        "audit list --serial: p50 {:.2} ms, p99 {:.2} ms; audit prove: p50 {:.1} ms, p99 {:.1} ms ({lookups} lookups)",
        percentile(list.clone(), 0.5),
        percentile(list, 0.99),
        percentile(prove.clone(), 0.5),
        percentile(prove, 0.99)
    );
}
