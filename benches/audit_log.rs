//! The audit store's transparency log at scale: N records (default
//! 1,000,000; the target is stated at 10,000,000) appended through the CA's
//! backend in batches of 10,000, one checkpoint, then the latency of
//! `audit list --serial` (the serial index) and of `audit prove` (an
//! inclusion proof from the stored nodes) on an open reader, and the disk
//! per record. For SQLite, PostgreSQL (a throwaway cluster on 127.0.0.1,
//! fsync on) or both in the same run.
//!
//! `cargo bench --bench audit_log -- [--records 1000000] [--lookups 50] [--store sqlite|postgres|both]`

#![allow(clippy::disallowed_methods, clippy::unwrap_used)]

use std::time::Instant;

use meshid::audit::postgres::PgOptions;
use meshid::audit::tlog::note::NoteSigner;
use meshid::audit::{AuditQuery, AuditRecord, Outcome, StoreLocation};
use meshid::test_helpers::cli_arg;
use meshid::test_helpers::postgres::PgCluster;

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
    let stores = match meshid::test_helpers::cli_value("--store").as_deref() {
        None | Some("both") => vec!["sqlite", "postgres"],
        Some("sqlite") => vec!["sqlite"],
        Some("postgres") => vec!["postgres"],
        Some(other) => panic!("--store {other}: sqlite, postgres or both"),
    };
    for store in stores {
        let dir = tempfile::tempdir().unwrap();
        let pg = (store == "postgres").then(|| {
            let pg = PgCluster::start(true)
                .unwrap()
                .expect("PostgreSQL is not installed");
            pg.create_db("audit").unwrap();
            pg
        });
        let location = match &pg {
            Some(pg) => StoreLocation::Postgres(PgOptions {
                dsn: pg.dsn("audit", true),
                password_file: None,
                ca_file: None,
            }),
            None => StoreLocation::Sqlite(dir.path().join("audit.db")),
        };
        run(store, &location, n, lookups, || match &pg {
            Some(pg) => pg
                .psql("audit", "SELECT pg_database_size('audit')")
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
            None => std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().metadata().unwrap().len())
                .sum(),
        });
    }
}

fn run(store: &str, location: &StoreLocation, n: u64, lookups: u64, bytes: impl Fn() -> u64) {
    let signer =
        NoteSigner::from_pkcs8("bench/meshid-audit", &NoteSigner::generate_pkcs8().unwrap())
            .unwrap();
    let mut backend = location
        .open_writer(signer, "bench/meshid-audit", None)
        .unwrap();
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let batch: Vec<AuditRecord> = (i..(i + 10_000).min(n)).map(record).collect();
        backend.append(&batch).unwrap();
        i += batch.len() as u64;
        if i % 1_000_000 == 0 {
            eprintln!(
                "{store}: {i} records, {:.0} s",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let append_secs = started.elapsed().as_secs_f64();
    backend.checkpoint(time::OffsetDateTime::now_utc()).unwrap();
    drop(backend);
    let bytes = bytes();
    let (mut list, mut prove) = (Vec::new(), Vec::new());
    let mut reader = location.open_reader().unwrap();
    for k in 0..lookups {
        let serial = record((k * 7919 + 13) % n).serial.unwrap();
        let t = Instant::now();
        let found = reader
            .list(&AuditQuery {
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
        "{store}: {n} records appended in {append_secs:.1} s ({:.1} µs each, batches of 10,000); {:.0} bytes per record on disk",
        append_secs * 1e6 / n as f64,
        bytes as f64 / n as f64
    );
    println!(
        "{store}: audit list --serial: p50 {:.2} ms, p99 {:.2} ms; audit prove: p50 {:.2} ms, p99 {:.2} ms ({lookups} lookups)",
        percentile(list.clone(), 0.5),
        percentile(list, 0.99),
        percentile(prove.clone(), 0.5),
        percentile(prove, 0.99)
    );
}
