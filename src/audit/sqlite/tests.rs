use time::macros::datetime;
use time::Duration;

use super::*;
use crate::audit::record::{full_record, Outcome};

fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    (dir, path)
}

const T0: OffsetDateTime = datetime!(2025-03-01 12:00 UTC);

/// Six records a minute apart: shop/cart issued, shop/cart refused, shop/pay issued,
/// bank/cart issued, bank/vault refused, shop/cart issued.
fn fixture() -> Vec<AuditRecord> {
    [
        ("shop", "cart", Outcome::Issued),
        ("shop", "cart", Outcome::Refused),
        ("shop", "pay", Outcome::Issued),
        ("bank", "cart", Outcome::Issued),
        ("bank", "vault", Outcome::Refused),
        ("shop", "cart", Outcome::Issued),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (ns, sa, outcome))| {
        let mut r = full_record(T0 + Duration::minutes(i as i64), ns, sa, outcome);
        r.serial = Some(format!("5f{i:02x}"));
        r
    })
    .collect()
}

/// Runs the query built by `f` against `backend`, checks the answer against the
/// reference filter [`AuditQuery::matches`] on the fixture, and returns the times.
fn query(backend: &mut SqliteBackend, f: impl FnOnce(&mut AuditQuery)) -> Vec<OffsetDateTime> {
    let mut q = AuditQuery::default();
    f(&mut q);
    let got = backend.query(&q).unwrap();
    let matching: Vec<AuditRecord> = fixture().into_iter().filter(|r| q.matches(r)).collect();
    let skip = q.limit.map_or(0, |l| matching.len().saturating_sub(l));
    assert_eq!(got, matching[skip..]);
    got.iter().map(|r| r.time).collect()
}

fn minutes(ms: &[i64]) -> Vec<OffsetDateTime> {
    ms.iter().map(|m| T0 + Duration::minutes(*m)).collect()
}

#[test]
fn records_round_trip_with_every_field() {
    let (_dir, path) = temp_db();
    let mut backend = SqliteBackend::open(&path).unwrap();
    let mut records = vec![
        full_record(
            datetime!(2025-03-01 12:34:56.123456789 UTC),
            "shop",
            "cart",
            Outcome::Issued,
        ),
        full_record(
            datetime!(2025-03-01 12:35 UTC),
            "shop",
            "cart",
            Outcome::Refused,
        ),
        AuditRecord::new(datetime!(2025-03-01 12:36 UTC), Outcome::Refused),
    ];
    records[0].requested_ttl_secs = Some(-5);
    records[0].reason = Some("ttl clamped: ünïcödé 🙂".to_owned());
    backend.append(&records).unwrap();
    assert_eq!(backend.query(&AuditQuery::default()).unwrap(), records);
}

#[test]
fn uses_wal_and_synchronous_full() {
    let (_dir, path) = temp_db();
    let backend = SqliteBackend::open(&path).unwrap();
    let mode: String = backend
        .conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal");
    let sync: i64 = backend
        .conn
        .query_row("PRAGMA synchronous", [], |r| r.get(0))
        .unwrap();
    assert_eq!(sync, 2, "2 is FULL");
}

#[test]
fn filters_by_namespace() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    assert_eq!(
        query(&mut b, |q| q.namespace = Some("bank".into())),
        minutes(&[3, 4])
    );
    assert!(query(&mut b, |q| q.namespace = Some("nope".into())).is_empty());
}

#[test]
fn filters_by_service_account_alone_and_with_namespace() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    assert_eq!(
        query(&mut b, |q| q.service_account = Some("cart".into())),
        minutes(&[0, 1, 3, 5])
    );
    assert_eq!(
        query(&mut b, |q| {
            q.namespace = Some("shop".into());
            q.service_account = Some("cart".into());
        }),
        minutes(&[0, 1, 5])
    );
}

#[test]
fn filters_by_since_inclusively() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    assert_eq!(
        query(&mut b, |q| q.since = Some(T0 + Duration::minutes(4))),
        minutes(&[4, 5])
    );
    let before_storable = datetime!(1500-01-01 00:00 UTC);
    assert_eq!(query(&mut b, |q| q.since = Some(before_storable)).len(), 6);
}

#[test]
fn filters_by_serial() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    assert_eq!(
        query(&mut b, |q| q.serial = Some("5f03".into())),
        minutes(&[3])
    );
    assert!(query(&mut b, |q| q.serial = Some("5F03".into())).is_empty());
    let plan: String = b
        .conn
        .query_row(
            "EXPLAIN QUERY PLAN SELECT id FROM audit_records WHERE serial = ?1",
            ["5f03"],
            |r| r.get(3),
        )
        .unwrap();
    assert!(plan.contains("audit_records_serial"), "{plan}");
}

#[test]
fn filters_by_outcome() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    assert_eq!(
        query(&mut b, |q| q.outcome = Some(Outcome::Refused)),
        minutes(&[1, 4])
    );
    assert_eq!(
        query(&mut b, |q| q.outcome = Some(Outcome::Issued)),
        minutes(&[0, 2, 3, 5])
    );
}

#[test]
fn limit_keeps_the_newest_in_ascending_order() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    assert_eq!(query(&mut b, |q| q.limit = Some(2)), minutes(&[4, 5]));
    assert_eq!(query(&mut b, |q| q.limit = Some(0)), minutes(&[]));
    assert_eq!(query(&mut b, |q| q.limit = Some(usize::MAX)).len(), 6);
    assert_eq!(
        query(&mut b, |q| {
            q.outcome = Some(Outcome::Issued);
            q.limit = Some(3);
        }),
        minutes(&[2, 3, 5])
    );
}

#[test]
fn a_batch_with_an_unstorable_time_stores_nothing() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    let mut batch = fixture();
    batch[3].not_after = Some(datetime!(2300-01-01 00:00 UTC));
    let err = b.append(&batch).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::TimeOutOfRange {
                field: "not_after",
                ..
            }
        ),
        "{err}"
    );
    assert!(b.query(&AuditQuery::default()).unwrap().is_empty());
}

#[test]
fn reopening_keeps_records() {
    let (_dir, path) = temp_db();
    SqliteBackend::open(&path)
        .unwrap()
        .append(&fixture())
        .unwrap();
    let mut again = SqliteBackend::open(&path).unwrap();
    assert_eq!(again.query(&AuditQuery::default()).unwrap(), fixture());
}

#[test]
fn read_only_open_sees_rows_committed_by_a_live_writer() {
    let (_dir, path) = temp_db();
    let mut writer = SqliteBackend::open(&path).unwrap();
    writer.append(&fixture()[..2]).unwrap();
    let mut reader = SqliteBackend::open_read_only(&path).unwrap();
    assert_eq!(reader.query(&AuditQuery::default()).unwrap().len(), 2);
    writer.append(&fixture()[2..]).unwrap();
    assert_eq!(reader.query(&AuditQuery::default()).unwrap(), fixture());
    let err = reader.append(&fixture()).unwrap_err();
    assert!(matches!(err, AuditError::Sqlite { .. }), "{err}");
    drop((writer, reader));
    // And with no writer at all.
    let mut reader = SqliteBackend::open_read_only(&path).unwrap();
    assert_eq!(reader.query(&AuditQuery::default()).unwrap(), fixture());
}

#[test]
fn read_only_open_of_a_missing_file_names_the_path() {
    let (dir, path) = temp_db();
    let err = SqliteBackend::open_read_only(&path).unwrap_err();
    assert!(matches!(err, AuditError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    assert!(!path.exists(), "a read-only open must not create the file");
    drop(dir);
}

#[test]
fn read_only_open_refuses_a_foreign_database() {
    let (_dir, path) = temp_db();
    Connection::open(&path)
        .unwrap()
        .execute_batch("CREATE TABLE other (x INTEGER)")
        .unwrap();
    let err = SqliteBackend::open_read_only(&path).unwrap_err();
    assert!(
        matches!(err, AuditError::NotAnAuditDatabase { .. }),
        "{err}"
    );
}

#[test]
fn a_newer_schema_is_refused_by_writers_and_readers() {
    let (_dir, path) = temp_db();
    drop(SqliteBackend::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .execute("UPDATE meshid_audit_schema SET version = 99", [])
        .unwrap();
    for err in [
        SqliteBackend::open(&path).unwrap_err(),
        SqliteBackend::open_read_only(&path).unwrap_err(),
    ] {
        assert!(
            matches!(
                err,
                AuditError::SchemaTooNew {
                    found: 99,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
    }
}

/// `EXPLAIN QUERY PLAN` of the `SELECT` the backend runs for the query built by `f`,
/// one line per plan step.
fn plan(backend: &SqliteBackend, f: impl FnOnce(&mut AuditQuery)) -> String {
    let mut q = AuditQuery::default();
    f(&mut q);
    let (sql, args) = select(&q);
    let mut stmt = backend
        .conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap();
    let steps: Vec<String> = stmt
        .query_map(params_from_iter(args), |row| row.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    steps.join("\n")
}

fn index_names(path: &Path) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'index' \
             AND tbl_name = 'audit_records' ORDER BY name",
        )
        .unwrap();
    stmt.query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn every_audit_list_filter_but_a_lone_service_account_is_served_by_an_index() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    type Case = (&'static str, fn(&mut AuditQuery));
    let cases: [Case; 7] = [
        ("audit_records_time", |_| {}),
        ("audit_records_identity", |q| {
            q.namespace = Some("shop".into())
        }),
        ("audit_records_identity", |q| {
            q.namespace = Some("shop".into());
            q.service_account = Some("cart".into());
        }),
        ("audit_records_time", |q| q.since = Some(T0)),
        ("audit_records_refused", |q| {
            q.outcome = Some(Outcome::Refused)
        }),
        ("audit_records_refused", |q| {
            q.outcome = Some(Outcome::Refused);
            q.limit = Some(20);
        }),
        ("audit_records_time", |q| q.limit = Some(20)),
    ];
    for (index, f) in cases {
        let plan = plan(&b, f);
        assert!(plan.contains(index), "expected {index}:\n{plan}");
    }
    // The refusal index holds refusals only: issued rows never write to it.
    let in_refused: i64 = b
        .conn
        .query_row(
            "SELECT COUNT(*) FROM audit_records INDEXED BY audit_records_refused \
             WHERE outcome = 'refused'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(in_refused, 2);
}

#[test]
fn the_old_outcome_index_is_replaced_on_open_and_records_stay_readable() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    drop(b);
    // Back to the index set of databases created before the partial refusal index.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "DROP INDEX audit_records_refused;
             CREATE INDEX audit_records_outcome ON audit_records (outcome, time_unix_nanos);",
        )
        .unwrap();
    let mut b = SqliteBackend::open(&path).unwrap();
    assert_eq!(
        index_names(&path),
        [
            "audit_records_identity",
            "audit_records_leaf",
            "audit_records_refused",
            "audit_records_serial",
            "audit_records_time"
        ]
    );
    assert_eq!(
        query(&mut b, |q| q.outcome = Some(Outcome::Refused)),
        minutes(&[1, 4])
    );
    assert!(plan(&b, |q| q.outcome = Some(Outcome::Refused)).contains("audit_records_refused"));
}

#[test]
fn the_database_and_its_wal_are_owner_only_and_looser_ones_are_tightened() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, path) = temp_db();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    assert_eq!(mode(&path), 0o600);
    let wal = dir.path().join("audit.db-wal");
    assert_eq!(
        mode(&wal),
        0o600,
        "SQLite gives the WAL the database's mode"
    );
    drop(b);
    // As an older build under a 022 umask left it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _b = SqliteBackend::open(&path).unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[test]
fn a_database_deleted_or_replaced_under_the_writer_takes_no_records_until_it_is_back() {
    let (dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()[..1]).unwrap();
    let aside = dir.path().join("aside.db");
    // Moved away (as `rm` would leave it: gone from the path).
    std::fs::rename(&path, &aside).unwrap();
    let err = b.append(&fixture()[1..2]).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::FileReplaced {
                what: "deleted",
                ..
            }
        ),
        "{err}"
    );
    // Another file at the path is not ours either.
    std::fs::write(&path, b"").unwrap();
    let err = b.append(&fixture()[1..2]).unwrap_err();
    assert!(
        matches!(
            err,
            AuditError::FileReplaced {
                what: "replaced by another file",
                ..
            }
        ),
        "{err}"
    );
    // The original back: records flow again, into the file that is read back.
    std::fs::rename(&aside, &path).unwrap();
    b.append(&fixture()[1..2]).unwrap();
    let rows = SqliteBackend::open_read_only(&path)
        .unwrap()
        .query(&AuditQuery::default())
        .unwrap();
    assert_eq!(rows.len(), 2);
}
