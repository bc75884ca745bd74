//! Envoy SDS v3 on the agent's Unix socket: `SecretDiscoveryService`
//! `StreamSecrets` (state of the world) and `FetchSecrets`, serving istio-agent's
//! two resources, `default` (the caller's certificate chain and key) and
//! `ROOTCA` (the trust anchors).
//!
//! Owns the mapping of SDS errors to gRPC status codes. Rules enforced: a
//! caller gets only the certificate of the identity it attested as (its own
//! service-account token in `authorization: Bearer` when it sends one, else
//! its peer credentials: [`AttestPolicy::TokenThenPeer`], decided in
//! [`crate::agent::socket::caller`]); unattested callers get
//! `PERMISSION_DENIED` and nothing else. The resources and their versions live
//! in [`resources`]; ACK/NACK/nonce rules in `state`; the push loop in `stream`.

pub mod resources;
mod state;
mod stream;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::agent::cache::CertCache;
use crate::agent::socket::caller::{AttestPolicy, SocketAttestor, Unattested};
use crate::identity::SpiffeId;
use crate::proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use crate::proto::envoy::service::secret::v3::secret_discovery_service_server::{
    SecretDiscoveryService, SecretDiscoveryServiceServer,
};
use crate::shutdown::Shutdown;

/// Responses buffered per stream; pushes are rare (rotations), so a few suffice.
const STREAM_BUFFER: usize = 4;

/// How long `FetchSecrets` waits for a certificate that is still being issued.
const FETCH_WAIT: Duration = Duration::from_secs(30);

/// Why an SDS request was refused. Mapped to a gRPC status in one place
/// (`From<SdsError> for Status`), which also logs it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdsError {
    /// The caller could not be tied to a workload on this node.
    #[error(transparent)]
    Unattested(#[from] Unattested),
    /// The request asked for another xDS type.
    #[error(
        "type URL {got:?} is not served here; SDS serves {}",
        resources::SECRET_TYPE_URL
    )]
    WrongTypeUrl {
        /// The type URL requested.
        got: String,
    },
    /// `FetchSecrets` named only resources we do not serve.
    #[error("none of {requested:?} is served; this agent serves \"default\" and \"ROOTCA\"")]
    NoKnownResource {
        /// The names requested.
        requested: Vec<String>,
    },
    /// `FetchSecrets` waited too long for the first certificate.
    #[error(
        "no certificate for {identity} yet after {waited:?}; the CA may be unreachable, retry"
    )]
    NotReady {
        /// The identity asked for.
        identity: SpiffeId,
        /// How long we waited.
        waited: Duration,
    },
    /// Incremental xDS is not implemented.
    #[error("DeltaSecrets (incremental xDS) is not served; use StreamSecrets")]
    DeltaUnsupported,
    /// The agent is stopping.
    #[error("the node agent is shutting down")]
    ShuttingDown,
}

impl From<SdsError> for Status {
    fn from(e: SdsError) -> Self {
        let message = e.to_string();
        match e {
            SdsError::Unattested(_) => {
                tracing::warn!(error = %message, "SDS caller refused");
                Status::permission_denied(message)
            }
            SdsError::WrongTypeUrl { .. } | SdsError::NoKnownResource { .. } => {
                tracing::warn!(error = %message, "SDS request refused");
                Status::invalid_argument(message)
            }
            SdsError::NotReady { .. } => {
                tracing::warn!(error = %message, "SDS fetch timed out");
                Status::unavailable(message)
            }
            SdsError::DeltaUnsupported => {
                tracing::debug!(error = %message, "SDS delta request refused");
                Status::unimplemented(message)
            }
            SdsError::ShuttingDown => Status::unavailable(message),
        }
    }
}

/// The SDS server: one per agent, shared by every connection on the socket.
pub struct SdsService {
    /// Who is calling ([`AttestPolicy::TokenThenPeer`]).
    socket: SocketAttestor,
    cache: Arc<CertCache>,
    /// Ends open streams at shutdown (streams otherwise live as long as Envoy).
    stop: CancellationToken,
}

impl std::fmt::Debug for SdsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdsService")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl SdsService {
    /// A service attesting callers with `socket` and serving from `cache`.
    pub fn new(socket: SocketAttestor, cache: Arc<CertCache>) -> Self {
        Self {
            socket,
            cache,
            stop: CancellationToken::new(),
        }
    }

    /// Ends every open stream (with `UNAVAILABLE`) when `shutdown` triggers, so
    /// that long-lived Envoy streams do not hold the drain up.
    pub fn with_shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.stop = shutdown.token().child_token();
        self
    }

    /// The tonic service to mount on the agent's socket.
    pub fn into_server(self) -> SecretDiscoveryServiceServer<Self> {
        SecretDiscoveryServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;
    type StreamSecretsStream = ReceiverStream<Result<DiscoveryResponse, Status>>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(SdsError::DeltaUnsupported.into())
    }

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let workload = self
            .socket
            .attest(AttestPolicy::TokenThenPeer, &request)
            .await
            .map_err(SdsError::from)?;
        let identity = workload.identity;
        let subscription = self.cache.subscribe(&identity);
        let (svid_rx, bundle_rx) = (subscription.receiver(), self.cache.bundle());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let requests = request.into_inner();
        let stop = self.stop.clone();
        let span = tracing::info_span!("sds_stream", identity = %identity);
        tokio::spawn(
            async move {
                tracing::debug!("SDS stream opened");
                stream::serve(requests, svid_rx, bundle_rx, tx, stop).await;
                // Dropping the subscription releases the cache's interest.
                drop(subscription);
                tracing::debug!("SDS stream closed");
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let workload = self
            .socket
            .attest(AttestPolicy::TokenThenPeer, &request)
            .await
            .map_err(SdsError::from)?;
        let request = request.into_inner();
        let mut state = state::StreamState::default();
        state.on_request(&request)?;
        if state.resources().is_empty() {
            return Err(SdsError::NoKnownResource {
                requested: request.resource_names,
            }
            .into());
        }
        let subscription = self.cache.subscribe(&workload.identity);
        let (mut svid_rx, mut bundle_rx) = (subscription.receiver(), self.cache.bundle());
        let wait = async {
            loop {
                let svid = svid_rx.borrow_and_update().clone();
                let bundle = bundle_rx.borrow_and_update().clone();
                if let Some(response) = state.next_response(svid.as_deref(), bundle.as_deref()) {
                    return Ok(response);
                }
                tokio::select! {
                    () = self.stop.cancelled() => return Err(SdsError::ShuttingDown),
                    changed = svid_rx.changed() => if changed.is_err() { return Err(SdsError::ShuttingDown) },
                    changed = bundle_rx.changed() => if changed.is_err() { return Err(SdsError::ShuttingDown) },
                }
            }
        };
        let response =
            tokio::time::timeout(FETCH_WAIT, wait)
                .await
                .map_err(|_| SdsError::NotReady {
                    identity: workload.identity.clone(),
                    waited: FETCH_WAIT,
                })??;
        Ok(Response::new(response))
    }
}
