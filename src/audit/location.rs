//! Where the audit store is (`--audit-store`, also `MESHID_AUDIT_STORE`):
//! a SQLite file (the default, `DATA_DIR/audit.db`; also `sqlite:PATH` or a
//! plain path) or a PostgreSQL database (`postgres://…`), and opening it for
//! the CA's writer ([`StoreLocation::open_writer`]) or for reading
//! ([`StoreLocation::open_reader`], behind [`AuditReader`], what
//! `meshid audit …` and the HTTP endpoints use).
//!
//! Opening a PostgreSQL store starts its client's own runtime: call these
//! from a thread that is not running async tasks (`spawn_blocking`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::postgres::{PgOptions, PgStore};
use super::query::AuditQuery;
use super::record::AuditRecord;
use super::store::AuditBackend;
use super::tlog::note::{NoteSigner, NoteVerifier};
use super::tree::{InclusionProof, Verified};
use super::{AuditError, SqliteBackend};

/// Where the audit store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database.
    Postgres(PgOptions),
}

impl StoreLocation {
    /// From the flags: `store` (None: `DATA_DIR/audit.db`), and the
    /// PostgreSQL-only password and CA files (refused for SQLite, naming
    /// the flag).
    pub fn parse(
        store: Option<&str>,
        data_dir: &Path,
        password_file: Option<PathBuf>,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, String> {
        let location = match store {
            Some(dsn) if PgOptions::is_dsn(dsn) => {
                return Ok(Self::Postgres(PgOptions {
                    dsn: dsn.to_owned(),
                    password_file,
                    ca_file,
                }))
            }
            Some(other) if other.contains("://") => {
                return Err(format!(
                    "--audit-store {}: not a store this meshid knows (use postgres://USER@HOST:PORT/DB, or a SQLite path)",
                    other.split("://").next().unwrap_or("")
                ))
            }
            Some(path) => Self::Sqlite(PathBuf::from(path.strip_prefix("sqlite:").unwrap_or(path))),
            None => Self::Sqlite(data_dir.join("audit.db")),
        };
        if password_file.is_some() {
            return Err(
                "--audit-store-password-file is for a postgres:// --audit-store".to_owned(),
            );
        }
        if ca_file.is_some() {
            return Err("--audit-store-ca-file is for a postgres:// --audit-store".to_owned());
        }
        Ok(location)
    }

    /// The store's name for messages (never a password).
    pub fn name(&self) -> String {
        match self {
            Self::Sqlite(path) => path.display().to_string(),
            Self::Postgres(opts) => opts.name(),
        }
    }

    /// Whether several CA replicas can share it.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Opens the store for the CA's writer: schema created or migrated,
    /// the latest checkpoint checked against the tree (refused if it does
    /// not match), checkpoints signed by `signer` from now on.
    pub fn open_writer(
        &self,
        signer: NoteSigner,
        origin: &str,
        retention: Option<Duration>,
    ) -> Result<Box<dyn AuditBackend>, AuditError> {
        Ok(match self {
            Self::Sqlite(path) => Box::new(
                SqliteBackend::open(path)?
                    .with_checkpoints(signer, origin)?
                    .with_retention(retention),
            ),
            Self::Postgres(opts) => Box::new(
                PgStore::open(opts)?
                    .with_checkpoints(signer, origin)?
                    .with_retention(retention),
            ),
        })
    }

    /// Opens the store for reading.
    pub fn open_reader(&self) -> Result<Box<dyn AuditReader>, AuditError> {
        Ok(match self {
            Self::Sqlite(path) => Box::new(SqliteBackend::open_read_only(path)?),
            Self::Postgres(opts) => Box::new(PgStore::open_read_only(opts)?),
        })
    }
}

/// What `meshid audit …` and the HTTP endpoints read, from either store.
pub trait AuditReader: Send {
    /// The records matching `q` (see [`AuditQuery`]).
    fn list(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError>;
    /// Calls `each` with every record matching `q`, oldest first, one at a time.
    fn for_each(
        &mut self,
        q: &AuditQuery,
        each: &mut dyn FnMut(&AuditRecord) -> std::io::Result<()>,
    ) -> Result<u64, AuditError>;
    /// An inclusion proof of the record of certificate `serial` in the latest checkpoint.
    fn prove(&mut self, serial: &str) -> Result<InclusionProof, AuditError>;
    /// Recomputes the log and checks every checkpoint.
    fn verify(
        &mut self,
        verifier: &NoteVerifier,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Verified, AuditError>;
    /// The latest signed checkpoint: (tree size, signed note).
    fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, AuditError>;
    /// The verifier key the store's CAs sign with, as recorded in the store
    /// (PostgreSQL; None for SQLite, whose key is in the data directory).
    fn recorded_verifier(&mut self) -> Result<Option<String>, AuditError>;
}

impl AuditReader for SqliteBackend {
    fn list(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        AuditBackend::query(self, q)
    }
    fn for_each(
        &mut self,
        q: &AuditQuery,
        each: &mut dyn FnMut(&AuditRecord) -> std::io::Result<()>,
    ) -> Result<u64, AuditError> {
        SqliteBackend::for_each(self, q, each)
    }
    fn prove(&mut self, serial: &str) -> Result<InclusionProof, AuditError> {
        SqliteBackend::prove(self, serial)
    }
    fn verify(
        &mut self,
        verifier: &NoteVerifier,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Verified, AuditError> {
        SqliteBackend::verify(self, verifier, progress)
    }
    fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, AuditError> {
        SqliteBackend::latest_checkpoint(self)
    }
    fn recorded_verifier(&mut self) -> Result<Option<String>, AuditError> {
        Ok(None)
    }
}

impl AuditReader for PgStore {
    fn list(&mut self, q: &AuditQuery) -> Result<Vec<AuditRecord>, AuditError> {
        AuditBackend::query(self, q)
    }
    fn for_each(
        &mut self,
        q: &AuditQuery,
        each: &mut dyn FnMut(&AuditRecord) -> std::io::Result<()>,
    ) -> Result<u64, AuditError> {
        PgStore::for_each(self, q, each)
    }
    fn prove(&mut self, serial: &str) -> Result<InclusionProof, AuditError> {
        PgStore::prove(self, serial)
    }
    fn verify(
        &mut self,
        verifier: &NoteVerifier,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Verified, AuditError> {
        PgStore::verify(self, verifier, progress)
    }
    fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, AuditError> {
        PgStore::latest_checkpoint(self)
    }
    fn recorded_verifier(&mut self) -> Result<Option<String>, AuditError> {
        PgStore::recorded_verifier(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_flag_names_sqlite_or_postgres_and_refuses_the_rest() {
        let dir = Path::new("/data");
        assert_eq!(
            StoreLocation::parse(None, dir, None, None).unwrap(),
            StoreLocation::Sqlite(dir.join("audit.db"))
        );
        assert_eq!(
            StoreLocation::parse(Some("sqlite:/x/a.db"), dir, None, None).unwrap(),
            StoreLocation::Sqlite("/x/a.db".into())
        );
        let pg = StoreLocation::parse(
            Some("postgresql://u:secret@db:5432/audit"),
            dir,
            Some("/pw".into()),
            None,
        )
        .unwrap();
        assert!(pg.is_shared());
        assert_eq!(pg.name(), "postgres://u@db:5432/audit");
        let err = StoreLocation::parse(Some("mysql://u@h/db"), dir, None, None).unwrap_err();
        assert!(
            err.contains("mysql") && err.contains("postgres://"),
            "{err}"
        );
        let err = StoreLocation::parse(None, dir, Some("/pw".into()), None).unwrap_err();
        assert!(err.contains("--audit-store-password-file"), "{err}");
        let err = StoreLocation::parse(None, dir, None, Some("/ca".into())).unwrap_err();
        assert!(err.contains("--audit-store-ca-file"), "{err}");
    }
}
