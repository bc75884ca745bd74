//! The default audit backend: one SQLite file in the data directory.
//!
//! Durability is the point of an audit log, so the CA's connection runs in WAL mode
//! with `synchronous=FULL`: a transaction that committed survives a power cut. WAL
//! also lets `meshid audit list` and `meshid up`'s status read (through
//! [`read_sqlite`], the one read path for a local store) while the CA writes, and a busy timeout covers the short moments where SQLite
//! needs both to take turns.
//!
//! Times are stored as nanoseconds since the Unix epoch (`INTEGER`), so they sort and
//! compare exactly; to read them in the `sqlite3` shell:
//! `datetime(time_unix_nanos / 1000000000, 'unixepoch')`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::{FromSql, Value};
use rusqlite::{
    params, params_from_iter, Connection, OpenFlags, Row, Transaction, TransactionBehavior,
};
use time::OffsetDateTime;

use super::query::AuditQuery;
use super::record::AuditRecord;
use super::store::AuditBackend;
use super::tlog::note::{NoteSigner, NoteVerifier};
use super::tree::{self, TreeRows as _};
use super::AuditError;

/// The schema version this build writes and reads. Bump it with a migration in
/// [`SqliteBackend::open`] when the table changes.
///
/// 1: the records; 2: the transparency log; 3: its stored nodes; 4: `outcome`
/// may be `'revoked'` (`migrate_from_v3`).
pub const SCHEMA_VERSION: i64 = 4;

/// How long a connection waits for the other side (CA writer or CLI reader) to
/// release a lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const SCHEMA: &str = "
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
    outcome TEXT NOT NULL CHECK (outcome IN ('issued', 'refused', 'revoked')),
    reason TEXT,
    peer TEXT
);
";

/// The `outcome` column's constraint up to schema 3, as [`SCHEMA`] wrote it then
/// (and as SQLite keeps it in `sqlite_master`, whatever columns were added since).
const OUTCOME_CHECK_V1: &str = "CHECK (outcome IN ('issued', 'refused'))";

/// The `outcome` column's constraint from schema 4 on, as in [`SCHEMA`].
const OUTCOME_CHECK: &str = "CHECK (outcome IN ('issued', 'refused', 'revoked'))";

/// The secondary indexes, created or brought up to date on every writer open.
///
/// Each one is another b-tree that every committed row writes to (a WAL frame, and
/// its share of the fsync, per touched page), so there are only as many as
/// `meshid audit list`'s filters need:
///
/// - `audit_records_time`: `--since`, `--limit` (the newest N), and the time order of
///   every answer;
/// - `audit_records_identity`: `-n` and `-n --service-account`;
/// - `audit_records_refused`: `--outcome refused`. A *partial* index holding refusals
///   only, so that issued rows (nearly all of them) never touch it; `--outcome issued`
///   walks the time index instead, which is cheap because nearly every row matches.
///   It replaced `audit_records_outcome (outcome, time_unix_nanos)`, which every row
///   wrote to; databases created before are migrated by [`SqliteBackend::open`]
///   (same table, so older builds still read and write them).
///
/// - `audit_records_revoked`: `--outcome revoked`, partial like the refusal index
///   (revocations are rare: issued rows never touch it). Built on the first writer
///   open of a schema-3 database, with one pass over the table.
///
/// - `audit_records_serial`: the CA's renewal check (which pod was this serial
///   issued to?). Every issued row writes to it; without it each renewal would scan
///   the whole table.
///
/// `--service-account` without `-n` scans: an account name alone is rarely asked
/// for, and an index for it would cost every row another b-tree.
const INDEXES: &str = "
DROP INDEX IF EXISTS audit_records_outcome;
CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (time_unix_nanos);
CREATE INDEX IF NOT EXISTS audit_records_identity
    ON audit_records (namespace, service_account, time_unix_nanos);
CREATE INDEX IF NOT EXISTS audit_records_refused
    ON audit_records (time_unix_nanos) WHERE outcome = 'refused';
CREATE INDEX IF NOT EXISTS audit_records_revoked
    ON audit_records (time_unix_nanos) WHERE outcome = 'revoked';
CREATE INDEX IF NOT EXISTS audit_records_serial
    ON audit_records (serial) WHERE serial IS NOT NULL;
";

const COLUMNS: &str = "id, time_unix_nanos, caller, requested_identity, granted_identity, \
    namespace, service_account, node, pod_name, pod_uid, serial, public_key_sha256, \
    not_before_unix_nanos, not_after_unix_nanos, requested_ttl_secs, granted_ttl_secs, \
    outcome, reason, peer";

const INSERT: &str = "INSERT INTO audit_records (time_unix_nanos, caller, requested_identity, \
    granted_identity, namespace, service_account, node, pod_name, pod_uid, serial, \
    public_key_sha256, not_before_unix_nanos, not_after_unix_nanos, requested_ttl_secs, \
    granted_ttl_secs, outcome, reason, peer, leaf_index, leaf_hash) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, \
    ?19, ?20)";

/// An audit store in a SQLite file. Implements [`AuditBackend`]; the CA hands it to
/// [`AuditLog::start`](super::AuditLog::start), the CLI queries it directly.
#[derive(Debug)]
pub struct SqliteBackend {
    conn: Connection,
    path: PathBuf,
    /// Signs the log's checkpoints (the CA's writer only), with the log's origin.
    signer: Option<(NoteSigner, String)>,
    /// Record bodies older than this are removed after each checkpoint.
    retention: Option<std::time::Duration>,
    /// Which file was opened (set for writers), so that a database deleted or
    /// replaced under the CA is noticed.
    probe: Option<FileProbe>,
}

/// The identity (device, inode) of the database file a writer opened.
#[derive(Debug, Clone)]
pub struct FileProbe {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl FileProbe {
    fn of(path: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the file at the path is still the one opened. Rule enforced:
    /// no record goes to a database nobody can read back.
    pub fn check(&self) -> Result<(), AuditError> {
        use std::os::unix::fs::MetadataExt;
        let what = match std::fs::metadata(&self.path) {
            Ok(m) if m.dev() == self.dev && m.ino() == self.ino => return Ok(()),
            Ok(_) => "replaced by another file",
            Err(_) => "deleted",
        };
        Err(AuditError::FileReplaced {
            path: self.path.clone(),
            what,
        })
    }
}

impl SqliteBackend {
    /// Opens the database at `path` for writing, creating the file and its schema if
    /// needed (the parent directory must exist). Refuses a database with a newer
    /// schema version than [`SCHEMA_VERSION`].
    pub fn open(path: &Path) -> Result<Self, AuditError> {
        owner_only(path)?;
        let conn = Connection::open(path).map_err(sqlite_err(path, "opening"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite_err(path, "setting the busy timeout"))?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite_err(path, "switching to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(AuditError::WalUnavailable {
                path: path.to_owned(),
                journal_mode: mode,
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sqlite_err(path, "setting synchronous=FULL"))?;
        let probe = FileProbe::of(path).map_err(|source| AuditError::Io {
            path: path.to_owned(),
            context: "reading the database file's identity",
            source,
        })?;
        let mut backend = Self {
            conn,
            path: path.to_owned(),
            signer: None,
            retention: None,
            probe: Some(probe),
        };
        backend.init_schema()?;
        Ok(backend)
    }

    /// Opens an existing database read-only, for `meshid audit list`. Works while a
    /// CA has it open for writing. Fails with [`AuditError::NotFound`] (naming the
    /// path) if the file does not exist, rather than creating an empty one.
    pub fn open_read_only(path: &Path) -> Result<Self, AuditError> {
        match path.try_exists() {
            Ok(true) => {}
            Ok(false) => {
                return Err(AuditError::NotFound {
                    path: path.to_owned(),
                })
            }
            Err(source) => {
                return Err(AuditError::Io {
                    path: path.to_owned(),
                    context: "looking for the database file",
                    source,
                })
            }
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags)
            .map_err(sqlite_err(path, "opening read-only"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sqlite_err(path, "setting the busy timeout"))?;
        let backend = Self {
            conn,
            path: path.to_owned(),
            signer: None,
            retention: None,
            probe: None,
        };
        match backend.schema_version()? {
            None => Err(AuditError::NotAnAuditDatabase {
                path: path.to_owned(),
            }),
            Some(found) => check_version(path, found).map(|()| backend),
        }
    }

    /// The log's rows over this connection.
    fn rows(&self) -> tlog::SqliteRows<'_> {
        tlog::SqliteRows {
            conn: &self.conn,
            path: &self.path,
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn init_schema(&mut self) -> Result<(), AuditError> {
        let path = self.path.clone();
        // IMMEDIATE: two processes opening a fresh file must not both create tables.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite_err(&path, "creating the schema"))?;
        match schema_version(&tx, &path)? {
            Some(1) => {
                tlog::migrate_from_v1(&tx, &path)?;
                tlog::migrate_from_v2(&tx, &path)?;
                migrate_from_v3(&tx, &path)?;
            }
            Some(2) => {
                tlog::migrate_from_v2(&tx, &path)?;
                migrate_from_v3(&tx, &path)?;
            }
            Some(3) => migrate_from_v3(&tx, &path)?,
            Some(found) => check_version(&path, found)?,
            None => {
                tx.execute_batch(SCHEMA)
                    .map_err(sqlite_err(&path, "creating the schema"))?;
                tx.execute_batch(tlog::SCHEMA)
                    .map_err(sqlite_err(&path, "creating the schema"))?;
                tx.execute_batch(tlog::NODES_SCHEMA)
                    .map_err(sqlite_err(&path, "creating the schema"))?;
                tx.execute(
                    "INSERT INTO meshid_audit_schema (version) VALUES (?1)",
                    [SCHEMA_VERSION],
                )
                .map_err(sqlite_err(&path, "creating the schema"))?;
            }
        }
        // Idempotent; on a database from before the partial refusal index, this
        // builds it with one pass over the table.
        tx.execute_batch(INDEXES)
            .map_err(sqlite_err(&path, "creating the indexes"))?;
        tx.commit()
            .map_err(sqlite_err(&path, "creating the schema"))
    }

    fn schema_version(&self) -> Result<Option<i64>, AuditError> {
        schema_version(&self.conn, &self.path)
    }

    /// Removes the bodies of records older than `retention` after each
    /// checkpoint (see [`tlog::prune`]).
    pub fn with_retention(mut self, retention: Option<std::time::Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Signs the log's checkpoints with `signer` under `origin` from now on,
    /// after checking that the latest checkpoint in the store is ours and
    /// matches the stored tree (refused otherwise: see [`tlog::check_latest`]).
    pub fn with_checkpoints(
        mut self,
        signer: NoteSigner,
        origin: &str,
    ) -> Result<Self, AuditError> {
        tree::check_latest(&mut self.rows(), &signer.verifier())?;
        self.signer = Some((signer, origin.to_owned()));
        Ok(self)
    }

    /// An inclusion proof of the record of certificate `serial` in the
    /// latest checkpoint.
    pub fn prove(&self, serial: &str) -> Result<tree::InclusionProof, AuditError> {
        self.has_log()?;
        tree::prove(&mut self.rows(), serial)
    }

    /// Recomputes the log and checks every checkpoint (see [`tlog::verify`]).
    pub fn verify(
        &self,
        verifier: &NoteVerifier,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<tree::Verified, AuditError> {
        self.has_log()?;
        tree::verify(&mut self.rows(), verifier, progress)
    }

    /// An error naming the fix when the store predates the log (schema 1,
    /// not yet opened by a CA of this version).
    fn has_log(&self) -> Result<(), AuditError> {
        match self.schema_version()? {
            Some(version) if version >= 3 => Ok(()),
            found => Err(AuditError::Tlog {
                path: self.path.clone(),
                detail: format!(
                    "this store's transparency log is incomplete (schema {}): start the CA on it once to complete it",
                    found.unwrap_or(0)
                ),
            }),
        }
    }

    /// Calls `each` with every record matching `q`, oldest first, one row at a
    /// time (an export of millions of records holds one in memory); stops
    /// at the first error `each` returns.
    pub fn for_each(
        &self,
        q: &AuditQuery,
        each: &mut dyn FnMut(&AuditRecord) -> std::io::Result<()>,
    ) -> Result<u64, AuditError> {
        let (sql, args) = select(q);
        let err = || sqlite_err(&self.path, "exporting records");
        let mut stmt = self.conn.prepare(&sql).map_err(err())?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(err())?;
        let mut count = 0;
        while let Some(row) = rows.next().map_err(err())? {
            each(&read_row(row, &self.path)?).map_err(|source| AuditError::Io {
                path: self.path.clone(),
                context: "writing the export",
                source,
            })?;
            count += 1;
        }
        Ok(count)
    }

    /// The latest signed checkpoint, if any: (tree size, signed note).
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, String)>, AuditError> {
        tlog::latest_checkpoint(&self.conn, &self.path)
    }
}

impl AuditBackend for SqliteBackend {
    fn probe(&self) -> Option<FileProbe> {
        self.probe.clone()
    }

    fn checkpoint(&mut self, now: OffsetDateTime) -> Result<Option<u64>, AuditError> {
        let signed = match &self.signer {
            Some((signer, origin)) => {
                tlog::checkpoint(&mut self.conn, &self.path, signer, origin, now)?
            }
            None => None,
        };
        if let Some(retention) = self.retention {
            let before = now - time::Duration::try_from(retention).unwrap_or(time::Duration::MAX);
            let pruned = tlog::prune(&mut self.conn, &self.path, before)?;
            if pruned > 0 {
                tracing::info!(pruned, %before, "audit retention: bodies of older records removed; their leaf hashes stay in the log");
            }
        }
        Ok(signed)
    }

    fn append(&mut self, batch: &[AuditRecord]) -> Result<(), AuditError> {
        if let Some(probe) = &self.probe {
            probe.check()?;
        }
        let path = self.path.clone();
        let err = || sqlite_err(&path, "appending a batch");
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(err())?;
        // Under the write lock: this batch's leaves follow the tree's last.
        let mut frontier = tlog::SqliteRows {
            conn: &tx,
            path: &path,
        }
        .frontier()?;
        let old_size = frontier.size();
        {
            let mut insert = tx.prepare_cached(INSERT).map_err(err())?;
            for rec in batch {
                let hash = crate::audit::tlog::merkle::leaf_hash(&rec.leaf_bytes()?);
                let index = frontier.push(hash).map_err(|e| AuditError::Tlog {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
                insert
                    .execute(params![
                        nanos("time", rec.time)?,
                        rec.caller,
                        rec.requested_identity,
                        rec.granted_identity,
                        rec.namespace,
                        rec.service_account,
                        rec.node,
                        rec.pod_name,
                        rec.pod_uid,
                        rec.serial,
                        rec.public_key_sha256,
                        rec.not_before.map(|t| nanos("not_before", t)).transpose()?,
                        rec.not_after.map(|t| nanos("not_after", t)).transpose()?,
                        rec.requested_ttl_secs,
                        rec.granted_ttl_secs,
                        rec.outcome.as_str(),
                        rec.reason,
                        rec.peer,
                        i64::try_from(index).unwrap_or(i64::MAX),
                        &hash[..],
                    ])
                    .map_err(err())?;
            }
        }
        tree::seal_nodes(
            &mut tlog::SqliteRows {
                conn: &tx,
                path: &path,
            },
            old_size,
            frontier.size(),
        )?;
        tlog::save_frontier(&tx, &path, &frontier)?;
        tx.commit().map_err(err())
    }

    fn query(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        let (sql, args) = select(q);
        let err = || sqlite_err(&self.path, "querying records");
        let mut stmt = self.conn.prepare(&sql).map_err(err())?;
        let mut rows = stmt.query(params_from_iter(args)).map_err(err())?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(err())? {
            out.push(read_row(row, &self.path)?);
        }
        Ok(out)
    }
}

/// Creates the database file 0600 before SQLite opens it (SQLite gives its
/// `-wal` and `-shm` files the database's mode), and tightens an existing
/// database and its companions looser than that, with a warning. Rule
/// enforced: who got which identity is readable by the CA's user only.
fn owner_only(path: &Path) -> Result<(), AuditError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source: std::io::Error| AuditError::Io {
        path: path.to_owned(),
        context: "setting owner-only permissions",
        source,
    };
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = Path::new(&name);
        if let Ok(meta) = std::fs::metadata(file) {
            crate::secret_file::tighten(file, &meta, 0o600).map_err(io)?;
        }
    }
    Ok(())
}

/// The `SELECT` for `q` and its parameters (see [`INDEXES`] for which index serves
/// which filter).
fn select(q: &AuditQuery) -> (String, Vec<Value>) {
    let mut clauses = Vec::new();
    let mut args = Vec::new();
    let mut filter = |clause: &str, value: Value| {
        args.push(value);
        clauses.push(format!("{clause} ?{}", args.len()));
    };
    if let Some(ns) = &q.namespace {
        filter("namespace =", Value::Text(ns.clone()));
    }
    if let Some(sa) = &q.service_account {
        filter("service_account =", Value::Text(sa.clone()));
    }
    if let Some(since) = q.since {
        // Before the storable range: every row matches.
        let since = nanos("since", since).unwrap_or(i64::MIN);
        filter("time_unix_nanos >=", Value::Integer(since));
    }
    if let Some(serial) = &q.serial {
        filter("serial =", Value::Text(serial.clone()));
    }
    if let Some(outcome) = q.outcome {
        // A literal, not a parameter: SQLite uses the partial index
        // `audit_records_refused` only when the query names `'refused'` itself.
        // `as_str` is one of three fixed words, so nothing from outside reaches
        // the SQL text.
        clauses.push(format!("outcome = '{}'", outcome.as_str()));
    }
    let where_clause = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    let sql = match q.limit {
        None => format!(
            "SELECT {COLUMNS} FROM audit_records {where_clause} ORDER BY time_unix_nanos, id"
        ),
        Some(limit) => {
            args.push(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX)));
            format!(
                "SELECT * FROM (SELECT {COLUMNS} FROM audit_records {where_clause} \
                 ORDER BY time_unix_nanos DESC, id DESC LIMIT ?{}) \
                 ORDER BY time_unix_nanos, id",
                args.len()
            )
        }
    };
    (sql, args)
}

fn check_version(path: &Path, found: i64) -> Result<(), AuditError> {
    if found > SCHEMA_VERSION {
        return Err(AuditError::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    // Older versions are migrated by the writer's open ([`SqliteBackend::open`]);
    // a reader reads them as they are.
    Ok(())
}

/// Schema 3 to 4: `outcome` may be `'revoked'` (inside the open's transaction).
///
/// SQLite cannot alter a constraint, and rebuilding the table would copy every
/// record (millions). Widening a `CHECK` changes nothing on disk (every stored row
/// satisfies the wider check), so this edits the table's `CREATE TABLE` text in
/// `sqlite_master` instead, as SQLite documents for such changes
/// (<https://www.sqlite.org/lang_altertable.html#otheralter>): `writable_schema` on,
/// the text rewritten, the schema cookie incremented (every connection, this one
/// included, reloads the schema before its next statement), `writable_schema`
/// off. All of it commits or rolls back with the open's transaction.
///
/// Rule enforced: the only edit is the one documented constraint text; a table
/// whose text is neither the schema-3 nor the schema-4 one is refused, untouched.
fn migrate_from_v3(tx: &Transaction<'_>, path: &Path) -> Result<(), AuditError> {
    const CONTEXT: &str = "migrating to schema 4 (revocation records)";
    let err = || sqlite_err(path, CONTEXT);
    let sql: String = tx
        .query_row(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_records'",
            [],
            |row| row.get(0),
        )
        .map_err(err())?;
    // A store created at schema 1 by this build's SCHEMA (tests do) already has it.
    if !sql.contains(OUTCOME_CHECK) {
        if sql.matches(OUTCOME_CHECK_V1).count() != 1 {
            return Err(AuditError::StoreConfig {
                store: path.display().to_string(),
                detail: format!(
                    "cannot migrate to schema 4: the audit_records table does not hold the \
                     constraint `{OUTCOME_CHECK_V1}` exactly once (was it altered by hand?)"
                ),
            });
        }
        let widened = sql.replacen(OUTCOME_CHECK_V1, OUTCOME_CHECK, 1);
        let cookie: i64 = tx
            .query_row("PRAGMA schema_version", [], |row| row.get(0))
            .map_err(err())?;
        tx.pragma_update(None, "writable_schema", true)
            .map_err(err())?;
        let edited = tx
            .execute(
                "UPDATE sqlite_master SET sql = ?1 WHERE type = 'table' AND name = 'audit_records'",
                [&widened],
            )
            .and_then(|_| tx.pragma_update(None, "schema_version", cookie + 1));
        // Off again whatever happened: the connection goes on writing records.
        let off = tx.pragma_update(None, "writable_schema", false);
        edited.and(off).map_err(err())?;
    }
    tx.execute("UPDATE meshid_audit_schema SET version = 4", [])
        .map_err(err())?;
    Ok(())
}

fn schema_version(conn: &Connection, path: &Path) -> Result<Option<i64>, AuditError> {
    let err = || sqlite_err(path, "reading the schema version");
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master \
             WHERE type = 'table' AND name = 'meshid_audit_schema')",
            [],
            |row| row.get(0),
        )
        .map_err(err())?;
    if !exists {
        return Ok(None);
    }
    conn.query_row("SELECT MAX(version) FROM meshid_audit_schema", [], |row| {
        row.get(0)
    })
    .map_err(err())
}

fn read_row(row: &Row<'_>, path: &Path) -> Result<AuditRecord, AuditError> {
    let id: i64 = row.get(0).map_err(sqlite_err(path, "reading a row"))?;
    let corrupt = |detail: String| AuditError::Corrupt {
        path: path.to_owned(),
        row: id,
        detail,
    };
    let text = |idx| column::<Option<String>>(row, idx, &corrupt);
    let int = |idx| column::<Option<i64>>(row, idx, &corrupt);
    let time = |idx| -> Result<Option<OffsetDateTime>, AuditError> {
        int(idx)?
            .map(|n| OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)))
            .transpose()
            .map_err(|e| corrupt(e.to_string()))
    };
    Ok(AuditRecord {
        time: time(1)?.ok_or_else(|| corrupt("time is NULL".to_owned()))?,
        caller: text(2)?,
        requested_identity: text(3)?,
        granted_identity: text(4)?,
        namespace: text(5)?,
        service_account: text(6)?,
        node: text(7)?,
        pod_name: text(8)?,
        pod_uid: text(9)?,
        serial: text(10)?,
        public_key_sha256: text(11)?,
        not_before: time(12)?,
        not_after: time(13)?,
        requested_ttl_secs: int(14)?,
        granted_ttl_secs: int(15)?,
        outcome: column::<String>(row, 16, &corrupt)?
            .parse()
            .map_err(|e: AuditError| corrupt(e.to_string()))?,
        reason: text(17)?,
        peer: text(18)?,
    })
}

fn column<T: FromSql>(
    row: &Row<'_>,
    idx: usize,
    corrupt: &dyn Fn(String) -> AuditError,
) -> Result<T, AuditError> {
    row.get(idx).map_err(|e| corrupt(e.to_string()))
}

fn nanos(field: &'static str, time: OffsetDateTime) -> Result<i64, AuditError> {
    i64::try_from(time.unix_timestamp_nanos())
        .map_err(|_| AuditError::TimeOutOfRange { field, time })
}

fn sqlite_err<'a>(
    path: &'a Path,
    context: &'static str,
) -> impl Fn(rusqlite::Error) -> AuditError + 'a {
    move |source| AuditError::Sqlite {
        path: path.to_owned(),
        context,
        source,
    }
}

/// Why [`read_sqlite`] returned no records.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The store cannot be opened (missing, unreadable, not ours).
    #[error("opening the audit store {}", path.display())]
    Open {
        /// The database file.
        path: PathBuf,
        /// What the backend says (boxed: the error stays small).
        #[source]
        source: Box<AuditError>,
    },
    /// The query failed.
    #[error(transparent)]
    Query(#[from] AuditError),
}

impl ReadError {
    /// The backend's own error, without the file-level context.
    pub fn audit_error(&self) -> &AuditError {
        match self {
            Self::Open { source, .. } => source,
            Self::Query(source) => source,
        }
    }
}

/// The records of the SQLite audit store at `path` that match `query`, read
/// through a read-only connection (safe while a CA writes).
pub fn read_sqlite(path: &Path, query: &AuditQuery) -> Result<Vec<AuditRecord>, ReadError> {
    let mut store = SqliteBackend::open_read_only(path).map_err(|source| ReadError::Open {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    Ok(store.query(query)?)
}

pub mod tlog;

#[cfg(test)]
mod tests;
