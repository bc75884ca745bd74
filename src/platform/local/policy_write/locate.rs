//! A lenient look at the manifest files: which file holds which namespace-wide
//! PeerAuthentication, read as plain YAML values.
//!
//! The local platform answers *what* the manifests say and records which file
//! each object came from, but it refuses a directory with any bad document.
//! `set-mode` must still find a namespace's policy when that very policy is
//! what is broken (a misspelt mode it is asked to repair), and must know
//! whether the file holds anything else before it rewrites it. So this reads
//! every document as a plain value and keeps it whole. Strictness stays the
//! platform's job: whatever is written after this look is checked by loading
//! the directory with the local platform. Files are listed by the platform's
//! rule ([`is_manifest_file_name`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::PolicyWriteError;
use crate::platform::local::manifest::is_manifest_file_name;
use crate::policy::{PolicyRef, DEFAULT_NAMESPACE};

/// A namespace-wide PeerAuthentication document and where it lives.
#[derive(Debug, Clone)]
pub(super) struct FoundPolicy {
    /// The file.
    pub(super) file: PathBuf,
    /// Whether it is the only (non-empty) document of its file, so that the
    /// file can be rewritten without touching anything else.
    pub(super) alone_in_file: bool,
    /// Namespace, name, creation time.
    pub(super) reference: PolicyRef,
    /// The document itself, every field kept.
    pub(super) document: Value,
}

/// What the look found.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Every namespace-wide PeerAuthentication document.
    pub(super) policies: Vec<FoundPolicy>,
    /// Files and how many non-empty documents each holds (`None`: not YAML).
    pub(super) files: Vec<(PathBuf, Option<usize>)>,
}

impl Found {
    /// How many non-empty documents `file` holds: `None` when the look did not
    /// list it, `Some(None)` when it is not YAML.
    pub(super) fn documents_in(&self, file: &Path) -> Option<Option<usize>> {
        self.files.iter().find(|(f, _)| f == file).map(|(_, n)| *n)
    }
}

/// Reads every manifest file of `dir`.
pub(super) fn locate(dir: &Path) -> Result<Found, PolicyWriteError> {
    let mut out = Found::default();
    let list_error = |source| PolicyWriteError::ListDir {
        dir: dir.to_owned(),
        source,
    };
    let entries = std::fs::read_dir(dir).map_err(list_error)?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| PolicyWriteError::ReadDir {
            dir: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        if !name.to_str().is_some_and(is_manifest_file_name) {
            continue;
        }
        let path = entry.path();
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| PolicyWriteError::Read {
            path: file.clone(),
            source,
        })?;
        let Some(documents) = documents(&text) else {
            out.files.push((file, None));
            continue;
        };
        let alone = documents.len() == 1;
        for document in &documents {
            if document.get("kind").and_then(Value::as_str) != Some("PeerAuthentication")
                || !is_namespace_wide(document)
            {
                continue;
            }
            let meta = document.get("metadata");
            let field = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
            out.policies.push(FoundPolicy {
                file: file.clone(),
                alone_in_file: alone,
                reference: PolicyRef {
                    namespace: field("namespace").unwrap_or(DEFAULT_NAMESPACE).to_owned(),
                    name: field("name").unwrap_or_default().to_owned(),
                    creation_timestamp: field("creationTimestamp")
                        .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
                },
                document: document.clone(),
            });
        }
        out.files.push((file, Some(documents.len())));
    }
    Ok(out)
}

/// The non-empty documents of a YAML text, or `None` if it is not YAML.
fn documents(text: &str) -> Option<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        // The iterator repeats a syntax error forever: stop at the first.
        match Value::deserialize(document) {
            Ok(Value::Null) => {}
            Ok(value) => out.push(value),
            Err(_) => return None,
        }
    }
    Some(out)
}

/// No `spec.selector.matchLabels`, or an empty one (Istio's rule).
fn is_namespace_wide(document: &Value) -> bool {
    document
        .get("spec")
        .and_then(|s| s.get("selector"))
        .and_then(|s| s.get("matchLabels"))
        .and_then(Value::as_mapping)
        .is_none_or(|labels| labels.is_empty())
}
