//! One consistent view of the manifest directory, indexed the way the CA and
//! the agent ask: pods by uid, by `(namespace, name)`, by node, by pod IP and
//! by `(namespace, service account)`; namespaces; policies.
//!
//! Owns indexing and the "one object, one definition" rule: two pods with the
//! same uid or the same name, two namespaces or two policies with the same
//! name are an error naming both files (Kubernetes could not hold them either).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::manifest::Objects;
use crate::platform::{Namespace, PlatformError, Pod};
use crate::policy::PeerAuthentication;

/// An immutable, indexed view of the manifests. Replaced whole on reload.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Pods by `metadata.uid`.
    pods: BTreeMap<String, Pod>,
    /// namespace → name → uid.
    by_name: BTreeMap<String, BTreeMap<String, String>>,
    /// node → uids.
    by_node: BTreeMap<String, BTreeSet<String>>,
    by_ip: BTreeMap<std::net::IpAddr, BTreeSet<String>>,
    /// namespace → service account → uids.
    by_service_account: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Declared namespaces, plus every namespace an object lives in.
    namespaces: BTreeMap<String, Namespace>,
    /// `(namespace, name)` of declared service accounts.
    service_accounts: BTreeSet<(String, String)>,
    /// `(namespace, name)` → policy (namespace filled in).
    policies: BTreeMap<(String, String), PeerAuthentication>,
}

impl Snapshot {
    /// Indexes `objects`, refusing duplicates.
    pub(crate) fn build(objects: Objects) -> Result<Self, PlatformError> {
        let mut snap = Snapshot::default();
        let mut origin: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut claim = |key: String, file: &PathBuf| -> Result<(), PlatformError> {
            if let Some(first) = origin.get(&key) {
                return Err(PlatformError::Manifest {
                    file: file.clone(),
                    line: None,
                    message: format!("{key} is defined twice (also in {})", first.display()),
                });
            }
            origin.insert(key, file.clone());
            Ok(())
        };

        for (file, ns) in objects.namespaces {
            claim(format!("Namespace {}", ns.name), &file)?;
            snap.namespaces.insert(ns.name.clone(), ns);
        }
        for (file, (namespace, name)) in objects.service_accounts {
            claim(format!("ServiceAccount {namespace}/{name}"), &file)?;
            snap.service_accounts.insert((namespace, name));
        }
        for (file, policy) in objects.policies {
            let namespace = policy
                .namespace_or(crate::policy::DEFAULT_NAMESPACE)
                .to_owned();
            let name = policy.metadata.name.clone();
            claim(format!("PeerAuthentication {namespace}/{name}"), &file)?;
            snap.policies.insert((namespace, name), policy);
        }
        for (file, pod) in objects.pods {
            claim(format!("Pod {}/{}", pod.namespace, pod.name), &file)?;
            claim(format!("a Pod with uid {:?}", pod.uid), &file)?;
            snap.by_name
                .entry(pod.namespace.clone())
                .or_default()
                .insert(pod.name.clone(), pod.uid.clone());
            if let Some(node) = &pod.node_name {
                snap.by_node
                    .entry(node.clone())
                    .or_default()
                    .insert(pod.uid.clone());
            }
            for ip in &pod.pod_ips {
                snap.by_ip.entry(*ip).or_default().insert(pod.uid.clone());
            }
            snap.by_service_account
                .entry(pod.namespace.clone())
                .or_default()
                .entry(pod.service_account.clone())
                .or_default()
                .insert(pod.uid.clone());
            snap.pods.insert(pod.uid.clone(), pod);
        }

        // Hand-written manifests rarely declare `default`: every namespace an
        // object lives in is listed, with no labels unless declared.
        let used: BTreeSet<String> = snap
            .by_name
            .keys()
            .cloned()
            .chain(snap.service_accounts.iter().map(|(ns, _)| ns.clone()))
            .chain(snap.policies.keys().map(|(ns, _)| ns.clone()))
            .collect();
        for name in used {
            snap.namespaces
                .entry(name.clone())
                .or_insert_with(|| Namespace {
                    name,
                    labels: BTreeMap::new(),
                });
        }
        Ok(snap)
    }

    pub(crate) fn pod_by_uid(&self, uid: &str) -> Option<Pod> {
        self.pods.get(uid).cloned()
    }

    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let uid = self.by_name.get(namespace)?.get(name)?;
        self.pod_by_uid(uid)
    }

    pub(crate) fn pods_with_ip(&self, ip: std::net::IpAddr) -> Vec<Pod> {
        self.pods_by_uids(self.by_ip.get(&ip))
    }

    pub(crate) fn pods_on_node(&self, node: &str) -> Vec<Pod> {
        self.pods_by_uids(self.by_node.get(node))
    }

    pub(crate) fn pods_for_service_account(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> Vec<Pod> {
        self.pods_by_uids(
            self.by_service_account
                .get(namespace)
                .and_then(|m| m.get(service_account)),
        )
    }

    fn pods_by_uids(&self, uids: Option<&BTreeSet<String>>) -> Vec<Pod> {
        uids.into_iter()
            .flatten()
            .filter_map(|uid| self.pods.get(uid).cloned())
            .collect()
    }

    /// Every pod, sorted by namespace and name.
    pub(crate) fn pods(&self) -> Vec<Pod> {
        self.by_name
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|uid| self.pods.get(uid).cloned())
            .collect()
    }

    pub(crate) fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub(crate) fn namespaces(&self) -> Vec<Namespace> {
        self.namespaces.values().cloned().collect()
    }

    pub(crate) fn service_accounts(&self) -> Vec<(String, String)> {
        self.service_accounts.iter().cloned().collect()
    }

    pub(crate) fn peer_authentications(&self) -> Vec<PeerAuthentication> {
        self.policies.values().cloned().collect()
    }
}
