//! The PeerAuthentication resource (`security.istio.io/v1beta1` and `v1`), field for field.
//!
//! Owns decoding and encoding only (serde, YAML or JSON); what a policy means
//! for a workload is resolution's job. Rule enforced: `spec`, `selector`,
//! `mtls` and each `portLevelMtls` entry refuse unknown fields, and a mode
//! outside UNSET|DISABLE|PERMISSIVE|STRICT|AUDIT is an error naming the field.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

use super::PolicyError;

/// The mTLS mode of a policy (Istio's `PeerAuthentication.MutualTLS.Mode`, plus AUDIT).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Inherit from the enclosing scope (workload → namespace → mesh); PERMISSIVE at the top.
    #[default]
    Unset,
    /// No TLS termination: bytes pass through untouched.
    Disable,
    /// mTLS when the client speaks TLS, plaintext accepted too.
    Permissive,
    /// mTLS only; plaintext and certificate-less TLS are refused.
    Strict,
    /// Ours, not Istio's: behaves as PERMISSIVE, and logs and counts every
    /// connection that STRICT would refuse, so an operator sees what would
    /// break before switching (Linkerd has such a mode). Istio's own tools do
    /// not know this value: keep AUDIT policies away from an Istio control plane.
    Audit,
}

impl MtlsMode {
    /// Every mode, in declaration order.
    pub const ALL: [MtlsMode; 5] = [
        Self::Unset,
        Self::Disable,
        Self::Permissive,
        Self::Strict,
        Self::Audit,
    ];

    /// The YAML spelling: `UNSET`, `DISABLE`, `PERMISSIVE`, `STRICT` or `AUDIT`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unset => "UNSET",
            Self::Disable => "DISABLE",
            Self::Permissive => "PERMISSIVE",
            Self::Strict => "STRICT",
            Self::Audit => "AUDIT",
        }
    }
}

impl fmt::Display for MtlsMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MtlsMode {
    type Err = String;

    /// Accepts the YAML spelling in any letter case (`strict`, `STRICT`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown mTLS mode {s:?}: expected one of UNSET, DISABLE, PERMISSIVE, STRICT, AUDIT"))
    }
}

/// `apiVersion`: both versions Istio serves, so existing files apply unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum ApiVersion {
    /// `security.istio.io/v1beta1`, the version most existing policies use.
    #[default]
    #[serde(rename = "security.istio.io/v1beta1")]
    V1Beta1,
    /// `security.istio.io/v1` (Istio 1.22 and later), same schema.
    #[serde(rename = "security.istio.io/v1")]
    V1,
}

/// `kind`: only `PeerAuthentication` decodes into this type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Kind {
    /// `PeerAuthentication`.
    #[default]
    PeerAuthentication,
}

/// A PeerAuthentication object, as written in YAML or returned by an API server.
///
/// The top level ignores fields it does not know (an API server adds `status`);
/// the `spec` does not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// `security.istio.io/v1beta1` or `security.istio.io/v1`.
    pub api_version: ApiVersion,
    /// Always `PeerAuthentication`.
    pub kind: Kind,
    /// Name, namespace, creation time (the oldest policy in a scope wins), labels.
    pub metadata: ObjectMeta,
    /// The policy itself; an absent or empty spec is a namespace-wide UNSET.
    #[serde(default, deserialize_with = "null_as_default")]
    pub spec: PeerAuthenticationSpec,
}

/// The parts of Kubernetes' `ObjectMeta` a policy needs; other bookkeeping
/// fields (`managedFields`, `ownerReferences`, `finalizers`, …) are ignored,
/// so objects read back from an API server decode.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`; absent in a hand-written file means the reader's
    /// default namespace (`default` for local manifests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `metadata.creationTimestamp` (RFC 3339): within a scope the oldest policy
    /// wins, as in Istio. Absent (hand-written files) sorts as oldest.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<OffsetDateTime>,
    /// `metadata.labels`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// `metadata.annotations`.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// `metadata.uid`, set by an API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `metadata.resourceVersion`, set by an API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// `spec` of a PeerAuthentication. Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// Which workloads (pods, by label) the policy applies to; absent or empty
    /// means every workload of the namespace (or of the mesh, in the root namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode for every port; absent means UNSET (inherit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// Per-port overrides, keyed by the workload's port number (YAML integer
    /// keys; JSON string keys such as `"8080"` decode too). Only honoured on
    /// workload policies (with a selector), as in Istio.
    #[serde(
        default,
        deserialize_with = "null_as_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub port_level_mtls: BTreeMap<u32, MutualTls>,
}

/// `spec.selector` (Istio's `WorkloadSelector`). Unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// Every label here must be on the pod, with the same value.
    #[serde(default, deserialize_with = "null_as_default")]
    pub match_labels: BTreeMap<String, String>,
}

/// `spec.mtls` and each `spec.portLevelMtls` value. Unknown fields are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MutualTls {
    /// The mode; absent means UNSET.
    #[serde(default)]
    pub mode: MtlsMode,
}

impl PeerAuthentication {
    /// A namespace-wide policy (no selector) setting `mode`, as `meshid mtls set-mode` writes it.
    pub fn namespace_wide(namespace: &str, name: &str, mode: MtlsMode) -> Self {
        Self {
            api_version: ApiVersion::V1Beta1,
            kind: Kind::PeerAuthentication,
            metadata: ObjectMeta {
                name: name.to_owned(),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            spec: PeerAuthenticationSpec {
                mtls: Some(MutualTls { mode }),
                ..PeerAuthenticationSpec::default()
            },
        }
    }

    /// `metadata.namespace`, or `default_namespace` when the file left it out.
    pub fn namespace_or<'a>(&'a self, default_namespace: &'a str) -> &'a str {
        self.metadata
            .namespace
            .as_deref()
            .unwrap_or(default_namespace)
    }

    /// Whether the policy applies to a whole namespace (no selector, or an empty one).
    pub fn is_namespace_wide(&self) -> bool {
        self.spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.is_empty())
    }

    /// Whether the selector matches a pod with `labels` (a namespace-wide policy matches all).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.spec
            .selector
            .as_ref()
            .is_none_or(|s| s.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))
    }

    /// The mode of `spec.mtls` (UNSET when absent).
    pub fn mode(&self) -> MtlsMode {
        self.spec.mtls.map(|m| m.mode).unwrap_or_default()
    }

    /// Istio's validation rules that decoding cannot express: a name; ports in
    /// 1..=65535; port-level entries only on a policy with a non-empty selector
    /// (mesh- and namespace-wide policies cannot have them).
    pub fn validate(&self) -> Result<(), PolicyError> {
        let policy = format!("{}/{}", self.namespace_or("default"), self.metadata.name);
        let invalid = |field: &str, message: String| PolicyError::Invalid {
            policy: policy.clone(),
            field: field.to_owned(),
            message,
        };
        if self.metadata.name.is_empty() {
            return Err(invalid("metadata.name", "must not be empty".into()));
        }
        if !self.spec.port_level_mtls.is_empty() && self.is_namespace_wide() {
            return Err(invalid(
                "spec.portLevelMtls",
                "only a workload policy (with spec.selector.matchLabels) may set port-level modes"
                    .into(),
            ));
        }
        if let Some(port) = self
            .spec
            .port_level_mtls
            .keys()
            .find(|p| !(1..=65535).contains(*p))
        {
            return Err(invalid(
                "spec.portLevelMtls",
                format!("port {port} is not in 1..=65535"),
            ));
        }
        Ok(())
    }
}

/// `null` (YAML `key:` with nothing after it) decodes as the empty value.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// `creationTimestamp` as RFC 3339 (`2024-05-01T10:00:00Z`); `null` is absent.
mod rfc3339_opt {
    use serde::{de, ser, Deserialize, Deserializer, Serializer};
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    pub(super) fn serialize<S: Serializer>(
        value: &Option<OffsetDateTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => s.serialize_str(&t.format(&Rfc3339).map_err(ser::Error::custom)?),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| {
                OffsetDateTime::parse(&s, &Rfc3339).map_err(|e| {
                    de::Error::custom(format_args!("{s:?} is not an RFC 3339 time: {e}"))
                })
            })
            .transpose()
    }
}
