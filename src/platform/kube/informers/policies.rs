//! The PeerAuthentications in effect, from the v1 and v1beta1 reflector stores.
//!
//! Owns merging the two versions (an object served under both, same
//! namespace, name and uid, counts once) and skipping policies that do not
//! decode or validate: each is logged at warn once per resourceVersion,
//! naming it and serde's reason, and the others still apply. Policies are
//! few, so the merged list is rebuilt whole on every policy event.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use ::kube::api::{ApiResource, DynamicObject};

use super::convert;
use crate::policy::PeerAuthentication;

/// The objects of one served version.
pub(crate) struct Source<'a> {
    pub(crate) resource: &'a ApiResource,
    pub(crate) objects: Vec<Arc<DynamicObject>>,
}

/// Skipped policies already reported: `(api version, namespace, name, resourceVersion)`.
pub(crate) type Reported = HashSet<(String, String, String, String)>;

/// The policies of `sources` (earlier sources win a duplicate), sorted by
/// namespace and name. Bad ones are skipped and logged unless in `reported`,
/// which is replaced by the set of bad ones seen now.
pub(crate) fn merge(sources: &[Source<'_>], reported: &mut Reported) -> Vec<PeerAuthentication> {
    let mut merged: BTreeMap<(String, String, String), PeerAuthentication> = BTreeMap::new();
    let mut bad_now = Reported::new();
    for source in sources {
        for object in &source.objects {
            let meta = &object.metadata;
            let key = (
                meta.namespace.clone().unwrap_or_default(),
                meta.name.clone().unwrap_or_default(),
                meta.uid.clone().unwrap_or_default(),
            );
            if merged.contains_key(&key) {
                continue;
            }
            match convert::peer_authentication(object, source.resource) {
                Ok(policy) => {
                    merged.insert(key, policy);
                }
                Err(bad) => {
                    let id = (
                        source.resource.api_version.clone(),
                        key.0,
                        key.1,
                        meta.resource_version.clone().unwrap_or_default(),
                    );
                    if !reported.contains(&id) {
                        tracing::warn!(
                            namespace = %bad.namespace,
                            name = %bad.name,
                            api_version = %bad.api_version,
                            error = %bad.reason,
                            "{bad}; the other policies still apply"
                        );
                    }
                    bad_now.insert(id);
                }
            }
        }
    }
    *reported = bad_now;
    merged.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::MtlsMode;
    use serde_json::json;

    fn object(ns: &str, name: &str, uid: &str, mode: &str) -> Arc<DynamicObject> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns, "uid": uid, "resourceVersion": "1"},
                "spec": {"mtls": {"mode": mode}},
            }))
            .expect("object"),
        )
    }

    #[test]
    fn policy_served_under_both_versions_counts_once() {
        let v1 = super::super::policy_resource("v1");
        let v1beta1 = super::super::policy_resource("v1beta1");
        let sources = [
            Source {
                resource: &v1,
                objects: vec![object("shop", "default", "p1", "STRICT")],
            },
            Source {
                resource: &v1beta1,
                objects: vec![
                    object("shop", "default", "p1", "STRICT"),
                    object("bank", "default", "p2", "PERMISSIVE"),
                ],
            },
        ];
        let policies = merge(&sources, &mut Reported::new());
        let got: Vec<_> = policies
            .iter()
            .map(|p| (p.metadata.namespace.clone().unwrap_or_default(), p.mode()))
            .collect();
        assert_eq!(
            got,
            [
                ("bank".to_owned(), MtlsMode::Permissive),
                ("shop".to_owned(), MtlsMode::Strict)
            ]
        );
    }

    #[test]
    fn bad_policy_is_skipped_and_reported_once_per_version() {
        let v1 = super::super::policy_resource("v1");
        let sources = [Source {
            resource: &v1,
            objects: vec![
                object("shop", "typo", "p1", "STRICTT"),
                object("shop", "good", "p2", "STRICT"),
            ],
        }];
        let mut reported = Reported::new();
        let policies = merge(&sources, &mut reported);
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].metadata.name, "good");
        assert_eq!(reported.len(), 1);
        // Merged again (another policy event): still skipped, remembered as reported.
        merge(&sources, &mut reported);
        assert_eq!(reported.len(), 1);
    }
}
