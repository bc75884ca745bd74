//! Audit: every decision the CA makes, issued or refused, is recorded *before* the
//! CA answers (and so is every certificate an operator revokes). If the write
//! fails, no certificate leaves: the CA answers `UNAVAILABLE` instead (DESIGN.md,
//! "Every issued certificate is recorded in the audit store before it is returned
//! to the caller").
//!
//! What this module owns:
//!
//! - [`record`]: the [`AuditRecord`] (one decision, every field documented) and its
//!   [`Outcome`].
//! - [`store`]: the [`AuditBackend`] trait (synchronous, one owner thread) and
//!   [`AuditLog`], the cheap, cloneable handle the CA holds. It implements *group
//!   commit*: concurrent [`AuditLog::record`] calls are appended in one durable
//!   transaction, and each call resolves only once the transaction holding its record
//!   has committed. Durability without paying one fsync per certificate.
//! - [`sqlite`]: the default backend, a SQLite file (WAL, `synchronous=FULL`) that
//!   `meshid audit list` can read while the CA writes.
//! - [`query`]: filters for reading records back, and the table / JSON-lines renderings
//!   used by `meshid audit list`.
//!
//! What it does not own: deciding *what* to record (the CA fills the record), mapping
//! errors to gRPC statuses (the CA maps every [`AuditError`] to `UNAVAILABLE`), and
//! tamper evidence (a later `chain` module).
//!
//! Uses only [`crate::identity`] among our modules.

use std::path::PathBuf;
use std::sync::Arc;

use time::OffsetDateTime;

pub mod checkpoint_key;
pub mod http;
pub mod location;
pub mod postgres;
pub mod query;
pub mod record;
pub mod sqlite;
pub mod store;
pub mod tlog;
pub mod tree;

pub use location::{AuditReader, StoreLocation};
pub use query::{render_json, render_table, AuditQuery};
pub use record::{AuditRecord, Outcome};
pub use sqlite::{read_sqlite, ReadError, SqliteBackend};
pub use store::{AuditBackend, AuditLog, AuditStats, Expected, GroupCommitConfig};

/// Everything that can go wrong while recording or reading audit records.
///
/// The CA treats every variant the same way: the decision was not recorded, so no
/// certificate is returned (`UNAVAILABLE`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A SQLite operation on the audit database failed.
    #[error("audit database {}: {context} failed", path.display())]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// What we were doing (`"opening"`, `"appending a batch"`, …).
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },

    /// A PostgreSQL operation on the audit store failed (the store is named
    /// without its password).
    #[error("audit store {store}: {context} failed")]
    Postgres {
        /// `postgres://USER@HOST:PORT/DB`.
        store: String,
        /// What we were doing.
        context: &'static str,
        /// The client's error (it names the cause: refused, timed out, wrong password…).
        #[source]
        source: ::postgres::Error,
    },

    /// The audit store's settings are wrong, or it cannot be reached.
    #[error("audit store {store}: {detail}")]
    StoreConfig {
        /// The store (no password).
        store: String,
        /// What is wrong.
        detail: String,
    },

    /// A file-system operation on the audit store failed.
    #[error("audit database {}: {context} failed", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What we were doing.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The store's transparency log does not hold together: a checkpoint or
    /// a record does not match the tree (names which), or the log cannot
    /// be extended.
    #[error("audit log {}: {detail}", path.display())]
    Tlog {
        /// The database file.
        path: PathBuf,
        /// What does not match, naming the record or checkpoint.
        detail: String,
    },

    /// A record could not be encoded as its log leaf.
    #[error("encoding an audit record as its log leaf: {detail}")]
    Encode {
        /// Why.
        detail: String,
    },

    /// A read-only open of a database file that does not exist.
    #[error(
        "audit database {} does not exist (the CA creates it on its first start; check --data-dir)",
        path.display()
    )]
    NotFound {
        /// The path that was asked for.
        path: PathBuf,
    },

    /// The file is a SQLite database, but not one meshid created.
    #[error("{} is not a meshid audit database (it has no schema version table)", path.display())]
    NotAnAuditDatabase {
        /// The database file.
        path: PathBuf,
    },

    /// The database file at the path is no longer the one the CA opened
    /// (deleted, or replaced): writing on would "audit" into an unlinked file.
    #[error(
        "audit database {} was {what} while the CA had it open: nothing is issued until the original file is back at that path (or the CA restarts)",
        path.display()
    )]
    FileReplaced {
        /// The database path.
        path: PathBuf,
        /// "deleted" or "replaced by another file".
        what: &'static str,
    },

    /// The database was written by a newer meshid; refusing to read or write it.
    #[error(
        "audit database {} has schema version {found}; this meshid supports up to {supported} (upgrade meshid)",
        path.display()
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this build understands.
        supported: i64,
    },

    /// SQLite would not put the database in WAL mode, which lets `meshid audit list`
    /// read while the CA writes (an in-memory path, or a file system without shared
    /// memory support such as some network mounts).
    #[error(
        "audit database {}: SQLite refused WAL mode (journal mode is {journal_mode:?}); put the data directory on a local file system",
        path.display()
    )]
    WalUnavailable {
        /// The database file.
        path: PathBuf,
        /// The journal mode SQLite kept.
        journal_mode: String,
    },

    /// A stored row could not be turned back into an [`AuditRecord`].
    #[error("audit database {}: row {row} is unreadable: {detail}", path.display())]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// The row id.
        row: i64,
        /// What was wrong with it.
        detail: String,
    },

    /// A time in a record cannot be stored (SQLite stores nanoseconds since the Unix
    /// epoch in 64 bits: years 1677 to 2262).
    #[error("audit field {field} = {time} is outside the storable range (years 1677 to 2262)")]
    TimeOutOfRange {
        /// The record field.
        field: &'static str,
        /// Its value.
        time: OffsetDateTime,
    },

    /// A string that is not an [`Outcome`]'s name where one was expected.
    #[error("unknown audit outcome {value:?}: expected \"issued\", \"refused\" or \"revoked\"")]
    UnknownOutcome {
        /// The string given.
        value: String,
    },

    /// The writer thread of an [`AuditLog`] has stopped (it panicked, or could not be
    /// started); nothing more can be recorded through this log.
    #[error("the audit writer has stopped; decisions can no longer be recorded")]
    WriterGone,

    /// The batch holding this record was not committed. Every record in a failed
    /// batch gets this error, sharing the one underlying cause.
    #[error("the audit batch holding this record ({batch_len} record(s)) was not committed")]
    CommitFailed {
        /// How many records the failed batch held.
        batch_len: usize,
        /// Why the backend failed.
        #[source]
        source: Arc<AuditError>,
    },
}
