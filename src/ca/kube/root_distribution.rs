//! The CA's singleton jobs on Kubernetes: one Lease elects the replica that
//! runs them — the `istio-ca-root-cert` ConfigMap in every namespace, and
//! the authorities' rotation schedule (the caller runs it while the
//! receiver [`spawn`] returns is true).
//!
//! Owns wiring only: leader election is [`super::lease`], the
//! reconciliation of ConfigMaps is [`super::root_configmap`], the bundle
//! comes from [`Authorities::subscribe`]. Rule enforced: the ConfigMaps
//! carry the current trust bundle (prepared, active and old roots, minus
//! revoked ones), rewritten on every change of it.

use std::sync::Arc;

use ::kube::Client;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::lease::{LeaderElector, LeaseConfig};
use super::root_configmap::RootCertDistributor;
use crate::ca::authorities::{Authorities, Snapshot};
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// The Lease that elects the replica running the CA's singleton jobs (its
/// name predates the rotation schedule, which shares it).
pub(crate) const LEASE_NAME: &str = "meshid-ca-root-cert";

/// Starts leader election and the ConfigMap reconciler as tasks of
/// `shutdown`, and returns whether this replica holds the Lease (now and on
/// every change). `holder` is this replica's identity in the Lease (the pod
/// name; the host name when not given, which is the pod name on Kubernetes).
pub fn spawn(
    client: Client,
    namespace: &str,
    holder: Option<String>,
    authorities: &Arc<Authorities>,
    clock: SharedClock,
    shutdown: &Shutdown,
) -> watch::Receiver<bool> {
    let holder = holder.unwrap_or_else(host_name);
    let elector = LeaderElector::new(
        client.clone(),
        LeaseConfig::new(namespace, LEASE_NAME, holder.clone()),
        clock,
    );
    let leader = elector.subscribe();
    shutdown.spawn(elector.run(shutdown.token().clone()));
    shutdown.spawn(distribute(
        client,
        authorities.subscribe(),
        leader.clone(),
        shutdown.token().clone(),
    ));
    tracing::info!(lease = LEASE_NAME, %holder, "CA singleton jobs (root-certificate ConfigMaps, rotation schedule): leader election started");
    leader
}

/// Keeps the ConfigMaps at the bundle of the latest snapshot while `leader`
/// is true, until `cancel` (or until the authorities are dropped).
pub(crate) async fn distribute(
    client: Client,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    leader: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let first = snapshots.borrow_and_update().bundle_pem().to_owned();
    let (bundle_tx, bundle) = watch::channel(first);
    let follow = async {
        while snapshots.changed().await.is_ok() {
            let pem = snapshots.borrow_and_update().bundle_pem().to_owned();
            // Only a changed bundle wakes the reconciler (a CRL re-signed does not).
            bundle_tx.send_if_modified(|current| {
                if *current == pem {
                    return false;
                }
                *current = pem;
                true
            });
        }
    };
    tokio::select! {
        () = RootCertDistributor::new(client, bundle, leader).run(cancel) => {}
        () = follow => {}
    }
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
