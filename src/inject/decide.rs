//! Whether a pod is injected, or why it is left alone (pure).
//!
//! Rules, in order (the first that applies decides):
//! 1. a pod already injected by meshid is left alone (injection is idempotent);
//! 2. a pod injected by Istio, or running a container named `istio-proxy`;
//! 3. a `hostNetwork` pod (capture rules would rewrite the node's netfilter);
//! 4. meshid's own pods (its namespace, or `app.kubernetes.io/part-of: meshid`):
//!    the mesh must never need itself to start;
//! 5. `sidecar.meshid.io/inject: "false"` on the pod;
//! 6. a namespace labelled `meshid.io/inject=disabled`;
//! 7. `sidecar.meshid.io/inject: "true"` on the pod, or a namespace labelled
//!    `enabled`, injects; anything else is left alone.

use serde_json::Value;

use super::mutate::Denied;
use super::{InjectConfig, ISTIO_STATUS_ANNOTATION, POD_INJECT, STATUS_ANNOTATION};

/// The namespace's `meshid.io/inject` label, as the injector saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceInjection {
    /// `enabled`.
    Enabled,
    /// `disabled`.
    Disabled,
    /// No label (or the namespace is unknown).
    Unset,
    /// Another value: ignored (treated as unset), and logged by the caller.
    Other(String),
    /// `meshid inject -f`: the operator asked for this file to be injected.
    Offline,
}

impl NamespaceInjection {
    /// From the label's value.
    pub fn from_label(value: Option<&str>) -> Self {
        match value {
            None => Self::Unset,
            Some("enabled") => Self::Enabled,
            Some("disabled") => Self::Disabled,
            Some(other) => Self::Other(other.to_owned()),
        }
    }
}

/// What to do with a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Add the proxy.
    Inject,
    /// Leave it alone, for this reason (written to `sidecar.meshid.io/skipped`).
    Skip(String),
    /// Already injected by meshid: leave it exactly as it is, so that a
    /// second pass (`reinvocationPolicy: IfNeeded`, or `inject -f` on its own
    /// output) changes nothing; `sidecar.meshid.io/status` already says why.
    AlreadyInjected,
}

/// Decides for a pod template (`metadata` and `spec` of a Pod or of a
/// workload's template) in `namespace`.
pub fn decide(
    metadata: &Value,
    spec: &Value,
    namespace: &str,
    ns_label: &NamespaceInjection,
    cfg: &InjectConfig,
) -> Result<Decision, Denied> {
    let annotation = |key: &str| metadata.pointer(&pointer(&["annotations", key]));
    let label = |key: &str| metadata.pointer(&pointer(&["labels", key]));
    let skip = |why: &str| Ok(Decision::Skip(why.to_owned()));

    if annotation(STATUS_ANNOTATION).is_some() {
        return Ok(Decision::AlreadyInjected);
    }
    let istio_proxy = ["containers", "initContainers"].iter().any(|list| {
        spec.get(list)
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == "istio-proxy"))
    });
    if annotation(ISTIO_STATUS_ANNOTATION).is_some() || istio_proxy {
        return skip(
            "already injected by Istio (sidecar.istio.io/status or an istio-proxy container)",
        );
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return skip("hostNetwork pod: capture rules would change the node's own netfilter rules");
    }
    if namespace == cfg.system_namespace
        || label("app.kubernetes.io/part-of").and_then(Value::as_str) == Some("meshid")
    {
        return skip("meshid's own pod: the mesh must not need itself to start");
    }
    // The pod's own wish: an annotation, or a label (which the webhook's
    // objectSelector can match in namespaces that are not labelled).
    let wish = match annotation(POD_INJECT).or_else(|| label(POD_INJECT)) {
        None => None,
        Some(Value::String(s)) if s == "true" => Some(true),
        Some(Value::String(s)) if s == "false" => Some(false),
        Some(other) => {
            return Err(Denied::BadInjectValue {
                value: other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_owned),
            })
        }
    };
    match (ns_label, wish) {
        (_, Some(false)) => skip("sidecar.meshid.io/inject is \"false\""),
        (NamespaceInjection::Disabled, _) => skip("namespace is labelled meshid.io/inject=disabled"),
        (NamespaceInjection::Enabled | NamespaceInjection::Offline, _) | (_, Some(true)) => {
            Ok(Decision::Inject)
        }
        (NamespaceInjection::Other(value), None) => Ok(Decision::Skip(format!(
            "namespace label meshid.io/inject={value:?} is neither enabled nor disabled (ignored)"
        ))),
        (NamespaceInjection::Unset, None) => {
            skip("namespace is not labelled meshid.io/inject=enabled and the pod does not ask for injection")
        }
    }
}

/// A JSON pointer to `parts` (each escaped).
pub(crate) fn pointer(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect()
}
