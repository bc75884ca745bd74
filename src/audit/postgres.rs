//! The PostgreSQL audit backend: one store shared by every CA replica
//! (`--audit-store postgres://…`).
//!
//! - **Appends** are one transaction per batch (group commit, as with
//!   SQLite): the batch's rows go in one `INSERT … SELECT FROM UNNEST(…)`,
//!   and the commit (PostgreSQL's WAL flush) happens before any caller is
//!   answered.
//! - **One tree across replicas:** every append transaction first takes the
//!   tree's state row `FOR UPDATE` (`tlog_state`), numbers its records from
//!   the tree's size on and writes the state back, so appends from any
//!   number of replicas are ordered by that row lock and the log stays one
//!   tree. A record's primary key is its leaf index.
//! - **Migrations** are versioned ([`MIGRATIONS`]) and run inside one
//!   transaction holding an advisory lock, so replicas starting together
//!   migrate once; a schema newer than this build is refused.
//! - **Connection loss** (PostgreSQL restarted, network cut) fails the batch
//!   in flight (its callers get `UNAVAILABLE`, no certificate); the next batch
//!   reconnects, at most once a second, so the CA recovers on its own.
//!
//! PostgreSQL `text` cannot hold NUL: a record field containing one is
//! stored (and logged as a leaf) with U+FFFD in its place.
//!
//! Rules enforced: the password is never part of a name shown in a message
//! or log ([`PgOptions::name`]); TLS, when asked for, always verifies the
//! server ([`tls`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use postgres::types::{ToSql, Type};
use postgres::{Client, GenericClient, NoTls, Row};
use time::OffsetDateTime;

use super::query::AuditQuery;
use super::record::AuditRecord;
use super::store::error_chain;
use super::store::AuditBackend;
use super::tlog::merkle::{self, Frontier, Hash};
use super::tlog::note::{NoteSigner, NoteVerifier};
use super::tree::{self, frontier_from, hash_of, tlog_err, LeafRow, TreeRows};
use super::AuditError;

pub mod tls;

/// The newest schema this build writes and reads.
pub const SCHEMA_VERSION: i32 = 2;

/// The schema, one migration per version (index 0 makes version 1). A migration
/// is never edited once released: a store migrated by it keeps what it did.
///
/// 2: `outcome` may be `'revoked'`. PostgreSQL named the inline check of
/// version 1 `audit_records_outcome_check` (`<table>_<column>_check`); it is
/// dropped and added again, wider, in one `ALTER TABLE`. `NOT VALID`: every row
/// already stored passed the narrower check, so it passes this one, and
/// validating would scan the whole table while holding the lock that stops the
/// other replicas' appends; PostgreSQL checks every row written from now on
/// either way.
pub const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE meshid_audit_schema (version INTEGER NOT NULL);
INSERT INTO meshid_audit_schema (version) VALUES (0);
CREATE TABLE audit_records (
    id BIGINT PRIMARY KEY,
    time_unix_nanos BIGINT NOT NULL,
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
    not_before_unix_nanos BIGINT,
    not_after_unix_nanos BIGINT,
    requested_ttl_secs BIGINT,
    granted_ttl_secs BIGINT,
    outcome TEXT NOT NULL CHECK (outcome IN ('issued', 'refused')),
    reason TEXT,
    peer TEXT,
    leaf_hash BYTEA NOT NULL,
    pruned BOOLEAN NOT NULL DEFAULT false
);
CREATE INDEX audit_records_time ON audit_records (time_unix_nanos);
CREATE INDEX audit_records_identity ON audit_records (namespace, service_account, time_unix_nanos);
CREATE INDEX audit_records_refused ON audit_records (time_unix_nanos) WHERE outcome = 'refused';
CREATE INDEX audit_records_serial ON audit_records (serial) WHERE serial IS NOT NULL;
CREATE TABLE tlog_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL,
    frontier BYTEA NOT NULL
);
INSERT INTO tlog_state (id, size, frontier) VALUES (1, 0, '');
CREATE TABLE tlog_checkpoints (
    size BIGINT PRIMARY KEY,
    time_unix_nanos BIGINT NOT NULL,
    note TEXT NOT NULL
);
CREATE TABLE meshid_audit_key (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    verifier_key TEXT NOT NULL
);
CREATE TABLE tlog_nodes (
    level INTEGER NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);
",
    "
ALTER TABLE audit_records
    DROP CONSTRAINT audit_records_outcome_check,
    ADD CONSTRAINT audit_records_outcome_check
        CHECK (outcome IN ('issued', 'refused', 'revoked')) NOT VALID;
",
];

/// The advisory lock migrations run under ("meshid-a" in ASCII).
const MIGRATION_LOCK: i64 = 0x6d65_7368_6964_2d61;

/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// After a failed connection, batches fail at once (naming that failure)
/// for this long before the next attempt.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

const COLUMNS: &str = "id, time_unix_nanos, caller, requested_identity, granted_identity, \
    namespace, service_account, node, pod_name, pod_uid, serial, public_key_sha256, \
    not_before_unix_nanos, not_after_unix_nanos, requested_ttl_secs, granted_ttl_secs, \
    outcome, reason, peer";

const INSERT: &str = "INSERT INTO audit_records (id, time_unix_nanos, caller, \
    requested_identity, granted_identity, namespace, service_account, node, pod_name, pod_uid, \
    serial, public_key_sha256, not_before_unix_nanos, not_after_unix_nanos, requested_ttl_secs, \
    granted_ttl_secs, outcome, reason, peer, leaf_hash) \
    SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], \
    $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
    $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::text[], $18::text[], \
    $19::text[], $20::bytea[])";

/// Where a PostgreSQL store is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]`.
    pub dsn: String,
    /// A file holding the password (trailing newline ignored); overrides
    /// one in the DSN.
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates the server's certificate must chain to; turns
    /// TLS on (verify-full).
    pub ca_file: Option<PathBuf>,
}

/// A connection's settings, checked.
#[derive(Clone)]
struct Connect {
    config: postgres::Config,
    tls: Option<tls::MakeRustls>,
    name: PathBuf,
}

impl PgOptions {
    /// Whether `value` names a PostgreSQL store.
    pub fn is_dsn(value: &str) -> bool {
        value.starts_with("postgres://") || value.starts_with("postgresql://")
    }

    /// The store's name for messages: `postgres://USER@HOST:PORT/DB`, never
    /// the password (also when the DSN cannot be parsed).
    pub fn name(&self) -> String {
        match self.dsn.parse::<postgres::Config>() {
            Ok(config) => name_of(&config),
            Err(_) => "postgres://(unparsable DSN)".to_owned(),
        }
    }

    fn connect_settings(&self) -> Result<Connect, AuditError> {
        let invalid = |detail: String| AuditError::StoreConfig {
            store: self.name(),
            detail,
        };
        // libpq's verify modes are what our TLS always does: map them to
        // `require`, which the client parser knows.
        let dsn = self
            .dsn
            .replace("sslmode=verify-full", "sslmode=require")
            .replace("sslmode=verify-ca", "sslmode=require");
        let mut config: postgres::Config = dsn
            .parse()
            .map_err(|e| invalid(format!("the DSN is not valid: {e}")))?;
        if config.get_hosts().is_empty() {
            return Err(invalid("the DSN names no host".to_owned()));
        }
        if let Some(file) = &self.password_file {
            let text = std::fs::read_to_string(file).map_err(|e| {
                invalid(format!("reading the password file {}: {e}", file.display()))
            })?;
            let password = text.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(invalid(format!(
                    "the password file {} is empty",
                    file.display()
                )));
            }
            config.password(password);
        }
        let tls = match &self.ca_file {
            Some(ca) => {
                config.ssl_mode(postgres::config::SslMode::Require);
                Some(
                    tls::MakeRustls::from_ca_file(ca)
                        .map_err(|e| invalid(format!("--audit-store-ca-file: {e}")))?,
                )
            }
            None if config.get_ssl_mode() == postgres::config::SslMode::Require => {
                return Err(invalid(
                    "the DSN asks for TLS (sslmode=require/verify-full): give the server's CA \
                     with --audit-store-ca-file (meshid always verifies the server)"
                        .to_owned(),
                ))
            }
            None => {
                config.ssl_mode(postgres::config::SslMode::Disable);
                None
            }
        };
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives_idle(Duration::from_secs(30))
            .tcp_user_timeout(Duration::from_secs(30));
        if config.get_application_name().is_none() {
            config.application_name("meshid");
        }
        Ok(Connect {
            name: PathBuf::from(name_of(&config)),
            config,
            tls,
        })
    }
}

fn name_of(config: &postgres::Config) -> String {
    use postgres::config::Host;
    let user = config.get_user().unwrap_or("");
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => format!("{host}:{port}"),
        Some(Host::Unix(dir)) => format!("{}:{port}", dir.display()),
        None => "?".to_owned(),
    };
    let db = config.get_dbname().unwrap_or(user);
    format!("postgres://{user}@{host}/{db}")
}

impl Connect {
    fn connect(&self) -> Result<Client, AuditError> {
        let connected = match &self.tls {
            Some(tls) => self.config.connect(tls.clone()),
            None => self.config.connect(NoTls),
        };
        connected.map_err(|source| self.err("connecting")(source))
    }

    fn err(&self, context: &'static str) -> impl Fn(postgres::Error) -> AuditError + '_ {
        move |source| AuditError::Postgres {
            store: self.name.display().to_string(),
            context,
            source,
        }
    }
}

/// An audit store in PostgreSQL. Implements [`AuditBackend`] (the CA's
/// writer) and is what `meshid audit …` reads.
///
/// Its client runs on a runtime of its own: open, use and drop it on a
/// thread that is not running async tasks (the audit writer's, or a
/// blocking task's).
pub struct PgStore {
    connect: Connect,
    client: Option<Client>,
    /// When the last connection attempt failed, and why.
    failed: Option<(Instant, String)>,
    signer: Option<(NoteSigner, String)>,
    retention: Option<Duration>,
    /// [`RECONNECT_EVERY`] (tests shorten it).
    reconnect_every: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("store", &self.connect.name)
            .finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connects for writing and brings the schema up to date (once, under a
    /// lock, whatever the number of replicas starting); refuses a newer one.
    /// Fails naming the host and the reason (never the password).
    pub fn open(opts: &PgOptions) -> Result<Self, AuditError> {
        let mut store = Self::connected(opts)?;
        store.migrate()?;
        Ok(store)
    }

    /// Connects for reading (`meshid audit …`); refuses a store without
    /// meshid's tables or with a newer schema.
    pub fn open_read_only(opts: &PgOptions) -> Result<Self, AuditError> {
        let mut store = Self::connected(opts)?;
        let name = store.connect.name.clone();
        match schema_version(store.client()?, &name)? {
            None => Err(AuditError::StoreConfig {
                store: name.display().to_string(),
                detail: "this database holds no meshid audit store (the CA creates it on its \
                         first start with this --audit-store)"
                    .to_owned(),
            }),
            Some(found) if found > SCHEMA_VERSION => Err(AuditError::SchemaTooNew {
                path: name,
                found: i64::from(found),
                supported: i64::from(SCHEMA_VERSION),
            }),
            Some(_) => Ok(store),
        }
    }

    fn connected(opts: &PgOptions) -> Result<Self, AuditError> {
        let connect = opts.connect_settings()?;
        let client = connect.connect()?;
        Ok(Self {
            connect,
            client: Some(client),
            failed: None,
            signer: None,
            retention: None,
            reconnect_every: RECONNECT_EVERY,
        })
    }

    /// The store's name (no password).
    pub fn name(&self) -> &Path {
        &self.connect.name
    }

    /// The connection, reconnecting if it was lost (at most once per
    /// [`RECONNECT_EVERY`]; in between, the last failure is returned).
    #[allow(clippy::disallowed_methods)] // Real time, on the writer thread.
    fn client(&mut self) -> Result<&mut Client, AuditError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            tracing::warn!(store = %self.connect.name.display(), "audit store connection lost; reconnecting");
            self.client = None;
        }
        if self.client.is_none() {
            if let Some((at, why)) = &self.failed {
                if at.elapsed() < self.reconnect_every {
                    return Err(AuditError::StoreConfig {
                        store: self.connect.name.display().to_string(),
                        detail: format!("unreachable: {why}"),
                    });
                }
            }
            match self.connect.connect() {
                Ok(client) => {
                    tracing::info!(store = %self.connect.name.display(), "audit store connected");
                    self.failed = None;
                    self.client = Some(client);
                }
                Err(e) => {
                    self.failed = Some((Instant::now(), error_chain(&e)));
                    return Err(e);
                }
            }
        }
        self.client.as_mut().ok_or(AuditError::WriterGone)
    }

    fn migrate(&mut self) -> Result<(), AuditError> {
        let connect = self.connect.clone();
        let name = connect.name.clone();
        let err = |c| connect.err(c);
        let client = self.client()?;
        let mut tx = client.transaction().map_err(err("migrating the schema"))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(err("taking the migration lock"))?;
        let found = schema_version(&mut tx, &name)?.unwrap_or(0);
        if found > SCHEMA_VERSION {
            return Err(AuditError::SchemaTooNew {
                path: name,
                found: i64::from(found),
                supported: i64::from(SCHEMA_VERSION),
            });
        }
        for version in found + 1..=SCHEMA_VERSION {
            let Some(sql) = usize::try_from(version - 1)
                .ok()
                .and_then(|i| MIGRATIONS.get(i))
            else {
                break;
            };
            tx.batch_execute(sql).map_err(err("migrating the schema"))?;
            tx.execute("UPDATE meshid_audit_schema SET version = $1", &[&version])
                .map_err(err("migrating the schema"))?;
            tracing::info!(store = %name.display(), version, "audit store schema migrated");
        }
        tx.commit().map_err(err("migrating the schema"))
    }

    /// Removes the bodies of records older than `retention` after each
    /// checkpoint (as the SQLite store does).
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Signs the log's checkpoints with `signer` under `origin`, after
    /// checking that the latest checkpoint in the store is ours and matches
    /// the stored tree ([`tree::check_latest`]).
    ///
    /// The store records the first verifier key it is given and refuses a
    /// CA with another (every replica must sign with the same key, or the
    /// log could not be verified with one).
    pub fn with_checkpoints(
        mut self,
        signer: NoteSigner,
        origin: &str,
    ) -> Result<Self, AuditError> {
        let mine = signer.verifier_key();
        let connect = self.connect.clone();
        let client = self.client()?;
        client
            .execute(
                "INSERT INTO meshid_audit_key (id, verifier_key) VALUES (1, $1) \
                 ON CONFLICT (id) DO NOTHING",
                &[&mine],
            )
            .map_err(connect.err("recording the checkpoint key"))?;
        let theirs: String = client
            .query_one(
                "SELECT verifier_key FROM meshid_audit_key WHERE id = 1",
                &[],
            )
            .map_err(connect.err("reading the checkpoint key"))?
            .get(0);
        if theirs != mine {
            return Err(AuditError::StoreConfig {
                store: connect.name.display().to_string(),
                detail: format!(
                    "its checkpoints are signed by {theirs}, this CA's key is {mine}: give every \
                     replica the same checkpoint key (Secret meshid-audit-checkpoint-key, or \
                     --audit-checkpoint-key)"
                ),
            });
        }
        tree::check_latest(&mut self.rows()?, &signer.verifier())?;
        self.signer = Some((signer, origin.to_owned()));
        Ok(self)
    }

    fn rows(&mut self) -> Result<PgRows<'_, Client>, AuditError> {
        let name = self.connect.name.clone();
        Ok(PgRows {
            client: self.client()?,
            name,
        })
    }

    /// An inclusion proof of the record of certificate `serial`.
    pub fn prove(&mut self, serial: &str) -> Result<tree::InclusionProof, AuditError> {
        tree::prove(&mut self.rows()?, serial)
    }

    /// Recomputes the log and checks every checkpoint ([`tree::verify`]).
    pub fn verify(
        &mut self,
        verifier: &NoteVerifier,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<tree::Verified, AuditError> {
        // One snapshot for the whole pass: appends carry on meanwhile.
        let name = self.connect.name.clone();
        let connect = self.connect.clone();
        let client = self.client()?;
        let mut tx = client
            .build_transaction()
            .isolation_level(postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(connect.err("starting the check"))?;
        let verified = tree::verify(
            &mut PgRows {
                client: &mut tx,
                name,
            },
            verifier,
            progress,
        )?;
        tx.commit().map_err(connect.err("finishing the check"))?;
        Ok(verified)
    }

    /// The verifier key recorded by the first CA that signed into this store.
    pub fn recorded_verifier(&mut self) -> Result<Option<String>, AuditError> {
        let connect = self.connect.clone();
        let row = self
            .client()?
            .query_opt(
                "SELECT verifier_key FROM meshid_audit_key WHERE id = 1",
                &[],
            )
            .map_err(connect.err("reading the checkpoint key"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The latest signed checkpoint: (tree size, signed note).
    pub fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, AuditError> {
        self.rows()?.latest_checkpoint()
    }

    /// Calls `each` with every record matching `q`, oldest first, streamed.
    pub fn for_each(
        &mut self,
        q: &AuditQuery,
        each: &mut dyn FnMut(&AuditRecord) -> std::io::Result<()>,
    ) -> Result<u64, AuditError> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let name = self.connect.name.clone();
        let connect = self.connect.clone();
        let (sql, args) = select(q);
        let mut rows = self
            .client()?
            .query_raw(sql.as_str(), args.iter().map(|a| a.as_ref() as &dyn ToSql))
            .map_err(connect.err("exporting records"))?;
        let mut count = 0;
        while let Some(row) = rows.next().map_err(connect.err("exporting records"))? {
            each(&read_row(&row, &name)?).map_err(|source| AuditError::Io {
                path: name.clone(),
                context: "writing the export",
                source,
            })?;
            count += 1;
        }
        Ok(count)
    }

    /// Runs `sql` (a test's or a bench's direct write).
    #[cfg(any(test, feature = "testing"))]
    pub fn execute_for_test(&mut self, sql: &str) -> Result<(), AuditError> {
        let connect = self.connect.clone();
        self.client()?
            .batch_execute(sql)
            .map_err(connect.err("running a test statement"))
    }
}

impl AuditBackend for PgStore {
    fn append(&mut self, batch: &[AuditRecord]) -> Result<(), AuditError> {
        let connect = self.connect.clone();
        let name = connect.name.clone();
        let err = || connect.err("appending a batch");
        let result = (|| {
            let client = self.client()?;
            let mut tx = client.transaction().map_err(err())?;
            // The tree's lock: this batch's leaves follow the last committed
            // batch's, from whichever replica.
            let state = tx
                .query_one(
                    "SELECT size, frontier FROM tlog_state WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .map_err(err())?;
            let mut frontier = frontier_from(&name, state.get(0), state.get(1))?;
            let old_size = frontier.size();
            let mut cols = Columns::with_capacity(batch.len());
            for rec in batch {
                let rec = without_nul(rec);
                let hash = merkle::leaf_hash(&rec.leaf_bytes()?);
                let index = frontier
                    .push(hash)
                    .map_err(|e| tlog_err(&name, e.to_string()))?;
                cols.push(index, &rec, hash)?;
            }
            cols.insert(&mut tx).map_err(err())?;
            tree::seal_nodes(
                &mut PgRows {
                    client: &mut tx,
                    name: name.clone(),
                },
                old_size,
                frontier.size(),
            )?;
            tx.execute(
                "UPDATE tlog_state SET size = $1, frontier = $2 WHERE id = 1",
                &[&size_i64(frontier.size()), &frontier.hashes().concat()],
            )
            .map_err(err())?;
            tx.commit().map_err(err())
        })();
        if result.is_err() && self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        result
    }

    fn query(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        let mut out = Vec::new();
        self.for_each(q, &mut |rec| {
            out.push(rec.clone());
            Ok(())
        })?;
        Ok(out)
    }

    fn checkpoint(&mut self, now: OffsetDateTime) -> Result<Option<u64>, AuditError> {
        let connect = self.connect.clone();
        let name = connect.name.clone();
        let signed = match self.signer.take() {
            Some((signer, origin)) => {
                let result = (|| {
                    let client = self.client()?;
                    let next = tree::next_checkpoint(
                        &mut PgRows {
                            client: &mut *client,
                            name: name.clone(),
                        },
                        &signer,
                        &origin,
                    )?;
                    let Some((size, note)) = next else {
                        return Ok(None);
                    };
                    // Replicas may sign the same size at once: the first stays.
                    client
                        .execute(
                            "INSERT INTO tlog_checkpoints (size, time_unix_nanos, note) \
                             VALUES ($1, $2, $3) ON CONFLICT (size) DO NOTHING",
                            &[
                                &size_i64(size),
                                &i64::try_from(now.unix_timestamp_nanos()).unwrap_or(i64::MAX),
                                &note,
                            ],
                        )
                        .map_err(connect.err("storing a checkpoint"))?;
                    Ok(Some(size))
                })();
                self.signer = Some((signer, origin));
                result?
            }
            None => None,
        };
        if let Some(retention) = self.retention {
            let before = now - time::Duration::try_from(retention).unwrap_or(time::Duration::MAX);
            let pruned = self.prune(before)?;
            if pruned > 0 {
                tracing::info!(pruned, %before, "audit retention: bodies of older records removed; their leaf hashes stay in the log");
            }
        }
        Ok(signed)
    }
}

impl PgStore {
    /// Retention: empties the body of every record older than `before` that
    /// a checkpoint covers, keeping its time, outcome and leaf hash.
    fn prune(&mut self, before: OffsetDateTime) -> Result<u64, AuditError> {
        let Some((covered, _)) = self.latest_checkpoint()? else {
            return Ok(0);
        };
        let connect = self.connect.clone();
        let before = i64::try_from(before.unix_timestamp_nanos()).unwrap_or(i64::MIN);
        self.client()?
            .execute(
                "UPDATE audit_records SET caller = NULL, requested_identity = NULL, \
                 granted_identity = NULL, namespace = NULL, service_account = NULL, node = NULL, \
                 pod_name = NULL, pod_uid = NULL, serial = NULL, public_key_sha256 = NULL, \
                 not_before_unix_nanos = NULL, not_after_unix_nanos = NULL, \
                 requested_ttl_secs = NULL, granted_ttl_secs = NULL, reason = NULL, peer = NULL, \
                 pruned = true \
                 WHERE time_unix_nanos < $1 AND NOT pruned AND id < $2",
                &[&before, &size_i64(covered)],
            )
            .map_err(connect.err("removing old records' bodies (retention)"))
    }
}

/// A batch's rows, column by column (one `UNNEST` insert).
struct Columns {
    ids: Vec<i64>,
    times: Vec<i64>,
    text: [Vec<Option<String>>; 10],
    not_before: Vec<Option<i64>>,
    not_after: Vec<Option<i64>>,
    requested_ttl: Vec<Option<i64>>,
    granted_ttl: Vec<Option<i64>>,
    outcome: Vec<String>,
    reason: Vec<Option<String>>,
    peer: Vec<Option<String>>,
    hashes: Vec<Vec<u8>>,
}

impl Columns {
    fn with_capacity(n: usize) -> Self {
        Self {
            ids: Vec::with_capacity(n),
            times: Vec::with_capacity(n),
            text: std::array::from_fn(|_| Vec::with_capacity(n)),
            not_before: Vec::with_capacity(n),
            not_after: Vec::with_capacity(n),
            requested_ttl: Vec::with_capacity(n),
            granted_ttl: Vec::with_capacity(n),
            outcome: Vec::with_capacity(n),
            reason: Vec::with_capacity(n),
            peer: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, index: u64, rec: &AuditRecord, hash: Hash) -> Result<(), AuditError> {
        self.ids.push(size_i64(index));
        self.times.push(nanos("time", rec.time)?);
        let text = [
            &rec.caller,
            &rec.requested_identity,
            &rec.granted_identity,
            &rec.namespace,
            &rec.service_account,
            &rec.node,
            &rec.pod_name,
            &rec.pod_uid,
            &rec.serial,
            &rec.public_key_sha256,
        ];
        for (column, value) in self.text.iter_mut().zip(text) {
            column.push(value.clone());
        }
        self.not_before
            .push(rec.not_before.map(|t| nanos("not_before", t)).transpose()?);
        self.not_after
            .push(rec.not_after.map(|t| nanos("not_after", t)).transpose()?);
        self.requested_ttl.push(rec.requested_ttl_secs);
        self.granted_ttl.push(rec.granted_ttl_secs);
        self.outcome.push(rec.outcome.as_str().to_owned());
        self.reason.push(rec.reason.clone());
        self.peer.push(rec.peer.clone());
        self.hashes.push(hash.to_vec());
        Ok(())
    }

    fn insert(&self, client: &mut impl GenericClient) -> Result<u64, postgres::Error> {
        let [caller, requested, granted, namespace, account, node, pod, uid, serial, key] =
            &self.text;
        client.execute(
            INSERT,
            &[
                &self.ids,
                &self.times,
                caller,
                requested,
                granted,
                namespace,
                account,
                node,
                pod,
                uid,
                serial,
                key,
                &self.not_before,
                &self.not_after,
                &self.requested_ttl,
                &self.granted_ttl,
                &self.outcome,
                &self.reason,
                &self.peer,
                &self.hashes,
            ],
        )
    }
}

/// `rec` with every NUL in its text replaced by U+FFFD (PostgreSQL `text`
/// cannot hold NUL); borrowed unchanged when there is none.
fn without_nul(rec: &AuditRecord) -> std::borrow::Cow<'_, AuditRecord> {
    let texts = |r: &AuditRecord| {
        [
            &r.caller,
            &r.requested_identity,
            &r.granted_identity,
            &r.namespace,
            &r.service_account,
            &r.node,
            &r.pod_name,
            &r.pod_uid,
            &r.serial,
            &r.public_key_sha256,
            &r.reason,
            &r.peer,
        ]
        .into_iter()
        .any(|f| f.as_deref().is_some_and(|s| s.contains('\0')))
    };
    if !texts(rec) {
        return std::borrow::Cow::Borrowed(rec);
    }
    let mut copy = rec.clone();
    for field in [
        &mut copy.caller,
        &mut copy.requested_identity,
        &mut copy.granted_identity,
        &mut copy.namespace,
        &mut copy.service_account,
        &mut copy.node,
        &mut copy.pod_name,
        &mut copy.pod_uid,
        &mut copy.serial,
        &mut copy.public_key_sha256,
        &mut copy.reason,
        &mut copy.peer,
    ]
    .into_iter()
    .flatten()
    {
        *field = field.replace('\0', "\u{FFFD}");
    }
    std::borrow::Cow::Owned(copy)
}

/// The log's rows over one PostgreSQL client or transaction.
struct PgRows<'a, C: GenericClient> {
    client: &'a mut C,
    name: PathBuf,
}

impl<C: GenericClient> PgRows<'_, C> {
    fn err(&self, context: &'static str) -> impl Fn(postgres::Error) -> AuditError + '_ {
        move |source| AuditError::Postgres {
            store: self.name.display().to_string(),
            context,
            source,
        }
    }
}

impl<C: GenericClient> TreeRows for PgRows<'_, C> {
    fn name(&self) -> &Path {
        &self.name
    }

    fn frontier(&mut self) -> Result<Frontier, AuditError> {
        let row = self
            .client
            .query_one("SELECT size, frontier FROM tlog_state WHERE id = 1", &[])
            .map_err(|e| self.err("reading the log's frontier")(e))?;
        frontier_from(&self.name, row.get(0), row.get(1))
    }

    fn checkpoints(&mut self) -> Result<Vec<(u64, String)>, AuditError> {
        let rows = self
            .client
            .query("SELECT size, note FROM tlog_checkpoints ORDER BY size", &[])
            .map_err(|e| self.err("reading checkpoints")(e))?;
        Ok(rows
            .iter()
            .map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), r.get(1)))
            .collect())
    }

    fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, AuditError> {
        let row = self
            .client
            .query_typed_opt(
                "SELECT size, note FROM tlog_checkpoints ORDER BY size DESC LIMIT 1",
                &[],
            )
            .map_err(|e| self.err("reading the latest checkpoint")(e))?;
        Ok(row.map(|r| (u64::try_from(r.get::<_, i64>(0)).unwrap_or(0), r.get(1))))
    }

    fn hashes(&mut self, level: u32, start: u64, end: u64) -> Result<Vec<Hash>, AuditError> {
        let (start, end) = (size_i64(start), size_i64(end));
        let rows = if level == 0 {
            self.client.query(
                "SELECT leaf_hash FROM audit_records WHERE id >= $1 AND id < $2 ORDER BY id",
                &[&start, &end],
            )
        } else {
            self.client.query(
                "SELECT hash FROM tlog_nodes WHERE level = $3 AND idx >= $1 AND idx < $2 \
                 ORDER BY idx",
                &[&start, &end, &i32::try_from(level).unwrap_or(i32::MAX)],
            )
        }
        .map_err(|e| self.err("reading stored hashes")(e))?;
        rows.iter()
            .map(|r| hash_of(&self.name, r.get::<_, &[u8]>(0)))
            .collect()
    }

    /// Every range in two queries (leaves, nodes; both by primary key with
    /// `= ANY`, index lookups whatever the statistics; typed: one round trip
    /// each, no prepare), not one per range: a
    /// proof needs a few dozen ranges and each query is a round trip.
    fn hashes_in(&mut self, ranges: &[(u32, u64, u64)]) -> Result<Vec<Vec<Hash>>, AuditError> {
        let mut out = vec![Vec::new(); ranges.len()];
        let (leaves, nodes): (Vec<_>, Vec<_>) =
            ranges.iter().enumerate().partition(|(_, r)| r.0 == 0);
        if !leaves.is_empty() {
            // The leaves by primary key (`= ANY`): an index lookup whatever
            // the planner's statistics (a range join may be planned as a scan).
            let ids: Vec<i64> = leaves
                .iter()
                .flat_map(|(_, r)| (r.1..r.2).map(size_i64))
                .collect();
            let found = self
                .client
                .query_typed(
                    "SELECT id, leaf_hash FROM audit_records WHERE id = ANY($1::bigint[])",
                    &[(&ids, Type::INT8_ARRAY)],
                )
                .map_err(|e| self.err("reading stored hashes")(e))?;
            let mut by_id = HashMap::with_capacity(found.len());
            for row in &found {
                by_id.insert(
                    row.get::<_, i64>(0),
                    hash_of(&self.name, row.get::<_, &[u8]>(1))?,
                );
            }
            for (i, range) in &leaves {
                let slot = &mut out[*i];
                for id in range.1..range.2 {
                    if let Some(hash) = by_id.get(&size_i64(id)) {
                        slot.push(*hash);
                    }
                }
            }
        }
        if !nodes.is_empty() {
            // The nodes by primary key too (`= ANY` on both columns: an index
            // scan; a few extra pairs come back and are ignored).
            let levels: Vec<i32> = nodes
                .iter()
                .map(|(_, r)| i32::try_from(r.0).unwrap_or(i32::MAX))
                .collect();
            let idx: Vec<i64> = nodes
                .iter()
                .flat_map(|(_, r)| (r.1..r.2).map(size_i64))
                .collect();
            let found = self
                .client
                .query_typed(
                    "SELECT level, idx, hash FROM tlog_nodes \
                     WHERE level = ANY($1::int[]) AND idx = ANY($2::bigint[])",
                    &[(&levels, Type::INT4_ARRAY), (&idx, Type::INT8_ARRAY)],
                )
                .map_err(|e| self.err("reading stored hashes")(e))?;
            let mut by_key = HashMap::with_capacity(found.len());
            for row in &found {
                by_key.insert(
                    (row.get::<_, i32>(0), row.get::<_, i64>(1)),
                    hash_of(&self.name, row.get::<_, &[u8]>(2))?,
                );
            }
            for (i, range) in &nodes {
                let level = i32::try_from(range.0).unwrap_or(i32::MAX);
                let slot = &mut out[*i];
                for index in range.1..range.2 {
                    if let Some(hash) = by_key.get(&(level, size_i64(index))) {
                        slot.push(*hash);
                    }
                }
            }
        }
        Ok(out)
    }
    fn put_nodes(&mut self, level: u32, nodes: &[(u64, Hash)]) -> Result<(), AuditError> {
        let idx: Vec<i64> = nodes.iter().map(|(i, _)| size_i64(*i)).collect();
        let hashes: Vec<Vec<u8>> = nodes.iter().map(|(_, h)| h.to_vec()).collect();
        self.client
            .execute(
                "INSERT INTO tlog_nodes (level, idx, hash) \
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::bytea[])",
                &[&i32::try_from(level).unwrap_or(i32::MAX), &idx, &hashes],
            )
            .map_err(|e| self.err("storing nodes")(e))?;
        Ok(())
    }

    fn nodes(&mut self, level: u32) -> Result<Vec<(u64, Hash)>, AuditError> {
        let rows = self
            .client
            .query(
                "SELECT idx, hash FROM tlog_nodes WHERE level = $1 ORDER BY idx",
                &[&i32::try_from(level).unwrap_or(i32::MAX)],
            )
            .map_err(|e| self.err("reading stored nodes")(e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    u64::try_from(r.get::<_, i64>(0)).unwrap_or(u64::MAX),
                    hash_of(&self.name, r.get::<_, &[u8]>(1))?,
                ))
            })
            .collect()
    }

    fn count_records(&mut self) -> Result<u64, AuditError> {
        let row = self
            .client
            .query_one("SELECT COUNT(*) FROM audit_records", &[])
            .map_err(|e| self.err("counting records")(e))?;
        Ok(u64::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    fn find_serial(
        &mut self,
        serial: &str,
    ) -> Result<Option<(AuditRecord, Option<u64>)>, AuditError> {
        // No `ORDER BY id LIMIT 1`: with it PostgreSQL may walk the primary
        // key in order instead of the serial index. A serial has few records
        // (issued, perhaps withheld, perhaps revoked), and the first (its
        // issuance) is picked here.
        let sql = format!("SELECT {COLUMNS} FROM audit_records WHERE serial = $1");
        let rows = self
            .client
            .query_typed(sql.as_str(), &[(&serial, Type::TEXT)])
            .map_err(|e| self.err("finding the record")(e))?;
        let first = rows.into_iter().min_by_key(|r| r.get::<_, i64>(0));
        first
            .map(|r| {
                let index = u64::try_from(r.get::<_, i64>(0)).ok();
                Ok((read_row(&r, &self.name)?, index))
            })
            .transpose()
    }

    fn each_leaf(
        &mut self,
        each: &mut dyn FnMut(LeafRow) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let sql = format!("SELECT {COLUMNS}, leaf_hash, pruned FROM audit_records ORDER BY id");
        let name = self.name.clone();
        let err = |context| {
            let name = name.clone();
            move |source| AuditError::Postgres {
                store: name.display().to_string(),
                context,
                source,
            }
        };
        let mut rows = self
            .client
            .query_raw(sql.as_str(), std::iter::empty::<&dyn ToSql>())
            .map_err(err("reading records"))?;
        while let Some(row) = rows.next().map_err(err("reading records"))? {
            each(LeafRow {
                record: read_row(&row, &name)?,
                index: u64::try_from(row.get::<_, i64>(0)).ok(),
                stored_hash: row.get(19),
                pruned: row.get(20),
            })?;
        }
        Ok(())
    }
}

fn schema_version(client: &mut impl GenericClient, name: &Path) -> Result<Option<i32>, AuditError> {
    let err = |source| AuditError::Postgres {
        store: name.display().to_string(),
        context: "reading the schema version",
        source,
    };
    let exists: bool = client
        .query_one("SELECT to_regclass('meshid_audit_schema') IS NOT NULL", &[])
        .map_err(err)?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT MAX(version) FROM meshid_audit_schema", &[])
        .map_err(err)?;
    Ok(row.get(0))
}

fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

fn nanos(field: &'static str, time: OffsetDateTime) -> Result<i64, AuditError> {
    i64::try_from(time.unix_timestamp_nanos())
        .map_err(|_| AuditError::TimeOutOfRange { field, time })
}

/// The `SELECT` for `q` and its parameters.
fn select(q: &AuditQuery) -> (String, Vec<Box<dyn ToSql + Sync + Send>>) {
    let mut clauses = Vec::new();
    let mut args: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut filter = |clause: &str, value: Box<dyn ToSql + Sync + Send>| {
        args.push(value);
        clauses.push(format!("{clause} ${}", args.len()));
    };
    if let Some(ns) = &q.namespace {
        filter("namespace =", Box::new(ns.clone()));
    }
    if let Some(sa) = &q.service_account {
        filter("service_account =", Box::new(sa.clone()));
    }
    if let Some(since) = q.since {
        filter(
            "time_unix_nanos >=",
            Box::new(nanos("since", since).unwrap_or(i64::MIN)),
        );
    }
    if let Some(serial) = &q.serial {
        filter("serial =", Box::new(serial.clone()));
    }
    if let Some(outcome) = q.outcome {
        // One of three fixed words: nothing from outside reaches the SQL text;
        // a literal lets PostgreSQL use the partial index of refusals.
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
            args.push(Box::new(i64::try_from(limit).unwrap_or(i64::MAX)));
            format!(
                "SELECT * FROM (SELECT {COLUMNS} FROM audit_records {where_clause} \
                 ORDER BY time_unix_nanos DESC, id DESC LIMIT ${}) newest \
                 ORDER BY time_unix_nanos, id",
                args.len()
            )
        }
    };
    (sql, args)
}

fn read_row(row: &Row, name: &Path) -> Result<AuditRecord, AuditError> {
    let id: i64 = row.try_get(0).unwrap_or(-1);
    let corrupt = |detail: String| AuditError::Corrupt {
        path: name.to_owned(),
        row: id,
        detail,
    };
    let text = |idx: usize| -> Result<Option<String>, AuditError> {
        row.try_get(idx).map_err(|e| corrupt(e.to_string()))
    };
    let int = |idx: usize| -> Result<Option<i64>, AuditError> {
        row.try_get(idx).map_err(|e| corrupt(e.to_string()))
    };
    let time = |idx: usize| -> Result<Option<OffsetDateTime>, AuditError> {
        int(idx)?
            .map(|n| OffsetDateTime::from_unix_timestamp_nanos(i128::from(n)))
            .transpose()
            .map_err(|e| corrupt(e.to_string()))
    };
    let outcome: String = row.try_get(16).map_err(|e| corrupt(e.to_string()))?;
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
        outcome: outcome
            .parse()
            .map_err(|e: AuditError| corrupt(e.to_string()))?,
        reason: text(17)?,
        peer: text(18)?,
    })
}

#[cfg(test)]
mod tests;
