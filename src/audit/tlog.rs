//! The audit store's transparency log: every audit record is a leaf of an
//! append-only Merkle tree hashed as in RFC 9162, whose heads are published
//! as C2SP checkpoints in Ed25519 signed notes, so that anyone holding the
//! verifier key can check that a record is in the log (an inclusion proof)
//! and that the log only grew (a consistency proof between checkpoints).
//!
//! - [`merkle`]: RFC 9162 hashing, an incremental builder ([`merkle::Frontier`]),
//!   inclusion and consistency proofs and their verification;
//! - [`note`]: C2SP signed notes (Ed25519 keys, key ids, verifier keys) and
//!   the `tlog-checkpoint` body;
//! - [`tiles`]: C2SP `tlog-tiles` paths, for serving the tree read-only.
//!
//! Pure: no I/O, no clock; the store decides what a leaf is and keeps the
//! hashes.

pub mod merkle;
pub mod note;
pub mod tiles;
