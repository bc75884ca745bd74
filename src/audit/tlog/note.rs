//! Signed notes (<https://c2sp.org/signed-note>) with Ed25519 keys, and the
//! transparency log checkpoints they carry (<https://c2sp.org/tlog-checkpoint>).
//!
//! A signed note is a text that ends in a newline, a blank line, and one or more
//! signature lines:
//!
//! ```text
//! example.com/behind-the-sofa
//! 20852163
//! CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=
//!
//! — example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOoRDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=
//! ```
//!
//! (the example of c2sp.org/tlog-checkpoint, a checkpoint: origin, tree size, root).
//!
//! A signature line is an em dash (U+2014), a space, the key name, a space, and the
//! base64 of the 4-byte key id followed by the signature of the text (every byte of
//! it, its final newline included). For Ed25519 the key id is the first four bytes
//! of `SHA-256(name || "\n" || 0x01 || public key)` ([`ed25519_key_id`]), and a
//! verifier learns the key from a *verifier key* string,
//! `NAME+KEYID+BASE64(0x01 || public key)`, with the key id as 8 lowercase hex digits.
//!
//! - [`NoteSigner`] signs texts with an Ed25519 key loaded from PKCS#8.
//! - [`NoteVerifier`] parses a verifier key and opens notes signed by it.
//! - [`Checkpoint`] formats and parses the checkpoint text: origin, tree size, root.
//!
//! Pure computation: no I/O and no clock; only key generation draws randomness.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};

use super::merkle::Hash;

/// The signature type byte of Ed25519 signatures (signed-note, "Signature types").
const ED25519_SIGNATURE_TYPE: u8 = 0x01;

/// What every signature line starts with: an em dash (U+2014) and a space.
const SIGNATURE_LINE_PREFIX: &str = "\u{2014} ";

/// Length of an Ed25519 signature.
const ED25519_SIGNATURE_LEN: usize = 64;

/// The most signature lines [`NoteVerifier::verify`] reads in one note. The spec
/// asks verifiers to accept at least 16 and to set some limit.
pub const MAX_SIGNATURES: usize = 100;

/// What can go wrong signing, verifying or parsing notes and checkpoints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name that is empty or has whitespace, a plus sign or a control character.
    #[error("invalid key name {0:?}: it must be non-empty, without whitespace, '+' or control characters")]
    InvalidKeyName(String),

    /// `ring` refused the PKCS#8 document.
    #[error("the Ed25519 private key (PKCS#8 v2) was rejected: {0}")]
    PrivateKey(String),

    /// The system random number generator failed.
    #[error("generating an Ed25519 key failed")]
    KeyGeneration,

    /// A text that [`NoteSigner::sign`] will not sign; says what is wrong with it.
    #[error("the note text cannot be signed: it {0}")]
    InvalidText(&'static str),

    /// A verifier key that is not `NAME+KEYID+BASE64`.
    #[error("malformed verifier key: {0}")]
    MalformedVerifierKey(String),

    /// A verifier key for a signature type other than Ed25519.
    #[error("unsupported signature type 0x{0:02x} in the verifier key (only Ed25519, 0x01, is supported)")]
    UnsupportedKeyType(u8),

    /// A verifier key whose key id is not the id of its name and key.
    #[error("the verifier key says key id {stated}, but its name and key have key id {computed}")]
    KeyIdMismatch {
        /// The key id written in the verifier key.
        stated: String,
        /// The key id computed from the name and key.
        computed: String,
    },

    /// A note that is not a well-formed signed note; says what is wrong with it.
    #[error("malformed signed note: {0}")]
    MalformedNote(String),

    /// A note with more signature lines than [`MAX_SIGNATURES`].
    #[error("the note has {0} signature lines, more than the {max} accepted", max = MAX_SIGNATURES)]
    TooManySignatures(usize),

    /// A signature line from our key (name and key id) that does not verify.
    #[error("the signature by {name} with key id {key_id} does not verify")]
    BadSignature {
        /// The key name.
        name: String,
        /// The key id, in hex.
        key_id: String,
    },

    /// A note without any signature line from our key.
    #[error("the note has no signature by {name} with key id {key_id}")]
    NoVerifiedSignature {
        /// The key name.
        name: String,
        /// The key id, in hex.
        key_id: String,
    },

    /// A checkpoint text that does not follow c2sp.org/tlog-checkpoint.
    #[error("malformed checkpoint: {0}")]
    MalformedCheckpoint(String),
}

/// The key id of an Ed25519 key under `name`: the first four bytes of
/// `SHA-256(name || 0x0A || 0x01 || public_key)` (signed-note, "Ed25519 signatures").
pub fn ed25519_key_id(name: &str, public_key: &[u8; 32]) -> [u8; 4] {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(name.as_bytes());
    context.update(b"\n");
    context.update(&[ED25519_SIGNATURE_TYPE]);
    context.update(public_key);
    let digest = context.finish();
    let mut key_id = [0u8; 4];
    key_id.copy_from_slice(&digest.as_ref()[..4]);
    key_id
}

/// A key id as 8 lowercase hex digits.
fn key_id_hex(key_id: [u8; 4]) -> String {
    format!("{:08x}", u32::from_be_bytes(key_id))
}

/// Whether a byte is an ASCII control character other than newline, which signed
/// notes must not contain.
fn is_forbidden_control(byte: u8) -> bool {
    byte < 0x20 && byte != b'\n'
}

/// Checks a key name: non-empty, no Unicode whitespace, no `+`, no control character.
fn check_name(name: &str) -> Result<(), NoteError> {
    let valid = !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control());
    if valid {
        Ok(())
    } else {
        Err(NoteError::InvalidKeyName(name.to_owned()))
    }
}

/// Checks that a text can be signed: it ends in a newline and has no blank line and
/// no control character but newline.
fn check_text(text: &str) -> Result<(), NoteError> {
    if text.is_empty() {
        return Err(NoteError::InvalidText("is empty"));
    }
    if !text.ends_with('\n') {
        return Err(NoteError::InvalidText("does not end in a newline"));
    }
    if text.starts_with('\n') || text.contains("\n\n") {
        return Err(NoteError::InvalidText("contains a blank line"));
    }
    if text.bytes().any(is_forbidden_control) {
        return Err(NoteError::InvalidText(
            "contains a control character other than newline",
        ));
    }
    Ok(())
}

/// Signs notes with one Ed25519 key under one key name.
pub struct NoteSigner {
    name: String,
    key_pair: Ed25519KeyPair,
    public_key: [u8; 32],
    key_id: [u8; 4],
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_id", &key_id_hex(self.key_id))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer for `name` with the Ed25519 key in a PKCS#8 v2 document (as made by
    /// [`NoteSigner::generate_pkcs8`]; `ring` checks that its public key matches).
    ///
    /// # Errors
    ///
    /// [`NoteError::InvalidKeyName`] for a name the spec does not allow, and
    /// [`NoteError::PrivateKey`] if the document is not an Ed25519 PKCS#8 v2 key.
    pub fn from_pkcs8(name: &str, pkcs8: &[u8]) -> Result<Self, NoteError> {
        check_name(name)?;
        let key_pair = Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|error| NoteError::PrivateKey(error.to_string()))?;
        let public_key: &[u8] = key_pair.public_key().as_ref();
        let public_key = <[u8; 32]>::try_from(public_key)
            .map_err(|_| NoteError::PrivateKey("the public key is not 32 bytes".to_owned()))?;
        Ok(Self {
            name: name.to_owned(),
            key_id: ed25519_key_id(name, &public_key),
            public_key,
            key_pair,
        })
    }

    /// A new random Ed25519 key, as a PKCS#8 v2 document for
    /// [`NoteSigner::from_pkcs8`]. The bytes are the private key: keep them secret.
    ///
    /// # Errors
    ///
    /// [`NoteError::KeyGeneration`] if the system random number generator fails.
    pub fn generate_pkcs8() -> Result<Vec<u8>, NoteError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| NoteError::KeyGeneration)?;
        Ok(document.as_ref().to_vec())
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id: the first four bytes of `SHA-256(name || "\n" || 0x01 || key)`.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The verifier key to give verifiers: `NAME+KEYID+BASE64(0x01 || public key)`.
    pub fn verifier_key(&self) -> String {
        verifier_key(&self.name, self.key_id, &self.public_key)
    }

    /// The verifier of this signer's signatures.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier {
            name: self.name.clone(),
            key_id: self.key_id,
            public_key: self.public_key,
        }
    }

    /// Signs `text` and returns the signed note: the text, a blank line, and one
    /// signature line, `— NAME BASE64(key id || signature)`, ending in a newline.
    ///
    /// The signature covers the text's bytes, final newline included.
    ///
    /// # Errors
    ///
    /// [`NoteError::InvalidText`] if the text does not end in a newline, contains
    /// a blank line (the spec allows them, but checkpoints never have one, and
    /// refusing them keeps the text/signature boundary unambiguous to every
    /// reader), or contains a control character other than newline.
    pub fn sign(&self, text: &str) -> Result<String, NoteError> {
        check_text(text)?;
        let signature = self.key_pair.sign(text.as_bytes());
        let mut blob = Vec::with_capacity(4 + ED25519_SIGNATURE_LEN);
        blob.extend_from_slice(&self.key_id);
        blob.extend_from_slice(signature.as_ref());
        Ok(format!(
            "{text}\n{SIGNATURE_LINE_PREFIX}{} {}\n",
            self.name,
            STANDARD.encode(blob)
        ))
    }
}

/// Formats a verifier key.
fn verifier_key(name: &str, key_id: [u8; 4], public_key: &[u8; 32]) -> String {
    let mut key = Vec::with_capacity(1 + public_key.len());
    key.push(ED25519_SIGNATURE_TYPE);
    key.extend_from_slice(public_key);
    format!("{name}+{}+{}", key_id_hex(key_id), STANDARD.encode(key))
}

/// Parses the key id of a verifier key: exactly 8 lowercase hex digits.
fn parse_key_id(hex: &str) -> Result<[u8; 4], NoteError> {
    let canonical = hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let value = if canonical {
        u32::from_str_radix(hex, 16).ok()
    } else {
        None
    };
    value.map(u32::to_be_bytes).ok_or_else(|| {
        NoteError::MalformedVerifierKey(format!("the key id {hex:?} is not 8 lowercase hex digits"))
    })
}

/// Verifies notes signed by one Ed25519 key, known from its verifier key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key_id: [u8; 4],
    public_key: [u8; 32],
}

impl NoteVerifier {
    /// Parses a verifier key, `NAME+KEYID+BASE64(0x01 || 32-byte Ed25519 key)`, with
    /// the key id as 8 lowercase hex digits. The key id must be the one computed from
    /// the name and key.
    ///
    /// # Errors
    ///
    /// [`NoteError::InvalidKeyName`], [`NoteError::MalformedVerifierKey`],
    /// [`NoteError::UnsupportedKeyType`] or [`NoteError::KeyIdMismatch`].
    pub fn parse(vkey: &str) -> Result<Self, NoteError> {
        // The name has no '+', but base64 may: split at the first two.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(key_id), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(NoteError::MalformedVerifierKey(
                "expected NAME+KEYID+KEY".to_owned(),
            ));
        };
        check_name(name)?;
        let key_id = parse_key_id(key_id)?;
        let key = STANDARD.decode(key).map_err(|error| {
            NoteError::MalformedVerifierKey(format!("the key is not valid base64: {error}"))
        })?;
        let Some((&signature_type, public_key)) = key.split_first() else {
            return Err(NoteError::MalformedVerifierKey(
                "the key is empty".to_owned(),
            ));
        };
        if signature_type != ED25519_SIGNATURE_TYPE {
            return Err(NoteError::UnsupportedKeyType(signature_type));
        }
        let public_key = <[u8; 32]>::try_from(public_key).map_err(|_| {
            NoteError::MalformedVerifierKey(format!(
                "an Ed25519 key has 32 bytes, not {}",
                public_key.len()
            ))
        })?;
        let computed = ed25519_key_id(name, &public_key);
        if computed != key_id {
            return Err(NoteError::KeyIdMismatch {
                stated: key_id_hex(key_id),
                computed: key_id_hex(computed),
            });
        }
        Ok(Self {
            name: name.to_owned(),
            key_id,
            public_key,
        })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key id.
    pub fn key_id(&self) -> [u8; 4] {
        self.key_id
    }

    /// The verifier key string this verifier was parsed from.
    pub fn verifier_key(&self) -> String {
        verifier_key(&self.name, self.key_id, &self.public_key)
    }

    /// Opens a signed note: checks its format and our signature, and returns its
    /// text (final newline included, separating blank line excluded).
    ///
    /// As the spec says, the text ends at the note's last blank line; signature
    /// lines from other keys (another name, or another key id) are ignored; every
    /// line with our name and key id must verify, and at least one must be there.
    ///
    /// # Errors
    ///
    /// [`NoteError::MalformedNote`] (or [`NoteError::InvalidKeyName`] for a
    /// signature line's name) if the note is not well formed,
    /// [`NoteError::TooManySignatures`] past [`MAX_SIGNATURES`] lines,
    /// [`NoteError::BadSignature`] if a signature of ours does not verify, and
    /// [`NoteError::NoVerifiedSignature`] if there is none.
    pub fn verify<'a>(&self, note: &'a str) -> Result<&'a str, NoteError> {
        let malformed = |reason: &str| NoteError::MalformedNote(reason.to_owned());
        if note.bytes().any(is_forbidden_control) {
            return Err(malformed(
                "it contains a control character other than newline",
            ));
        }
        if !note.ends_with('\n') {
            return Err(malformed("it does not end in a newline"));
        }
        let Some(blank_line) = note.rfind("\n\n") else {
            return Err(malformed(
                "no blank line separates the text from the signatures",
            ));
        };
        // `blank_line` is the byte index of an ASCII newline: both slices fall on
        // character boundaries.
        let text = &note[..=blank_line];
        let signatures = &note[blank_line + 2..];
        let Some(signatures) = signatures.strip_suffix('\n') else {
            return Err(malformed("it has no signature lines"));
        };
        let lines: Vec<&str> = signatures.split('\n').collect();
        if lines.len() > MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures(lines.len()));
        }

        let mut verified = false;
        for line in lines {
            let Some(signature_line) = line.strip_prefix(SIGNATURE_LINE_PREFIX) else {
                return Err(NoteError::MalformedNote(format!(
                    "the signature line {line:?} does not start with an em dash and a space"
                )));
            };
            let Some((name, signature)) = signature_line.split_once(' ') else {
                return Err(NoteError::MalformedNote(format!(
                    "the signature line {line:?} has no space between name and signature"
                )));
            };
            check_name(name)?;
            let blob = STANDARD.decode(signature).map_err(|error| {
                NoteError::MalformedNote(format!(
                    "the signature by {name} is not valid base64: {error}"
                ))
            })?;
            if blob.len() <= 4 {
                return Err(NoteError::MalformedNote(format!(
                    "the signature by {name} is too short ({} bytes)",
                    blob.len()
                )));
            }
            let (key_id, signature) = blob.split_at(4);
            if name != self.name || key_id != self.key_id.as_slice() {
                // Someone else's signature (another key, maybe a cosigner's).
                continue;
            }
            UnparsedPublicKey::new(&ED25519, &self.public_key)
                .verify(text.as_bytes(), signature)
                .map_err(|_| NoteError::BadSignature {
                    name: self.name.clone(),
                    key_id: key_id_hex(self.key_id),
                })?;
            verified = true;
        }
        if verified {
            Ok(text)
        } else {
            Err(NoteError::NoVerifiedSignature {
                name: self.name.clone(),
                key_id: key_id_hex(self.key_id),
            })
        }
    }
}

/// A transparency log checkpoint (c2sp.org/tlog-checkpoint): the note text naming a
/// log, a tree size and the tree's root hash.
///
/// ```text
/// <origin>\n
/// <tree size, decimal>\n
/// <root hash, base64>\n
/// ```
///
/// Extension lines may follow; [`Checkpoint::parse`] accepts and ignores them, and
/// [`Checkpoint::to_text`] never writes any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, conventionally a schema-less URL such as
    /// `example.com/log`; the log's key name should be the same. Must be non-empty
    /// and contain no newline or other control character.
    pub origin: String,
    /// Number of leaves in the tree.
    pub size: u64,
    /// The RFC 9162 Merkle Tree Hash of the tree's leaves.
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint text: origin, size and base64 root, each on its own line.
    ///
    /// The text parses back to `self` when the origin is valid (non-empty, no
    /// newline, no control character); [`Checkpoint::sign`] checks that.
    pub fn to_text(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            STANDARD.encode(self.root)
        )
    }

    /// Parses a checkpoint text, strictly: an origin line, a tree size line
    /// (decimal, no sign, no leading zero unless it is `0`), a root hash line (the
    /// standard base64, with padding, of 32 bytes), then optional non-empty
    /// extension lines, which are ignored. Every line ends in a newline.
    ///
    /// # Errors
    ///
    /// [`NoteError::MalformedCheckpoint`] saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, NoteError> {
        let malformed = NoteError::MalformedCheckpoint;
        let Some(body) = text.strip_suffix('\n') else {
            return Err(malformed("it does not end in a newline".to_owned()));
        };
        if text.bytes().any(is_forbidden_control) {
            return Err(malformed(
                "it contains a control character other than newline".to_owned(),
            ));
        }
        let mut lines = body.split('\n');
        let origin = match lines.next() {
            Some(origin) if !origin.is_empty() => origin,
            _ => return Err(malformed("the origin line is missing or empty".to_owned())),
        };
        let Some(size) = lines.next() else {
            return Err(malformed("the tree size line is missing".to_owned()));
        };
        let Some(root) = lines.next() else {
            return Err(malformed("the root hash line is missing".to_owned()));
        };
        if lines.any(str::is_empty) {
            return Err(malformed("it has an empty extension line".to_owned()));
        }

        let canonical = !size.is_empty()
            && size.bytes().all(|b| b.is_ascii_digit())
            && (size == "0" || !size.starts_with('0'));
        let parsed = if canonical {
            size.parse::<u64>().ok()
        } else {
            None
        };
        let size = parsed.ok_or_else(|| {
            malformed(format!(
                "the tree size {size:?} is not a decimal number without leading zeros that fits in 64 bits"
            ))
        })?;
        let decoded = STANDARD
            .decode(root)
            .map_err(|error| malformed(format!("the root hash is not valid base64: {error}")))?;
        let root = Hash::try_from(decoded.as_slice()).map_err(|_| {
            malformed(format!(
                "the root hash has {} bytes instead of 32",
                decoded.len()
            ))
        })?;
        Ok(Self {
            origin: origin.to_owned(),
            size,
            root,
        })
    }

    /// Signs the checkpoint text: the signed note to publish.
    ///
    /// # Errors
    ///
    /// [`NoteError::MalformedCheckpoint`] if the origin is empty or contains a
    /// newline, and what [`NoteSigner::sign`] returns.
    pub fn sign(&self, signer: &NoteSigner) -> Result<String, NoteError> {
        if self.origin.is_empty() || self.origin.contains('\n') {
            return Err(NoteError::MalformedCheckpoint(format!(
                "the origin {:?} is empty or spans lines",
                self.origin
            )));
        }
        signer.sign(&self.to_text())
    }

    /// Verifies a signed checkpoint with `verifier` ([`NoteVerifier::verify`]) and
    /// parses its text. The caller decides whether the origin must match the key
    /// name (the spec says it should).
    ///
    /// # Errors
    ///
    /// What [`NoteVerifier::verify`] and [`Checkpoint::parse`] return.
    pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Self, NoteError> {
        Self::parse(verifier.verify(note)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::merkle::{empty_root, leaf_hash};
    use super::*;

    /// An Ed25519 PKCS#8 v2 document (RFC 8410 / RFC 5958), as `ring` writes them:
    /// version 1, the Ed25519 algorithm id, the seed, and the public key.
    fn pkcs8_v2(seed: &[u8; 32], public_key: &[u8]) -> Vec<u8> {
        let mut der = vec![
            0x30, 0x51, // SEQUENCE, 81 bytes
            0x02, 0x01, 0x01, // INTEGER 1 (v2)
            0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, // AlgorithmIdentifier: id-Ed25519
            0x04, 0x22, 0x04, 0x20, // OCTET STRING { OCTET STRING (32 bytes) }
        ];
        der.extend_from_slice(seed);
        der.extend_from_slice(&[0x81, 0x21, 0x00]); // [1] public key, BIT STRING
        der.extend_from_slice(public_key);
        der
    }

    /// A signer from a fixed seed.
    fn signer_from_seed(name: &str, seed: &[u8; 32]) -> NoteSigner {
        let key_pair = Ed25519KeyPair::from_seed_unchecked(seed).unwrap();
        let pkcs8 = pkcs8_v2(seed, key_pair.public_key().as_ref());
        NoteSigner::from_pkcs8(name, &pkcs8).unwrap()
    }

    fn generated_signer(name: &str) -> NoteSigner {
        NoteSigner::from_pkcs8(name, &NoteSigner::generate_pkcs8().unwrap()).unwrap()
    }

    // golang.org/x/mod sumdb/note (note.go's package documentation and
    // example_test.go): the "PeterNeumann" key and note.
    const NEUMANN_VKEY: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
    /// The private key, base64(0x01 || seed), from the same example's signer key
    /// "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz".
    const NEUMANN_SKEY_DATA: &str = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
    const NEUMANN_TEXT: &str = "If you think cryptography is the answer to your problem,\n\
                                then you don't know what your problem is.\n";
    const NEUMANN_NOTE: &str = "If you think cryptography is the answer to your problem,\n\
                                then you don't know what your problem is.\n\
                                \n\
                                \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";

    // c2sp.org/signed-note, "Example".
    const C2SP_VKEY: &str = "example.com/foo+530d903a+AekyeRrm56hApGFkyQR4ZCbV54Id2LKaANYcrnKv3U2k";
    const C2SP_NOTE: &str = "This is an example message.\n\
                             \n\
                             \u{2014} example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n";

    fn neumann_signer() -> NoteSigner {
        let data = STANDARD.decode(NEUMANN_SKEY_DATA).unwrap();
        assert_eq!(data[0], 0x01, "an Ed25519 signer key");
        let seed = <[u8; 32]>::try_from(&data[1..]).unwrap();
        signer_from_seed("PeterNeumann", &seed)
    }

    /// The last line of a signed note: its (only) signature line.
    fn signature_line(note: &str) -> &str {
        let body = note.strip_suffix('\n').unwrap();
        &body[body.rfind('\n').unwrap() + 1..]
    }

    #[test]
    fn the_go_sumdb_example_note_verifies() {
        let verifier = NoteVerifier::parse(NEUMANN_VKEY).unwrap();
        assert_eq!(verifier.name(), "PeterNeumann");
        assert_eq!(verifier.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(verifier.verify(NEUMANN_NOTE), Ok(NEUMANN_TEXT));
    }

    #[test]
    fn signing_reproduces_the_go_sumdb_example_byte_for_byte() {
        // Ed25519 signatures are deterministic: the same key signs the same text
        // into the same note that Go's note.Sign printed.
        let signer = neumann_signer();
        assert_eq!(signer.key_id(), [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(signer.verifier_key(), NEUMANN_VKEY);
        assert_eq!(signer.sign(NEUMANN_TEXT).unwrap(), NEUMANN_NOTE);
    }

    #[test]
    fn the_c2sp_example_note_verifies() {
        let verifier = NoteVerifier::parse(C2SP_VKEY).unwrap();
        assert_eq!(
            verifier.verify(C2SP_NOTE),
            Ok("This is an example message.\n")
        );
        assert_eq!(verifier.verifier_key(), C2SP_VKEY);
    }

    #[test]
    fn sign_and_verify_round_trip() {
        let signer = generated_signer("example.com/meshid-audit");
        let text = "example.com/meshid-audit\n3\nqNPHvIxmUn5xA2GR6mlhsXkyOG0xOR5Po7d9jDA+2Ic=\n";
        let note = signer.sign(text).unwrap();
        assert!(note.starts_with(text));
        assert!(note[text.len()..].starts_with("\n\u{2014} example.com/meshid-audit "));
        assert!(note.ends_with('\n'));

        let verifier = NoteVerifier::parse(&signer.verifier_key()).unwrap();
        assert_eq!(verifier, signer.verifier());
        assert_eq!(verifier.verify(&note), Ok(text));
    }

    #[test]
    fn a_tampered_note_fails() {
        let signer = generated_signer("example.com/log");
        let verifier = signer.verifier();
        let note = signer.sign("example.com/log\n1\nAAAA\n").unwrap();
        let bad_signature = Err(NoteError::BadSignature {
            name: "example.com/log".to_owned(),
            key_id: key_id_hex(signer.key_id()),
        });

        // The text changed.
        let tampered = note.replacen("\n1\n", "\n2\n", 1);
        assert_eq!(verifier.verify(&tampered), bad_signature);

        // One signature byte changed (key id kept).
        let line = signature_line(&note);
        let prefix = "\u{2014} example.com/log ";
        let mut blob = STANDARD.decode(&line[prefix.len()..]).unwrap();
        blob[10] ^= 0x01;
        let forged = note.replace(line, &format!("{prefix}{}", STANDARD.encode(blob)));
        assert_eq!(verifier.verify(&forged), bad_signature);
    }

    #[test]
    fn another_key_does_not_verify() {
        let signer = generated_signer("example.com/log");
        let note = signer.sign("hello\n").unwrap();
        // Same name, another key: its key id differs (but for a 2^-32 chance, when
        // the signature is checked and fails instead).
        let impostor = generated_signer("example.com/log").verifier();
        assert!(matches!(
            impostor.verify(&note),
            Err(NoteError::NoVerifiedSignature { .. } | NoteError::BadSignature { .. })
        ));
        // The same key under another name has another key id.
        let pkcs8 = NoteSigner::generate_pkcs8().unwrap();
        let a = NoteSigner::from_pkcs8("a.example", &pkcs8).unwrap();
        let b = NoteSigner::from_pkcs8("b.example", &pkcs8).unwrap();
        assert_ne!(a.key_id(), b.key_id());
        assert_eq!(
            b.verifier().verify(&a.sign("hello\n").unwrap()),
            Err(NoteError::NoVerifiedSignature {
                name: "b.example".to_owned(),
                key_id: key_id_hex(b.key_id()),
            })
        );
    }

    #[test]
    fn unknown_signatures_are_ignored() {
        let log = generated_signer("example.com/log");
        let witness = generated_signer("witness.example");
        let text = "example.com/log\n5\nAAAA\n";
        let by_log = log.sign(text).unwrap();
        let by_witness = witness.sign(text).unwrap();
        let both = format!("{by_log}{}\n", signature_line(&by_witness));
        let both_reversed = format!("{by_witness}{}\n", signature_line(&by_log));

        for note in [&both, &both_reversed] {
            assert_eq!(log.verifier().verify(note), Ok(text));
            assert_eq!(witness.verifier().verify(note), Ok(text));
            let stranger = generated_signer("stranger.example").verifier();
            assert!(matches!(
                stranger.verify(note),
                Err(NoteError::NoVerifiedSignature { .. })
            ));
        }

        // A line with our key id under another name, or our name with another key
        // id, is someone else's: ignored, even though it would not verify.
        let log_line = signature_line(&by_log);
        let blob = &log_line[log_line.find(' ').unwrap() + 1..];
        let blob = &blob[blob.find(' ').unwrap() + 1..];
        let renamed = format!("{by_log}\u{2014} other.example {blob}\n");
        assert_eq!(log.verifier().verify(&renamed), Ok(text));
        let mut other_id = STANDARD.decode(blob).unwrap();
        other_id[0] ^= 0xff;
        let reid = format!(
            "{by_log}\u{2014} example.com/log {}\n",
            STANDARD.encode(other_id)
        );
        assert_eq!(log.verifier().verify(&reid), Ok(text));

        // But a second line from our key that fails rejects the note.
        let mut broken = STANDARD.decode(blob).unwrap();
        broken[20] ^= 0x01;
        let twice = format!(
            "{by_log}\u{2014} example.com/log {}\n",
            STANDARD.encode(broken)
        );
        assert!(matches!(
            log.verifier().verify(&twice),
            Err(NoteError::BadSignature { .. })
        ));
    }

    #[test]
    fn key_id_follows_the_spec() {
        let signer = signer_from_seed("example.com/log", &[42; 32]);
        // Computed here independently: SHA-256(name || 0x0A || 0x01 || key)[:4].
        let key_pair = Ed25519KeyPair::from_seed_unchecked(&[42; 32]).unwrap();
        let mut input = b"example.com/log\n\x01".to_vec();
        input.extend_from_slice(key_pair.public_key().as_ref());
        let digest = digest::digest(&digest::SHA256, &input);
        assert_eq!(signer.key_id().as_slice(), &digest.as_ref()[..4]);
        assert_eq!(
            signer.key_id(),
            ed25519_key_id("example.com/log", &signer.public_key)
        );

        // And the published one: PeterNeumann's key has id c74f20a3.
        assert_eq!(key_id_hex(neumann_signer().key_id()), "c74f20a3");
    }

    #[test]
    fn verifier_keys_round_trip() {
        for vkey in [NEUMANN_VKEY, C2SP_VKEY] {
            assert_eq!(NoteVerifier::parse(vkey).unwrap().verifier_key(), vkey);
        }
        let signer = generated_signer("example.com/a/b");
        let vkey = signer.verifier_key();
        let (name, rest) = vkey.split_once('+').unwrap();
        assert_eq!(name, "example.com/a/b");
        assert_eq!(&rest[..8], key_id_hex(signer.key_id()));
        assert_eq!(&rest[8..9], "+");
        assert_eq!(NoteVerifier::parse(&vkey).unwrap().verifier_key(), vkey);

        // A key whose base64 has a '+' in it (found for seed [8; 32]).
        let signer = signer_from_seed("example.com/plus", &[8; 32]);
        let vkey = signer.verifier_key();
        assert!(vkey.matches('+').count() > 2, "{vkey}");
        let verifier = NoteVerifier::parse(&vkey).unwrap();
        assert_eq!(verifier, signer.verifier());
        assert_eq!(verifier.verifier_key(), vkey);
    }

    #[test]
    fn malformed_verifier_keys_are_rejected() {
        let good = NoteVerifier::parse(NEUMANN_VKEY).unwrap();
        let key = "ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        for bad in [
            "",
            "PeterNeumann",
            "PeterNeumann+c74f20a3",
            "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+0c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10T",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW=",
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy",
            "PeterNeumann+c74f20a3+",
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeuman+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        ] {
            assert!(NoteVerifier::parse(bad).is_err(), "{bad:?} parsed");
        }
        // The specific errors for some of them.
        assert_eq!(
            NoteVerifier::parse(&format!("PeterNeumann+c74f20a4+{key}")),
            Err(NoteError::KeyIdMismatch {
                stated: "c74f20a4".to_owned(),
                computed: "c74f20a3".to_owned(),
            })
        );
        let mut ecdsa_like = vec![0x02];
        ecdsa_like.extend_from_slice(&good.public_key);
        assert_eq!(
            NoteVerifier::parse(&format!(
                "PeterNeumann+c74f20a3+{}",
                STANDARD.encode(ecdsa_like)
            )),
            Err(NoteError::UnsupportedKeyType(0x02))
        );
        assert_eq!(
            NoteVerifier::parse(&format!("a+b+{key}")),
            Err(NoteError::MalformedVerifierKey(
                "the key id \"b\" is not 8 lowercase hex digits".to_owned()
            ))
        );
        assert_eq!(
            NoteVerifier::parse(&format!("Peter\tNeumann+c74f20a3+{key}")),
            Err(NoteError::InvalidKeyName("Peter\tNeumann".to_owned()))
        );
    }

    #[test]
    fn invalid_names_are_refused_for_signing() {
        let pkcs8 = NoteSigner::generate_pkcs8().unwrap();
        for name in ["", "a b", "a+b", "a\u{2003}b", "a\nb", "a\u{1}b"] {
            assert_eq!(
                NoteSigner::from_pkcs8(name, &pkcs8).unwrap_err(),
                NoteError::InvalidKeyName(name.to_owned())
            );
        }
        assert!(NoteSigner::from_pkcs8("example.com/log", &pkcs8).is_ok());
        assert!(NoteSigner::from_pkcs8("日本.example/ログ", &pkcs8).is_ok());
    }

    #[test]
    fn bad_private_keys_are_refused() {
        assert!(matches!(
            NoteSigner::from_pkcs8("example.com/log", b"not a key"),
            Err(NoteError::PrivateKey(_))
        ));
        // A v2 document whose public key does not match its seed.
        let key_pair = Ed25519KeyPair::from_seed_unchecked(&[1; 32]).unwrap();
        let mismatched = pkcs8_v2(&[2; 32], key_pair.public_key().as_ref());
        assert!(matches!(
            NoteSigner::from_pkcs8("example.com/log", &mismatched),
            Err(NoteError::PrivateKey(_))
        ));
    }

    #[test]
    fn texts_that_cannot_be_signed() {
        let signer = generated_signer("example.com/log");
        for (text, reason) in [
            ("", "is empty"),
            ("no final newline", "does not end in a newline"),
            ("a\n\nb\n", "contains a blank line"),
            ("\n", "contains a blank line"),
            ("a\n\n", "contains a blank line"),
            (
                "tab\there\n",
                "contains a control character other than newline",
            ),
            ("cr\r\n", "contains a control character other than newline"),
        ] {
            assert_eq!(
                signer.sign(text),
                Err(NoteError::InvalidText(reason)),
                "{text:?}"
            );
        }
    }

    #[test]
    fn malformed_notes_are_rejected() {
        let signer = generated_signer("example.com/log");
        let verifier = signer.verifier();
        let text = "example.com/log\n7\nAAAA\n";
        let note = signer.sign(text).unwrap();
        let line = signature_line(&note).to_owned();
        let blob = line.rsplit(' ').next().unwrap().to_owned();

        let cases = [
            // No final newline.
            note.trim_end_matches('\n').to_owned(),
            // No blank line.
            format!("{text}{line}\n"),
            // No signature lines.
            format!("{text}\n"),
            // A blank line after the signatures.
            format!("{note}\n"),
            // Not an em dash.
            format!("{text}\n-- example.com/log {blob}\n"),
            format!("{text}\n\u{2013} example.com/log {blob}\n"),
            // No space after the name.
            format!("{text}\n\u{2014} example.com/log\n"),
            // Bad base64, or too short.
            format!("{text}\n\u{2014} example.com/log {blob}!\n"),
            format!("{text}\n\u{2014} example.com/log AAAAAA==\n"),
            // A control character.
            note.replacen("log\n7", "log\r\n7", 1),
            // A malformed line among good ones.
            format!("{note}garbage\n"),
        ];
        for bad in &cases {
            let error = verifier.verify(bad).unwrap_err();
            assert!(
                matches!(error, NoteError::MalformedNote(_)),
                "{bad:?}: {error:?}"
            );
        }
        // A signature line with an invalid name.
        assert_eq!(
            verifier.verify(&format!("{text}\n\u{2014} a+b {blob}\n")),
            Err(NoteError::InvalidKeyName("a+b".to_owned()))
        );
    }

    #[test]
    fn the_text_ends_at_the_last_blank_line() {
        // The spec lets texts (signed elsewhere) contain blank lines: the signature
        // block starts after the last one.
        let signer = generated_signer("example.com/log");
        let text = "first paragraph\n\nsecond paragraph\n";
        let signature = signer.key_pair.sign(text.as_bytes());
        let mut blob = signer.key_id().to_vec();
        blob.extend_from_slice(signature.as_ref());
        let note = format!(
            "{text}\n\u{2014} example.com/log {}\n",
            STANDARD.encode(blob)
        );
        assert_eq!(signer.verifier().verify(&note), Ok(text));
    }

    #[test]
    fn too_many_signatures_are_refused() {
        let signer = generated_signer("example.com/log");
        let note = signer.sign("hello\n").unwrap();
        let line = signature_line(&note);
        let repeated = format!("{line}\n").repeat(MAX_SIGNATURES - 1);
        let at_limit = format!("{note}{repeated}");
        assert_eq!(signer.verifier().verify(&at_limit), Ok("hello\n"));
        let over = format!("{at_limit}{line}\n");
        assert_eq!(
            signer.verifier().verify(&over),
            Err(NoteError::TooManySignatures(MAX_SIGNATURES + 1))
        );
    }

    #[test]
    fn checkpoints_round_trip() {
        let checkpoint = Checkpoint {
            origin: "example.com/meshid".to_owned(),
            size: 123_456_789_012,
            root: [0xab; 32],
        };
        let text = checkpoint.to_text();
        assert_eq!(
            text,
            format!(
                "example.com/meshid\n123456789012\n{}\n",
                STANDARD.encode([0xab; 32])
            )
        );
        assert_eq!(Checkpoint::parse(&text), Ok(checkpoint.clone()));

        let empty = Checkpoint {
            origin: "o".to_owned(),
            size: 0,
            root: empty_root(),
        };
        assert_eq!(
            empty.to_text(),
            "o\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\n"
        );
        assert_eq!(Checkpoint::parse(&empty.to_text()), Ok(empty));

        let max = Checkpoint {
            origin: "o".to_owned(),
            size: u64::MAX,
            root: [0; 32],
        };
        assert_eq!(Checkpoint::parse(&max.to_text()), Ok(max));
    }

    #[test]
    fn published_checkpoints_parse() {
        // c2sp.org/tlog-checkpoint, its example.
        let checkpoint = Checkpoint::parse(
            "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n",
        )
        .unwrap();
        assert_eq!(checkpoint.origin, "example.com/behind-the-sofa");
        assert_eq!(checkpoint.size, 20_852_163);
        assert_eq!(
            STANDARD.encode(checkpoint.root),
            "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I="
        );

        // golang.org/x/mod sumdb/tlog note_test.go (TestFormatTree): the tree of
        // 123456789012 leaves whose root is RecordHash("hello world").
        let go =
            "go.sum database tree\n123456789012\nTszzRgjTG6xce+z2AG31kAXYKBgQVtCSCE40HmuwBb0=\n";
        let checkpoint = Checkpoint::parse(go).unwrap();
        assert_eq!(checkpoint.origin, "go.sum database tree");
        assert_eq!(checkpoint.size, 123_456_789_012);
        assert_eq!(checkpoint.root, leaf_hash(b"hello world"));
        assert_eq!(checkpoint.to_text(), go);
    }

    #[test]
    fn extension_lines_are_accepted_and_ignored() {
        let base = "example.com/log\n10\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let plain = Checkpoint::parse(base).unwrap();
        for extra in ["ext\n", "one\ntwo\n", "\u{2014} not a signature\n"] {
            assert_eq!(
                Checkpoint::parse(&format!("{base}{extra}")),
                Ok(plain.clone())
            );
        }
    }

    #[test]
    fn malformed_checkpoints_are_rejected() {
        let root = "CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=";
        let cases = [
            String::new(),
            "\n".to_owned(),
            // Missing lines.
            "example.com/log\n".to_owned(),
            "example.com/log\n10\n".to_owned(),
            // No final newline.
            format!("example.com/log\n10\n{root}"),
            // Empty origin.
            format!("\n10\n{root}\n"),
            // Sizes: leading zeros, signs, hex, spaces, empty, overflow.
            format!("example.com/log\n010\n{root}\n"),
            format!("example.com/log\n00\n{root}\n"),
            format!("example.com/log\n+10\n{root}\n"),
            format!("example.com/log\n-1\n{root}\n"),
            format!("example.com/log\n0x10\n{root}\n"),
            format!("example.com/log\n 10\n{root}\n"),
            format!("example.com/log\n\n{root}\n"),
            format!("example.com/log\n18446744073709551616\n{root}\n"),
            // Root: bad base64, unpadded, too short, too long, empty.
            "example.com/log\n10\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I!\n".to_owned(),
            "example.com/log\n10\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I\n".to_owned(),
            format!("example.com/log\n10\n{}\n", STANDARD.encode([1; 31])),
            format!("example.com/log\n10\n{}\n", STANDARD.encode([1; 33])),
            "example.com/log\n10\n\n".to_owned(),
            // An empty extension line, a control character.
            format!("example.com/log\n10\n{root}\n\n"),
            format!("example.com/log\n10\n{root}\next\n\n"),
            format!("example.com/log\r\n10\n{root}\n"),
        ];
        for bad in &cases {
            let error = Checkpoint::parse(bad).unwrap_err();
            assert!(
                matches!(error, NoteError::MalformedCheckpoint(_)),
                "{bad:?}: {error:?}"
            );
        }
        assert_eq!(
            Checkpoint::parse(&format!("example.com/log\n010\n{root}\n")),
            Err(NoteError::MalformedCheckpoint(
                "the tree size \"010\" is not a decimal number without leading zeros that fits in 64 bits"
                    .to_owned()
            ))
        );
    }

    #[test]
    fn signed_checkpoints_open() {
        let signer = generated_signer("example.com/meshid");
        let checkpoint = Checkpoint {
            origin: "example.com/meshid".to_owned(),
            size: 42,
            root: [7; 32],
        };
        let note = checkpoint.sign(&signer).unwrap();
        assert_eq!(Checkpoint::open(&note, &signer.verifier()), Ok(checkpoint));

        let stranger = generated_signer("example.com/meshid").verifier();
        assert!(Checkpoint::open(&note, &stranger).is_err());

        let bad_origin = Checkpoint {
            origin: "two\nlines".to_owned(),
            size: 1,
            root: [0; 32],
        };
        assert!(matches!(
            bad_origin.sign(&signer),
            Err(NoteError::MalformedCheckpoint(_))
        ));
    }

    #[test]
    fn signer_debug_hides_the_key() {
        let signer = neumann_signer();
        assert_eq!(
            format!("{signer:?}"),
            "NoteSigner { name: \"PeterNeumann\", key_id: \"c74f20a3\", .. }"
        );
    }
}
