//! The cluster's pod addresses, for the node agent's destination discovery:
//! one watch over every pod of the cluster, each converted on arrival to a
//! few fields (address, namespace, name, service account, meshed or not,
//! phase, age) and the API object dropped, so memory grows by those fields
//! per pod, not by a pod object (see BENCHMARKS.md, "Destination discovery").
//!
//! Why a watch and not a lookup per address: lookups stay off the network
//! (this module's rule, as for every `kube` lookup: the API server is never
//! on a connection's path), and one watch per node is what kube-proxy and
//! CNI agents already hold.
//!
//! Rule enforced: until the first full list is in, [`AddressIndex::synced`]
//! is false and the agent answers no destination question (an address not
//! yet seen might belong to a meshed pod).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use ::kube::api::Api;
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use futures::StreamExt;
use k8s_openapi::api::core::v1 as k8s;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::backoff::SteadyBackoff;
use crate::platform::{Pod, DEFAULT_SERVICE_ACCOUNT, TLS_MODE_LABEL, TLS_MODE_MESHID};

/// What destination discovery needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slim {
    namespace: Box<str>,
    name: Box<str>,
    service_account: Box<str>,
    meshed: bool,
    phase: Option<Box<str>>,
    created: Option<time::OffsetDateTime>,
    ips: Box<[IpAddr]>,
}

impl Slim {
    fn from_pod(pod: k8s::Pod) -> Self {
        Self::from_ours(&super::informers::convert::pod(pod))
    }

    fn from_ours(pod: &Pod) -> Self {
        Self {
            namespace: pod.namespace.as_str().into(),
            name: pod.name.as_str().into(),
            service_account: pod.service_account.as_str().into(),
            meshed: pod.is_meshed(),
            phase: pod.phase.as_deref().map(Into::into),
            created: pod.creation_timestamp,
            ips: pod.pod_ips.clone().into(),
        }
    }

    fn key(&self) -> (Box<str>, Box<str>) {
        (self.namespace.clone(), self.name.clone())
    }

    /// As a [`Pod`] with what destination discovery reads.
    fn to_pod(&self) -> Pod {
        let mut labels = std::collections::BTreeMap::new();
        if self.meshed {
            labels.insert(TLS_MODE_LABEL.to_owned(), TLS_MODE_MESHID.to_owned());
        }
        Pod {
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            uid: String::new(),
            node_name: None,
            service_account: if self.service_account.is_empty() {
                DEFAULT_SERVICE_ACCOUNT.to_owned()
            } else {
                self.service_account.to_string()
            },
            labels,
            annotations: std::collections::BTreeMap::new(),
            phase: self.phase.as_deref().map(str::to_owned),
            creation_timestamp: self.created,
            pod_ips: self.ips.to_vec(),
        }
    }
}

#[derive(Debug, Default)]
struct Maps {
    by_key: HashMap<(Box<str>, Box<str>), Arc<Slim>>,
    by_ip: HashMap<IpAddr, Vec<Arc<Slim>>>,
}

impl Maps {
    fn insert(&mut self, slim: Slim) {
        let slim = Arc::new(slim);
        self.remove(&slim.key());
        for ip in slim.ips.iter() {
            self.by_ip.entry(*ip).or_default().push(slim.clone());
        }
        self.by_key.insert(slim.key(), slim);
    }

    fn remove(&mut self, key: &(Box<str>, Box<str>)) {
        let Some(old) = self.by_key.remove(key) else {
            return;
        };
        for ip in old.ips.iter() {
            if let Some(pods) = self.by_ip.get_mut(ip) {
                pods.retain(|p| !Arc::ptr_eq(p, &old));
                if pods.is_empty() {
                    self.by_ip.remove(ip);
                }
            }
        }
    }
}

/// Every pod of the cluster by address, kept current by one watch.
#[derive(Debug)]
pub struct AddressIndex {
    maps: RwLock<Maps>,
    /// A list being received (between `Init` and `InitDone`).
    relist: Mutex<Option<Maps>>,
    synced: AtomicBool,
    generation: watch::Sender<u64>,
}

impl Default for AddressIndex {
    fn default() -> Self {
        Self {
            maps: RwLock::new(Maps::default()),
            relist: Mutex::new(None),
            synced: AtomicBool::new(false),
            generation: watch::channel(0).0,
        }
    }
}

impl AddressIndex {
    /// Whether the first full list is in.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Bumped after every change of the index.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The pods holding `ip`.
    pub fn pods_with_ip(&self, ip: IpAddr) -> Vec<Pod> {
        self.maps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_ip
            .get(&ip)
            .map(|pods| pods.iter().map(|p| p.to_pod()).collect())
            .unwrap_or_default()
    }

    /// Pods indexed.
    pub fn len(&self) -> usize {
        self.maps
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_key
            .len()
    }

    /// Whether no pod is indexed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Watches every pod (list, then watch; relist on `410 Gone`; steady
    /// backoff while the API server is away) until `cancel`.
    pub async fn run(&self, client: ::kube::Client, cancel: CancellationToken) {
        let stream = watcher::watcher(Api::<k8s::Pod>::all(client), watcher::Config::default())
            .backoff(SteadyBackoff::default());
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = tokio::select! {
                () = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(event)) => self.apply(event),
                Some(Err(error)) => {
                    tracing::warn!(%error, "pod address watch failed; serving the last addresses")
                }
                None => return,
            }
        }
    }

    /// Applies one watch event (the list arrives as `Init`, `InitApply`…,
    /// `InitDone`, and replaces the index only when complete).
    fn apply(&self, event: Event<k8s::Pod>) {
        let relist = || self.relist.lock().unwrap_or_else(PoisonError::into_inner);
        let maps = || self.maps.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Init => *relist() = Some(Maps::default()),
            Event::InitApply(pod) => {
                if let Some(list) = relist().as_mut() {
                    list.insert(Slim::from_pod(pod));
                }
            }
            Event::InitDone => {
                if let Some(list) = relist().take() {
                    let count = list.by_key.len();
                    *maps() = list;
                    tracing::info!(pods = count, "pod addresses listed");
                }
                self.synced.store(true, Ordering::Release);
                self.bump();
            }
            Event::Apply(pod) => {
                maps().insert(Slim::from_pod(pod));
                self.bump();
            }
            Event::Delete(pod) => {
                let key = Slim::from_pod(pod).key();
                maps().remove(&key);
                self.bump();
            }
        }
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k8s_pod(name: &str, ip: &str, meshed: bool) -> k8s::Pod {
        let labels = if meshed {
            serde_json::json!({ TLS_MODE_LABEL: TLS_MODE_MESHID })
        } else {
            serde_json::json!({})
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"), "labels": labels},
            "spec": {"serviceAccountName": format!("sa-{name}"), "containers": []},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn the_index_follows_lists_and_events_and_is_unsynced_until_the_first_list() {
        let index = AddressIndex::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        index.apply(Event::Init);
        index.apply(Event::InitApply(k8s_pod("a", "10.0.0.1", true)));
        assert!(!index.synced());
        assert!(
            index.pods_with_ip(ip).is_empty(),
            "a list half in is not served"
        );
        index.apply(Event::InitDone);
        assert!(index.synced());
        let pods = index.pods_with_ip(ip);
        assert_eq!(pods.len(), 1);
        assert!(pods[0].is_meshed());
        assert_eq!(pods[0].service_account, "sa-a");

        // Moved to another address: the old one is free.
        index.apply(Event::Apply(k8s_pod("a", "10.0.0.2", false)));
        assert!(index.pods_with_ip(ip).is_empty());
        assert!(!index.pods_with_ip("10.0.0.2".parse().unwrap())[0].is_meshed());
        index.apply(Event::Delete(k8s_pod("a", "10.0.0.2", false)));
        assert!(index.is_empty());

        // A relist replaces everything at InitDone.
        index.apply(Event::Apply(k8s_pod("gone", "10.0.0.9", true)));
        index.apply(Event::Init);
        index.apply(Event::InitApply(k8s_pod("b", "10.0.0.3", true)));
        index.apply(Event::InitDone);
        assert_eq!(index.len(), 1);
        assert!(index.pods_with_ip("10.0.0.9".parse().unwrap()).is_empty());
    }
}
