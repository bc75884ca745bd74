//! Where the CA's named files come from: a directory on disk, or named
//! entries held in memory (the data keys of a Kubernetes Secret), so that one
//! set of checks serves both and every error names the file or the entry.
//!
//! Rule enforced here: in-memory entries zeroize on drop and never print
//! (only the store's label and the entry names appear in `Debug`).

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

use super::AuthorityError;
use crate::pki::bundle;
use crate::pki::key::PrivateKey;

/// Where one CA file came from, as error messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// A file on disk.
    File(PathBuf),
    /// An entry of an in-memory store, e.g. key `ca-key.pem` of
    /// `Secret meshid-system/cacerts`.
    Entry {
        /// The store's label, e.g. `Secret meshid-system/cacerts`.
        store: Arc<str>,
        /// The entry's name, e.g. `ca-key.pem` (always one of the layouts' names).
        name: &'static str,
    },
}

impl Origin {
    /// Whether the file name (last path component) or the entry name is `name`.
    pub fn ends_with(&self, name: &str) -> bool {
        match self {
            Self::File(path) => path.ends_with(name),
            Self::Entry { name: entry, .. } => *entry == name,
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Entry { store, name } => write!(f, "{store} key {name}"),
        }
    }
}

/// CA files held in memory under their file names (Istio `cacerts` or
/// `istio-ca-secret` data keys), labelled for error messages.
///
/// Values zeroize on drop; `Debug` shows the label and the names only.
pub struct MemoryFiles {
    label: Arc<str>,
    entries: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for MemoryFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryFiles")
            .field("label", &self.label)
            .field("names", &self.entries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl MemoryFiles {
    /// An empty store; `label` names it in errors (e.g. `Secret meshid-system/cacerts`).
    pub fn new(label: impl Into<String>) -> Self {
        Self {
            label: Arc::from(label.into()),
            entries: BTreeMap::new(),
        }
    }

    /// Adds (or replaces) entry `name`; the bytes are moved, not copied.
    pub fn insert(&mut self, name: impl Into<String>, bytes: Vec<u8>) {
        self.entries.insert(name.into(), Zeroizing::new(bytes));
    }

    /// The store's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The entry names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }
}

/// A directory or an in-memory store, read by file name.
#[derive(Debug, Clone, Copy)]
pub(super) enum Files<'a> {
    Dir(&'a Path),
    Memory(&'a MemoryFiles),
}

impl Files<'_> {
    /// How errors name file `name`.
    pub(super) fn origin(&self, name: &'static str) -> Origin {
        match self {
            Self::Dir(dir) => Origin::File(dir.join(name)),
            Self::Memory(files) => Origin::Entry {
                store: files.label.clone(),
                name,
            },
        }
    }

    /// How errors name the whole store.
    pub(super) fn label(&self) -> String {
        match self {
            Self::Dir(dir) => dir.display().to_string(),
            Self::Memory(files) => files.label.to_string(),
        }
    }

    /// Whether file `name` is present.
    pub(super) fn has(&self, name: &str) -> bool {
        match self {
            Self::Dir(dir) => dir.join(name).exists(),
            Self::Memory(files) => files.entries.contains_key(name),
        }
    }

    /// Whether file `name` is present but holds only whitespace (an unreadable
    /// file is not blank: reading it later reports why).
    pub(super) fn is_blank(&self, name: &'static str) -> bool {
        self.has(name)
            && self
                .read_text(name)
                .is_ok_and(|text| text.trim().is_empty())
    }

    /// The text of file `name` (zeroizing: it may hold a key).
    fn read_text(&self, name: &'static str) -> Result<Zeroizing<String>, AuthorityError> {
        let read_err = |source| AuthorityError::Read {
            path: self.origin(name),
            source,
        };
        match self {
            Self::Dir(dir) => fs::read_to_string(dir.join(name))
                .map(Zeroizing::new)
                .map_err(read_err),
            Self::Memory(files) => {
                let bytes = files.entries.get(name).ok_or_else(|| {
                    read_err(io::Error::new(io::ErrorKind::NotFound, "no such key"))
                })?;
                std::str::from_utf8(bytes)
                    .map(|text| Zeroizing::new(text.to_owned()))
                    .map_err(|e| read_err(io::Error::new(io::ErrorKind::InvalidData, e)))
            }
        }
    }

    /// The one private key in file `name`.
    pub(super) fn read_key(&self, name: &'static str) -> Result<PrivateKey, AuthorityError> {
        let text = self.read_text(name)?;
        PrivateKey::from_pem(&text).map_err(|source| AuthorityError::Key {
            path: self.origin(name),
            source,
        })
    }

    /// Every certificate in file `name`, in order.
    pub(super) fn read_certs(
        &self,
        name: &'static str,
    ) -> Result<Vec<CertificateDer<'static>>, AuthorityError> {
        let text = self.read_text(name)?;
        bundle::parse_pem_certs(&text).map_err(|source| AuthorityError::Bundle {
            path: self.origin(name),
            source,
        })
    }
}
