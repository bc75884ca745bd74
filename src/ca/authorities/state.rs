//! The authorities' state as it is stored: one JSON document holding every
//! authority the CA may sign with or must still trust (keys included), the
//! revoked leaf serials, and a generation that grows with every change. The
//! same document lives in `DATA_DIR/authorities.json` (mode 0600) or in the
//! CA's Kubernetes Secret, so both platforms load and save it one way.
//!
//! Rules enforced: a change is saved whole or not at all (a file is written
//! under a temporary name and renamed; a Secret is replaced carrying the
//! generation just read, so two replicas never both apply a change); the
//! document holds private keys, so the file is written 0600 and nothing here
//! prints a key (`Debug` redacts it).

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::pki::authority::{AuthorityPem, CrlEntry};

/// Version of the stored document's layout.
pub const FORMAT: u32 = 1;

/// Where an authority is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorityState {
    /// Trusted, not signing yet.
    Prepared,
    /// Signs every new certificate.
    Active,
    /// Signed before the last activation; trusted until revoked or expired.
    Old,
}

impl AuthorityState {
    /// `prepared`, `active` or `old`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prepared => "prepared",
            Self::Active => "active",
            Self::Old => "old",
        }
    }
}

impl fmt::Display for AuthorityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an authority came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthoritySource {
    /// A root this CA generated.
    SelfSigned,
    /// An operator's plug-in CA (files or Secret `cacerts`).
    PlugIn,
}

/// One stored authority.
#[derive(Clone, Serialize, Deserialize)]
pub struct StoredAuthority {
    /// Lowercase hex subject key identifier of the signing certificate.
    pub id: String,
    /// Its state.
    pub state: AuthorityState,
    /// Whether it is tainted (old authorities only).
    #[serde(default)]
    pub tainted: bool,
    /// Where it came from.
    pub source: AuthoritySource,
    /// The signing key, PKCS#8 PEM.
    #[serde(with = "secret_text")]
    pub key_pem: Zeroizing<String>,
    /// The signing certificate, PEM.
    pub cert_pem: String,
    /// Certificates between it and its root, PEM (empty for a root).
    #[serde(default)]
    pub chain_pem: String,
    /// Its roots, PEM.
    pub roots_pem: String,
    /// When the signing certificate expires (to drop it unloaded once expired).
    #[serde(with = "rfc3339")]
    pub not_after: OffsetDateTime,
}

impl fmt::Debug for StoredAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredAuthority")
            .field("id", &self.id)
            .field("state", &self.state)
            .field("tainted", &self.tainted)
            .field("source", &self.source)
            .field("key_pem", &"[redacted]")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl StoredAuthority {
    /// The PEM to load it from.
    pub fn pem(&self) -> AuthorityPem {
        AuthorityPem {
            key_pem: self.key_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            chain_pem: self.chain_pem.clone(),
            roots_pem: self.roots_pem.clone(),
        }
    }
}

/// One revoked leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Serial, lowercase hex without leading zero bytes.
    pub serial: String,
    /// RFC 5280 reason name (`keyCompromise`, …).
    pub reason: RevocationReason,
    /// When it was revoked.
    #[serde(with = "rfc3339")]
    pub revoked_at: OffsetDateTime,
    /// When the certificate expires: after that it leaves the CRLs.
    #[serde(with = "rfc3339")]
    pub not_after: OffsetDateTime,
}

impl Revocation {
    /// The CRL entry; `None` when the serial is not hex (never stored so).
    pub fn crl_entry(&self) -> Option<CrlEntry> {
        Some(CrlEntry {
            serial: decode_hex(&self.serial)?,
            revoked_at: self.revoked_at,
            reason: self.reason.code(),
        })
    }
}

/// RFC 5280 section 5.3.1 reasons, by their ASN.1 names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    /// unspecified (0)
    Unspecified,
    /// keyCompromise (1)
    KeyCompromise,
    /// cACompromise (2)
    #[serde(rename = "cACompromise")]
    CaCompromise,
    /// affiliationChanged (3)
    AffiliationChanged,
    /// superseded (4)
    Superseded,
    /// cessationOfOperation (5)
    CessationOfOperation,
    /// privilegeWithdrawn (9)
    PrivilegeWithdrawn,
}

impl RevocationReason {
    /// Every name accepted by `--reason`.
    pub const NAMES: &'static [&'static str] = &[
        "unspecified",
        "keyCompromise",
        "cACompromise",
        "affiliationChanged",
        "superseded",
        "cessationOfOperation",
        "privilegeWithdrawn",
    ];

    /// The ASN.1 name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::KeyCompromise => "keyCompromise",
            Self::CaCompromise => "cACompromise",
            Self::AffiliationChanged => "affiliationChanged",
            Self::Superseded => "superseded",
            Self::CessationOfOperation => "cessationOfOperation",
            Self::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }

    /// The CRL entry's reason code (unspecified is left out, as RFC 5280 advises).
    pub fn code(self) -> Option<rcgen::RevocationReason> {
        use rcgen::RevocationReason as R;
        match self {
            Self::Unspecified => None,
            Self::KeyCompromise => Some(R::KeyCompromise),
            Self::CaCompromise => Some(R::CaCompromise),
            Self::AffiliationChanged => Some(R::AffiliationChanged),
            Self::Superseded => Some(R::Superseded),
            Self::CessationOfOperation => Some(R::CessationOfOperation),
            Self::PrivilegeWithdrawn => Some(R::PrivilegeWithdrawn),
        }
    }
}

impl std::str::FromStr for RevocationReason {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "unspecified" => Self::Unspecified,
            "keyCompromise" => Self::KeyCompromise,
            "cACompromise" => Self::CaCompromise,
            "affiliationChanged" => Self::AffiliationChanged,
            "superseded" => Self::Superseded,
            "cessationOfOperation" => Self::CessationOfOperation,
            "privilegeWithdrawn" => Self::PrivilegeWithdrawn,
            other => {
                return Err(format!(
                    "unknown revocation reason {other:?}; one of: {}",
                    Self::NAMES.join(", ")
                ))
            }
        })
    }
}

impl fmt::Display for RevocationReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole stored state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredState {
    /// Layout version ([`FORMAT`]).
    pub format: u32,
    /// Grows by one with every saved change.
    pub generation: u64,
    /// Every authority not revoked and not expired.
    pub authorities: Vec<StoredAuthority>,
    /// Revoked leaves not yet expired.
    #[serde(default)]
    pub revocations: Vec<Revocation>,
}

impl StoredState {
    /// Parses a stored document, naming `store` in errors.
    pub fn from_json(store: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let state: Self = serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            store: store.to_owned(),
            reason: e.to_string(),
        })?;
        if state.format != FORMAT {
            return Err(StoreError::Corrupt {
                store: store.to_owned(),
                reason: format!(
                    "format {} is not {FORMAT}: written by another meshid version",
                    state.format
                ),
            });
        }
        Ok(state)
    }

    /// The document, JSON.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        // Serializing owned strings and numbers cannot fail.
        Zeroizing::new(serde_json::to_vec_pretty(self).unwrap_or_default())
    }
}

/// Why the state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("{store}: {source}")]
    Io {
        /// The store (file or Secret).
        store: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The document does not parse.
    #[error("{store} is not a meshid authorities document: {reason}")]
    Corrupt {
        /// The store.
        store: String,
        /// What is wrong.
        reason: String,
    },
    /// Another replica changed the state first (Kubernetes).
    #[error("{store} changed under us (generation {found}, expected {expected}); retry")]
    Conflict {
        /// The store.
        store: String,
        /// The generation found.
        found: u64,
        /// The generation this change was based on.
        expected: u64,
    },
    /// The API server failed (Kubernetes).
    #[error("{store}: {reason}")]
    Api {
        /// The store.
        store: String,
        /// What failed.
        reason: String,
    },
}

/// A boxed future, for the object-safe store trait.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Where the state lives: a file, or a Kubernetes Secret.
pub trait AuthorityStore: Send + Sync + 'static {
    /// The store, for messages (`/var/lib/meshid/authorities.json`, `Secret ns/name`).
    fn name(&self) -> String;
    /// The stored state; `None` when nothing was stored yet.
    fn load(&self) -> StoreFuture<'_, Option<StoredState>>;
    /// Saves `state`, whose generation must be one more than the stored one
    /// (or 1 when nothing is stored): otherwise [`StoreError::Conflict`].
    fn save<'a>(&'a self, state: &'a StoredState) -> StoreFuture<'a, ()>;
}

/// The state in a file (mode 0600), replaced atomically.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store at `path` (normally `DATA_DIR/authorities.json`).
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    fn read(&self) -> Result<Option<StoredState>, StoreError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => StoredState::from_json(&self.name(), &Zeroizing::new(bytes)).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io {
                store: self.name(),
                source,
            }),
        }
    }
}

impl AuthorityStore for FileStore {
    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn load(&self) -> StoreFuture<'_, Option<StoredState>> {
        Box::pin(async move { self.read() })
    }

    fn save<'a>(&'a self, state: &'a StoredState) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            // One process owns the file; the check still catches a second CA
            // started on the same data directory.
            let found = self.read()?.map_or(0, |s| s.generation);
            if found + 1 != state.generation {
                return Err(StoreError::Conflict {
                    store: self.name(),
                    found,
                    expected: state.generation.saturating_sub(1),
                });
            }
            crate::secret_file::write_secret(&self.path, &state.to_json()).map_err(|source| {
                StoreError::Io {
                    store: self.name(),
                    source,
                }
            })
        })
    }
}

/// The state in memory only (tests, benches, a CA whose authority is fixed).
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: std::sync::Mutex<Option<StoredState>>,
}

impl MemoryStore {
    /// A store holding `state`.
    pub fn new(state: Option<StoredState>) -> Self {
        Self {
            state: std::sync::Mutex::new(state),
        }
    }
}

impl AuthorityStore for MemoryStore {
    fn name(&self) -> String {
        "memory".to_owned()
    }

    fn load(&self) -> StoreFuture<'_, Option<StoredState>> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        Box::pin(async move { Ok(state) })
    }

    fn save<'a>(&'a self, state: &'a StoredState) -> StoreFuture<'a, ()> {
        let mut held = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = held.as_ref().map_or(0, |s| s.generation);
        let result = if found + 1 == state.generation {
            *held = Some(state.clone());
            Ok(())
        } else {
            Err(StoreError::Conflict {
                store: "memory".to_owned(),
                found,
                expected: state.generation.saturating_sub(1),
            })
        };
        Box::pin(async move { result })
    }
}

/// Lowercase hex → bytes; `None` when not hex.
pub fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A serial as typed by an operator (`--serial`): hex, optionally with
/// colons or a `0x` prefix, any case; normalized to lowercase hex without
/// leading zero bytes. `None` when it is not a serial.
pub fn normalize_serial(text: &str) -> Option<String> {
    let text = text.trim();
    let text = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    let mut hex: String = text
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.is_empty() || hex.len() > 40 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    if hex.len() % 2 == 1 {
        hex.insert(0, '0');
    }
    while hex.len() > 2 && hex.starts_with("00") {
        hex.drain(..2);
    }
    Some(hex)
}

/// RFC 3339 timestamps in the stored document and the admin protocol.
pub mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    /// Writes `t` as RFC 3339.
    pub fn serialize<S: Serializer>(t: &OffsetDateTime, s: S) -> Result<S::Ok, S::Error> {
        let text = t.format(&Rfc3339).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&text)
    }

    /// Reads an RFC 3339 timestamp.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<OffsetDateTime, D::Error> {
        let text = String::deserialize(d)?;
        OffsetDateTime::parse(&text, &Rfc3339).map_err(serde::de::Error::custom)
    }
}

/// A private key's PEM, kept in zeroizing memory.
mod secret_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use zeroize::Zeroizing;

    pub(super) fn serialize<S: Serializer>(t: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Zeroizing<String>, D::Error> {
        String::deserialize(d).map(Zeroizing::new)
    }
}
