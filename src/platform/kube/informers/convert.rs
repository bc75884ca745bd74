//! Kubernetes objects → our facts: pure conversions, and the reflector
//! [`Lookup`] keys of the converted types.
//!
//! Owns the mapping of API fields onto [`Pod`], [`Namespace`] and
//! [`PeerAuthentication`]. Rule enforced: a PeerAuthentication is read exactly
//! (the `policy` module's strict decoding, then Istio's validation) or not at
//! all: the error names the object and serde's reason, for the caller to log.

use std::borrow::Cow;

use ::kube::api::{ApiResource, DynamicObject, TypeMeta};
use ::kube::runtime::reflector::Lookup;
use ::kube::runtime::watcher::Event;
use k8s_openapi::api::core::v1 as k8s;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use time::OffsetDateTime;

use crate::platform::{Namespace, Pod, DEFAULT_SERVICE_ACCOUNT};
use crate::policy::PeerAuthentication;

/// The same watcher event, its object converted by `f`.
pub(crate) fn map_event<A, B>(event: Event<A>, f: impl Fn(A) -> B) -> Event<B> {
    match event {
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
    }
}

/// A Kubernetes Pod as our [`Pod`]: `spec.serviceAccountName` defaults to
/// `default` (as the API server's admission does), missing maps are empty.
pub(crate) fn pod(pod: k8s::Pod) -> Pod {
    let meta = pod.metadata;
    let spec = pod.spec.unwrap_or_default();
    Pod {
        namespace: meta.namespace.unwrap_or_default(),
        name: meta.name.unwrap_or_default(),
        uid: meta.uid.unwrap_or_default(),
        node_name: spec.node_name.filter(|n| !n.is_empty()),
        service_account: spec
            .service_account_name
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned()),
        labels: meta.labels.unwrap_or_default(),
        annotations: meta.annotations.unwrap_or_default(),
        pod_ips: pod.status.as_ref().map(pod_ips).unwrap_or_default(),
        phase: pod.status.and_then(|s| s.phase),
        creation_timestamp: meta.creation_timestamp.as_ref().and_then(timestamp),
    }
}

/// `status.podIPs`, else `status.podIP`; entries that are not addresses
/// are skipped (the API server validates them, so there are none).
fn pod_ips(status: &k8s_openapi::api::core::v1::PodStatus) -> Vec<std::net::IpAddr> {
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<std::net::IpAddr> = listed.filter_map(|ip| ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(
            status
                .pod_ip
                .as_deref()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok()),
        );
    }
    ips
}

/// A Kubernetes Namespace as our [`Namespace`].
pub(crate) fn namespace(namespace: k8s::Namespace) -> Namespace {
    Namespace {
        name: namespace.metadata.name.unwrap_or_default(),
        labels: namespace.metadata.labels.unwrap_or_default(),
    }
}

/// Why a PeerAuthentication from the API server is not used.
#[derive(Debug, thiserror::Error)]
#[error("PeerAuthentication {namespace}/{name} ({api_version}) is ignored: {reason}")]
pub(crate) struct BadPolicy {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) api_version: String,
    pub(crate) reason: String,
}

/// A PeerAuthentication served as `resource` as our [`PeerAuthentication`]:
/// decoded by the `policy` module's strict rules (an unknown mode such as
/// `STRICTT` is an error naming `spec.mtls.mode`), then validated as Istio does.
pub(crate) fn peer_authentication(
    object: &DynamicObject,
    resource: &ApiResource,
) -> Result<PeerAuthentication, BadPolicy> {
    let bad = |reason: String| BadPolicy {
        namespace: object.metadata.namespace.clone().unwrap_or_default(),
        name: object.metadata.name.clone().unwrap_or_default(),
        api_version: resource.api_version.clone(),
        reason,
    };
    let mut object = object.clone();
    // Watch events carry apiVersion and kind; fill them in when a list item leaves them out.
    if object.types.is_none() {
        object.types = Some(TypeMeta {
            api_version: resource.api_version.clone(),
            kind: resource.kind.clone(),
        });
    }
    // Through YAML, whose errors carry serde's path (`spec.mtls.mode: unknown variant …`).
    let text = serde_json::to_string(&object).map_err(|e| bad(e.to_string()))?;
    let policy: PeerAuthentication = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    policy.validate().map_err(|e| bad(e.to_string()))?;
    Ok(policy)
}

fn timestamp(time: &Time) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(time.0.as_nanosecond()).ok()
}

/// Reflector keys of our [`Pod`], so a reflector store can hold the converted
/// pods (a fraction of the API objects' size) instead of the API objects.
impl Lookup for Pod {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.namespace))
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.uid))
    }
}

/// Reflector keys of our [`Namespace`] (cluster-scoped).
impl Lookup for Namespace {
    type DynamicType = ();

    fn kind(_: &()) -> Cow<'_, str> {
        "Namespace".into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        "namespaces".into()
    }

    fn name(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(&self.name))
    }

    fn namespace(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn resource_version(&self) -> Option<Cow<'_, str>> {
        None
    }

    fn uid(&self) -> Option<Cow<'_, str>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{ApiVersion, MtlsMode};
    use serde_json::json;
    use std::collections::BTreeMap;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn k8s_pod(value: serde_json::Value) -> k8s::Pod {
        serde_json::from_value(value).expect("pod JSON")
    }

    #[test]
    fn pod_conversion_keeps_every_fact() {
        let got = pod(k8s_pod(json!({
            "metadata": {
                "name": "web-1", "namespace": "shop", "uid": "u-1",
                "resourceVersion": "7",
                "creationTimestamp": "2024-05-01T10:00:00Z",
                "labels": {"app": "web"},
                "annotations": {"meshid.io/unix-uid": "1000"},
            },
            "spec": {"nodeName": "node-a", "serviceAccountName": "web", "containers": []},
            "status": {"phase": "Running"},
        })));
        assert_eq!(
            got,
            Pod {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u-1".into(),
                node_name: Some("node-a".into()),
                service_account: "web".into(),
                labels: labels(&[("app", "web")]),
                annotations: labels(&[("meshid.io/unix-uid", "1000")]),
                phase: Some("Running".into()),
                creation_timestamp: Some(time::macros::datetime!(2024-05-01 10:00:00 UTC)),
                pod_ips: Vec::new(),
            }
        );
    }

    #[test]
    fn pod_without_service_account_or_node_gets_defaults() {
        let got = pod(k8s_pod(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"containers": []},
        })));
        assert_eq!(got.service_account, DEFAULT_SERVICE_ACCOUNT);
        assert_eq!(got.node_name, None);
        assert_eq!(got.phase, None);
        assert!(got.labels.is_empty() && got.annotations.is_empty());
        assert_eq!(got.creation_timestamp, None);
    }

    #[test]
    fn namespace_conversion_keeps_labels() {
        let ns: k8s::Namespace = serde_json::from_value(json!({
            "metadata": {"name": "shop", "uid": "n1", "labels": {"istio-injection": "enabled"}},
        }))
        .expect("namespace JSON");
        assert_eq!(
            namespace(ns),
            Namespace {
                name: "shop".into(),
                labels: labels(&[("istio-injection", "enabled")])
            }
        );
    }

    fn resource(version: &str) -> ApiResource {
        super::super::policy_resource(version)
    }

    fn dynamic(value: serde_json::Value) -> DynamicObject {
        serde_json::from_value(value).expect("object JSON")
    }

    #[test]
    fn policy_list_item_without_type_fields_decodes() {
        let object = dynamic(json!({
            "metadata": {"name": "default", "namespace": "shop", "uid": "p1",
                         "resourceVersion": "3", "creationTimestamp": "2024-05-01T10:00:00Z",
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"mtls": {"mode": "STRICT"}},
        }));
        let policy = peer_authentication(&object, &resource("v1")).expect("decodes");
        assert_eq!(policy.api_version, ApiVersion::V1);
        assert_eq!(policy.mode(), MtlsMode::Strict);
        assert_eq!(policy.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(policy.metadata.uid.as_deref(), Some("p1"));
    }

    #[test]
    fn policy_with_unknown_mode_is_refused_naming_it_and_the_field() {
        let object = dynamic(json!({
            "apiVersion": "security.istio.io/v1beta1", "kind": "PeerAuthentication",
            "metadata": {"name": "typo", "namespace": "shop", "uid": "p2", "resourceVersion": "4"},
            "spec": {"mtls": {"mode": "STRICTT"}},
        }));
        let err = peer_authentication(&object, &resource("v1beta1"))
            .expect_err("STRICTT")
            .to_string();
        assert!(err.contains("shop/typo"), "{err}");
        assert!(err.contains("spec.mtls.mode"), "{err}");
        assert!(err.contains("STRICTT"), "{err}");
    }

    #[test]
    fn policy_failing_istio_validation_is_refused() {
        let object = dynamic(json!({
            "metadata": {"name": "ports", "namespace": "shop"},
            "spec": {"portLevelMtls": {"8080": {"mode": "DISABLE"}}},
        }));
        let err = peer_authentication(&object, &resource("v1beta1"))
            .expect_err("port-level on a namespace-wide policy")
            .to_string();
        assert!(err.contains("spec.portLevelMtls"), "{err}");
    }
}
