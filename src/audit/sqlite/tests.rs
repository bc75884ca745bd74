use time::macros::datetime;
use time::Duration;

use super::*;
use crate::audit::record::{full_record, Outcome};
use crate::audit::tlog::note::NoteSigner;

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
    let cases: [Case; 8] = [
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
        ("audit_records_revoked", |q| {
            q.outcome = Some(Outcome::Revoked)
        }),
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
            "audit_records_revoked",
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

/// A revocation of the certificate of fixture record `i` (same serial), at `minute`.
fn revocation(i: usize, minute: i64) -> AuditRecord {
    let mut r = full_record(
        T0 + Duration::minutes(minute),
        fixture()[i].namespace.as_deref().unwrap(),
        fixture()[i].service_account.as_deref().unwrap(),
        Outcome::Revoked,
    );
    r.serial = fixture()[i].serial.clone();
    r.caller = Some("uid 0 (admin socket)".to_owned());
    r
}

#[test]
fn a_revoked_record_round_trips_and_outcome_revoked_selects_only_revocations() {
    let (_dir, path) = temp_db();
    let mut b = SqliteBackend::open(&path).unwrap();
    b.append(&fixture()).unwrap();
    let revoked = revocation(3, 10);
    b.append(std::slice::from_ref(&revoked)).unwrap();
    let only = |outcome| AuditQuery {
        outcome: Some(outcome),
        ..AuditQuery::default()
    };
    assert_eq!(
        b.query(&only(Outcome::Revoked)).unwrap(),
        std::slice::from_ref(&revoked)
    );
    assert_eq!(b.query(&only(Outcome::Issued)).unwrap().len(), 4);
    assert_eq!(b.query(&only(Outcome::Refused)).unwrap().len(), 2);
    // The certificate's issuance and its revocation, by serial.
    let by_serial = AuditQuery {
        serial: Some("5f03".into()),
        ..AuditQuery::default()
    };
    let outcomes: Vec<Outcome> = b
        .query(&by_serial)
        .unwrap()
        .iter()
        .map(|r| r.outcome)
        .collect();
    assert_eq!(outcomes, [Outcome::Issued, Outcome::Revoked]);
    // Read-only readers (`meshid audit list`) see it too.
    assert_eq!(
        read_sqlite(&path, &only(Outcome::Revoked)).unwrap(),
        [revoked]
    );
}

#[test]
fn an_outcome_outside_the_three_is_refused_by_the_table() {
    let (_dir, path) = temp_db();
    drop(SqliteBackend::open(&path).unwrap());
    let err = Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO audit_records (time_unix_nanos, outcome) VALUES (0, 'granted')",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
}

/// The `audit_records` table as schema 3 created it (`SCHEMA` of the build
/// before schema 4, verbatim), then the log's tables, at version 3: what the
/// previous build's first open left.
const SCHEMA_V3_RECORDS: &str = "
CREATE TABLE meshid_audit_schema (version INTEGER NOT NULL);
CREATE TABLE audit_records (
    id INTEGER PRIMARY KEY,
    time_unix_nanos INTEGER NOT NULL,
    caller TEXT,
    requested_identity TEXT,
    granted_identity TEXT,
    namespace TEXT,
    service_account TEXT,
    node TEXT,
    pod_name TEXT,
    pod_uid TEXT,
    serial TEXT,
    public_key_sha256 TEXT,
    not_before_unix_nanos INTEGER,
    not_after_unix_nanos INTEGER,
    requested_ttl_secs INTEGER,
    granted_ttl_secs INTEGER,
    outcome TEXT NOT NULL CHECK (outcome IN ('issued', 'refused')),
    reason TEXT,
    peer TEXT
);
";

const ORIGIN: &str = "cluster.local/meshid-audit";

/// A schema-3 store holding the fixture, written and checkpointed through the
/// backend's own append and checkpoint (the code path the previous build ran):
/// the table, the log's tables and the indexes that build created, version 3.
fn schema_3_store(path: &Path, key: &[u8]) {
    let conn = Connection::open(path).unwrap();
    conn.pragma_update(None, "journal_mode", "WAL").unwrap();
    conn.execute_batch(SCHEMA_V3_RECORDS).unwrap();
    conn.execute_batch(tlog::SCHEMA).unwrap();
    conn.execute_batch(tlog::NODES_SCHEMA).unwrap();
    conn.execute_batch(
        "INSERT INTO meshid_audit_schema (version) VALUES (3);
         CREATE INDEX audit_records_time ON audit_records (time_unix_nanos);
         CREATE INDEX audit_records_identity
             ON audit_records (namespace, service_account, time_unix_nanos);
         CREATE INDEX audit_records_refused
             ON audit_records (time_unix_nanos) WHERE outcome = 'refused';
         CREATE INDEX audit_records_serial
             ON audit_records (serial) WHERE serial IS NOT NULL;",
    )
    .unwrap();
    let signer = NoteSigner::from_pkcs8(ORIGIN, key).unwrap();
    let mut previous = SqliteBackend {
        conn,
        path: path.to_owned(),
        signer: Some((signer, ORIGIN.to_owned())),
        retention: None,
        probe: None,
    };
    previous.append(&fixture()).unwrap();
    assert_eq!(previous.checkpoint(T0).unwrap(), Some(6));
    // A schema-3 table takes no revocation: the fixture is the old table.
    let err = previous.append(&[revocation(3, 10)]).unwrap_err();
    assert!(
        crate::audit::store::error_chain(&err).contains("CHECK constraint failed"),
        "{err}"
    );
}

fn table_sql(path: &Path) -> String {
    Connection::open(path)
        .unwrap()
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_records'",
            [],
            |r| r.get(0),
        )
        .unwrap()
}

fn version(path: &Path) -> i64 {
    Connection::open(path)
        .unwrap()
        .query_row("SELECT MAX(version) FROM meshid_audit_schema", [], |r| {
            r.get(0)
        })
        .unwrap()
}

#[test]
fn a_schema_3_store_takes_revocations_after_the_ca_opens_it_and_its_log_still_verifies() {
    let (_dir, path) = temp_db();
    let key = NoteSigner::generate_pkcs8().unwrap();
    schema_3_store(&path, &key);
    let before = table_sql(&path);
    let rowids = |path: &Path| -> Vec<(i64, Option<i64>)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT id, leaf_index FROM audit_records ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let rows_before = rowids(&path);
    // A connection that loaded the old schema before the migration: it must
    // see the new constraint after it (the schema cookie was bumped).
    let bystander = Connection::open(&path).unwrap();
    let n: i64 = bystander
        .query_row("SELECT COUNT(*) FROM audit_records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 6);

    let signer = NoteSigner::from_pkcs8(ORIGIN, &key).unwrap();
    let verifier = signer.verifier();
    let mut b = SqliteBackend::open(&path)
        .unwrap()
        .with_checkpoints(signer, ORIGIN)
        .unwrap();
    assert_eq!(version(&path), SCHEMA_VERSION);
    assert_eq!(SCHEMA_VERSION, 4);
    // The constraint, and only it, was rewritten; no row moved.
    assert_eq!(
        table_sql(&path),
        before.replace(OUTCOME_CHECK_V1, OUTCOME_CHECK)
    );
    assert_eq!(rowids(&path), rows_before);
    let writable: i64 = b
        .conn
        .query_row("PRAGMA writable_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(writable, 0, "writable_schema is off again");
    let check: String = b
        .conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");

    let revoked = revocation(3, 10);
    b.append(std::slice::from_ref(&revoked)).unwrap();
    assert_eq!(b.checkpoint(T0).unwrap(), Some(7));
    let verified = b.verify(&verifier, &mut |_, _| {}).unwrap();
    assert_eq!((verified.records, verified.checkpoints), (7, 2));
    let q = AuditQuery {
        outcome: Some(Outcome::Revoked),
        ..AuditQuery::default()
    };
    assert_eq!(b.query(&q).unwrap(), std::slice::from_ref(&revoked));
    assert!(plan(&b, |q| q.outcome = Some(Outcome::Revoked)).contains("audit_records_revoked"));
    // The issuance is still the record the serial's proof is of.
    assert_eq!(b.prove("5f03").unwrap().leaf_index, 3);
    drop(b);

    bystander
        .execute(
            "INSERT INTO audit_records (time_unix_nanos, outcome) VALUES (1, 'revoked')",
            [],
        )
        .unwrap();
    let err = bystander
        .execute(
            "INSERT INTO audit_records (time_unix_nanos, outcome) VALUES (1, 'granted')",
            [],
        )
        .unwrap_err();
    assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
}

#[test]
fn a_schema_3_store_whose_table_was_altered_by_hand_is_refused_untouched() {
    let (_dir, path) = temp_db();
    schema_3_store(&path, &NoteSigner::generate_pkcs8().unwrap());
    // The same table with its constraint spelled otherwise.
    {
        let conn = Connection::open(&path).unwrap();
        let sql = table_sql(&path).replace(OUTCOME_CHECK_V1, "CHECK (outcome <> '')");
        let cookie: i64 = conn
            .query_row("PRAGMA schema_version", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch("PRAGMA writable_schema = ON").unwrap();
        conn.execute(
            "UPDATE sqlite_master SET sql = ?1 WHERE name = 'audit_records'",
            [&sql],
        )
        .unwrap();
        conn.execute_batch(&format!(
            "PRAGMA schema_version = {}; PRAGMA writable_schema = OFF",
            cookie + 1
        ))
        .unwrap();
    }
    let before = table_sql(&path);
    let err = SqliteBackend::open(&path).unwrap_err();
    assert!(
        err.to_string().contains("cannot migrate to schema 4"),
        "{err}"
    );
    assert_eq!(version(&path), 3, "the migration rolled back");
    assert_eq!(table_sql(&path), before);
    assert_eq!(
        SqliteBackend::open_read_only(&path)
            .unwrap()
            .query(&AuditQuery::default())
            .unwrap(),
        fixture()
    );
}
