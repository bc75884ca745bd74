//! The loop behind the Workload API's server streams: watch the certificate
//! and the bundle, and send the full state at once and again on every change.
//!
//! It ends when the client goes away (the response receiver is dropped) or at
//! shutdown; whatever the caller moved into the task (the cache subscription)
//! is dropped with it. Tests drive it with plain `watch` channels.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::agent::cache::{Svid, TrustBundle};
use crate::agent::workload_api::WorkloadApiError;

/// What a stream's messages depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Feed {
    /// The certificate and the bundle (`FetchX509SVID`).
    SvidAndBundle,
    /// The bundle alone (`FetchX509Bundles`).
    BundleOnly,
}

/// Sends `make(svid, bundle)` when the inputs are there, then again whenever
/// the inputs it depends on change, until the client leaves or `stop` fires.
pub(crate) async fn push_changes<M, F>(
    feed: Feed,
    mut svid_rx: watch::Receiver<Option<Arc<Svid>>>,
    mut bundle_rx: watch::Receiver<Option<Arc<TrustBundle>>>,
    tx: mpsc::Sender<Result<M, Status>>,
    stop: CancellationToken,
    make: F,
) where
    F: Fn(Option<&Svid>, &TrustBundle) -> Option<M>,
{
    // (serial of the SVID sent, bundle sent): a change of either is news.
    let mut last: Option<(Option<String>, Arc<TrustBundle>)> = None;
    let (mut svid_open, mut bundle_open) = (true, true);
    loop {
        let svid = svid_rx.borrow_and_update().clone();
        let bundle = bundle_rx.borrow_and_update().clone();
        if let Some(message) = due(feed, svid.as_deref(), bundle.as_ref(), &last, &make) {
            if tx.send(Ok(message)).await.is_err() {
                return;
            }
            let serial = svid
                .filter(|_| feed == Feed::SvidAndBundle)
                .map(|s| s.serial_hex.clone());
            last = bundle.map(|b| (serial, b));
        }
        tokio::select! {
            () = stop.cancelled() => {
                let _ = tx.send(Err(WorkloadApiError::ShuttingDown.into())).await;
                return;
            }
            () = tx.closed() => return,
            changed = svid_rx.changed(), if svid_open => svid_open = changed.is_ok(),
            changed = bundle_rx.changed(), if bundle_open => bundle_open = changed.is_ok(),
        }
    }
}

/// The message to send now, if the inputs are complete and differ from what
/// was last sent.
fn due<M, F>(
    feed: Feed,
    svid: Option<&Svid>,
    bundle: Option<&Arc<TrustBundle>>,
    last: &Option<(Option<String>, Arc<TrustBundle>)>,
    make: &F,
) -> Option<M>
where
    F: Fn(Option<&Svid>, &TrustBundle) -> Option<M>,
{
    let bundle = bundle?;
    let serial = match feed {
        Feed::SvidAndBundle => Some(svid?.serial_hex.as_str()),
        Feed::BundleOnly => None,
    };
    if let Some((last_serial, last_bundle)) = last {
        if last_serial.as_deref() == serial && **last_bundle == **bundle {
            return None;
        }
    }
    let message = make(svid, bundle);
    if message.is_none() {
        tracing::warn!("trust bundle has no root certificate; nothing sent until it has one");
    }
    message
}
