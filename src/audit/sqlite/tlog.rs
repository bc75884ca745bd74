//! The transparency log kept in the SQLite store: each record's leaf (its
//! index in the tree and its RFC 9162 leaf hash) beside it, the tree's
//! right frontier (so an append costs O(log n)), and the signed
//! checkpoints.
//!
//! Appends are ordered by the store's write lock: one writer transaction
//! at a time (`BEGIN IMMEDIATE`) reads the frontier, numbers its records
//! from the tree's size on, and writes the frontier back, so the tree is
//! one whatever the number of writers.
//!
//! Rules enforced: a record's leaf is its canonical JSON
//! ([`AuditRecord::leaf_bytes`](crate::audit::AuditRecord::leaf_bytes)), so anyone can recompute it from what
//! `audit list -o json` shows; [`verify`] recomputes every leaf and the
//! tree and checks every checkpoint's signature and root, and names the
//! first record that does not match; a store whose latest checkpoint does
//! not match its tree is refused for appending ([`check_latest`]).

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use time::OffsetDateTime;

use super::{read_row, sqlite_err, COLUMNS};
use crate::audit::tlog::merkle::{self, Frontier, Hash, MerkleError};
use crate::audit::tlog::note::{Checkpoint, NoteSigner, NoteVerifier};
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

fn tlog_err(path: &std::path::Path, detail: impl Into<String>) -> AuditError {
    AuditError::Tlog {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

/// The tree's frontier as stored.
pub(super) fn load_frontier(
    conn: &Connection,
    path: &std::path::Path,
) -> Result<Frontier, AuditError> {
    let (size, blob): (i64, Vec<u8>) = conn
        .query_row(
            "SELECT size, frontier FROM tlog_state WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(sqlite_err(path, "reading the log's frontier"))?;
    let hashes = blob
        .chunks(32)
        .map(|c| {
            <Hash>::try_from(c).map_err(|_| tlog_err(path, "the stored frontier is truncated"))
        })
        .collect::<Result<Vec<Hash>, _>>()?;
    let size = u64::try_from(size).map_err(|_| tlog_err(path, "negative tree size"))?;
    Frontier::from_parts(size, hashes)
        .map_err(|e| tlog_err(path, format!("the stored frontier is inconsistent: {e}")))
}

/// Writes `frontier` back (inside the append's transaction).
pub(super) fn save_frontier(
    tx: &Transaction<'_>,
    path: &std::path::Path,
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

fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// The latest checkpoint: (tree size, signed note).
pub(super) fn latest_checkpoint(
    conn: &Connection,
    path: &std::path::Path,
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
    path: &std::path::Path,
    signer: &NoteSigner,
    origin: &str,
    now: OffsetDateTime,
) -> Result<Option<u64>, AuditError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(sqlite_err(path, "signing a checkpoint"))?;
    let frontier = load_frontier(&tx, path)?;
    let last = latest_checkpoint(&tx, path)?.map(|(size, _)| size);
    if frontier.size() == 0 || last == Some(frontier.size()) {
        return Ok(None);
    }
    let body = Checkpoint {
        origin: origin.to_owned(),
        size: frontier.size(),
        root: frontier.root(),
    };
    let note = body
        .sign(signer)
        .map_err(|e| tlog_err(path, format!("signing a checkpoint: {e}")))?;
    tx.execute(
        "INSERT INTO tlog_checkpoints (size, time_unix_nanos, note) VALUES (?1, ?2, ?3)",
        params![
            size_i64(frontier.size()),
            i64::try_from(now.unix_timestamp_nanos()).unwrap_or(i64::MAX),
            note
        ],
    )
    .map_err(sqlite_err(path, "storing a checkpoint"))?;
    tx.commit()
        .map_err(sqlite_err(path, "storing a checkpoint"))?;
    Ok(Some(frontier.size()))
}

/// Retention: empties the body of every record older than `before` that a
/// checkpoint already covers (every field but its time and outcome), and
/// marks it pruned; its leaf hash stays, so the tree, its checkpoints and
/// every other record's proof still verify. The records pruned.
pub(super) fn prune(
    conn: &mut Connection,
    path: &std::path::Path,
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

/// The root of leaves `[start, end)` from the stored leaf hashes.
fn stored_root(
    conn: &Connection,
    path: &std::path::Path,
    start: u64,
    end: u64,
) -> Result<Hash, AuditError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT leaf_hash FROM audit_records WHERE leaf_index >= ?1 AND leaf_index < ?2 \
             ORDER BY leaf_index",
        )
        .map_err(sqlite_err(path, "reading leaf hashes"))?;
    let hashes = stmt
        .query_map(params![size_i64(start), size_i64(end)], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .map_err(sqlite_err(path, "reading leaf hashes"))?
        .map(|h| {
            let h = h.map_err(sqlite_err(path, "reading leaf hashes"))?;
            Hash::try_from(h.as_slice())
                .map_err(|_| tlog_err(path, "a stored leaf hash is not 32 bytes"))
        })
        .collect::<Result<Vec<Hash>, _>>()?;
    if hashes.len() as u64 != end - start {
        return Err(tlog_err(
            path,
            format!(
                "leaves {start}..{end}: {} stored, {} expected (a record was deleted)",
                hashes.len(),
                end - start
            ),
        ));
    }
    Ok(merkle::root(&hashes))
}

/// Refuses a store whose latest checkpoint is not signed by `verifier` or
/// does not match the stored tree: appending to it would extend a log that
/// no longer proves anything. Costs one pass over the leaf hashes.
pub(super) fn check_latest(
    conn: &Connection,
    path: &std::path::Path,
    verifier: &NoteVerifier,
) -> Result<(), AuditError> {
    let Some((size, note)) = latest_checkpoint(conn, path)? else {
        return Ok(());
    };
    let signed = Checkpoint::open(&note, verifier).map_err(|e| {
        tlog_err(
            path,
            format!("the latest checkpoint (size {size}) does not verify: {e}"),
        )
    })?;
    let stored = load_frontier(conn, path)?.size();
    if signed.size != size || signed.size > stored {
        return Err(tlog_err(
            path,
            format!(
                "the latest checkpoint (size {size}) covers more records than the store \
                 holds ({stored}): records were removed; run `meshid audit verify`"
            ),
        ));
    }
    let root = stored_root(conn, path, 0, signed.size)?;
    if root != signed.root {
        return Err(tlog_err(
            path,
            format!(
                "the latest checkpoint (size {size}) does not match the stored tree: \
                 records were changed or removed; run `meshid audit verify` to find them"
            ),
        ));
    }
    Ok(())
}

/// An inclusion proof of one record, as `meshid audit prove` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InclusionProof {
    /// The record's index in the tree.
    pub leaf_index: u64,
    /// The size of the tree the proof is for (the latest checkpoint's).
    pub tree_size: u64,
    /// The leaf's bytes (the record's canonical JSON), base64.
    pub leaf: String,
    /// The proof's hashes, base64, from the leaf up (RFC 9162 2.1.3).
    pub proof: Vec<String>,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: String,
}

/// An inclusion proof of the record of certificate `serial` in the latest
/// checkpoint.
pub(super) fn prove(
    conn: &Connection,
    path: &std::path::Path,
    serial: &str,
) -> Result<InclusionProof, AuditError> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let sql = format!(
        "SELECT {COLUMNS}, leaf_index FROM audit_records WHERE serial = ?1 ORDER BY id LIMIT 1"
    );
    let found = conn
        .query_row(&sql, [serial], |row| {
            let index: Option<i64> = row.get(19)?;
            Ok((read_row(row, path), index))
        })
        .optional()
        .map_err(sqlite_err(path, "finding the record"))?;
    let Some((record, index)) = found else {
        return Err(tlog_err(
            path,
            format!(
                "no record of serial {serial} (never issued here, or retention removed its body)"
            ),
        ));
    };
    let record = record?;
    let index = index
        .and_then(|i| u64::try_from(i).ok())
        .ok_or_else(|| tlog_err(path, format!("the record of serial {serial} has no leaf")))?;
    let Some((size, note)) = latest_checkpoint(conn, path)? else {
        return Err(tlog_err(
            path,
            "no checkpoint yet: the CA signs one within 10 s of a record",
        ));
    };
    if index >= size {
        return Err(tlog_err(
            path,
            format!("the record of serial {serial} is not in a checkpoint yet (the CA signs one within 10 s)"),
        ));
    }
    let mut subtree = |start: u64, end: u64| -> Result<Hash, MerkleError> {
        stored_root(conn, path, start, end).map_err(|e| MerkleError::Store(e.to_string()))
    };
    let proof = merkle::inclusion_proof_with(index, size, &mut subtree)
        .map_err(|e| tlog_err(path, format!("building the proof: {e}")))?;
    Ok(InclusionProof {
        leaf_index: index,
        tree_size: size,
        leaf: b64(&record.leaf_bytes()?),
        proof: proof.iter().map(|h| b64(h)).collect(),
        checkpoint: note,
    })
}

/// What [`verify`] checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records checked (leaves recomputed).
    pub records: u64,
    /// Checkpoints whose signature and root were checked.
    pub checkpoints: u64,
    /// Records whose body retention removed (their stored leaf hash was
    /// used, checked through the tree).
    pub pruned: u64,
}

/// Recomputes every record's leaf and the tree, in leaf order, and checks
/// every checkpoint's signature (by `verifier`) and root at its size
/// (consecutive checkpoints of one recomputed tree are consistent).
/// `progress(done, total)` is called every 10,000 records. The error names
/// the first record, or checkpoint, that does not match.
pub(super) fn verify(
    conn: &Connection,
    path: &std::path::Path,
    verifier: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified, AuditError> {
    let total: i64 = conn
        .query_row("SELECT COUNT(*) FROM audit_records", [], |r| r.get(0))
        .map_err(sqlite_err(path, "counting records"))?;
    let total = u64::try_from(total).unwrap_or(0);
    let mut checkpoints: Vec<(u64, String)> = {
        let mut stmt = conn
            .prepare("SELECT size, note FROM tlog_checkpoints ORDER BY size DESC")
            .map_err(sqlite_err(path, "reading checkpoints"))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(sqlite_err(path, "reading checkpoints"))?;
        rows.map(|r| {
            r.map(|(s, n)| (u64::try_from(s).unwrap_or(0), n))
                .map_err(sqlite_err(path, "reading checkpoints"))
        })
        .collect::<Result<_, _>>()?
    };
    let mut frontier = Frontier::new();
    let mut checked = 0;
    let mut pruned_count = 0;
    let mut check_due = |frontier: &Frontier, checkpoints: &mut Vec<(u64, String)>| {
        while let Some((size, note)) = checkpoints.last() {
            if *size != frontier.size() {
                break;
            }
            let signed = Checkpoint::open(note, verifier).map_err(|e| {
                tlog_err(
                    path,
                    format!("the checkpoint of size {size} does not verify: {e}"),
                )
            })?;
            if signed.size != *size || signed.root != frontier.root() {
                return Err(tlog_err(
                    path,
                    format!("the checkpoint of size {size} does not match the records before it"),
                ));
            }
            checked += 1;
            checkpoints.pop();
        }
        Ok::<(), AuditError>(())
    };
    check_due(&frontier, &mut checkpoints)?;
    let sql = format!(
        "SELECT {COLUMNS}, leaf_index, leaf_hash, pruned FROM audit_records ORDER BY leaf_index"
    );
    let mut stmt = conn
        .prepare(&sql)
        .map_err(sqlite_err(path, "reading records"))?;
    let mut rows = stmt
        .query([])
        .map_err(sqlite_err(path, "reading records"))?;
    while let Some(row) = rows.next().map_err(sqlite_err(path, "reading records"))? {
        let record = read_row(row, path)?;
        let index: Option<i64> = row.get(19).map_err(sqlite_err(path, "reading records"))?;
        let stored: Option<Vec<u8>> = row.get(20).map_err(sqlite_err(path, "reading records"))?;
        let name = || {
            format!(
                "record at {} (serial {})",
                record.time,
                record.serial.as_deref().unwrap_or("none")
            )
        };
        if index.and_then(|i| u64::try_from(i).ok()) != Some(frontier.size()) {
            return Err(tlog_err(
                path,
                format!(
                    "leaf {} is missing: the {} follows it (a record was deleted)",
                    frontier.size(),
                    name()
                ),
            ));
        }
        let pruned: i64 = row.get(21).map_err(sqlite_err(path, "reading records"))?;
        let hash = if pruned != 0 {
            // Retention removed the body: its stored hash stands for it,
            // checked against the checkpoints through the tree.
            pruned_count += 1;
            stored
                .as_deref()
                .and_then(|h| Hash::try_from(h).ok())
                .ok_or_else(|| tlog_err(path, format!("the pruned {} has no leaf hash", name())))?
        } else {
            merkle::leaf_hash(&record.leaf_bytes()?)
        };
        if stored.as_deref() != Some(&hash[..]) {
            return Err(tlog_err(
                path,
                format!(
                    "the {} was changed after it was logged (leaf {})",
                    name(),
                    frontier.size()
                ),
            ));
        }
        frontier
            .push(hash)
            .map_err(|e| tlog_err(path, e.to_string()))?;
        check_due(&frontier, &mut checkpoints)?;
        if frontier.size() % 10_000 == 0 {
            progress(frontier.size(), total);
        }
    }
    progress(frontier.size(), total);
    if let Some((size, _)) = checkpoints.last() {
        return Err(tlog_err(
            path,
            format!(
                "the checkpoint of size {size} covers records that are not in the store \
                 (the tree has {}): records were deleted",
                frontier.size()
            ),
        ));
    }
    // Checked leaf hashes of the stored tree against the frontier the CA appends to.
    let stored = load_frontier(conn, path)?;
    if stored.size() != frontier.size() || stored.root() != frontier.root() {
        return Err(tlog_err(
            path,
            format!(
                "the stored tree state (size {}) does not match the records (size {})",
                stored.size(),
                frontier.size()
            ),
        ));
    }
    Ok(Verified {
        records: frontier.size(),
        checkpoints: checked,
        pruned: pruned_count,
    })
}

/// Schema 1 to 2: the log's tables, and a leaf for every record already
/// stored, in the order they were stored (inside the open's transaction).
pub(super) fn migrate_from_v1(
    tx: &Transaction<'_>,
    path: &std::path::Path,
) -> Result<(), AuditError> {
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

#[cfg(test)]
mod tests;
