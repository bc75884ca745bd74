//! The transparency log over a store, whichever store it is (SQLite or
//! PostgreSQL): what an append seals, proofs, checkpoints and the full
//! check, written once over [`TreeRows`], the handful of reads and writes
//! a store answers in its own SQL.
//!
//! What a store keeps:
//!
//! - each record's leaf: its index in the tree and its RFC 9162 leaf hash;
//! - the tree's right frontier (an append costs O(log n));
//! - *nodes*: the root of every complete perfect subtree of 256^L leaves,
//!   for L = 1, 2, 3… (C2SP `tlog-tiles`' tile height, 8 levels), stored
//!   when the append that completes it commits. Any perfect subtree is then
//!   the root of at most 128 stored hashes, so a proof reads a few thousand
//!   hashes at most, whatever the size of the tree;
//! - the signed checkpoints.
//!
//! Rules enforced: a record's leaf is its canonical JSON
//! ([`AuditRecord::leaf_bytes`]), so anyone can recompute it from what
//! `audit list -o json` shows; [`verify`] recomputes every leaf, every node
//! and the tree, checks every checkpoint's signature and root, and names the
//! first record that does not match; a store whose latest checkpoint does not
//! match its tree is refused for appending ([`check_latest`]).

use std::collections::HashMap;
use std::path::Path;

use crate::audit::record::AuditRecord;
use crate::audit::tlog::merkle::{self, Frontier, Hash, MerkleError};
use crate::audit::tlog::note::{Checkpoint, NoteSigner, NoteVerifier};
use crate::audit::AuditError;

/// Leaves under one stored node of level 1 (and level-L nodes under one of
/// level L + 1).
pub const NODE_WIDTH: u64 = 256;

/// One record read in leaf order, for [`verify`].
#[derive(Debug)]
pub struct LeafRow {
    /// The record (its body emptied if pruned).
    pub record: AuditRecord,
    /// Its stored leaf index.
    pub index: Option<u64>,
    /// Its stored leaf hash.
    pub stored_hash: Option<Vec<u8>>,
    /// Whether retention removed its body.
    pub pruned: bool,
}

/// What a store answers for the log; implemented over a connection or an
/// open transaction. Every method reads or writes the store's tables only.
pub trait TreeRows {
    /// The store, as errors name it (a path, or a DSN without password).
    fn name(&self) -> &Path;
    /// The tree's frontier as stored.
    fn frontier(&mut self) -> Result<Frontier, AuditError>;
    /// Every checkpoint, (tree size, signed note), smallest first.
    fn checkpoints(&mut self) -> Result<Vec<(u64, String)>, AuditError>;
    /// The latest checkpoint.
    fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, AuditError>;
    /// The stored hashes of `level` with indexes `[start, end)`, in order
    /// (level 0: the leaf hashes). Fewer than asked means some are missing.
    fn hashes(&mut self, level: u32, start: u64, end: u64) -> Result<Vec<Hash>, AuditError>;
    /// [`TreeRows::hashes`] for several ranges `(level, start, end)` at once
    /// (a store with round trips answers them in one query).
    fn hashes_in(&mut self, ranges: &[(u32, u64, u64)]) -> Result<Vec<Vec<Hash>>, AuditError> {
        ranges
            .iter()
            .map(|&(level, start, end)| self.hashes(level, start, end))
            .collect()
    }
    /// Stores nodes of `level` (index, hash).
    fn put_nodes(&mut self, level: u32, nodes: &[(u64, Hash)]) -> Result<(), AuditError>;
    /// Every stored node of `level`, (index, hash).
    fn nodes(&mut self, level: u32) -> Result<Vec<(u64, Hash)>, AuditError>;
    /// How many records the store holds.
    fn count_records(&mut self) -> Result<u64, AuditError>;
    /// The first record of certificate `serial`, with its leaf index.
    fn find_serial(
        &mut self,
        serial: &str,
    ) -> Result<Option<(AuditRecord, Option<u64>)>, AuditError>;
    /// Calls `each` with every record in leaf order.
    fn each_leaf(
        &mut self,
        each: &mut dyn FnMut(LeafRow) -> Result<(), AuditError>,
    ) -> Result<(), AuditError>;
}

/// An error about the log of store `name`.
pub fn tlog_err(name: &Path, detail: impl Into<String>) -> AuditError {
    AuditError::Tlog {
        path: name.to_owned(),
        detail: detail.into(),
    }
}

/// A stored hash (32 bytes).
pub fn hash_of(name: &Path, blob: &[u8]) -> Result<Hash, AuditError> {
    Hash::try_from(blob).map_err(|_| tlog_err(name, "a stored hash is not 32 bytes"))
}

/// The tree's frontier from its stored size and concatenated hashes.
pub fn frontier_from(name: &Path, size: i64, blob: &[u8]) -> Result<Frontier, AuditError> {
    let hashes = blob
        .chunks(32)
        .map(|c| hash_of(name, c))
        .collect::<Result<Vec<Hash>, _>>()?;
    let size = u64::try_from(size).map_err(|_| tlog_err(name, "negative tree size"))?;
    Frontier::from_parts(size, hashes)
        .map_err(|e| tlog_err(name, format!("the stored frontier is inconsistent: {e}")))
}

/// Leaves under one node of `level` (None past u64).
fn width(level: u32) -> Option<u64> {
    NODE_WIDTH.checked_pow(level)
}

/// After an append grew the tree from `old` to `new` leaves (in the
/// append's transaction, its leaves written): stores every node that the
/// append completed, level by level.
pub fn seal_nodes(rows: &mut dyn TreeRows, old: u64, new: u64) -> Result<(), AuditError> {
    let mut level = 1;
    while let Some(w) = width(level).filter(|w| *w <= new) {
        let (first, last) = (old / w, new / w);
        if first < last {
            let mut sealed = Vec::with_capacity((last - first) as usize);
            for node in first..last {
                let start = node * NODE_WIDTH;
                let below = rows.hashes(level - 1, start, start + NODE_WIDTH)?;
                if below.len() as u64 != NODE_WIDTH {
                    return Err(tlog_err(
                        rows.name(),
                        format!(
                            "sealing node {node} of level {level}: {} of the {NODE_WIDTH} hashes under it are stored",
                            below.len()
                        ),
                    ));
                }
                sealed.push((node, merkle::root(&below)));
            }
            rows.put_nodes(level, &sealed)?;
        }
        level += 1;
    }
    Ok(())
}

/// The stored range a perfect subtree of leaves `[start, end)` (a power of
/// two wide, aligned) is the root of: `(level, first, last)`, at the
/// highest level of stored nodes inside it.
fn stored_range(start: u64, end: u64) -> (u32, u64, u64) {
    let span = end - start;
    let mut level = 0;
    while width(level + 1).is_some_and(|w| w <= span) {
        level += 1;
    }
    let w = width(level).unwrap_or(1);
    (level, start / w, end / w)
}

/// The root of the perfect subtree of leaves `[start, end)`, from the
/// stored hashes of its [`stored_range`].
fn perfect_root(rows: &mut dyn TreeRows, start: u64, end: u64) -> Result<Hash, AuditError> {
    let (level, first, last) = stored_range(start, end);
    let hashes = rows.hashes(level, first, last)?;
    root_of(rows.name(), start, end, &hashes)
}

fn root_of(name: &Path, start: u64, end: u64, hashes: &[Hash]) -> Result<Hash, AuditError> {
    let (level, first, last) = stored_range(start, end);
    if hashes.len() as u64 != last - first {
        return Err(tlog_err(
            name,
            format!(
                "leaves {start}..{end}: {} of the {} level-{level} hashes are stored (a record or node was deleted)",
                hashes.len(),
                last - first
            ),
        ));
    }
    Ok(merkle::root(hashes))
}

/// The Merkle Tree Hash of leaves `[0, size)`, from stored nodes.
fn stored_root(rows: &mut dyn TreeRows, size: u64) -> Result<Hash, AuditError> {
    let mut pieces = Vec::new();
    let mut position = 0;
    while position < size {
        let w = 1u64 << (63 - (size - position).leading_zeros());
        pieces.push(perfect_root(rows, position, position + w)?);
        position += w;
    }
    // Right to left, as RFC 9162 splits: the last piece is the deepest.
    let mut acc = pieces.pop().unwrap_or_else(merkle::empty_root);
    while let Some(left) = pieces.pop() {
        acc = merkle::node_hash(&left, &acc);
    }
    Ok(acc)
}

/// Refuses a store whose latest checkpoint is not signed by `verifier` or
/// does not match the stored tree and frontier: appending to it would
/// extend a log that no longer proves anything. Reads O(log n) nodes and
/// counts the records.
pub fn check_latest(rows: &mut dyn TreeRows, verifier: &NoteVerifier) -> Result<(), AuditError> {
    let Some((size, note)) = rows.latest_checkpoint()? else {
        return Ok(());
    };
    let name = rows.name().to_owned();
    let signed = Checkpoint::open(&note, verifier).map_err(|e| {
        tlog_err(
            &name,
            format!("the latest checkpoint (size {size}) does not verify: {e}"),
        )
    })?;
    let frontier = rows.frontier()?;
    let records = rows.count_records()?;
    if signed.size != size || signed.size > frontier.size() || records < frontier.size() {
        return Err(tlog_err(
            &name,
            format!(
                "the latest checkpoint (size {size}) or the tree ({} leaves) covers more records \
                 than the store holds ({records}): records were removed; run `meshid audit verify`",
                frontier.size()
            ),
        ));
    }
    if stored_root(rows, signed.size)? != signed.root
        || stored_root(rows, frontier.size())? != frontier.root()
    {
        return Err(tlog_err(
            &name,
            format!(
                "the latest checkpoint (size {size}) does not match the stored tree: \
                 records were changed or removed; run `meshid audit verify` to find them"
            ),
        ));
    }
    Ok(())
}

/// The checkpoint to sign now, if the tree grew since the latest one:
/// (size, signed note).
pub fn next_checkpoint(
    rows: &mut dyn TreeRows,
    signer: &NoteSigner,
    origin: &str,
) -> Result<Option<(u64, String)>, AuditError> {
    let frontier = rows.frontier()?;
    let last = rows.latest_checkpoint()?.map(|(size, _)| size);
    if frontier.size() == 0 || last >= Some(frontier.size()) {
        return Ok(None);
    }
    let body = Checkpoint {
        origin: origin.to_owned(),
        size: frontier.size(),
        root: frontier.root(),
    };
    let note = body
        .sign(signer)
        .map_err(|e| tlog_err(rows.name(), format!("signing a checkpoint: {e}")))?;
    Ok(Some((frontier.size(), note)))
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
/// checkpoint, from stored nodes.
pub fn prove(rows: &mut dyn TreeRows, serial: &str) -> Result<InclusionProof, AuditError> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let name = rows.name().to_owned();
    let Some((record, index)) = rows.find_serial(serial)? else {
        return Err(tlog_err(
            &name,
            format!(
                "no record of serial {serial} (never issued here, or retention removed its body)"
            ),
        ));
    };
    let index = index
        .ok_or_else(|| tlog_err(&name, format!("the record of serial {serial} has no leaf")))?;
    let Some((size, note)) = rows.latest_checkpoint()? else {
        return Err(tlog_err(
            &name,
            "no checkpoint yet: the CA signs one within 10 s of a record",
        ));
    };
    if index >= size {
        return Err(tlog_err(
            &name,
            format!("the record of serial {serial} is not in a checkpoint yet (the CA signs one within 10 s)"),
        ));
    }
    // The subtrees a proof needs depend on (index, size) alone: list them,
    // read every stored hash under them at once, then build the proof.
    let mut wanted = Vec::new();
    merkle::inclusion_proof_with(index, size, &mut |start, end| {
        wanted.push((start, end));
        Ok([0; 32])
    })
    .map_err(|e| tlog_err(&name, format!("building the proof: {e}")))?;
    let ranges: Vec<(u32, u64, u64)> = wanted.iter().map(|&(s, e)| stored_range(s, e)).collect();
    let stored = rows.hashes_in(&ranges)?;
    let roots: HashMap<(u64, u64), Hash> = wanted
        .iter()
        .zip(&stored)
        .map(|(&(s, e), hashes)| Ok(((s, e), root_of(&name, s, e, hashes)?)))
        .collect::<Result<_, AuditError>>()?;
    let mut subtree = |start: u64, end: u64| -> Result<Hash, MerkleError> {
        roots
            .get(&(start, end))
            .copied()
            .ok_or_else(|| MerkleError::Store(format!("subtree {start}..{end} was not read")))
    };
    let proof = merkle::inclusion_proof_with(index, size, &mut subtree)
        .map_err(|e| tlog_err(&name, format!("building the proof: {e}")))?;
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

/// Stored nodes checked against the recomputed leaves, level by level.
struct NodeCheck {
    stored: Vec<HashMap<u64, Hash>>,
    /// Hashes of the level below a node still being filled, per level.
    pending: Vec<Vec<Hash>>,
    /// Nodes recomputed so far, per level (level 1 first).
    done: Vec<u64>,
}

impl NodeCheck {
    fn load(rows: &mut dyn TreeRows, size: u64) -> Result<Self, AuditError> {
        let mut stored = Vec::new();
        let mut level = 1;
        while width(level).is_some_and(|w| w <= size) {
            stored.push(rows.nodes(level)?.into_iter().collect());
            level += 1;
        }
        let levels = stored.len();
        Ok(Self {
            stored,
            pending: vec![Vec::new(); levels],
            done: vec![0; levels],
        })
    }

    /// Adds a leaf hash; checks every node it completes.
    fn push(&mut self, name: &Path, leaf: Hash) -> Result<(), AuditError> {
        let mut hash = leaf;
        for level in 0..self.stored.len() {
            self.pending[level].push(hash);
            if self.pending[level].len() as u64 != NODE_WIDTH {
                return Ok(());
            }
            hash = merkle::root(&self.pending[level]);
            self.pending[level].clear();
            let index = self.done[level];
            self.done[level] += 1;
            if self.stored[level].get(&index) != Some(&hash) {
                return Err(tlog_err(
                    name,
                    format!(
                        "the stored node {index} of level {} (leaves {}..{}) is missing or does not \
                         match the records under it: proofs through it would not verify",
                        level + 1,
                        index * width(level as u32 + 1).unwrap_or(0),
                        (index + 1) * width(level as u32 + 1).unwrap_or(0)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Nodes stored beyond those the records complete.
    fn check_extra(&self, name: &Path) -> Result<(), AuditError> {
        for (level, stored) in self.stored.iter().enumerate() {
            if stored.len() as u64 != self.done[level] {
                return Err(tlog_err(
                    name,
                    format!(
                        "{} nodes of level {} are stored, the records make {}",
                        stored.len(),
                        level + 1,
                        self.done[level]
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Recomputes every record's leaf, every stored node and the tree, in leaf
/// order, and checks every checkpoint's signature (by `verifier`) and root
/// at its size (consecutive checkpoints of one recomputed tree are
/// consistent). `progress(done, total)` is called every 10,000 records. The
/// error names the first record, node or checkpoint that does not match.
pub fn verify(
    rows: &mut dyn TreeRows,
    verifier: &NoteVerifier,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Verified, AuditError> {
    let name = rows.name().to_owned();
    let total = rows.count_records()?;
    let stored_frontier = rows.frontier()?;
    let mut nodes = NodeCheck::load(rows, stored_frontier.size().max(total))?;
    let mut checkpoints = rows.checkpoints()?;
    checkpoints.reverse();
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
                    &name,
                    format!("the checkpoint of size {size} does not verify: {e}"),
                )
            })?;
            if signed.size != *size || signed.root != frontier.root() {
                return Err(tlog_err(
                    &name,
                    format!("the checkpoint of size {size} does not match the records before it"),
                ));
            }
            checked += 1;
            checkpoints.pop();
        }
        Ok::<(), AuditError>(())
    };
    check_due(&frontier, &mut checkpoints)?;
    rows.each_leaf(&mut |row| {
        let name_record = || {
            format!(
                "record at {} (serial {})",
                row.record.time,
                row.record.serial.as_deref().unwrap_or("none")
            )
        };
        if row.index != Some(frontier.size()) {
            return Err(tlog_err(
                &name,
                format!(
                    "leaf {} is missing: the {} follows it (a record was deleted)",
                    frontier.size(),
                    name_record()
                ),
            ));
        }
        let hash = if row.pruned {
            // Retention removed the body: its stored hash stands for it,
            // checked against the checkpoints through the tree.
            pruned_count += 1;
            row.stored_hash
                .as_deref()
                .and_then(|h| Hash::try_from(h).ok())
                .ok_or_else(|| {
                    tlog_err(
                        &name,
                        format!("the pruned {} has no leaf hash", name_record()),
                    )
                })?
        } else {
            merkle::leaf_hash(&row.record.leaf_bytes()?)
        };
        if row.stored_hash.as_deref() != Some(&hash[..]) {
            return Err(tlog_err(
                &name,
                format!(
                    "the {} was changed after it was logged (leaf {})",
                    name_record(),
                    frontier.size()
                ),
            ));
        }
        frontier
            .push(hash)
            .map_err(|e| tlog_err(&name, e.to_string()))?;
        nodes.push(&name, hash)?;
        check_due(&frontier, &mut checkpoints)?;
        if frontier.size() % 10_000 == 0 {
            progress(frontier.size(), total);
        }
        Ok(())
    })?;
    progress(frontier.size(), total);
    if let Some((size, _)) = checkpoints.last() {
        return Err(tlog_err(
            &name,
            format!(
                "the checkpoint of size {size} covers records that are not in the store \
                 (the tree has {}): records were deleted",
                frontier.size()
            ),
        ));
    }
    nodes.check_extra(&name)?;
    // The frontier the CA appends to must be the recomputed tree's.
    if stored_frontier.size() != frontier.size() || stored_frontier.root() != frontier.root() {
        return Err(tlog_err(
            &name,
            format!(
                "the stored tree state (size {}) does not match the records (size {})",
                stored_frontier.size(),
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
