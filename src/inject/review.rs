//! `admission.k8s.io` AdmissionReview in, the answer out (pure).
//!
//! `v1` is what every supported API server sends; `v1beta1` (same shape) is
//! answered in kind. The answer to a Pod CREATE is a JSONPatch computed
//! from the pod before and after [`inject_template`] ([`super::patch`]), so
//! it only adds what the injection added and leaves every other field as the API server sent
//! it. A pod that cannot be injected as asked is denied with a message
//! naming the annotation or container at fault; everything else is allowed.

use base64::Engine as _;
use serde_json::{json, Value};

use super::mutate::{inject_template, Denied, Outcome};
use super::{InjectConfig, NamespaceInjection};

/// The largest AdmissionReview body read: a Pod is at most ~1.5 MiB in etcd,
/// and a review may carry it twice (`object`, `oldObject`).
pub const MAX_REVIEW_BYTES: usize = 6 * 1024 * 1024;

/// Why a body is not an AdmissionReview we can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// Not JSON.
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    /// Larger than [`MAX_REVIEW_BYTES`].
    #[error("the body has {size} bytes or more; an AdmissionReview is at most {MAX_REVIEW_BYTES}")]
    TooLarge {
        /// How much was seen.
        size: usize,
    },
    /// JSON of another kind or API version.
    #[error("expected an AdmissionReview of admission.k8s.io/v1 or v1beta1, got kind {kind:?} of apiVersion {api_version:?}")]
    NotAReview {
        /// `kind`.
        kind: String,
        /// `apiVersion`.
        api_version: String,
    },
    /// No `request`, or no `request.uid`.
    #[error("the AdmissionReview has no {0}")]
    Missing(&'static str),
}

/// What was done with one review (for logs and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A pod was injected.
    Injected,
    /// A pod was left alone, for this reason.
    Skipped(String),
    /// A pod was refused.
    Denied(String),
    /// Not a Pod CREATE: allowed unchanged.
    Ignored(String),
}

impl Verdict {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Skipped(_) => "skipped",
            Self::Denied(_) => "denied",
            Self::Ignored(_) => "ignored",
        }
    }
}

/// The answer: the AdmissionReview to send back, and what it says.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The response AdmissionReview (same apiVersion as the request).
    pub review: Value,
    /// The verdict.
    pub verdict: Verdict,
    /// The request's namespace and pod name (or generateName), for logs.
    pub pod: String,
}

/// Answers one AdmissionReview body. `namespace_label` tells the namespace's
/// `meshid.io/inject` label.
pub fn answer(
    body: &[u8],
    namespace_label: impl Fn(&str) -> NamespaceInjection,
    cfg: &InjectConfig,
) -> Result<Answer, ReviewError> {
    if body.len() > MAX_REVIEW_BYTES {
        return Err(ReviewError::TooLarge { size: body.len() });
    }
    let review: Value =
        serde_json::from_slice(body).map_err(|e| ReviewError::NotJson(e.to_string()))?;
    let api_version = review["apiVersion"].as_str().unwrap_or_default();
    let kind = review["kind"].as_str().unwrap_or_default();
    if kind != "AdmissionReview"
        || !matches!(
            api_version,
            "admission.k8s.io/v1" | "admission.k8s.io/v1beta1"
        )
    {
        return Err(ReviewError::NotAReview {
            kind: kind.to_owned(),
            api_version: api_version.to_owned(),
        });
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or(ReviewError::Missing("request"))?;
    let uid = request["uid"]
        .as_str()
        .filter(|u| !u.is_empty())
        .ok_or(ReviewError::Missing("request.uid"))?;
    let namespace = request["namespace"]
        .as_str()
        .or_else(|| {
            request
                .pointer("/object/metadata/namespace")
                .and_then(Value::as_str)
        })
        .unwrap_or("default");
    let name = request
        .pointer("/object/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .or_else(|| {
            request
                .pointer("/object/metadata/generateName")
                .and_then(Value::as_str)
        })
        .unwrap_or("");
    let pod = format!("{namespace}/{name}");

    let mut response = json!({"uid": uid, "allowed": true});
    let is_pod = request.pointer("/kind/kind").and_then(Value::as_str) == Some("Pod")
        && request
            .pointer("/kind/group")
            .and_then(Value::as_str)
            .unwrap_or("")
            .is_empty();
    let operation = request["operation"].as_str().unwrap_or("");
    let verdict = if !is_pod || operation != "CREATE" {
        Verdict::Ignored(format!(
            "{operation} of {} is not a Pod CREATE",
            request
                .pointer("/kind/kind")
                .and_then(Value::as_str)
                .unwrap_or("?")
        ))
    } else if let Some(original) = request.get("object").filter(|o| o.is_object()) {
        let mut pod_after = original.clone();
        match inject_template(&mut pod_after, namespace, &namespace_label(namespace), cfg) {
            Ok(outcome) => {
                let patch = super::patch::diff(original, &pod_after);
                if !patch.is_empty() {
                    let patch = serde_json::to_vec(&patch).unwrap_or_default();
                    response["patchType"] = json!("JSONPatch");
                    response["patch"] =
                        json!(base64::engine::general_purpose::STANDARD.encode(patch));
                }
                match outcome {
                    Outcome::Injected => Verdict::Injected,
                    Outcome::Skipped(why) => Verdict::Skipped(why),
                }
            }
            Err(denied) => deny(&mut response, &denied),
        }
    } else {
        deny(
            &mut response,
            &Denied::Malformed("the request carries no object".to_owned()),
        )
    };
    Ok(Answer {
        review: json!({
            "apiVersion": api_version,
            "kind": "AdmissionReview",
            "response": response,
        }),
        verdict,
        pod,
    })
}

fn deny(response: &mut Value, denied: &Denied) -> Verdict {
    let message = format!("meshid injector: {denied}");
    response["allowed"] = json!(false);
    response["status"] = json!({"code": 400, "reason": "BadRequest", "message": message});
    Verdict::Denied(message)
}

#[cfg(test)]
mod tests;
