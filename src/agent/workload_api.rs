//! The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package) on the
//! agent's Unix socket: `FetchX509SVID` and `FetchX509Bundles` stream the
//! caller's X.509-SVID and trust bundle, in full, at once and on every change.
//! The JWT-SVID RPCs answer `UNIMPLEMENTED` until JWT-SVIDs are issued; RPCs
//! not in our proto (WIT-SVIDs) get `UNIMPLEMENTED` from tonic.
//!
//! Rules enforced, in this order, on every RPC: the `workload.spiffe.io: true`
//! header (else `INVALID_ARGUMENT`); attestation by peer credentials only (no
//! tokens on this API: [`AttestPolicy::PeerOnly`]; else `PERMISSION_DENIED`
//! with the reason). A caller gets
//! only the SVID of the identity it attested as. Message building is in
//! [`convert`]; the push loop in `stream`.

pub mod convert;
mod stream;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::agent::attest::Workload;
use crate::agent::cache::{CertCache, Svid, TrustBundle};
use crate::agent::socket::caller::{AttestPolicy, SocketAttestor, Unattested};
use crate::identity::TrustDomain;
use crate::proto::spiffe_workload::spiffe_workload_api_server::{
    SpiffeWorkloadApi, SpiffeWorkloadApiServer,
};
use crate::proto::spiffe_workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svidRequest,
    X509svidResponse,
};
use crate::shutdown::Shutdown;
use stream::Feed;

/// Messages buffered per stream; pushes are rare (rotations), so a few suffice.
const STREAM_BUFFER: usize = 4;

/// Why a Workload API request was refused. Mapped to a gRPC status in one
/// place (`From<WorkloadApiError> for Status`), which also logs it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkloadApiError {
    /// The request lacks `workload.spiffe.io: true`.
    #[error("missing workload.spiffe.io: true metadata")]
    MissingSecurityHeader,
    /// The caller could not be tied to a workload on this node.
    #[error(transparent)]
    Unattested(#[from] Unattested),
    /// A JWT-SVID RPC: not served yet.
    #[error("{rpc}: JWT-SVIDs are not served by this agent yet; use the X.509-SVID RPCs")]
    JwtNotServed {
        /// The RPC called.
        rpc: &'static str,
    },
    /// The agent is stopping.
    #[error("the node agent is shutting down")]
    ShuttingDown,
}

impl From<WorkloadApiError> for Status {
    fn from(e: WorkloadApiError) -> Self {
        let message = e.to_string();
        match e {
            WorkloadApiError::MissingSecurityHeader => {
                tracing::info!(error = %message, "Workload API request refused");
                Status::invalid_argument(message)
            }
            WorkloadApiError::Unattested(_) => {
                tracing::warn!(error = %message, "Workload API caller refused");
                Status::permission_denied(message)
            }
            WorkloadApiError::JwtNotServed { .. } => {
                tracing::debug!(error = %message, "Workload API JWT request refused");
                Status::unimplemented(message)
            }
            WorkloadApiError::ShuttingDown => Status::unavailable(message),
        }
    }
}

/// The Workload API server: one per agent, shared by every connection.
pub struct WorkloadApiService {
    /// Who is calling ([`AttestPolicy::PeerOnly`]).
    socket: SocketAttestor,
    cache: Arc<CertCache>,
    /// Our trust domain: the key of the bundle map.
    trust_domain: TrustDomain,
    /// Ends open streams at shutdown.
    stop: CancellationToken,
}

impl std::fmt::Debug for WorkloadApiService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkloadApiService")
            .field("trust_domain", &self.trust_domain.as_str())
            .finish_non_exhaustive()
    }
}

impl WorkloadApiService {
    /// A service attesting callers with `socket` and serving from `cache`.
    pub fn new(socket: SocketAttestor, cache: Arc<CertCache>, trust_domain: TrustDomain) -> Self {
        Self {
            socket,
            cache,
            trust_domain,
            stop: CancellationToken::new(),
        }
    }

    /// Ends every open stream (with `UNAVAILABLE`) when `shutdown` triggers.
    pub fn with_shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.stop = shutdown.token().child_token();
        self
    }

    /// The tonic service to mount on the agent's socket.
    pub fn into_server(self) -> SpiffeWorkloadApiServer<Self> {
        SpiffeWorkloadApiServer::new(self)
    }

    /// The header check, then attestation by peer credentials. What the
    /// request says is read now; the future does not borrow it.
    fn admit<T>(
        &self,
        request: &Request<T>,
    ) -> impl Future<Output = Result<Workload, WorkloadApiError>> + Send + '_ {
        let header = convert::check_security_header(request.metadata());
        let attested = self.socket.attest(AttestPolicy::PeerOnly, request);
        async move {
            header?;
            Ok(attested.await?)
        }
    }

    /// Spawns the push loop of one stream, holding the caller's subscription
    /// (which keeps its certificate fresh) for as long as the stream lives.
    fn spawn_stream<M, F>(
        &self,
        rpc: &'static str,
        workload: &Workload,
        feed: Feed,
        make: F,
    ) -> ReceiverStream<Result<M, Status>>
    where
        M: Send + 'static,
        F: Fn(Option<&Svid>, &TrustBundle) -> Option<M> + Send + 'static,
    {
        let subscription = self.cache.subscribe(&workload.identity);
        let (svid_rx, bundle_rx) = (subscription.receiver(), self.cache.bundle());
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let stop = self.stop.clone();
        let span = tracing::info_span!("workload_api", rpc, identity = %workload.identity);
        tokio::spawn(
            async move {
                tracing::debug!("Workload API stream opened");
                stream::push_changes(feed, svid_rx, bundle_rx, tx, stop, make).await;
                drop(subscription);
                tracing::debug!("Workload API stream closed");
            }
            .instrument(span),
        );
        ReceiverStream::new(rx)
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchJWTBundlesStream = ReceiverStream<Result<JwtBundlesResponse, Status>>;
    type FetchX509SVIDStream = ReceiverStream<Result<X509svidResponse, Status>>;
    type FetchX509BundlesStream = ReceiverStream<Result<X509BundlesResponse, Status>>;

    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.admit(&request).await?;
        Err(WorkloadApiError::JwtNotServed {
            rpc: "FetchJWTSVID",
        }
        .into())
    }

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.admit(&request).await?;
        Err(WorkloadApiError::JwtNotServed {
            rpc: "FetchJWTBundles",
        }
        .into())
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.admit(&request).await?;
        Err(WorkloadApiError::JwtNotServed {
            rpc: "ValidateJWTSVID",
        }
        .into())
    }

    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let workload = self.admit(&request).await?;
        let stream = self.spawn_stream(
            "FetchX509SVID",
            &workload,
            Feed::SvidAndBundle,
            |svid, bundle| svid.and_then(|svid| convert::x509_svid_response(svid, bundle)),
        );
        Ok(Response::new(stream))
    }

    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        let workload = self.admit(&request).await?;
        let trust_domain = self.trust_domain.clone();
        let stream = self.spawn_stream(
            "FetchX509Bundles",
            &workload,
            Feed::BundleOnly,
            move |_, bundle| convert::x509_bundles_response(&trust_domain, bundle),
        );
        Ok(Response::new(stream))
    }
}
