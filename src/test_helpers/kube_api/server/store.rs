//! The fake API server's state: objects by (resource, namespace, name), one
//! global increasing `resourceVersion`, and the log of every change, from
//! which watches are fed.
//!
//! Owns what the API server decides about objects: the resourceVersion, uid
//! and creationTimestamp it stamps on a write, `409 AlreadyExists` on a
//! create, `409 Conflict` on a replace carrying a stale resourceVersion, and
//! which objects a field or label selector matches. Knows nothing of HTTP.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// A resource the fake API serves.
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group, empty for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// URL segment, unique among [`SERVED`].
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl Resource {
    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_owned()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

pub const NAMESPACES: Resource = core("namespaces", "Namespace", false);
pub const PODS: Resource = core("pods", "Pod", true);
pub const SECRETS: Resource = core("secrets", "Secret", true);
pub const CONFIGMAPS: Resource = core("configmaps", "ConfigMap", true);
pub const LEASES: Resource = Resource {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    kind: "Lease",
    namespaced: true,
};
/// The injector keeps the caBundle of one of these.
pub const MUTATING_WEBHOOK_CONFIGURATIONS: Resource = Resource {
    group: "admissionregistration.k8s.io",
    version: "v1",
    plural: "mutatingwebhookconfigurations",
    kind: "MutatingWebhookConfiguration",
    namespaced: false,
};
/// Only `v1beta1` is served: `security.istio.io/v1` answers `404`, as on a
/// cluster with Istio's older CRDs, so meshid's fallback between the two
/// versions is exercised.
pub const PEER_AUTHENTICATIONS: Resource = Resource {
    group: "security.istio.io",
    version: "v1beta1",
    plural: "peerauthentications",
    kind: "PeerAuthentication",
    namespaced: true,
};

const fn core(plural: &'static str, kind: &'static str, namespaced: bool) -> Resource {
    Resource {
        group: "",
        version: "v1",
        plural,
        kind,
        namespaced,
    }
}

/// Every resource served, for URL routing.
pub const SERVED: [&Resource; 7] = [
    &NAMESPACES,
    &PODS,
    &SECRETS,
    &CONFIGMAPS,
    &LEASES,
    &PEER_AUTHENTICATIONS,
    &MUTATING_WEBHOOK_CONFIGURATIONS,
];

/// Why a write was refused (the HTTP layer turns it into a `Status`).
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    AlreadyExists,
    NotFound,
    Conflict { stored: String, sent: String },
    Invalid(String),
}

/// One change, as a watch sends it.
#[derive(Debug, Clone)]
struct Change {
    resource_version: u64,
    plural: &'static str,
    /// `ADDED`, `MODIFIED` or `DELETED`.
    kind: &'static str,
    object: Value,
}

/// Objects by (plural, namespace — empty when cluster-scoped —, name).
type Key = (&'static str, String, String);

/// Every object, and every change since the start.
#[derive(Debug, Default)]
pub struct Store {
    resource_version: u64,
    objects: BTreeMap<Key, Value>,
    log: Vec<Change>,
}

impl Store {
    /// The newest resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub fn get(&self, r: &'static Resource, namespace: &str, name: &str) -> Option<Value> {
        self.objects.get(&key(r, namespace, name)).cloned()
    }

    /// The objects of `r` (in `namespace`, or all) matching `selector`.
    pub fn list(
        &self,
        r: &'static Resource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Vec<Value> {
        self.objects
            .iter()
            .filter(|((plural, ns, _), _)| {
                *plural == r.plural && namespace.is_none_or(|want| want == ns)
            })
            .map(|(_, object)| object)
            .filter(|object| selector.matches(object))
            .cloned()
            .collect()
    }

    /// Watch events of `r` after `after`, as `{"type", "object"}` values.
    pub fn events_after(
        &self,
        after: u64,
        r: &'static Resource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Vec<Value> {
        // The log is in resourceVersion order: skip what the watcher has seen.
        let start = self.log.partition_point(|c| c.resource_version <= after);
        self.log[start..]
            .iter()
            .filter(|c| c.plural == r.plural)
            .filter(|c| namespace.is_none_or(|ns| ns == namespace_of(&c.object)))
            .filter(|c| selector.matches(&c.object))
            .map(|c| json!({"type": c.kind, "object": c.object}))
            .collect()
    }

    /// POST: `409 AlreadyExists` when the name is taken.
    pub fn create(
        &mut self,
        r: &'static Resource,
        namespace: &str,
        object: Value,
    ) -> Result<Value, WriteError> {
        let name =
            name_of(&object).ok_or(WriteError::Invalid("metadata.name is required".into()))?;
        if self.objects.contains_key(&key(r, namespace, &name)) {
            return Err(WriteError::AlreadyExists);
        }
        Ok(self.write(r, namespace, object, None))
    }

    /// PUT: `409 Conflict` when the body's resourceVersion is not the stored one.
    pub fn replace(
        &mut self,
        r: &'static Resource,
        namespace: &str,
        name: &str,
        object: Value,
    ) -> Result<Value, WriteError> {
        let stored = self.get(r, namespace, name).ok_or(WriteError::NotFound)?;
        let sent = resource_version_of(&object);
        let current = resource_version_of(&stored);
        if !sent.is_empty() && sent != current {
            return Err(WriteError::Conflict {
                stored: current,
                sent,
            });
        }
        Ok(self.write(r, namespace, object, Some(&stored)))
    }

    /// Server-side apply: creates, or merges the applied fields into the stored object.
    pub fn apply(
        &mut self,
        r: &'static Resource,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> (Value, bool) {
        match self.get(r, namespace, name) {
            None => {
                let mut object = patch;
                object["metadata"]["name"] = json!(name);
                (self.write(r, namespace, object, None), true)
            }
            Some(stored) => {
                let mut merged = stored.clone();
                merge(&mut merged, patch);
                (self.write(r, namespace, merged, Some(&stored)), false)
            }
        }
    }

    /// JSON merge patch (RFC 7386): a `metadata.resourceVersion` in the
    /// patch must equal the stored one, as the API server checks it.
    pub fn merge_patch(
        &mut self,
        r: &'static Resource,
        namespace: &str,
        name: &str,
        patch: Value,
    ) -> Result<Value, WriteError> {
        let stored = self.get(r, namespace, name).ok_or(WriteError::NotFound)?;
        if let Some(sent) = patch
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
        {
            let current = resource_version_of(&stored);
            if sent != current {
                return Err(WriteError::Conflict {
                    stored: current,
                    sent: sent.to_owned(),
                });
            }
        }
        let mut merged = stored.clone();
        merge(&mut merged, patch);
        Ok(self.write(r, namespace, merged, Some(&stored)))
    }

    /// Creates or replaces without checks (what a test or another client does).
    pub fn put(&mut self, r: &'static Resource, object: Value) -> Value {
        let namespace = namespace_of(&object).to_owned();
        let name = name_of(&object).unwrap_or_default();
        let stored = self.get(r, &namespace, &name);
        self.write(r, &namespace, object, stored.as_ref())
    }

    pub fn delete(&mut self, r: &'static Resource, namespace: &str, name: &str) -> Option<Value> {
        let mut object = self.objects.remove(&key(r, namespace, name))?;
        self.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.log.push(Change {
            resource_version: self.resource_version,
            plural: r.plural,
            kind: "DELETED",
            object: object.clone(),
        });
        Some(object)
    }

    /// Stamps what the API server owns (kind, apiVersion, namespace,
    /// resourceVersion; uid and creationTimestamp kept from `stored`), stores
    /// the object and logs the change.
    fn write(
        &mut self,
        r: &'static Resource,
        namespace: &str,
        mut object: Value,
        stored: Option<&Value>,
    ) -> Value {
        self.resource_version += 1;
        let rv = self.resource_version;
        object["kind"] = json!(r.kind);
        object["apiVersion"] = json!(r.api_version());
        let meta = &mut object["metadata"];
        if r.namespaced {
            meta["namespace"] = json!(namespace);
        }
        meta["resourceVersion"] = json!(rv.to_string());
        let kept = |field: &str| {
            stored
                .map(|s| s["metadata"][field].clone())
                .filter(|v| !v.is_null())
        };
        meta["uid"] = kept("uid")
            .or_else(|| meta.get("uid").cloned().filter(|v| !v.is_null()))
            .unwrap_or_else(|| json!(format!("uid-{}-{rv}", r.plural)));
        meta["creationTimestamp"] = kept("creationTimestamp")
            .or_else(|| {
                meta.get("creationTimestamp")
                    .cloned()
                    .filter(|v| !v.is_null())
            })
            .unwrap_or_else(|| json!(now_rfc3339()));
        let name = name_of(&object).unwrap_or_default();
        self.objects
            .insert(key(r, namespace, &name), object.clone());
        self.log.push(Change {
            resource_version: rv,
            plural: r.plural,
            kind: if stored.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        });
        object
    }
}

fn key(r: &'static Resource, namespace: &str, name: &str) -> Key {
    let namespace = if r.namespaced { namespace } else { "" };
    (r.plural, namespace.to_owned(), name.to_owned())
}

fn name_of(object: &Value) -> Option<String> {
    object["metadata"]["name"].as_str().map(str::to_owned)
}

fn namespace_of(object: &Value) -> &str {
    object["metadata"]["namespace"].as_str().unwrap_or_default()
}

fn resource_version_of(object: &Value) -> String {
    object["metadata"]["resourceVersion"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// Deep merge of JSON objects; anything else in `patch` replaces.
fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(into), Value::Object(patch)) => {
            for (k, v) in patch {
                merge(into.entry(k).or_insert(Value::Null), v);
            }
        }
        (into, patch) => *into = patch,
    }
}

/// Now, to the second, as the API server writes timestamps.
fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A `fieldSelector` and `labelSelector` (equality-based: `a=b`, `a==b`,
/// `a!=b`; labels also `key` alone for "exists").
#[derive(Debug, Clone, Default)]
pub struct Selector {
    fields: Vec<Requirement>,
    labels: Vec<Requirement>,
}

#[derive(Debug, Clone)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
}

impl Selector {
    pub fn parse(fields: Option<&str>, labels: Option<&str>) -> Result<Self, String> {
        let parse = |text: Option<&str>, allow_exists: bool| -> Result<Vec<Requirement>, String> {
            text.unwrap_or_default()
                .split(',')
                .filter(|term| !term.is_empty())
                .map(|term| {
                    if let Some((k, v)) = term.split_once("!=") {
                        Ok(Requirement::NotEquals(k.into(), v.into()))
                    } else if let Some((k, v)) =
                        term.split_once("==").or_else(|| term.split_once('='))
                    {
                        Ok(Requirement::Equals(k.into(), v.into()))
                    } else if allow_exists {
                        Ok(Requirement::Exists(term.into()))
                    } else {
                        Err(format!("invalid selector term {term:?}"))
                    }
                })
                .collect()
        };
        Ok(Self {
            fields: parse(fields, false)?,
            labels: parse(labels, true)?,
        })
    }

    pub fn matches(&self, object: &Value) -> bool {
        let field = |path: &str| -> String {
            let value = path.split('.').fold(object, |v, part| &v[part]);
            value.as_str().map(str::to_owned).unwrap_or_default()
        };
        let labels = object["metadata"]["labels"].as_object();
        let label = |key: &str| labels.and_then(|l: &Map<String, Value>| l.get(key)?.as_str());
        self.fields.iter().all(|r| match r {
            Requirement::Equals(k, v) => field(k) == *v,
            Requirement::NotEquals(k, v) => field(k) != *v,
            Requirement::Exists(k) => !field(k).is_empty(),
        }) && self.labels.iter().all(|r| match r {
            Requirement::Equals(k, v) => label(k) == Some(v.as_str()),
            Requirement::NotEquals(k, v) => label(k) != Some(v.as_str()),
            Requirement::Exists(k) => label(k).is_some(),
        })
    }
}
