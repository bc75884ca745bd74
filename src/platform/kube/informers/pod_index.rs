//! Derived indexes over the pod reflector store: by uid, by node, by
//! `(namespace, service account)`, by `(namespace, name)`, by pod IP.
//!
//! Owns keeping the indexes equal to the store: updated per watch event
//! (`O(log n)`), rebuilt whole when a (re)list completes. Entries share the
//! store's `Arc<Pod>`, so the indexes add keys, not copies. Lookups cost a
//! map access plus cloning the pods returned — no scan of the store, which at
//! thousands of CSRs per second over thousands of pods would dominate.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::platform::Pod;

type NameKey = (String, String);

/// Pods by every key the CA and the agent look them up with.
#[derive(Debug, Default)]
pub(crate) struct PodIndex {
    /// `(namespace, name)` → pod: what a watch event replaces or deletes.
    by_name: HashMap<NameKey, Arc<Pod>>,
    /// `metadata.uid` → pod.
    by_uid: HashMap<String, Arc<Pod>>,
    /// `spec.nodeName` → `(namespace, name)` → pod (sorted, for stable answers).
    by_node: HashMap<String, BTreeMap<NameKey, Arc<Pod>>>,
    /// `(namespace, service account)` → name → pod.
    by_service_account: HashMap<NameKey, BTreeMap<String, Arc<Pod>>>,
    by_ip: HashMap<std::net::IpAddr, BTreeMap<NameKey, Arc<Pod>>>,
}

impl PodIndex {
    /// The indexes of `pods` (a completed list).
    pub(crate) fn build(pods: impl IntoIterator<Item = Arc<Pod>>) -> Self {
        let mut index = Self::default();
        for pod in pods {
            index.insert(pod);
        }
        index
    }

    /// An added or modified pod: replaces whatever had its namespace and name.
    pub(crate) fn apply(&mut self, pod: Arc<Pod>) {
        self.remove(&pod.namespace, &pod.name);
        self.insert(pod);
    }

    /// A deleted pod.
    pub(crate) fn remove(&mut self, namespace: &str, name: &str) {
        let key = (namespace.to_owned(), name.to_owned());
        let Some(old) = self.by_name.remove(&key) else {
            return;
        };
        if self
            .by_uid
            .get(&old.uid)
            .is_some_and(|p| Arc::ptr_eq(p, &old))
        {
            self.by_uid.remove(&old.uid);
        }
        if let Some(node) = &old.node_name {
            if let Some(pods) = self.by_node.get_mut(node) {
                pods.remove(&key);
                if pods.is_empty() {
                    self.by_node.remove(node);
                }
            }
        }
        for ip in &old.pod_ips {
            if let Some(pods) = self.by_ip.get_mut(ip) {
                pods.remove(&key);
                if pods.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
        let sa_key = (old.namespace.clone(), old.service_account.clone());
        if let Some(pods) = self.by_service_account.get_mut(&sa_key) {
            pods.remove(&old.name);
            if pods.is_empty() {
                self.by_service_account.remove(&sa_key);
            }
        }
    }

    fn insert(&mut self, pod: Arc<Pod>) {
        let key = (pod.namespace.clone(), pod.name.clone());
        if !pod.uid.is_empty() {
            self.by_uid.insert(pod.uid.clone(), Arc::clone(&pod));
        }
        if let Some(node) = &pod.node_name {
            self.by_node
                .entry(node.clone())
                .or_default()
                .insert(key.clone(), Arc::clone(&pod));
        }
        self.by_service_account
            .entry((pod.namespace.clone(), pod.service_account.clone()))
            .or_default()
            .insert(pod.name.clone(), Arc::clone(&pod));
        for ip in &pod.pod_ips {
            self.by_ip
                .entry(*ip)
                .or_default()
                .insert(key.clone(), Arc::clone(&pod));
        }
        self.by_name.insert(key, pod);
    }

    pub(crate) fn by_uid(&self, uid: &str) -> Option<Pod> {
        self.by_uid.get(uid).map(|p| Pod::clone(p))
    }

    pub(crate) fn by_name(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.by_name
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|p| Pod::clone(p))
    }

    pub(crate) fn on_node(&self, node: &str) -> Vec<Pod> {
        self.by_node
            .get(node)
            .map(|pods| pods.values().map(|p| Pod::clone(p)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn for_service_account(&self, namespace: &str, service_account: &str) -> Vec<Pod> {
        self.by_service_account
            .get(&(namespace.to_owned(), service_account.to_owned()))
            .map(|pods| pods.values().map(|p| Pod::clone(p)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn with_ip(&self, ip: std::net::IpAddr) -> Vec<Pod> {
        self.by_ip
            .get(&ip)
            .map(|pods| pods.values().map(|p| Pod::clone(p)).collect())
            .unwrap_or_default()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pod(ns: &str, name: &str, uid: &str, node: &str, sa: &str) -> Arc<Pod> {
        Arc::new(Pod {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
            node_name: Some(node.into()),
            service_account: sa.into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            phase: Some("Running".into()),
            creation_timestamp: None,
            pod_ips: Vec::new(),
        })
    }

    fn names(pods: Vec<Pod>) -> Vec<String> {
        pods.into_iter().map(|p| p.name).collect()
    }

    #[test]
    fn built_index_answers_every_lookup() {
        let index = PodIndex::build([
            pod("shop", "a", "u1", "n1", "web"),
            pod("shop", "b", "u2", "n2", "web"),
            pod("bank", "c", "u3", "n1", "web"),
        ]);
        assert_eq!(index.by_uid("u2").map(|p| p.name), Some("b".into()));
        assert_eq!(index.by_name("bank", "c").map(|p| p.uid), Some("u3".into()));
        assert_eq!(names(index.on_node("n1")), ["c", "a"]);
        assert_eq!(names(index.for_service_account("shop", "web")), ["a", "b"]);
        assert!(index.for_service_account("bank", "db").is_empty());
        assert_eq!(index.len(), 3);
    }

    #[test]
    fn recreated_pod_replaces_every_key_of_the_old_one() {
        let mut index = PodIndex::build([pod("shop", "a", "u1", "n1", "web")]);
        index.apply(pod("shop", "a", "u9", "n2", "api"));
        assert_eq!(index.by_uid("u1"), None);
        assert_eq!(index.by_uid("u9").map(|p| p.name), Some("a".into()));
        assert!(index.on_node("n1").is_empty());
        assert_eq!(names(index.on_node("n2")), ["a"]);
        assert!(index.for_service_account("shop", "web").is_empty());
        assert_eq!(names(index.for_service_account("shop", "api")), ["a"]);
    }

    #[test]
    fn removed_pod_is_gone_from_every_key() {
        let mut index = PodIndex::build([
            pod("shop", "a", "u1", "n1", "web"),
            pod("shop", "b", "u2", "n1", "web"),
        ]);
        index.remove("shop", "a");
        index.remove("shop", "never-there");
        assert_eq!(index.by_uid("u1"), None);
        assert_eq!(index.by_name("shop", "a"), None);
        assert_eq!(names(index.on_node("n1")), ["b"]);
        assert_eq!(names(index.for_service_account("shop", "web")), ["b"]);
    }
}
