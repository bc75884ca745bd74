//! Root distribution: ConfigMap `istio-ca-root-cert` (key `root-cert.pem`,
//! label `istio.io/config: "true"`, as Istio writes it) in every namespace.
//!
//! Owns those ConfigMaps: created for new namespaces, repaired when edited or
//! deleted, rewritten when the bundle changes. Watches Namespaces and, with a
//! field selector, only ConfigMaps of that name. The decision is the pure
//! `plan` function; this file only observes and writes.
//!
//! Rules enforced: only the Lease holder writes (a replica that is not leader
//! watches and does nothing); terminating namespaces are skipped; other data
//! keys someone added to the ConfigMap are kept; every write is a create or a
//! replace carrying the `resourceVersion` observed, and a `409` is left to the
//! next pass (the watch brings the newer object).

mod plan;

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::api::{Api, ObjectMeta, PostParams};
use ::kube::runtime::reflector::{self, ObjectRef, Store};
use ::kube::runtime::watcher::{self, Event};
use ::kube::runtime::WatchStreamExt as _;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use tokio::sync::watch;

use crate::platform::kube::backoff::SteadyBackoff;
use tokio_util::sync::CancellationToken;

pub(crate) use plan::{plan, Action, ObservedConfigMap, ObservedNamespace};

/// Name of the ConfigMap in every namespace (Istio's).
pub const ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
/// Data key holding the PEM bundle (Istio's; proxies mount it).
pub const ROOT_CERT_KEY: &str = "root-cert.pem";
/// Label Istio puts on the ConfigMap.
pub const CONFIG_LABEL: (&str, &str) = ("istio.io/config", "true");
/// How often everything is re-planned even without events (retries failed writes).
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(60);

/// Keeps the root ConfigMap right in every namespace while we are leader.
pub struct RootCertDistributor {
    client: ::kube::Client,
    bundle: watch::Receiver<String>,
    leader: watch::Receiver<bool>,
    resync: Duration,
}

impl std::fmt::Debug for RootCertDistributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RootCertDistributor")
            .field("leader", &*self.leader.borrow())
            .field("resync", &self.resync)
            .finish_non_exhaustive()
    }
}

impl RootCertDistributor {
    /// Distributes the current value of `bundle` (all roots, PEM) whenever
    /// `leader` is true (from [`super::lease::LeaderElector::subscribe`]).
    pub fn new(
        client: ::kube::Client,
        bundle: watch::Receiver<String>,
        leader: watch::Receiver<bool>,
    ) -> Self {
        Self {
            client,
            bundle,
            leader,
            resync: DEFAULT_RESYNC,
        }
    }

    /// Overrides [`DEFAULT_RESYNC`].
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Watches and repairs until `cancel`. Watch errors are retried by the
    /// watcher's backoff; write errors are logged and retried on the next pass.
    pub async fn run(mut self, cancel: CancellationToken) {
        let (namespaces, ns_writer) = reflector::store::<Namespace>();
        let (configmaps, cm_writer) = reflector::store::<ConfigMap>();
        let ns_events = reflector::reflector(
            ns_writer,
            watcher::watcher(Api::all(self.client.clone()), watcher::Config::default())
                .backoff(SteadyBackoff::default()),
        );
        let cm_events = reflector::reflector(
            cm_writer,
            watcher::watcher(
                Api::all(self.client.clone()),
                watcher::Config::default().fields(&format!("metadata.name={ROOT_CONFIGMAP}")),
            )
            .backoff(SteadyBackoff::default()),
        );
        let mut ns_events = std::pin::pin!(ns_events);
        let mut cm_events = std::pin::pin!(cm_events);
        let (mut ns_synced, mut cm_synced) = (false, false);
        let mut resync = tokio::time::interval(self.resync);
        let mut written = Written::default();
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                Some(event) = ns_events.next() => ns_synced |= synced(event, "namespaces"),
                Some(event) = cm_events.next() => cm_synced |= synced(event, "configmaps"),
                Ok(()) = self.bundle.changed() => {}
                Ok(()) = self.leader.changed() => {}
                _ = resync.tick() => {}
            }
            if ns_synced && cm_synced && *self.leader.borrow() {
                let bundle = self.bundle.borrow().clone();
                self.reconcile(&namespaces, &configmaps, &bundle, &mut written)
                    .await;
            }
        }
    }

    /// One pass: plan from the stores, then write.
    async fn reconcile(
        &self,
        namespaces: &Store<Namespace>,
        configmaps: &Store<ConfigMap>,
        bundle: &str,
        written: &mut Written,
    ) {
        let observed_ns: Vec<ObservedNamespace> = namespaces
            .state()
            .iter()
            .filter_map(|ns| {
                Some(ObservedNamespace {
                    name: ns.metadata.name.clone()?,
                    terminating: ns.metadata.deletion_timestamp.is_some()
                        || ns.status.as_ref().and_then(|s| s.phase.as_deref())
                            == Some("Terminating"),
                })
            })
            .collect();
        let mut observed_cm: BTreeMap<String, ObservedConfigMap> = configmaps
            .state()
            .iter()
            .filter(|cm| cm.metadata.name.as_deref() == Some(ROOT_CONFIGMAP))
            .filter_map(|cm| {
                Some((
                    cm.metadata.namespace.clone()?,
                    ObservedConfigMap {
                        root_cert: cm.data.as_ref().and_then(|d| d.get(ROOT_CERT_KEY)).cloned(),
                        labelled: cm
                            .metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(CONFIG_LABEL.0))
                            .map(String::as_str)
                            == Some(CONFIG_LABEL.1),
                    },
                ))
            })
            .collect();
        written.overlay(configmaps, &mut observed_cm);
        for action in plan(&observed_ns, &observed_cm, bundle) {
            let (namespace, before, result) = match &action {
                Action::Create { namespace } => {
                    (namespace, None, self.create(namespace, bundle).await)
                }
                Action::Repair { namespace } => {
                    let Some(current) = configmaps.get(&cm_ref(namespace)) else {
                        continue;
                    };
                    let before = current.metadata.resource_version.clone();
                    (namespace, before, self.repair(&current, bundle).await)
                }
            };
            match result {
                Ok(after) => {
                    tracing::info!(%namespace, ?action, "root ConfigMap written");
                    tracing::debug!(%namespace, resource_version = ?after, "written");
                    written.record(namespace, before, bundle);
                }
                Err(::kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
                    tracing::debug!(%namespace, "root ConfigMap changed meanwhile; next pass")
                }
                Err(err) => {
                    tracing::warn!(%namespace, error = %err, "cannot write the root ConfigMap")
                }
            }
        }
    }

    /// Creates the ConfigMap; returns the new resourceVersion.
    async fn create(&self, namespace: &str, bundle: &str) -> Result<Option<String>, ::kube::Error> {
        let configmap = ConfigMap {
            metadata: ObjectMeta {
                name: Some(ROOT_CONFIGMAP.to_owned()),
                namespace: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        api.create(&PostParams::default(), &with_bundle(configmap, bundle))
            .await
            .map(|cm| cm.metadata.resource_version)
    }

    /// Rewrites our key and label, carrying the observed resourceVersion;
    /// returns the new one.
    async fn repair(
        &self,
        current: &ConfigMap,
        bundle: &str,
    ) -> Result<Option<String>, ::kube::Error> {
        let namespace = current.metadata.namespace.as_deref().unwrap_or_default();
        let mut fixed = with_bundle(current.clone(), bundle);
        fixed.metadata.managed_fields = None;
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        api.replace(ROOT_CONFIGMAP, &PostParams::default(), &fixed)
            .await
            .map(|cm| cm.metadata.resource_version)
    }
}

fn cm_ref(namespace: &str) -> ObjectRef<ConfigMap> {
    ObjectRef::new(ROOT_CONFIGMAP).within(namespace)
}

/// Writes the watch has not shown yet, so that a pass running before the
/// watch event arrives does not write the same thing twice.
#[derive(Debug, Default)]
struct Written {
    /// Namespace → (resourceVersion replaced, `None` for a create; bundle written).
    by_namespace: BTreeMap<String, (Option<String>, String)>,
}

impl Written {
    fn record(&mut self, namespace: &str, before: Option<String>, bundle: &str) {
        self.by_namespace
            .insert(namespace.to_owned(), (before, bundle.to_owned()));
    }

    /// While the store still shows what we replaced (or nothing, for a
    /// create), the observation is what we wrote; once it shows our write or
    /// anything newer, the store is right again and the entry goes.
    fn overlay(
        &mut self,
        store: &Store<ConfigMap>,
        observed: &mut BTreeMap<String, ObservedConfigMap>,
    ) {
        self.by_namespace.retain(|namespace, (before, bundle)| {
            let seen = store
                .get(&cm_ref(namespace))
                .and_then(|cm| cm.metadata.resource_version.clone());
            if seen != *before {
                return false;
            }
            observed.insert(
                namespace.clone(),
                ObservedConfigMap {
                    root_cert: Some(bundle.clone()),
                    labelled: true,
                },
            );
            true
        });
    }
}

/// Our key and label set; other data keys and labels kept.
fn with_bundle(mut configmap: ConfigMap, bundle: &str) -> ConfigMap {
    configmap
        .data
        .get_or_insert_with(BTreeMap::new)
        .insert(ROOT_CERT_KEY.to_owned(), bundle.to_owned());
    configmap
        .metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(CONFIG_LABEL.0.to_owned(), CONFIG_LABEL.1.to_owned());
    configmap
}

/// Whether the event completes an initial listing; errors are logged (the
/// watcher retries by itself).
fn synced<K>(event: Result<Event<K>, watcher::Error>, what: &str) -> bool {
    match event {
        Ok(Event::InitDone) => true,
        Ok(_) => false,
        Err(err) => {
            tracing::warn!(error = %err, "watching {what} failed; retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests;
