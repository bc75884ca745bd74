//! The work behind each policy stream: the [`PolicyIndex`] of every
//! PeerAuthentication, sorted once per platform generation and shared by all
//! streams, and the [`Follower`] that re-resolves one attested pod on every
//! platform change and sends its update when the content changed.
//!
//! Tests drive it with a real local platform and a plain `mpsc` channel.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{policy_update, proto, PolicyPushError};
use crate::agent::attest::Workload;
use crate::identity::TrustDomain;
use crate::platform::{Platform, Pod};
use crate::policy::{Policies, PolicyWarning};

/// Every PeerAuthentication sorted into scopes, rebuilt at most once per
/// platform generation and shared by every stream.
pub(super) struct PolicyIndex {
    pub(super) platform: Arc<dyn Platform>,
    pub(super) root_namespace: String,
    /// Never held across an `.await`.
    state: Mutex<IndexState>,
}

#[derive(Default)]
struct IndexState {
    /// The generation the policies were built at, and the policies.
    built: Option<(u64, Arc<Policies>)>,
    /// The mesh-wide warnings last logged.
    logged: Vec<PolicyWarning>,
}

impl PolicyIndex {
    pub(super) fn new(platform: Arc<dyn Platform>, root_namespace: String) -> Self {
        Self {
            platform,
            root_namespace,
            state: Mutex::new(IndexState::default()),
        }
    }

    /// The policies as of `generation` or later; built (and their warnings
    /// logged, if they changed) by the first stream to ask for a generation.
    pub(super) fn policies(&self, generation: u64) -> Arc<Policies> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built, policies)) = &state.built {
            if *built >= generation {
                return Arc::clone(policies);
            }
        }
        let policies = Arc::new(Policies::new(
            &self.root_namespace,
            self.platform.peer_authentications(),
        ));
        if policies.warnings() != state.logged.as_slice() {
            for warning in policies.warnings() {
                tracing::warn!(%warning, "PeerAuthentication policies conflict");
            }
            state.logged = policies.warnings().to_vec();
        }
        state.built = Some((generation, Arc::clone(&policies)));
        policies
    }
}

/// One stream's work: follow an attested pod and its policy.
pub(super) struct Follower {
    pub(super) index: Arc<PolicyIndex>,
    /// This agent's node: the pod must stay on it.
    pub(super) node: String,
    pub(super) trust_domain: TrustDomain,
    pub(super) workload: Workload,
}

impl Follower {
    /// Sends the update at once, then again whenever the platform changes
    /// and the update with it, until the pod is gone, the client leaves or
    /// `stop` fires.
    pub(super) async fn run(
        self,
        tx: mpsc::Sender<Result<proto::PolicyUpdate, Status>>,
        stop: CancellationToken,
    ) {
        let mut changes = self.index.platform.changes();
        let mut sent: Option<String> = None;
        let mut warned: Vec<PolicyWarning> = Vec::new();
        loop {
            let generation = *changes.borrow_and_update();
            match self.resolve(generation) {
                Ok((update, warnings)) => {
                    if warnings != warned {
                        for warning in &warnings {
                            tracing::warn!(%warning, "PeerAuthentication policies conflict");
                        }
                        warned = warnings;
                    }
                    if sent.as_deref() != Some(update.version.as_str()) {
                        tracing::info!(
                            mode = ?update.mode(),
                            ports = ?update.port_modes,
                            source = %update.source,
                            version = %update.version,
                            "pushing mTLS policy"
                        );
                        let version = update.version.clone();
                        if tx.send(Ok(update)).await.is_err() {
                            return;
                        }
                        sent = Some(version);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tx.closed() => return,
                changed = changes.changed() => if changed.is_err() { break },
            }
        }
        let _ = tx.send(Err(PolicyPushError::ShuttingDown.into())).await;
    }

    /// The update for the pod as the platform knows it at `generation`, and
    /// the warnings about its workload scope.
    fn resolve(
        &self,
        generation: u64,
    ) -> Result<(proto::PolicyUpdate, Vec<PolicyWarning>), PolicyPushError> {
        let pod = self.live_pod()?;
        let resolution = self
            .index
            .policies(generation)
            .resolve(&pod.namespace, &pod.labels);
        let update = policy_update(
            &resolution.effective,
            &self.workload.identity,
            &self.trust_domain,
        )?;
        Ok((update, resolution.warnings))
    }

    /// The attested pod, if it still exists and still attests as it did.
    fn live_pod(&self) -> Result<Pod, PolicyPushError> {
        let attested = &self.workload.pod;
        let gone = |what: String| PolicyPushError::PodGone {
            pod: format!("{}/{}", attested.namespace, attested.name),
            uid: attested.uid.clone(),
            what,
        };
        let Some(pod) = self.index.platform.pod_by_uid(&attested.uid) else {
            return Err(gone("is gone".to_owned()));
        };
        if pod.node_name.as_deref() != Some(self.node.as_str()) {
            return Err(gone(format!("is no longer on node {}", self.node)));
        }
        if !pod.is_running() {
            let phase = pod.phase.as_deref().unwrap_or_default();
            return Err(gone(format!("is no longer running (phase {phase})")));
        }
        match pod.identity(&self.trust_domain) {
            Ok(id) if id == self.workload.identity => Ok(pod),
            Ok(id) => Err(gone(format!(
                "now runs as {id}, not {}",
                self.workload.identity
            ))),
            Err(e) => Err(gone(format!("no longer has a valid identity: {e}"))),
        }
    }
}
