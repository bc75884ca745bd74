//! The mTLS policy stream on the agent's Unix socket (`meshid.policy.v1`
//! `PolicyDiscovery/WatchPolicy`, ours): each workload's proxy receives the
//! effective mTLS mode (workload-wide and per port) that the platform's
//! PeerAuthentications give its pod, at once and again on every change.
//!
//! Owns the `PolicyUpdate` messages with their versions; the index of policies shared by all streams and each
//! stream's re-resolution loop are in `follow`. Not what a mode does to a
//! connection (the proxy's `enforce`), how policies resolve
//! (`policy::resolve`), nor where they come from (the platform).
//!
//! Rules enforced:
//! - a caller gets the policy of the pod it attested as (its own token in
//!   `authorization: Bearer` when it sends one, else its peer credentials, as
//!   SDS: [`AttestPolicy::TokenThenPeer`]), never of a pod it names (the
//!   request is empty); unattested → `PERMISSION_DENIED` with the reason;
//! - a stream follows its pod by UID: relabelled → re-resolved; deleted,
//!   finished, off this node or now running as another service account → the
//!   stream ends with `NOT_FOUND`, so the proxy reconnects and attests again
//!   (an update for a pod that no longer exists would be a guess; the proxy
//!   keeps its last policy while it cannot attest);
//! - UNSET never goes on the wire: resolution never yields it, and should it,
//!   the stream ends with `INTERNAL` instead;
//! - an update is sent only when its content changed (its version is a hash of
//!   the content), however often the platform changes;
//! - policy warnings (competing policies in a scope, selectors in the root
//!   namespace) are logged when they appear or change, once for the whole
//!   agent, not per stream nor per tick; warnings about one workload's
//!   competing selector policies are logged by its stream when they change.
//!
//! Latency: a platform change wakes every stream through `changes()`; the
//! policies are sorted once per generation for all streams and each stream's
//! resolution is an in-memory lookup, so a push adds well under a millisecond
//! to the platform's own change detection.

mod follow;
mod listing;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::agent::attest::Workload;
use crate::agent::metrics::AgentMetrics;
use crate::agent::socket::caller::{AttestPolicy, SocketAttestor, Unattested};
use crate::agent::socket::UdsConnInfo;
use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::Platform;
use crate::policy::{EffectiveMode, MtlsMode};
use crate::proto::meshid::policy::v1 as proto;
use crate::shutdown::Shutdown;
use follow::{Follower, PolicyIndex};
use proto::policy_discovery_server::{PolicyDiscovery, PolicyDiscoveryServer};

/// Updates buffered per stream; a slow reader only delays its own stream,
/// and the platform's watch coalesces what happens meanwhile.
const STREAM_BUFFER: usize = 4;

/// Why a policy stream was refused or ended. Mapped to a gRPC status in one
/// place (`From<PolicyPushError> for Status`), which also logs it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyPushError {
    /// The caller could not be tied to a workload on this node.
    #[error(transparent)]
    Unattested(#[from] Unattested),
    /// The attested pod no longer qualifies; the stream ends.
    #[error("pod {pod} (uid {uid}) {what}; reconnect to attest again")]
    PodGone {
        /// `namespace/name` of the pod.
        pod: String,
        /// Its UID, which the stream followed.
        uid: String,
        /// What happened to it.
        what: String,
    },
    /// Resolution gave UNSET (it never should): nothing is sent.
    #[error("resolution gave UNSET, which a proxy cannot enforce; nothing sent")]
    UnsetMode,
    /// The agent is stopping.
    #[error("the node agent is shutting down")]
    ShuttingDown,
}

impl From<PolicyPushError> for Status {
    fn from(e: PolicyPushError) -> Self {
        let message = e.to_string();
        match e {
            PolicyPushError::Unattested(_) => {
                tracing::warn!(error = %message, "policy stream caller refused");
                Status::permission_denied(message)
            }
            PolicyPushError::PodGone { .. } => {
                tracing::info!(error = %message, "policy stream ended");
                Status::not_found(message)
            }
            PolicyPushError::UnsetMode => {
                tracing::error!(error = %message, "policy stream ended");
                Status::internal(message)
            }
            PolicyPushError::ShuttingDown => Status::unavailable(message),
        }
    }
}

/// The wire form of a resolved mode; UNSET has none.
impl TryFrom<MtlsMode> for proto::MtlsMode {
    type Error = PolicyPushError;

    fn try_from(mode: MtlsMode) -> Result<Self, Self::Error> {
        match mode {
            MtlsMode::Unset => Err(PolicyPushError::UnsetMode),
            MtlsMode::Disable => Ok(Self::Disable),
            MtlsMode::Permissive => Ok(Self::Permissive),
            MtlsMode::Strict => Ok(Self::Strict),
            MtlsMode::Audit => Ok(Self::Audit),
        }
    }
}

/// The update for a workload `identity` whose resolved mode is `effective`,
/// its version filled in ([`content_version`]).
pub fn policy_update(
    effective: &EffectiveMode,
    identity: &SpiffeId,
    trust_domain: &TrustDomain,
) -> Result<proto::PolicyUpdate, PolicyPushError> {
    let wire = |mode: MtlsMode| proto::MtlsMode::try_from(mode).map(i32::from);
    let port_modes = effective
        .ports
        .iter()
        .map(|(port, mode)| Ok((*port, wire(*mode)?)))
        .collect::<Result<BTreeMap<u32, i32>, PolicyPushError>>()?;
    let mut update = proto::PolicyUpdate {
        version: String::new(),
        mode: wire(effective.mode)?,
        port_modes,
        source: effective.source.to_string(),
        identity: identity.to_string(),
        trust_domain: trust_domain.to_string(),
    };
    update.version = content_version(&update);
    Ok(update)
}

/// The version of an update: the first 16 hex digits of the SHA-256 of every
/// field but `version`, each length-prefixed, ports in order. Equal content
/// gives an equal version, across agents and restarts.
pub fn content_version(update: &proto::PolicyUpdate) -> String {
    let mut text = String::new();
    let mut field = |name: &str, value: &str| {
        let _ = writeln!(text, "{name}:{}:{value}", value.len());
    };
    field("mode", &update.mode.to_string());
    for (port, mode) in &update.port_modes {
        field("port", &format!("{port}={mode}"));
    }
    field("source", &update.source);
    field("identity", &update.identity);
    field("trust_domain", &update.trust_domain);
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// The policy stream server: one per agent, shared by every connection.
pub struct PolicyService {
    /// Who is calling ([`AttestPolicy::TokenThenPeer`]).
    socket: SocketAttestor,
    index: Arc<PolicyIndex>,
    trust_domain: TrustDomain,
    /// Counts refused listings.
    metrics: AgentMetrics,
    /// Ends open streams at shutdown.
    stop: CancellationToken,
    /// This process's uid: may list every workload's policy (as may root).
    own_uid: Option<u32>,
    /// The pods this process runs in: a caller inside them (`kubectl exec`
    /// into the agent) may list; a caller inside any other pod may not.
    own_pods: Vec<String>,
}

impl std::fmt::Debug for PolicyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyService")
            .field("root_namespace", &self.index.root_namespace)
            .field("trust_domain", &self.trust_domain.as_str())
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl PolicyService {
    /// A service attesting callers with `socket` and resolving the
    /// `platform`'s PeerAuthentications under `root_namespace` (whose
    /// selector-less policy is mesh-wide).
    pub fn new(
        socket: SocketAttestor,
        platform: Arc<dyn Platform>,
        root_namespace: String,
        trust_domain: TrustDomain,
        metrics: AgentMetrics,
    ) -> Self {
        Self {
            socket,
            index: Arc::new(PolicyIndex::new(platform, root_namespace)),
            trust_domain,
            metrics,
            stop: CancellationToken::new(),
            own_uid: listing::own_uid(),
            own_pods: listing::own_pods(),
        }
    }

    /// Ends every open stream (with `UNAVAILABLE`) when `shutdown` triggers.
    pub fn with_shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.stop = shutdown.token().child_token();
        self
    }

    /// The tonic service to mount on the agent's socket.
    pub fn into_server(self) -> PolicyDiscoveryServer<Self> {
        PolicyDiscoveryServer::new(self)
    }

    /// The follower of an attested workload's policy.
    fn follower(&self, workload: Workload) -> Follower {
        Follower {
            index: Arc::clone(&self.index),
            node: self.socket.attestor().node().to_owned(),
            trust_domain: self.trust_domain.clone(),
            workload,
        }
    }
}

#[tonic::async_trait]
impl PolicyDiscovery for PolicyService {
    type WatchPolicyStream = ReceiverStream<Result<proto::PolicyUpdate, Status>>;

    async fn watch_policy(
        &self,
        request: Request<proto::WatchPolicyRequest>,
    ) -> Result<Response<Self::WatchPolicyStream>, Status> {
        let workload = self
            .socket
            .attest(AttestPolicy::TokenThenPeer, &request)
            .await
            .map_err(PolicyPushError::from)?;
        let span = tracing::info_span!(
            "policy_stream",
            identity = %workload.identity,
            pod = %format_args!("{}/{}", workload.pod.namespace, workload.pod.name),
        );
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let follower = self.follower(workload);
        tokio::spawn(follower.run(tx, self.stop.clone()).instrument(span));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_workload_policies(
        &self,
        request: Request<proto::ListWorkloadPoliciesRequest>,
    ) -> Result<Response<proto::ListWorkloadPoliciesResponse>, Status> {
        let peer = request
            .extensions()
            .get::<UdsConnInfo>()
            .and_then(|info| info.peer.as_ref());
        let caller = listing::ListingCaller {
            peer,
            pods: match peer {
                Some(creds) => self
                    .socket
                    .attestor()
                    .peer_pod_uids(creds)
                    .map_err(|e| e.to_string()),
                None => Err("no peer credentials".to_owned()),
            },
        };
        if let Err(reason) = listing::may_list(&caller, self.own_uid, &self.own_pods) {
            self.metrics.listings_refused.inc();
            tracing::warn!(%reason, "policy listing refused");
            return Err(Status::permission_denied(reason));
        }
        let namespace = &request.get_ref().namespace;
        listing::list(&self.index, self.socket.attestor().node(), namespace)
            .map(Response::new)
            .map_err(Status::from)
    }
}
