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

/// What destination discovery needs of a pod: namespace and service
/// account interned (shared by every pod that has them), the name shared
/// with the index's key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Slim {
    namespace: Arc<str>,
    name: Arc<str>,
    service_account: Arc<str>,
    meshed: bool,
    /// `Running` or `Pending` (or no phase): may serve; anything else: done.
    running: bool,
    created: Option<time::OffsetDateTime>,
    ips: Box<[IpAddr]>,
}

type Key = (Arc<str>, Arc<str>);

impl Slim {
    fn key(&self) -> Key {
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
            service_account: self.service_account.to_string(),
            labels,
            annotations: std::collections::BTreeMap::new(),
            phase: Some(if self.running { "Running" } else { "Succeeded" }.to_owned()),
            creation_timestamp: self.created,
            pod_ips: self.ips.to_vec(),
        }
    }
}

/// The pods on one address: almost always one.
#[derive(Debug)]
enum Holders {
    One(Arc<Slim>),
    Many(Vec<Arc<Slim>>),
}

#[derive(Debug, Default)]
struct Maps {
    by_key: HashMap<Key, Arc<Slim>>,
    by_ip: HashMap<IpAddr, Holders>,
    /// Namespaces and service accounts, each string kept once.
    strings: std::collections::HashSet<Arc<str>>,
}

impl Maps {
    fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(held) = self.strings.get(s) {
            return held.clone();
        }
        let held: Arc<str> = s.into();
        self.strings.insert(held.clone());
        held
    }

    /// The slim form of `pod`, its strings interned.
    fn slim(&mut self, pod: k8s::Pod) -> Slim {
        let pod = super::informers::convert::pod(pod);
        Slim {
            namespace: self.intern(&pod.namespace),
            service_account: self.intern(if pod.service_account.is_empty() {
                DEFAULT_SERVICE_ACCOUNT
            } else {
                &pod.service_account
            }),
            meshed: pod.is_meshed(),
            running: pod.is_running(),
            created: pod.creation_timestamp,
            ips: pod.pod_ips.into(),
            name: pod.name.into(),
        }
    }

    fn apply(&mut self, pod: k8s::Pod) {
        let slim = self.slim(pod);
        self.insert(slim);
    }

    fn delete(&mut self, pod: k8s::Pod) {
        let slim = self.slim(pod);
        self.remove(&slim.key());
    }

    fn insert(&mut self, slim: Slim) {
        let slim = Arc::new(slim);
        let key = slim.key();
        self.remove(&key);
        for ip in slim.ips.iter() {
            match self.by_ip.remove(ip) {
                None => {
                    self.by_ip.insert(*ip, Holders::One(slim.clone()));
                }
                Some(Holders::One(other)) => {
                    self.by_ip
                        .insert(*ip, Holders::Many(vec![other, slim.clone()]));
                }
                Some(Holders::Many(mut others)) => {
                    others.push(slim.clone());
                    self.by_ip.insert(*ip, Holders::Many(others));
                }
            }
        }
        self.by_key.insert(key, slim);
    }

    fn remove(&mut self, key: &Key) {
        let Some(old) = self.by_key.remove(key) else {
            return;
        };
        for ip in old.ips.iter() {
            let left = match self.by_ip.remove(ip) {
                Some(Holders::Many(mut pods)) => {
                    pods.retain(|p| !Arc::ptr_eq(p, &old));
                    match pods.len() {
                        0 => None,
                        1 => pods.pop().map(Holders::One),
                        _ => Some(Holders::Many(pods)),
                    }
                }
                Some(Holders::One(p)) if !Arc::ptr_eq(&p, &old) => Some(Holders::One(p)),
                _ => None,
            };
            if let Some(left) = left {
                self.by_ip.insert(*ip, left);
            }
        }
    }

    fn with_ip(&self, ip: IpAddr) -> Vec<Pod> {
        match self.by_ip.get(&ip) {
            None => Vec::new(),
            Some(Holders::One(p)) => vec![p.to_pod()],
            Some(Holders::Many(pods)) => pods.iter().map(|p| p.to_pod()).collect(),
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
            .with_ip(ip)
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
    pub fn apply(&self, event: Event<k8s::Pod>) {
        let relist = || self.relist.lock().unwrap_or_else(PoisonError::into_inner);
        let maps = || self.maps.write().unwrap_or_else(PoisonError::into_inner);
        match event {
            Event::Init => *relist() = Some(Maps::default()),
            Event::InitApply(pod) => {
                if let Some(list) = relist().as_mut() {
                    list.apply(pod);
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
                maps().apply(pod);
                self.bump();
            }
            Event::Delete(pod) => {
                maps().delete(pod);
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
