//! The CA's singleton job on Kubernetes: keep ConfigMap `istio-ca-root-cert`
//! in every namespace, done only by the replica holding the Lease.
//!
//! Owns wiring only: leader election is [`super::lease`], the
//! reconciliation of ConfigMaps is [`super::root_configmap`].

use ::kube::Client;
use tokio::sync::watch;

use super::lease::{LeaderElector, LeaseConfig};
use super::root_configmap::RootCertDistributor;
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// The Lease that elects the replica writing root-certificate ConfigMaps.
pub(crate) const LEASE_NAME: &str = "meshid-ca-root-cert";

/// Starts leader election and the ConfigMap reconciler as tasks of `shutdown`.
/// `holder` is this replica's identity in the Lease (the pod name; the host
/// name when not given, which is the pod name on Kubernetes).
pub fn spawn(
    client: Client,
    namespace: &str,
    holder: Option<String>,
    bundle_pem: String,
    clock: SharedClock,
    shutdown: &Shutdown,
) {
    let holder = holder.unwrap_or_else(host_name);
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig::new(namespace, LEASE_NAME, holder.clone()),
        clock,
    );
    let leader = elector.subscribe();
    shutdown.spawn(elector.run(shutdown.token().clone()));
    // The bundle is fixed for the life of the process until root rotation
    // exists; the channel lets the reconciler follow a future change.
    let (bundle_tx, bundle) = watch::channel(bundle_pem);
    let cancel = shutdown.token().clone();
    shutdown.spawn(async move {
        let _keep = bundle_tx;
        RootCertDistributor::new(client, bundle, leader)
            .run(cancel)
            .await;
    });
    tracing::info!(lease = LEASE_NAME, %holder, "root-certificate ConfigMaps: leader election started");
}

/// `/proc/sys/kernel/hostname` (a pod's name), or `meshid-ca` if unreadable.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "meshid-ca".to_owned())
}
