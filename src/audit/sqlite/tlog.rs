//! The transparency log kept in the SQLite store ([`crate::audit::tree`]
//! over SQLite's tables): each record's leaf (its index in the tree and its
//! RFC 9162 leaf hash) beside it, the tree's right frontier, the stored
//! nodes and the signed checkpoints.
//!
//! Appends are ordered by the store's write lock: one writer transaction
//! at a time (`BEGIN IMMEDIATE`) reads the frontier, numbers its records
//! from the tree's size on, and writes the frontier back, so the tree is
//! one whatever the number of writers.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use time::OffsetDateTime;

use super::{read_row, sqlite_err, COLUMNS};
use crate::audit::record::AuditRecord;
use crate::audit::tlog::merkle::{self, Frontier, Hash};
use crate::audit::tlog::note::NoteSigner;
use crate::audit::tree::{self, frontier_from, hash_of, tlog_err, LeafRow, TreeRows};
use crate::audit::AuditError;

/// Tables and columns of the log (schema version 2).
pub(super) const SCHEMA: &str = "
ALTER TABLE audit_records ADD COLUMN leaf_index INTEGER;
ALTER TABLE audit_records ADD COLUMN leaf_hash BLOB;
ALTER TABLE audit_records ADD COLUMN pruned INTEGER NOT NULL DEFAULT 0;
CREATE UNIQUE INDEX audit_records_leaf ON audit_records (leaf_index);
CREATE TABLE tlog_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size INTEGER NOT NULL,
    frontier BLOB NOT NULL
);
INSERT INTO tlog_state (id, size, frontier) VALUES (1, 0, x'');
CREATE TABLE tlog_checkpoints (
    size INTEGER PRIMARY KEY,
    time_unix_nanos INTEGER NOT NULL,
    note TEXT NOT NULL
);
";

/// The stored nodes (schema version 3): the root of each complete perfect
/// subtree of 256^level leaves ([`tree::seal_nodes`]).
pub(super) const NODES_SCHEMA: &str = "
CREATE TABLE tlog_nodes (
    level INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    hash BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;
";

/// The log's rows over one SQLite connection (or open transaction).
pub(crate) struct SqliteRows<'a> {
    pub(crate) conn: &'a Connection,
    pub(crate) path: &'a Path,
}

fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

impl TreeRows for SqliteRows<'_> {
    fn name(&self) -> &Path {
        self.path
    }

    fn frontier(&mut self) -> Result<Frontier, AuditError> {
        let (size, blob): (i64, Vec<u8>) = self
            .conn
            .query_row(
                "SELECT size, frontier FROM tlog_state WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(sqlite_err(self.path, "reading the log's frontier"))?;
        frontier_from(self.path, size, &blob)
    }

    fn checkpoints(&mut self) -> Result<Vec<(u64, String)>, AuditError> {
        let err = || sqlite_err(self.path, "reading checkpoints");
        let mut stmt = self
            .conn
            .prepare("SELECT size, note FROM tlog_checkpoints ORDER BY size")
            .map_err(err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(err())?;
        rows.map(|r| {
            r.map(|(s, n)| (u64::try_from(s).unwrap_or(0), n))
                .map_err(err())
        })
        .collect()
    }

    fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, AuditError> {
        latest_checkpoint(self.conn, self.path)
    }

    fn hashes(&mut self, level: u32, start: u64, end: u64) -> Result<Vec<Hash>, AuditError> {
        let err = || sqlite_err(self.path, "reading stored hashes");
        let mut stmt = if level == 0 {
            self.conn.prepare_cached(
                "SELECT leaf_hash FROM audit_records WHERE leaf_index >= ?1 AND leaf_index < ?2 \
                 ORDER BY leaf_index",
            )
        } else {
            self.conn.prepare_cached(
                "SELECT hash FROM tlog_nodes WHERE level = ?3 AND idx >= ?1 AND idx < ?2 ORDER BY idx",
            )
        }
        .map_err(err())?;
        let (start, end) = (size_i64(start), size_i64(end));
        let args = if level == 0 {
            params![start, end].to_vec()
        } else {
            params![start, end, level].to_vec()
        };
        let rows = stmt
            .query_map(args.as_slice(), |r| r.get::<_, Vec<u8>>(0))
            .map_err(err())?;
        rows.map(|h| hash_of(self.path, &h.map_err(err())?))
            .collect()
    }

    fn put_nodes(&mut self, level: u32, nodes: &[(u64, Hash)]) -> Result<(), AuditError> {
        let mut stmt = self
            .conn
            .prepare_cached("INSERT INTO tlog_nodes (level, idx, hash) VALUES (?1, ?2, ?3)")
            .map_err(sqlite_err(self.path, "storing nodes"))?;
        for (index, hash) in nodes {
            stmt.execute(params![level, size_i64(*index), &hash[..]])
                .map_err(sqlite_err(self.path, "storing nodes"))?;
        }
        Ok(())
    }

    fn nodes(&mut self, level: u32) -> Result<Vec<(u64, Hash)>, AuditError> {
        let err = || sqlite_err(self.path, "reading stored nodes");
        let mut stmt = self
            .conn
            .prepare("SELECT idx, hash FROM tlog_nodes WHERE level = ?1 ORDER BY idx")
            .map_err(err())?;
        let rows = stmt
            .query_map([level], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })
            .map_err(err())?;
        rows.map(|r| {
            let (i, h) = r.map_err(err())?;
            Ok((
                u64::try_from(i).unwrap_or(u64::MAX),
                hash_of(self.path, &h)?,
            ))
        })
        .collect()
    }

    fn count_records(&mut self) -> Result<u64, AuditError> {
        let total: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM audit_records", [], |r| r.get(0))
            .map_err(sqlite_err(self.path, "counting records"))?;
        Ok(u64::try_from(total).unwrap_or(0))
    }

    fn find_serial(
        &mut self,
        serial: &str,
    ) -> Result<Option<(AuditRecord, Option<u64>)>, AuditError> {
        let sql = format!(
            "SELECT {COLUMNS}, leaf_index FROM audit_records WHERE serial = ?1 ORDER BY id LIMIT 1"
        );
        let path = self.path;
        let found = self
            .conn
            .query_row(&sql, [serial], |row| {
                let index: Option<i64> = row.get(19)?;
                Ok((read_row(row, path), index))
            })
            .optional()
            .map_err(sqlite_err(path, "finding the record"))?;
        found
            .map(|(record, index)| Ok((record?, index.and_then(|i| u64::try_from(i).ok()))))
            .transpose()
    }

    fn each_leaf(
        &mut self,
        each: &mut dyn FnMut(LeafRow) -> Result<(), AuditError>,
    ) -> Result<(), AuditError> {
        let path = self.path;
        let err = || sqlite_err(path, "reading records");
        let sql = format!(
            "SELECT {COLUMNS}, leaf_index, leaf_hash, pruned FROM audit_records ORDER BY leaf_index"
        );
        let mut stmt = self.conn.prepare(&sql).map_err(err())?;
        let mut rows = stmt.query([]).map_err(err())?;
        while let Some(row) = rows.next().map_err(err())? {
            let index: Option<i64> = row.get(19).map_err(err())?;
            let pruned: i64 = row.get(21).map_err(err())?;
            each(LeafRow {
                record: read_row(row, path)?,
                index: index.and_then(|i| u64::try_from(i).ok()),
                stored_hash: row.get(20).map_err(err())?,
                pruned: pruned != 0,
            })?;
        }
        Ok(())
    }
}

/// Writes `frontier` back (inside the append's transaction).
pub(super) fn save_frontier(
    tx: &Transaction<'_>,
    path: &Path,
    frontier: &Frontier,
) -> Result<(), AuditError> {
    let blob: Vec<u8> = frontier.hashes().concat();
    tx.execute(
        "UPDATE tlog_state SET size = ?1, frontier = ?2 WHERE id = 1",
        params![size_i64(frontier.size()), blob],
    )
    .map_err(sqlite_err(path, "writing the log's frontier"))?;
    Ok(())
}

/// The latest checkpoint: (tree size, signed note).
pub(super) fn latest_checkpoint(
    conn: &Connection,
    path: &Path,
) -> Result<Option<(u64, String)>, AuditError> {
    let row: Option<(i64, String)> = conn
        .query_row(
            "SELECT size, note FROM tlog_checkpoints ORDER BY size DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sqlite_err(path, "reading the latest checkpoint"))?;
    Ok(row.map(|(size, note)| (u64::try_from(size).unwrap_or(0), note)))
}

/// Signs a checkpoint of the tree as it is now, if it grew since the last
/// one; the size signed.
pub(super) fn checkpoint(
    conn: &mut Connection,
    path: &Path,
    signer: &NoteSigner,
    origin: &str,
    now: OffsetDateTime,
) -> Result<Option<u64>, AuditError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_err(path, "signing a checkpoint"))?;
    let Some((size, note)) =
        tree::next_checkpoint(&mut SqliteRows { conn: &tx, path }, signer, origin)?
    else {
        return Ok(None);
    };
    tx.execute(
        "INSERT INTO tlog_checkpoints (size, time_unix_nanos, note) VALUES (?1, ?2, ?3)",
        params![
            size_i64(size),
            i64::try_from(now.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            note
        ],
    )
    .map_err(sqlite_err(path, "storing a checkpoint"))?;
    tx.commit()
        .map_err(sqlite_err(path, "storing a checkpoint"))?;
    Ok(Some(size))
}

/// Retention: empties the body of every record older than `before` that a
/// checkpoint already covers (every field but its time and outcome), and
/// marks it pruned; its leaf hash stays, so the tree, its checkpoints and
/// every other record's proof still verify. The records pruned.
pub(super) fn prune(
    conn: &mut Connection,
    path: &Path,
    before: OffsetDateTime,
) -> Result<u64, AuditError> {
    let Some((covered, _)) = latest_checkpoint(conn, path)? else {
        return Ok(0);
    };
    let before = i64::try_from(before.unix_timestamp_nanos()).unwrap_or(i64::MIN);
    let pruned = conn
        .execute(
            "UPDATE audit_records SET caller = NULL, requested_identity = NULL, \
             granted_identity = NULL, namespace = NULL, service_account = NULL, node = NULL, \
             pod_name = NULL, pod_uid = NULL, serial = NULL, public_key_sha256 = NULL, \
             not_before_unix_nanos = NULL, not_after_unix_nanos = NULL, \
             requested_ttl_secs = NULL, granted_ttl_secs = NULL, reason = NULL, peer = NULL, \
             pruned = 1 \
             WHERE time_unix_nanos < ?1 AND pruned = 0 AND leaf_index < ?2",
            params![before, size_i64(covered)],
        )
        .map_err(sqlite_err(path, "removing old records' bodies (retention)"))?;
    Ok(pruned as u64)
}

/// Schema 1 to 2: the log's tables, and a leaf for every record already
/// stored, in the order they were stored (inside the open's transaction).
pub(super) fn migrate_from_v1(tx: &Transaction<'_>, path: &Path) -> Result<(), AuditError> {
    tx.execute_batch(SCHEMA).map_err(sqlite_err(
        path,
        "migrating to schema 2 (the transparency log)",
    ))?;
    let mut frontier = Frontier::new();
    let leaves: Vec<(i64, Hash)> = {
        let sql = format!("SELECT {COLUMNS} FROM audit_records ORDER BY id");
        let mut stmt = tx
            .prepare(&sql)
            .map_err(sqlite_err(path, "migrating to schema 2"))?;
        let mut rows = stmt
            .query([])
            .map_err(sqlite_err(path, "migrating to schema 2"))?;
        let mut out = Vec::new();
        while let Some(row) = rows
            .next()
            .map_err(sqlite_err(path, "migrating to schema 2"))?
        {
            let id: i64 = row
                .get(0)
                .map_err(sqlite_err(path, "migrating to schema 2"))?;
            let record = read_row(row, path)?;
            out.push((id, merkle::leaf_hash(&record.leaf_bytes()?)));
        }
        out
    };
    {
        let mut update = tx
            .prepare("UPDATE audit_records SET leaf_index = ?1, leaf_hash = ?2 WHERE id = ?3")
            .map_err(sqlite_err(path, "migrating to schema 2"))?;
        for (id, hash) in leaves {
            let index = frontier
                .push(hash)
                .map_err(|e| tlog_err(path, e.to_string()))?;
            update
                .execute(params![size_i64(index), &hash[..], id])
                .map_err(sqlite_err(path, "migrating to schema 2"))?;
        }
    }
    save_frontier(tx, path, &frontier)?;
    tx.execute("UPDATE meshid_audit_schema SET version = 2", [])
        .map_err(sqlite_err(path, "migrating to schema 2"))?;
    Ok(())
}

/// Schema 2 to 3: the stored nodes, sealed for the leaves already stored
/// (inside the open's transaction).
pub(super) fn migrate_from_v2(tx: &Transaction<'_>, path: &Path) -> Result<(), AuditError> {
    tx.execute_batch(NODES_SCHEMA).map_err(sqlite_err(
        path,
        "migrating to schema 3 (the log's stored nodes)",
    ))?;
    let mut rows = SqliteRows { conn: tx, path };
    let size = rows.frontier()?.size();
    tree::seal_nodes(&mut rows, 0, size)?;
    tx.execute("UPDATE meshid_audit_schema SET version = 3", [])
        .map_err(sqlite_err(path, "migrating to schema 3"))?;
    Ok(())
}

#[cfg(test)]
mod tests;
