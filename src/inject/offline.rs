//! `meshid inject -f FILE`: the admission mutation applied to YAML documents
//! (like `istioctl kube-inject`). Pods and the pod templates of Deployments,
//! StatefulSets, DaemonSets, ReplicaSets, Jobs and CronJobs are injected;
//! every other document is passed through unchanged.

use serde::Deserialize;
use serde_json::Value;

use super::mutate::{inject_template, Denied, Outcome};
use super::{InjectConfig, NamespaceInjection};

/// Why a file could not be injected. Nothing is printed then.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfflineError {
    /// A document is not YAML (or not an object).
    #[error("document {index}: {message}")]
    BadDocument {
        /// 1-based.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// A workload whose pod template cannot be injected.
    #[error("document {index} ({kind} {name}): {source}")]
    Denied {
        /// 1-based.
        index: usize,
        /// `kind`.
        kind: String,
        /// `metadata.name`.
        name: String,
        /// Why.
        source: Box<Denied>,
    },
}

/// One document's result, for the summary on stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentReport {
    /// `kind name`.
    pub object: String,
    /// Injected, skipped (why) or passed through (None).
    pub outcome: Option<Outcome>,
}

/// Injects every pod template in the YAML stream `input`; returns the YAML
/// to print and what happened to each document.
pub fn inject_yaml(
    input: &str,
    cfg: &InjectConfig,
) -> Result<(String, Vec<DocumentReport>), OfflineError> {
    let mut out = Vec::new();
    let mut reports = Vec::new();
    for (i, document) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let index = i + 1;
        let doc = Value::deserialize(document).map_err(|e| OfflineError::BadDocument {
            index,
            message: e.to_string(),
        })?;
        if doc.is_null() {
            continue;
        }
        if !doc.is_object() {
            return Err(OfflineError::BadDocument {
                index,
                message: "not a Kubernetes object (a YAML mapping)".to_owned(),
            });
        }
        let (doc, report) = inject_document(doc, index, cfg)?;
        let yaml = serde_yaml::to_string(&doc).map_err(|e| OfflineError::BadDocument {
            index,
            message: e.to_string(),
        })?;
        out.push(yaml);
        reports.push(report);
    }
    Ok((out.join("---\n"), reports))
}

fn inject_document(
    mut doc: Value,
    index: usize,
    cfg: &InjectConfig,
) -> Result<(Value, DocumentReport), OfflineError> {
    let kind = doc["kind"].as_str().unwrap_or("").to_owned();
    let name = doc
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let namespace = doc
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let object = format!("{kind} {name}");
    let path = match kind.as_str() {
        "Pod" => Some(""),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" | "Job" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    };
    let Some(path) = path else {
        return Ok((
            doc,
            DocumentReport {
                object,
                outcome: None,
            },
        ));
    };
    let denied = |source| OfflineError::Denied {
        index,
        kind: kind.clone(),
        name: name.clone(),
        source: Box::new(source),
    };
    let template = doc
        .pointer_mut(path)
        .ok_or_else(|| denied(Denied::Malformed(format!("{kind} has no {path}"))))?;
    let outcome =
        inject_template(template, &namespace, &NamespaceInjection::Offline, cfg).map_err(denied)?;
    Ok((
        doc,
        DocumentReport {
            object,
            outcome: Some(outcome),
        },
    ))
}

#[cfg(test)]
mod tests;
