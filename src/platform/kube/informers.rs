//! Informers: reflector stores of Pods, Namespaces and PeerAuthentications
//! (`security.istio.io` v1 and v1beta1), kept current by kube-runtime
//! watchers, and the lookups the [`crate::platform::Platform`] trait serves
//! from them.
//!
//! Owns the watches (list, then watch from the list's resourceVersion; relist
//! on `410 Gone`; kube's default backoff while the API server is away, kept
//! from resetting on every retry, `super::backoff`), the
//! stores, the derived pod indexes (`pod_index`), the generation counter
//! and readiness (`sync`). Pods are converted on arrival, so the store holds
//! our small [`Pod`] rather than the API object; with a node name only that
//! node's pods are watched (`fieldSelector=spec.nodeName=<node>`).
//!
//! Rules enforced: lookups never touch the network and never hold a lock
//! across an `.await` (each lock is held for one in-memory map access);
//! readiness is false until every watch's first list completed; after that
//! the caches keep serving through API server outages; a PeerAuthentication
//! that does not decode is skipped with a warning naming it (`policies`).

pub(crate) mod convert;
mod pod_index;
pub(crate) mod policies;
mod sync;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use ::kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use ::kube::runtime::reflector::{self, store::Writer, ObjectRef, Store};
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1 as k8s;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::pod_index::PodIndex;
use self::sync::{ErrorOutcome, Feed, Phase, SyncStatus};
use super::backoff::SteadyBackoff;
use crate::platform::{Namespace, Pod};
use crate::policy::PeerAuthentication;

/// The API group of Istio's PeerAuthentication.
pub const POLICY_GROUP: &str = "security.istio.io";

/// The PeerAuthentication resource in `version` (`v1` or `v1beta1`).
pub fn policy_resource(version: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(POLICY_GROUP, version, "PeerAuthentication"),
        "peerauthentications",
    )
}

/// The reflector writers, taken by [`Informers::run`].
struct Writers {
    pods: Writer<Pod>,
    namespaces: Writer<Namespace>,
    policies_v1: Writer<DynamicObject>,
    policies_v1beta1: Writer<DynamicObject>,
}

/// Reflector stores of Pods, Namespaces and PeerAuthentications, with indexes.
pub struct Informers {
    client: ::kube::Client,
    node_name: Option<String>,
    max_staleness: Option<Duration>,
    pods: Store<Pod>,
    pod_index: RwLock<PodIndex>,
    namespaces: Store<Namespace>,
    policy_v1: (ApiResource, Store<DynamicObject>),
    policy_v1beta1: (ApiResource, Store<DynamicObject>),
    /// The merged, decoded policies; readers clone the `Arc`.
    policies: RwLock<Arc<Vec<PeerAuthentication>>>,
    /// Bad policies already logged (see [`policies::merge`]).
    reported: Mutex<policies::Reported>,
    status: SyncStatus,
    generation: watch::Sender<u64>,
    writers: Mutex<Option<Writers>>,
}

impl std::fmt::Debug for Informers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Informers")
            .field("node_name", &self.node_name)
            .field("pods", &self.pods.len())
            .field("namespaces", &self.namespaces.len())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Informers {
    /// Empty, unsynced stores for `client`; [`Informers::run`] fills them.
    pub fn new(
        client: ::kube::Client,
        node_name: Option<String>,
        max_staleness: Option<Duration>,
    ) -> Self {
        let pods = Writer::<Pod>::default();
        let namespaces = Writer::<Namespace>::default();
        let v1 = policy_resource("v1");
        let v1beta1 = policy_resource("v1beta1");
        let policies_v1 = Writer::<DynamicObject>::new(v1.clone());
        let policies_v1beta1 = Writer::<DynamicObject>::new(v1beta1.clone());
        let (generation, _) = watch::channel(0);
        Self {
            client,
            node_name,
            max_staleness,
            pods: pods.as_reader(),
            pod_index: RwLock::new(PodIndex::default()),
            namespaces: namespaces.as_reader(),
            policy_v1: (v1, policies_v1.as_reader()),
            policy_v1beta1: (v1beta1, policies_v1beta1.as_reader()),
            policies: RwLock::new(Arc::new(Vec::new())),
            reported: Mutex::new(HashSet::new()),
            status: SyncStatus::default(),
            generation,
            writers: Mutex::new(Some(Writers {
                pods,
                namespaces,
                policies_v1,
                policies_v1beta1,
            })),
        }
    }

    /// Runs the four watches until `cancel`. A second call returns at once.
    pub async fn run(&self, cancel: CancellationToken) {
        let writers = self
            .writers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(writers) = writers else {
            tracing::error!("informers are already running; ignoring a second run");
            return;
        };
        let mut pod_config = watcher::Config::default();
        if let Some(node) = &self.node_name {
            pod_config = pod_config.fields(&format!("spec.nodeName={node}"));
        }
        let pods = converted(
            Api::<k8s::Pod>::all(self.client.clone()),
            pod_config,
            convert::pod,
        );
        let namespaces = converted(
            Api::<k8s::Namespace>::all(self.client.clone()),
            watcher::Config::default(),
            convert::namespace,
        );
        let policies = |resource: &ApiResource| {
            let api = Api::<DynamicObject>::all_with(self.client.clone(), resource);
            watcher::watcher(api, watcher::Config::default()).backoff(SteadyBackoff::default())
        };
        tokio::join!(
            self.drive(
                Feed::Pods,
                reflector::reflector(writers.pods, pods),
                &cancel,
                |event| self.on_pod_event(event),
            ),
            self.drive(
                Feed::Namespaces,
                reflector::reflector(writers.namespaces, namespaces),
                &cancel,
                |event| self.on_applied(Feed::Namespaces, event),
            ),
            self.drive(
                Feed::PoliciesV1,
                reflector::reflector(writers.policies_v1, policies(&self.policy_v1.0)),
                &cancel,
                |event| self.on_policy_event(Feed::PoliciesV1, event),
            ),
            self.drive(
                Feed::PoliciesV1Beta1,
                reflector::reflector(writers.policies_v1beta1, policies(&self.policy_v1beta1.0)),
                &cancel,
                |event| self.on_policy_event(Feed::PoliciesV1Beta1, event),
            ),
        );
        tracing::debug!("informers stopped");
    }

    /// Polls one reflector stream until `cancel`, handing events to `on_event`.
    async fn drive<K, S>(
        &self,
        feed: Feed,
        stream: S,
        cancel: &CancellationToken,
        mut on_event: impl FnMut(&Event<K>),
    ) where
        S: Stream<Item = watcher::Result<Event<K>>>,
    {
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = tokio::select! {
                _ = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            match item {
                Some(Ok(event)) => on_event(&event),
                Some(Err(error)) => {
                    if self.status.on_error(feed, &error) == ErrorOutcome::BecameAbsent {
                        // Whatever that version held is no longer served.
                        self.rebuild_policies();
                        self.bump();
                    }
                }
                None => {
                    tracing::error!(watch = feed.name(), "watch stream ended; caches frozen");
                    return;
                }
            }
        }
    }

    /// Bookkeeping common to every feed: sync state, and a new generation
    /// for every event that changed a store.
    fn on_applied<K>(&self, feed: Feed, event: &Event<K>) {
        match event {
            Event::Init => {}
            Event::InitApply(_) => self.status.on_progress(feed),
            Event::InitDone => {
                self.status.on_synced(feed);
                self.bump();
            }
            Event::Apply(_) | Event::Delete(_) => {
                self.status.on_progress(feed);
                self.bump();
            }
        }
    }

    fn on_pod_event(&self, event: &Event<Pod>) {
        // Update the index before the generation moves, so a reader woken by
        // `changes()` sees the new state.
        match event {
            Event::Apply(pod) => {
                // The store's own Arc, so the index shares it.
                let shared = self
                    .pods
                    .get(&ObjectRef::from_obj(pod))
                    .unwrap_or_else(|| Arc::new(pod.clone()));
                self.write_index().apply(shared);
            }
            Event::Delete(pod) => self.write_index().remove(&pod.namespace, &pod.name),
            Event::InitDone => {
                let index = PodIndex::build(self.pods.state());
                let count = index.len();
                *self.write_index() = index;
                tracing::debug!(pods = count, "pod list applied");
            }
            Event::Init | Event::InitApply(_) => {}
        }
        self.on_applied(Feed::Pods, event);
    }

    fn on_policy_event(&self, feed: Feed, event: &Event<DynamicObject>) {
        if matches!(event, Event::InitDone | Event::Apply(_) | Event::Delete(_)) {
            // Synced first, so the merge below reads this version's store.
            if matches!(event, Event::InitDone) {
                self.status.on_synced(feed);
            }
            self.rebuild_policies();
        }
        self.on_applied(feed, event);
    }

    /// Re-merges the policies of every version that has synced.
    fn rebuild_policies(&self) {
        let sources: Vec<policies::Source<'_>> = [
            (Feed::PoliciesV1, &self.policy_v1),
            (Feed::PoliciesV1Beta1, &self.policy_v1beta1),
        ]
        .into_iter()
        .filter(|(feed, _)| self.status.phase(*feed) == Phase::Synced)
        .map(|(_, (resource, store))| policies::Source {
            resource,
            objects: store.state(),
        })
        .collect();
        let merged = {
            let mut reported = self.reported.lock().unwrap_or_else(PoisonError::into_inner);
            policies::merge(&sources, &mut reported)
        };
        *self
            .policies
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(merged);
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, PodIndex> {
        self.pod_index
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, PodIndex> {
        self.pod_index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the pod watch has completed a list (lookups are complete).
    pub fn pods_synced(&self) -> bool {
        self.status.phase(Feed::Pods) == Phase::Synced
    }

    /// See [`crate::platform::Platform::pod_by_uid`].
    pub fn pod_by_uid(&self, uid: &str) -> Option<Pod> {
        self.read_index().by_uid(uid)
    }

    /// See [`crate::platform::Platform::pod`].
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        self.read_index().by_name(namespace, name)
    }

    /// See [`crate::platform::Platform::pods_on_node`].
    pub fn pods_on_node(&self, node: &str) -> Vec<Pod> {
        self.read_index().on_node(node)
    }

    /// See [`crate::platform::Platform::pods_with_ip`].
    pub fn pods_with_ip(&self, ip: std::net::IpAddr) -> Vec<Pod> {
        self.read_index().with_ip(ip)
    }

    /// See [`crate::platform::Platform::pods_for_service_account`].
    pub fn pods_for_service_account(&self, namespace: &str, service_account: &str) -> Vec<Pod> {
        self.read_index()
            .for_service_account(namespace, service_account)
    }

    /// Every namespace, sorted by name (few: read from the store directly).
    pub fn namespaces(&self) -> Vec<Namespace> {
        let mut namespaces: Vec<Namespace> = self
            .namespaces
            .state()
            .iter()
            .map(|n| Namespace::clone(n))
            .collect();
        namespaces.sort_by(|a, b| a.name.cmp(&b.name));
        namespaces
    }

    /// Every PeerAuthentication that decoded, sorted by namespace and name.
    pub fn peer_authentications(&self) -> Vec<PeerAuthentication> {
        let policies = Arc::clone(&self.policies.read().unwrap_or_else(PoisonError::into_inner));
        policies.as_ref().clone()
    }

    /// The generation counter, bumped on every applied event.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// See `sync`: every first list done, and not stale beyond the bound.
    pub fn is_ready(&self) -> bool {
        self.status.is_ready(self.max_staleness)
    }
}

/// A watcher of `api` whose objects arrive converted by `convert`, retried
/// with kube's default backoff (made to grow while failing, [`super::backoff`]).
fn converted<K, T>(
    api: Api<K>,
    config: watcher::Config,
    convert: fn(K) -> T,
) -> impl Stream<Item = watcher::Result<Event<T>>> + Send
where
    K: ::kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    T: Send + 'static,
{
    watcher::watcher(api, config)
        .backoff(SteadyBackoff::default())
        .map_ok(move |event| convert::map_event(event, convert))
}
