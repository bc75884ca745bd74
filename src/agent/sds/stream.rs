//! The loop behind one StreamSecrets stream: reads the client's requests,
//! watches the certificate and the bundle, and pushes a response whenever the
//! stream state says one is due.
//!
//! Generic over the request stream so that tests drive it with channels
//! instead of a socket. It ends when the client goes away (the response
//! receiver is dropped), when the client's request stream fails, or at
//! shutdown; whatever the caller moved into the task (the cache subscription)
//! is dropped with it.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::agent::cache::{Svid, TrustBundle};
use crate::agent::sds::state::{RequestKind, StreamState};
use crate::agent::sds::SdsError;
use crate::proto::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

/// Serves one state-of-the-world stream until the client leaves or `stop` fires.
pub(crate) async fn serve<S>(
    mut requests: S,
    mut svid_rx: watch::Receiver<Option<Arc<Svid>>>,
    mut bundle_rx: watch::Receiver<Option<Arc<TrustBundle>>>,
    tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    stop: CancellationToken,
) where
    S: Stream<Item = Result<DiscoveryRequest, Status>> + Unpin,
{
    let mut state = StreamState::default();
    let (mut requests_open, mut svid_open, mut bundle_open) = (true, true, true);
    loop {
        let svid = svid_rx.borrow_and_update().clone();
        let bundle = bundle_rx.borrow_and_update().clone();
        if let Some(response) = state.next_response(svid.as_deref(), bundle.as_deref()) {
            tracing::debug!(version = %response.version_info, nonce = %response.nonce,
                resources = ?state.resources(), "SDS push");
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
        tokio::select! {
            () = stop.cancelled() => {
                let _ = tx.send(Err(SdsError::ShuttingDown.into())).await;
                return;
            }
            () = tx.closed() => return,
            request = requests.next(), if requests_open => match request {
                // Half-closed by the client: it may still read pushes.
                None => requests_open = false,
                Some(Err(status)) => {
                    tracing::debug!(%status, "SDS client stream ended");
                    return;
                }
                Some(Ok(request)) => {
                    if let Err(e) = handle(&mut state, &request) {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            },
            changed = svid_rx.changed(), if svid_open => svid_open = changed.is_ok(),
            changed = bundle_rx.changed(), if bundle_open => bundle_open = changed.is_ok(),
        }
    }
}

/// Applies one request to the state and logs what it was.
fn handle(state: &mut StreamState, request: &DiscoveryRequest) -> Result<(), SdsError> {
    let outcome = state.on_request(request)?;
    if !outcome.newly_unknown.is_empty() {
        tracing::warn!(unknown = ?outcome.newly_unknown, served = ?state.resources(),
            "SDS request names resources this agent does not serve (it serves \"default\" and \"ROOTCA\"); answering with the known ones");
    }
    match outcome.kind {
        RequestKind::Subscribe => {
            tracing::debug!(resources = ?state.resources(), "SDS subscription");
        }
        RequestKind::Ack { version } => tracing::debug!(%version, "SDS ACK"),
        RequestKind::Nack { version, message } => {
            tracing::warn!(%version, reason = %message, client_keeps = ?state.acked_version(),
                "SDS client rejected the pushed secrets (NACK); not resending this version, waiting for the next change");
        }
        RequestKind::Stale { nonce } => {
            tracing::debug!(%nonce, "SDS request with a stale nonce ignored");
        }
    }
    Ok(())
}
