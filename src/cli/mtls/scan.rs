//! A lenient look at the manifest files: which file holds which Pod and
//! PeerAuthentication, read as plain YAML values.
//!
//! The platform answers *what* the manifests say, but not *where*: `set-mode`
//! must know which file holds a namespace's policy (and whether it holds
//! anything else) before it rewrites it, and `status` needs every pod's name.
//! Strictness stays the platform's job: whatever this scan finds is checked
//! by opening the directory with the local platform afterwards. Files are
//! listed by the platform's rule (`*.yaml` / `*.yml`, hidden files skipped).

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Deserialize;
use serde_yaml::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::policy::PolicyRef;

/// The namespace of an object whose manifest names none, as kubectl assumes.
const DEFAULT_NAMESPACE: &str = "default";

/// A PeerAuthentication document and where it lives.
#[derive(Debug, Clone)]
pub(super) struct FoundPolicy {
    /// The file.
    pub(super) file: PathBuf,
    /// Whether it is the only (non-empty) document of its file, so that the
    /// file can be rewritten without touching anything else.
    pub(super) alone_in_file: bool,
    /// Namespace, name, creation time.
    pub(super) reference: PolicyRef,
    /// No selector, or an empty `matchLabels`.
    pub(super) namespace_wide: bool,
    /// The document itself, every field kept.
    pub(super) document: Value,
}

/// What the scan found.
#[derive(Debug, Default)]
pub(super) struct Scan {
    /// `(namespace, name)` of every Pod document.
    pub(super) pods: Vec<(String, String)>,
    /// Every PeerAuthentication document.
    pub(super) policies: Vec<FoundPolicy>,
    /// Files and how many non-empty documents each holds (`None`: not YAML).
    pub(super) files: Vec<(PathBuf, Option<usize>)>,
}

impl Scan {
    /// How many non-empty documents `file` holds: `None` when the scan did not
    /// list it, `Some(None)` when it is not YAML.
    pub(super) fn documents_in(&self, file: &Path) -> Option<Option<usize>> {
        self.files.iter().find(|(f, _)| f == file).map(|(_, n)| *n)
    }
}

/// Reads every manifest file of `dir`.
pub(super) fn scan(dir: &Path) -> anyhow::Result<Scan> {
    let mut out = Scan::default();
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the manifest directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let path = entry.path();
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let Some(documents) = documents(&text) else {
            out.files.push((file, None));
            continue;
        };
        let alone = documents.len() == 1;
        for document in &documents {
            let kind = document.get("kind").and_then(Value::as_str);
            let meta = document.get("metadata");
            let field = |key: &str| meta.and_then(|m| m.get(key)).and_then(Value::as_str);
            let namespace = field("namespace").unwrap_or(DEFAULT_NAMESPACE).to_owned();
            let name = field("name").unwrap_or_default().to_owned();
            match kind {
                Some("Pod") => out.pods.push((namespace, name)),
                Some("PeerAuthentication") => out.policies.push(FoundPolicy {
                    file: file.clone(),
                    alone_in_file: alone,
                    reference: PolicyRef {
                        namespace,
                        name,
                        creation_timestamp: field("creationTimestamp")
                            .and_then(|t| OffsetDateTime::parse(t, &Rfc3339).ok()),
                    },
                    namespace_wide: is_namespace_wide(document),
                    document: document.clone(),
                }),
                _ => {}
            }
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
