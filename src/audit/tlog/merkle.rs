//! Merkle tree math of RFC 9162 (Certificate Transparency 2.0), section 2.1, over
//! SHA-256: tree hashes, an incremental builder, and inclusion and consistency
//! proofs with their verification.
//!
//! - A *leaf hash* is `SHA-256(0x00 || leaf)` ([`leaf_hash`]); an interior node is
//!   `SHA-256(0x01 || left || right)` ([`node_hash`]).
//! - The Merkle Tree Hash (MTH) of `n > 1` leaves splits them at `k`, the largest
//!   power of two smaller than `n`: `MTH(D[n]) = node(MTH(D[0:k]), MTH(D[k:n]))`. The
//!   MTH of one leaf is its leaf hash, and of no leaves `SHA-256("")`
//!   ([`empty_root`]).
//!
//! Everything here works on *leaf hashes*, never on the leaves themselves: a log
//! hashes each entry once with [`leaf_hash`] when it is appended.
//!
//! Proofs come in two flavours: over a slice of every leaf hash
//! ([`inclusion_proof`], [`consistency_proof`]), or through a callback that returns
//! the hash of one perfect subtree ([`inclusion_proof_with`],
//! [`consistency_proof_with`]), so a store that keeps subtree hashes (tiles) answers
//! in `O(log n)` look-ups without loading the leaves. [`Frontier`] keeps the
//! `O(log n)` state needed to append leaves and compute the current root.
//!
//! Pure computation: no I/O, no clock, no randomness.

use ring::digest;

/// A SHA-256 hash: a leaf hash, an interior node hash, or a tree root.
pub type Hash = [u8; 32];

/// Prefix of a leaf hash's input (RFC 9162, 2.1.1).
const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an interior node hash's input (RFC 9162, 2.1.1).
const NODE_PREFIX: u8 = 0x01;

/// What can go wrong computing or checking a Merkle proof.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// A leaf index at or past the end of the tree.
    #[error("leaf index {index} is out of range for a tree of size {size}")]
    IndexOutOfRange {
        /// The index asked for.
        index: u64,
        /// The tree size it was asked for.
        size: u64,
    },

    /// A proof with more or fewer hashes than a proof for these indexes and sizes has.
    #[error("the proof has {actual} hashes, but a proof for these tree sizes has {expected}")]
    ProofLength {
        /// How many hashes a proof for these parameters has.
        expected: usize,
        /// How many the proof had.
        actual: usize,
    },

    /// The proof is well formed but does not lead to the expected root(s).
    #[error("the proof does not lead to the expected root hash")]
    RootMismatch,

    /// A consistency proof between an old tree larger than the new one.
    #[error("bad tree sizes: the old size {old_size} is larger than the new size {new_size}")]
    BadSizes {
        /// The old tree size.
        old_size: u64,
        /// The new tree size.
        new_size: u64,
    },

    /// [`Frontier::from_parts`] was given a number of hashes that does not fit the size.
    #[error("a frontier of {size} leaves has {expected} hashes, not {actual}")]
    BadFrontier {
        /// The tree size given.
        size: u64,
        /// How many hashes a frontier of that size has (the number of one bits in it).
        expected: u32,
        /// How many hashes were given.
        actual: usize,
    },

    /// A tree of `u64::MAX` leaves cannot take one more.
    #[error("the tree is full: it cannot hold more than u64::MAX leaves")]
    TreeFull,

    /// The subtree-hash callback of a `*_with` function failed.
    #[error("looking up a subtree hash failed: {0}")]
    Store(String),
}

/// Finishes a SHA-256 computation into a [`Hash`].
fn finish(context: digest::Context) -> Hash {
    let digest = context.finish();
    let mut hash = [0u8; 32];
    // SHA-256 digests are always 32 bytes.
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// The leaf hash of one log entry: `SHA-256(0x00 || leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&[LEAF_PREFIX]);
    context.update(leaf);
    finish(context)
}

/// The hash of an interior node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&[NODE_PREFIX]);
    context.update(left);
    context.update(right);
    finish(context)
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    finish(digest::Context::new(&digest::SHA256))
}

/// The largest power of two strictly smaller than `n`: RFC 9162's `k`. `n` must be
/// at least 2.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2, "no split point below 2");
    1 << (63 - (n - 1).leading_zeros())
}

/// [`split_point`] for slice lengths.
fn split_point_usize(n: usize) -> usize {
    debug_assert!(n >= 2, "no split point below 2");
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The largest power of two not larger than `n`. `n` must be at least 1.
fn largest_power_of_two_at_most(n: u64) -> u64 {
    debug_assert!(n >= 1, "no power of two at most 0");
    1 << (63 - n.leading_zeros())
}

/// The Merkle Tree Hash of a list of *leaf hashes* (the inputs have already been
/// through [`leaf_hash`]). The root of no leaves is [`empty_root`].
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves {
        [] => empty_root(),
        [only] => *only,
        _ => {
            let (left, right) = leaves.split_at(split_point_usize(leaves.len()));
            node_hash(&root(left), &root(right))
        }
    }
}

/// Folds the roots of consecutive perfect subtrees, largest (leftmost) first, into
/// the hash of the range they cover: `node(h0, node(h1, … node(hn-1, hn)))`. This
/// is the MTH of the range when the subtrees are its binary decomposition (each
/// one smaller than the one before), because the MTH splits off the largest power
/// of two first. `None` for no hashes.
fn fold_decomposition(hashes: &[Hash]) -> Option<Hash> {
    let mut from_the_right = hashes.iter().rev();
    let last = *from_the_right.next()?;
    Some(from_the_right.fold(last, |right, left| node_hash(left, &right)))
}

/// An incremental Merkle tree builder: the right frontier (also called a compact
/// range) of a tree, the roots of the perfect subtrees its leaves decompose into.
///
/// A tree of `size` leaves splits into one perfect subtree per one bit of `size`,
/// largest first: 13 leaves (`0b1101`) are subtrees of 8, 4 and 1 leaves. The
/// frontier keeps just their roots, so it needs `size.count_ones()` hashes (at most
/// 64) however large the tree, and gives the root of the whole tree at any size.
///
/// To persist it, store [`Frontier::size`] and [`Frontier::hashes`], and rebuild it
/// with [`Frontier::from_parts`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    /// Number of leaves appended.
    size: u64,
    /// Roots of the perfect subtrees, largest (leftmost) first.
    hashes: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a frontier from its persisted parts: the tree size and the roots of
    /// its perfect subtrees, largest first, exactly as [`Frontier::hashes`] returned
    /// them.
    ///
    /// # Errors
    ///
    /// [`MerkleError::BadFrontier`] if there are not exactly `size.count_ones()`
    /// hashes. The hashes themselves cannot be checked here.
    pub fn from_parts(size: u64, hashes: Vec<Hash>) -> Result<Self, MerkleError> {
        let expected = size.count_ones();
        if hashes.len() != expected as usize {
            return Err(MerkleError::BadFrontier {
                size,
                expected,
                actual: hashes.len(),
            });
        }
        Ok(Self { size, hashes })
    }

    /// Number of leaves in the tree.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The roots of the tree's perfect subtrees, largest (leftmost) first: what to
    /// persist, with [`Frontier::size`], to rebuild the frontier later.
    pub fn hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// Appends one leaf, given by its [`leaf_hash`], and returns its index (the size
    /// of the tree before it). Costs at most 64 node hashes.
    ///
    /// # Errors
    ///
    /// [`MerkleError::TreeFull`] if the tree already has `u64::MAX` leaves; the
    /// frontier is then unchanged.
    pub fn push(&mut self, leaf_hash: Hash) -> Result<u64, MerkleError> {
        let index = self.size;
        let size = index.checked_add(1).ok_or(MerkleError::TreeFull)?;
        // Each trailing one bit of the old size is a perfect subtree, smallest last,
        // that the new leaf completes into one twice as large: merge them all into
        // the new leaf, right to left.
        let merges = index.trailing_ones() as usize;
        let keep = self.hashes.len().saturating_sub(merges);
        let completed = self.hashes.split_off(keep);
        let merged = completed
            .iter()
            .rev()
            .fold(leaf_hash, |right, left| node_hash(left, &right));
        self.hashes.push(merged);
        self.size = size;
        Ok(index)
    }

    /// The root (Merkle Tree Hash) of the tree as it is now: [`empty_root`] when
    /// empty, equal to [`root`] of every leaf hash pushed so far.
    pub fn root(&self) -> Hash {
        fold_decomposition(&self.hashes).unwrap_or_else(empty_root)
    }
}

/// The hash of leaves `[start, end)`, `start < end`, from perfect subtree hashes.
///
/// Proofs need hashes of two kinds of ranges: perfect subtrees, and ranges that end
/// at the right edge of the tree, whose width is not a power of two. The latter are
/// split into their binary decomposition (each piece aligned on its own width, for
/// every range that a proof needs, because the range starts on a multiple of a power
/// of two at least as large as itself), so `subtree` only ever sees perfect subtrees.
fn range_hash(
    start: u64,
    end: u64,
    subtree: &mut dyn FnMut(u64, u64) -> Result<Hash, MerkleError>,
) -> Result<Hash, MerkleError> {
    let mut pieces = Vec::new();
    let mut position = start;
    while position < end {
        let width = largest_power_of_two_at_most(end - position);
        debug_assert_eq!(position % width, 0, "unaligned subtree {position}+{width}");
        pieces.push(subtree(position, position + width)?);
        position += width;
    }
    fold_decomposition(&pieces)
        .ok_or_else(|| MerkleError::Store(format!("empty leaf range {start}..{end}")))
}

/// The leaf ranges `[start, end)` whose hashes make up an inclusion proof (RFC 9162,
/// 2.1.3.1, `PATH(m, D[n])`), in proof order: the sibling of the leaf first, the
/// sibling of the root's child last. `index < size`.
fn inclusion_ranges(index: u64, size: u64) -> Vec<(u64, u64)> {
    // Walk down from the root, taking the sibling of the side the leaf is on;
    // PATH lists them from the bottom up.
    let mut ranges = Vec::new();
    let (mut low, mut high) = (0, size);
    while high - low > 1 {
        let middle = low + split_point(high - low);
        if index < middle {
            ranges.push((middle, high));
            high = middle;
        } else {
            ranges.push((low, middle));
            low = middle;
        }
    }
    ranges.reverse();
    ranges
}

/// The leaf ranges `[start, end)` whose hashes make up a consistency proof (RFC 9162,
/// 2.1.4.1, `PROOF(m, D[n])`), in proof order. `0 < old_size < new_size`.
fn consistency_ranges(old_size: u64, new_size: u64) -> Vec<(u64, u64)> {
    // SUBPROOF(m, D[low:high], known), walked down from the root: `m` counts the old
    // tree's leaves within [low, high), and `known` says whether [low, low + m) is
    // the whole old tree, whose root the verifier already has.
    let mut ranges = Vec::new();
    let (mut low, mut high) = (0, new_size);
    let mut m = old_size;
    let mut known = true;
    loop {
        if m == high - low {
            if !known {
                ranges.push((low, high));
            }
            break;
        }
        let k = split_point(high - low);
        if m <= k {
            ranges.push((low + k, high));
            high = low + k;
        } else {
            ranges.push((low, low + k));
            low += k;
            m -= k;
            known = false;
        }
    }
    ranges.reverse();
    ranges
}

/// A subtree callback over a slice of every leaf hash.
fn slice_subtrees(leaves: &[Hash]) -> impl FnMut(u64, u64) -> Result<Hash, MerkleError> + '_ {
    move |start, end| {
        let range = usize::try_from(start).ok().zip(usize::try_from(end).ok());
        range
            .and_then(|(start, end)| leaves.get(start..end))
            .map(root)
            .ok_or_else(|| {
                MerkleError::Store(format!(
                    "leaves {start}..{end} are not in a tree of {} leaves",
                    leaves.len()
                ))
            })
    }
}

/// The inclusion proof of leaf `index` in the tree of these leaf hashes (RFC 9162,
/// 2.1.3.1): the hashes a verifier combines with the leaf hash to rebuild the root.
///
/// # Errors
///
/// [`MerkleError::IndexOutOfRange`] if `index >= leaves.len()`.
pub fn inclusion_proof(index: u64, leaves: &[Hash]) -> Result<Vec<Hash>, MerkleError> {
    inclusion_proof_with(index, leaves.len() as u64, &mut slice_subtrees(leaves))
}

/// [`inclusion_proof`] for a tree of `size` leaves that is not in memory:
/// `subtree(start, end)` returns the Merkle Tree Hash of leaves `[start, end)`.
///
/// Every call asks for a *perfect* subtree: `end - start` is a power of two,
/// `start` is a multiple of it, and `end <= size` (a single leaf is `(i, i + 1)`,
/// whose MTH is the leaf hash). A tiled store answers each call from one stored
/// hash. The proof also needs the hash of at most one range that ends at the right
/// edge of the tree and is not a power of two wide; this function builds it from
/// the perfect subtrees that make it up, so at most about `2 * log2(size)` calls are
/// made in all.
///
/// # Errors
///
/// [`MerkleError::IndexOutOfRange`] if `index >= size`, or the first error the
/// callback returns.
pub fn inclusion_proof_with(
    index: u64,
    size: u64,
    subtree: &mut dyn FnMut(u64, u64) -> Result<Hash, MerkleError>,
) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    inclusion_ranges(index, size)
        .into_iter()
        .map(|(start, end)| range_hash(start, end, subtree))
        .collect()
}

/// Checks an inclusion proof with the algorithm of RFC 9162, 2.1.3.2: that the leaf
/// with hash `leaf_hash` is at `index` in the tree of `size` leaves whose root is
/// `root`.
///
/// # Errors
///
/// [`MerkleError::IndexOutOfRange`] if `index >= size`,
/// [`MerkleError::ProofLength`] if the proof does not have the length a proof for
/// `index` and `size` has, and [`MerkleError::RootMismatch`] if it does not lead to
/// `root`.
pub fn verify_inclusion(
    index: u64,
    size: u64,
    leaf_hash: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_ranges(index, size).len();
    let length_error = MerkleError::ProofLength {
        expected,
        actual: proof.len(),
    };
    if proof.len() != expected {
        return Err(length_error);
    }

    // RFC 9162, 2.1.3.2, steps 2 to 5 (`fn` and `sn` are `f_n` and `s_n` here).
    let mut f_n = index;
    let mut s_n = size - 1;
    let mut r = *leaf_hash;
    for p in proof {
        if s_n == 0 {
            return Err(length_error);
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    if s_n != 0 {
        return Err(length_error);
    }
    if r != *root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// The consistency proof between the tree of the first `old_size` of these leaf
/// hashes and the tree of all of them (RFC 9162, 2.1.4.1): what a verifier needs to
/// check that the new tree only appended to the old one.
///
/// The proof is empty when `old_size` is 0 or equal to the number of leaves: there
/// is nothing to prove.
///
/// # Errors
///
/// [`MerkleError::BadSizes`] if `old_size > leaves.len()`.
pub fn consistency_proof(old_size: u64, leaves: &[Hash]) -> Result<Vec<Hash>, MerkleError> {
    consistency_proof_with(old_size, leaves.len() as u64, &mut slice_subtrees(leaves))
}

/// [`consistency_proof`] for a tree of `new_size` leaves that is not in memory:
/// `subtree(start, end)` returns the Merkle Tree Hash of leaves `[start, end)`.
///
/// As for [`inclusion_proof_with`], every call asks for a perfect subtree
/// (`end - start` a power of two, `start` a multiple of it, `end <= new_size`); the
/// one range ending at the right edge of the new tree that a proof may need is
/// built here from the perfect subtrees that make it up.
///
/// # Errors
///
/// [`MerkleError::BadSizes`] if `old_size > new_size`, or the first error the
/// callback returns.
pub fn consistency_proof_with(
    old_size: u64,
    new_size: u64,
    subtree: &mut dyn FnMut(u64, u64) -> Result<Hash, MerkleError>,
) -> Result<Vec<Hash>, MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::BadSizes { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    consistency_ranges(old_size, new_size)
        .into_iter()
        .map(|(start, end)| range_hash(start, end, subtree))
        .collect()
}

/// Checks a consistency proof with the algorithm of RFC 9162, 2.1.4.2: that the
/// tree of `new_size` leaves with root `new_root` extends the tree of `old_size`
/// leaves with root `old_root`.
///
/// The RFC's algorithm covers `0 < old_size < new_size`. The other cases need an
/// empty proof: equal sizes are consistent when the roots are equal, and the empty
/// tree (whose root must be [`empty_root`]) is consistent with every tree.
///
/// # Errors
///
/// [`MerkleError::BadSizes`] if `old_size > new_size`, [`MerkleError::ProofLength`]
/// if the proof does not have the length a proof for these sizes has, and
/// [`MerkleError::RootMismatch`] if it does not lead to both roots.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old_size > new_size {
        return Err(MerkleError::BadSizes { old_size, new_size });
    }
    if old_size == 0 || old_size == new_size {
        if !proof.is_empty() {
            return Err(MerkleError::ProofLength {
                expected: 0,
                actual: proof.len(),
            });
        }
        let consistent = if old_size == 0 {
            *old_root == empty_root()
        } else {
            old_root == new_root
        };
        return if consistent {
            Ok(())
        } else {
            Err(MerkleError::RootMismatch)
        };
    }

    let expected = consistency_ranges(old_size, new_size).len();
    let length_error = MerkleError::ProofLength {
        expected,
        actual: proof.len(),
    };
    if proof.len() != expected {
        return Err(length_error);
    }

    // RFC 9162, 2.1.4.2. Step 2: when the old tree is a perfect subtree of the new
    // one, the proof leaves out its root, which the verifier has.
    let (first, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (*first, rest),
            None => return Err(length_error),
        }
    };
    // Steps 3 and 4.
    let mut f_n = old_size - 1;
    let mut s_n = new_size - 1;
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    // Steps 5 and 6.
    let mut f_r = first;
    let mut s_r = first;
    for c in rest {
        if s_n == 0 {
            return Err(length_error);
        }
        if f_n & 1 == 1 || f_n == s_n {
            f_r = node_hash(c, &f_r);
            s_r = node_hash(c, &s_r);
            while f_n & 1 == 0 && f_n != 0 {
                f_n >>= 1;
                s_n >>= 1;
            }
        } else {
            s_r = node_hash(&s_r, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    // Step 7.
    if s_n != 0 {
        return Err(length_error);
    }
    if f_r != *old_root || s_r != *new_root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha256(parts: &[&[u8]]) -> Hash {
        let mut context = digest::Context::new(&digest::SHA256);
        for part in parts {
            context.update(part);
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(context.finish().as_ref());
        hash
    }

    fn from_hex(hex: &str) -> Hash {
        assert_eq!(hex.len(), 64, "{hex}");
        let mut hash = [0u8; 32];
        for (i, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        hash
    }

    fn to_hex(hash: &Hash) -> String {
        let mut hex = String::with_capacity(64);
        for byte in hash {
            hex += &format!("{byte:02x}");
        }
        hex
    }

    /// The largest power of two smaller than `n`, the slow and obvious way.
    fn k_for(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// RFC 9162's MTH, written from the definition over raw entries, independently
    /// of the code under test (its own SHA-256 calls and split).
    fn reference_mth(entries: &[Vec<u8>]) -> Hash {
        match entries.len() {
            0 => sha256(&[]),
            1 => sha256(&[&[0x00], &entries[0]]),
            n => {
                let k = k_for(n);
                let left = reference_mth(&entries[..k]);
                let right = reference_mth(&entries[k..]);
                sha256(&[&[0x01], &left, &right])
            }
        }
    }

    /// MTH over leaf hashes, from the definition.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => sha256(&[]),
            1 => leaves[0],
            n => {
                let k = k_for(n);
                let left = reference_root(&leaves[..k]);
                let right = reference_root(&leaves[k..]);
                sha256(&[&[0x01], &left, &right])
            }
        }
    }

    /// RFC 9162, 2.1.3.1: PATH(m, D[n]), recursively.
    fn reference_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n == 1 {
            return Vec::new();
        }
        let k = k_for(n);
        if m < k {
            let mut path = reference_path(m, &leaves[..k]);
            path.push(reference_root(&leaves[k..]));
            path
        } else {
            let mut path = reference_path(m - k, &leaves[k..]);
            path.push(reference_root(&leaves[..k]));
            path
        }
    }

    /// RFC 9162, 2.1.4.1: SUBPROOF(m, D[n], b), recursively.
    fn reference_subproof(m: usize, leaves: &[Hash], b: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if b {
                Vec::new()
            } else {
                vec![reference_root(leaves)]
            };
        }
        let k = k_for(n);
        if m <= k {
            let mut proof = reference_subproof(m, &leaves[..k], b);
            proof.push(reference_root(&leaves[k..]));
            proof
        } else {
            let mut proof = reference_subproof(m - k, &leaves[k..], false);
            proof.push(reference_root(&leaves[..k]));
            proof
        }
    }

    fn entries(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("entry {i}").into_bytes()).collect()
    }

    fn leaves(n: usize) -> Vec<Hash> {
        entries(n).iter().map(|e| leaf_hash(e)).collect()
    }

    fn flip(hash: &Hash, byte: usize) -> Hash {
        let mut flipped = *hash;
        flipped[byte] ^= 0x01;
        flipped
    }

    /// A subtree callback over a slice that also checks the promise made by the
    /// `*_with` functions: only perfect, aligned subtrees inside the tree.
    fn checked_subtrees<'a>(
        leaves: &'a [Hash],
        calls: &'a mut Vec<(u64, u64)>,
    ) -> impl FnMut(u64, u64) -> Result<Hash, MerkleError> + 'a {
        move |start, end| {
            let width = end - start;
            assert!(
                width.is_power_of_two(),
                "{start}..{end} is not a power of two"
            );
            assert_eq!(start % width, 0, "{start}..{end} is not aligned");
            assert!(
                end <= leaves.len() as u64,
                "{start}..{end} is past the tree"
            );
            calls.push((start, end));
            Ok(root(&leaves[start as usize..end as usize]))
        }
    }

    // Test vectors of transparency-dev/merkle (testonly/constants.go and
    // cmd/proofgen/main.go), the RFC 6962 reference inputs and roots.
    const REFERENCE_INPUTS: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    /// Roots of the trees of the first 0, 1, …, 8 reference inputs.
    const REFERENCE_ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn reference_leaves() -> Vec<Hash> {
        REFERENCE_INPUTS.iter().map(|e| leaf_hash(e)).collect()
    }

    #[test]
    fn hashes_follow_the_rfc_definitions() {
        assert_eq!(
            to_hex(&empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(leaf_hash(b"abc"), sha256(&[b"\x00abc"]));
        let (a, b) = (leaf_hash(b"a"), leaf_hash(b"b"));
        assert_eq!(node_hash(&a, &b), sha256(&[&[0x01], &a, &b]));
        assert_ne!(node_hash(&a, &b), node_hash(&b, &a));
    }

    #[test]
    fn leaf_hash_matches_go_sumdb_vector() {
        // golang.org/x/mod sumdb/tlog note_test.go (TestFormatTree): the tree
        // line for RecordHash("hello world"), an RFC 6962 leaf hash, in base64.
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine as _;
        let expected = STANDARD
            .decode("TszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=")
            .unwrap();
        assert_eq!(leaf_hash(b"hello world").as_slice(), expected.as_slice());
    }

    #[test]
    fn roots_match_rfc6962_reference_vectors() {
        let leaves = reference_leaves();
        for (size, expected) in REFERENCE_ROOTS.iter().enumerate() {
            assert_eq!(to_hex(&root(&leaves[..size])), *expected, "size {size}");
        }
    }

    #[test]
    fn roots_match_the_recursive_definition() {
        let entries = entries(64);
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        for size in 0..=64 {
            assert_eq!(
                root(&leaves[..size]),
                reference_mth(&entries[..size]),
                "size {size}"
            );
        }
    }

    #[test]
    fn frontier_root_matches_at_every_size() {
        let entries = entries(300);
        let leaves: Vec<Hash> = entries.iter().map(|e| leaf_hash(e)).collect();
        let mut frontier = Frontier::new();
        for size in 0..=300usize {
            assert_eq!(frontier.size(), size as u64);
            assert_eq!(frontier.hashes().len(), size.count_ones() as usize);
            assert_eq!(frontier.root(), root(&leaves[..size]), "size {size}");
            if size <= 64 {
                assert_eq!(
                    frontier.root(),
                    reference_mth(&entries[..size]),
                    "size {size}"
                );
            }
            if size < 300 {
                assert_eq!(frontier.push(leaves[size]).unwrap(), size as u64);
            }
        }
    }

    #[test]
    fn frontier_matches_reference_compact_trees() {
        // transparency-dev/merkle testonly/constants.go, CompactTrees: size 7 is the
        // roots of leaves 0..4, 4..6 and 6.
        let mut frontier = Frontier::new();
        for leaf in reference_leaves().into_iter().take(7) {
            frontier.push(leaf).unwrap();
        }
        let hashes: Vec<String> = frontier.hashes().iter().map(to_hex).collect();
        assert_eq!(
            hashes,
            [
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            ]
        );
    }

    #[test]
    fn frontier_survives_a_round_trip_through_its_parts() {
        let leaves = leaves(100);
        let mut frontier = Frontier::new();
        for (i, leaf) in leaves.iter().enumerate() {
            let restored =
                Frontier::from_parts(frontier.size(), frontier.hashes().to_vec()).unwrap();
            assert_eq!(restored, frontier);
            let mut continued = restored;
            continued.push(*leaf).unwrap();
            frontier.push(*leaf).unwrap();
            assert_eq!(continued, frontier);
            assert_eq!(frontier.root(), root(&leaves[..=i]));
        }
    }

    #[test]
    fn frontier_rejects_parts_that_do_not_fit() {
        assert_eq!(
            Frontier::from_parts(5, vec![[0; 32]]),
            Err(MerkleError::BadFrontier {
                size: 5,
                expected: 2,
                actual: 1
            })
        );
        assert!(Frontier::from_parts(0, vec![[0; 32]]).is_err());
        assert_eq!(Frontier::from_parts(0, Vec::new()), Ok(Frontier::new()));
        assert!(Frontier::from_parts(8, vec![[0; 32]]).is_ok());
    }

    #[test]
    fn a_full_frontier_refuses_another_leaf() {
        let mut frontier = Frontier::from_parts(u64::MAX, vec![[7; 32]; 64]).unwrap();
        let before = frontier.clone();
        assert_eq!(frontier.push([1; 32]), Err(MerkleError::TreeFull));
        assert_eq!(frontier, before);

        let mut almost = Frontier::from_parts(u64::MAX - 1, vec![[7; 32]; 63]).unwrap();
        assert_eq!(almost.push([1; 32]), Ok(u64::MAX - 1));
        assert_eq!(almost.size(), u64::MAX);
        assert_eq!(almost.hashes().len(), 64);
    }

    #[test]
    fn inclusion_proofs_match_reference_vectors() {
        // transparency-dev/merkle cmd/proofgen/main.go (its leaf indexes are 1-based).
        let cases: [(u64, usize, &[&str]); 4] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        let leaves = reference_leaves();
        for (index, size, expected) in cases {
            let proof = inclusion_proof(index, &leaves[..size]).unwrap();
            let proof_hex: Vec<String> = proof.iter().map(to_hex).collect();
            assert_eq!(proof_hex, expected, "index {index}, size {size}");
            let tree_root = from_hex(REFERENCE_ROOTS[size]);
            verify_inclusion(
                index,
                size as u64,
                &leaves[index as usize],
                &proof,
                &tree_root,
            )
            .unwrap();
        }
        // A tree of one leaf: the empty proof.
        assert_eq!(
            inclusion_proof(0, &leaves[..1]).unwrap(),
            Vec::<Hash>::new()
        );
        verify_inclusion(0, 1, &leaves[0], &[], &from_hex(REFERENCE_ROOTS[1])).unwrap();
    }

    #[test]
    fn consistency_proofs_match_reference_vectors() {
        // transparency-dev/merkle cmd/proofgen/main.go.
        let cases: [(u64, usize, &[&str]); 4] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        let leaves = reference_leaves();
        for (old_size, new_size, expected) in cases {
            let proof = consistency_proof(old_size, &leaves[..new_size]).unwrap();
            let proof_hex: Vec<String> = proof.iter().map(to_hex).collect();
            assert_eq!(proof_hex, expected, "{old_size} -> {new_size}");
            let old_root = from_hex(REFERENCE_ROOTS[old_size as usize]);
            let new_root = from_hex(REFERENCE_ROOTS[new_size]);
            verify_consistency(old_size, new_size as u64, &old_root, &new_root, &proof).unwrap();
        }
    }

    #[test]
    fn every_inclusion_proof_verifies_and_tampering_fails() {
        let all = leaves(80);
        let roots: Vec<Hash> = (0..=all.len()).map(|n| root(&all[..n])).collect();
        for n in 1..=40usize {
            let tree = &all[..n];
            let size = n as u64;
            let tree_root = roots[n];
            for i in 0..n {
                let index = i as u64;
                let proof = inclusion_proof(index, tree).unwrap();
                assert_eq!(proof, reference_path(i, tree), "index {i}, size {n}");
                verify_inclusion(index, size, &tree[i], &proof, &tree_root).unwrap();

                // Every flipped byte of every proof hash, of the leaf, of the root.
                for j in 0..proof.len() {
                    for byte in [0, 17, 31] {
                        let mut tampered = proof.clone();
                        tampered[j] = flip(&tampered[j], byte);
                        assert_eq!(
                            verify_inclusion(index, size, &tree[i], &tampered, &tree_root),
                            Err(MerkleError::RootMismatch),
                            "index {i}, size {n}, hash {j}, byte {byte}"
                        );
                    }
                }
                assert_eq!(
                    verify_inclusion(index, size, &flip(&tree[i], 3), &proof, &tree_root),
                    Err(MerkleError::RootMismatch)
                );
                assert_eq!(
                    verify_inclusion(index, size, &tree[i], &proof, &flip(&tree_root, 9)),
                    Err(MerkleError::RootMismatch)
                );

                // The proof at any other index, with this leaf or that one.
                for other in (0..n).filter(|&other| other != i) {
                    assert!(
                        verify_inclusion(other as u64, size, &tree[i], &proof, &tree_root).is_err()
                    );
                    assert!(
                        verify_inclusion(other as u64, size, &tree[other], &proof, &tree_root)
                            .is_err()
                    );
                }
                // The proof for any other size, against that size's root.
                for other in (i + 1..=80).filter(|&other| other != n) {
                    assert!(
                        verify_inclusion(index, other as u64, &tree[i], &proof, &roots[other])
                            .is_err(),
                        "index {i}, size {n} verified as size {other}"
                    );
                }

                // Too short, too long.
                if !proof.is_empty() {
                    assert_eq!(
                        verify_inclusion(
                            index,
                            size,
                            &tree[i],
                            &proof[..proof.len() - 1],
                            &tree_root
                        ),
                        Err(MerkleError::ProofLength {
                            expected: proof.len(),
                            actual: proof.len() - 1
                        })
                    );
                }
                let mut longer = proof.clone();
                longer.push(tree_root);
                assert_eq!(
                    verify_inclusion(index, size, &tree[i], &longer, &tree_root),
                    Err(MerkleError::ProofLength {
                        expected: proof.len(),
                        actual: proof.len() + 1
                    })
                );
            }
            assert_eq!(
                inclusion_proof(size, tree),
                Err(MerkleError::IndexOutOfRange { index: size, size })
            );
            assert_eq!(
                verify_inclusion(size, size, &tree[0], &[], &tree_root),
                Err(MerkleError::IndexOutOfRange { index: size, size })
            );
        }
        assert_eq!(
            inclusion_proof(0, &[]),
            Err(MerkleError::IndexOutOfRange { index: 0, size: 0 })
        );
    }

    #[test]
    fn every_consistency_proof_verifies_and_tampering_fails() {
        let all = leaves(80);
        let roots: Vec<Hash> = (0..=all.len()).map(|n| root(&all[..n])).collect();
        for n in 1..=40usize {
            let tree = &all[..n];
            let new_size = n as u64;
            for m in 1..=n {
                let old_size = m as u64;
                let (old_root, new_root) = (roots[m], roots[n]);
                let proof = consistency_proof(old_size, tree).unwrap();
                assert_eq!(proof, reference_subproof(m, tree, true), "{m} -> {n}");
                verify_consistency(old_size, new_size, &old_root, &new_root, &proof).unwrap();

                if m == n {
                    assert!(proof.is_empty());
                    assert_eq!(
                        verify_consistency(old_size, new_size, &old_root, &flip(&new_root, 0), &[]),
                        Err(MerkleError::RootMismatch)
                    );
                    assert_eq!(
                        verify_consistency(old_size, new_size, &old_root, &new_root, &[new_root]),
                        Err(MerkleError::ProofLength {
                            expected: 0,
                            actual: 1
                        })
                    );
                    continue;
                }
                assert!(!proof.is_empty());

                for j in 0..proof.len() {
                    for byte in [0, 31] {
                        let mut tampered = proof.clone();
                        tampered[j] = flip(&tampered[j], byte);
                        assert_eq!(
                            verify_consistency(old_size, new_size, &old_root, &new_root, &tampered),
                            Err(MerkleError::RootMismatch),
                            "{m} -> {n}, hash {j}, byte {byte}"
                        );
                    }
                }
                assert_eq!(
                    verify_consistency(old_size, new_size, &flip(&old_root, 5), &new_root, &proof),
                    Err(MerkleError::RootMismatch)
                );
                assert_eq!(
                    verify_consistency(old_size, new_size, &old_root, &flip(&new_root, 5), &proof),
                    Err(MerkleError::RootMismatch)
                );
                assert!(
                    verify_consistency(old_size, new_size, &new_root, &old_root, &proof).is_err()
                );

                // The proof for other sizes, against those sizes' roots.
                for other in (1..n).filter(|&other| other != m) {
                    assert!(
                        verify_consistency(
                            other as u64,
                            new_size,
                            &roots[other],
                            &new_root,
                            &proof
                        )
                        .is_err(),
                        "{m} -> {n} verified from {other}"
                    );
                }
                for other in (m + 1..=80).filter(|&other| other != n) {
                    assert!(
                        verify_consistency(
                            old_size,
                            other as u64,
                            &old_root,
                            &roots[other],
                            &proof
                        )
                        .is_err(),
                        "{m} -> {n} verified to {other}"
                    );
                }

                assert_eq!(
                    verify_consistency(
                        old_size,
                        new_size,
                        &old_root,
                        &new_root,
                        &proof[..proof.len() - 1]
                    ),
                    Err(MerkleError::ProofLength {
                        expected: proof.len(),
                        actual: proof.len() - 1
                    })
                );
                let mut longer = proof.clone();
                longer.push(new_root);
                assert!(matches!(
                    verify_consistency(old_size, new_size, &old_root, &new_root, &longer),
                    Err(MerkleError::ProofLength { .. })
                ));
                assert!(matches!(
                    verify_consistency(old_size, new_size, &old_root, &new_root, &[]),
                    Err(MerkleError::ProofLength { .. })
                ));
            }
        }
    }

    #[test]
    fn consistency_edge_cases() {
        let tree = leaves(5);
        let new_root = root(&tree);
        // From the empty tree: nothing to prove, but the old root must be the empty root.
        assert_eq!(consistency_proof(0, &tree).unwrap(), Vec::<Hash>::new());
        verify_consistency(0, 5, &empty_root(), &new_root, &[]).unwrap();
        verify_consistency(0, 0, &empty_root(), &empty_root(), &[]).unwrap();
        assert_eq!(
            verify_consistency(0, 5, &new_root, &new_root, &[]),
            Err(MerkleError::RootMismatch)
        );
        assert_eq!(
            verify_consistency(0, 5, &empty_root(), &new_root, &[new_root]),
            Err(MerkleError::ProofLength {
                expected: 0,
                actual: 1
            })
        );
        // Shrinking is never consistent.
        assert_eq!(
            consistency_proof(6, &tree),
            Err(MerkleError::BadSizes {
                old_size: 6,
                new_size: 5
            })
        );
        assert_eq!(
            verify_consistency(5, 4, &new_root, &new_root, &[]),
            Err(MerkleError::BadSizes {
                old_size: 5,
                new_size: 4
            })
        );
    }

    #[test]
    fn callback_proofs_equal_slice_proofs_and_ask_only_for_perfect_subtrees() {
        let all = leaves(70);
        for n in 1..=70usize {
            let tree = &all[..n];
            let size = n as u64;
            for i in 0..size {
                let mut calls = Vec::new();
                let proof =
                    inclusion_proof_with(i, size, &mut checked_subtrees(tree, &mut calls)).unwrap();
                assert_eq!(
                    proof,
                    inclusion_proof(i, tree).unwrap(),
                    "index {i}, size {n}"
                );
                // At most one sibling per level, plus the pieces of one right-edge range.
                assert!(calls.len() <= 2 * 64, "{} calls", calls.len());
            }
            for m in 0..=size {
                let mut calls = Vec::new();
                let proof =
                    consistency_proof_with(m, size, &mut checked_subtrees(tree, &mut calls))
                        .unwrap();
                assert_eq!(proof, consistency_proof(m, tree).unwrap(), "{m} -> {n}");
            }
        }
    }

    #[test]
    fn callback_errors_are_returned() {
        let mut failing = |_start: u64, _end: u64| -> Result<Hash, MerkleError> {
            Err(MerkleError::Store("disk on fire".into()))
        };
        assert_eq!(
            inclusion_proof_with(3, 10, &mut failing),
            Err(MerkleError::Store("disk on fire".into()))
        );
        assert_eq!(
            consistency_proof_with(3, 10, &mut failing),
            Err(MerkleError::Store("disk on fire".into()))
        );
        // Nothing to look up, so no error.
        assert_eq!(inclusion_proof_with(0, 1, &mut failing), Ok(Vec::new()));
        assert_eq!(consistency_proof_with(10, 10, &mut failing), Ok(Vec::new()));
    }

    #[test]
    fn large_trees_ask_for_few_subtrees() {
        // A tree too large to hold: the callback computes subtree hashes of a
        // synthetic tree whose leaf i hashes to leaf_hash(i), through the frontier
        // of nothing but the range. Only the number and shape of calls matter here,
        // and that proofs from the callback verify against a root computed the
        // same way.
        fn synthetic(start: u64, end: u64) -> Hash {
            let mut frontier = Frontier::new();
            for i in start..end {
                frontier.push(leaf_hash(&i.to_be_bytes())).unwrap();
            }
            frontier.root()
        }
        let size = 1000u64;
        let tree_root = synthetic(0, size);
        for index in [0, 1, 511, 512, 998, 999] {
            let mut calls = 0;
            let proof = inclusion_proof_with(index, size, &mut |start, end| {
                calls += 1;
                assert!((end - start).is_power_of_two() && start % (end - start) == 0);
                Ok(synthetic(start, end))
            })
            .unwrap();
            assert!(calls <= 20, "{calls} calls for index {index}");
            verify_inclusion(
                index,
                size,
                &leaf_hash(&index.to_be_bytes()),
                &proof,
                &tree_root,
            )
            .unwrap();
        }
        for old_size in [1, 3, 512, 777, 999] {
            let proof = consistency_proof_with(old_size, size, &mut |start, end| {
                assert!((end - start).is_power_of_two() && start % (end - start) == 0);
                Ok(synthetic(start, end))
            })
            .unwrap();
            verify_consistency(old_size, size, &synthetic(0, old_size), &tree_root, &proof)
                .unwrap();
        }
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            MerkleError::IndexOutOfRange { index: 7, size: 7 }.to_string(),
            "leaf index 7 is out of range for a tree of size 7"
        );
        assert_eq!(
            MerkleError::ProofLength {
                expected: 3,
                actual: 2
            }
            .to_string(),
            "the proof has 2 hashes, but a proof for these tree sizes has 3"
        );
        assert_eq!(
            MerkleError::Store("timeout".into()).to_string(),
            "looking up a subtree hash failed: timeout"
        );
    }
}
