//! `meshid.ca.v1.TrustService/WatchTrust`: the authorities, the trust
//! bundle and the CRLs, sent whole to every node agent at once and again
//! after every change, so that a rotation or a revocation reaches every
//! proxy without a restart. Public data (what the root ConfigMap and the CRLs
//! publish anyway): no caller authentication, but the stream only ever
//! carries certificates and CRLs, never a key.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::ca::authorities::{Authorities, AuthorityState, Snapshot};
use crate::proto::meshid::ca::v1 as pb;
use crate::proto::meshid::ca::v1::trust_service_server::{TrustService, TrustServiceServer};

/// The tonic service.
#[derive(Clone)]
pub struct TrustStream {
    authorities: Arc<Authorities>,
}

impl TrustStream {
    /// Serves `authorities`.
    pub fn new(authorities: Arc<Authorities>) -> Self {
        Self { authorities }
    }

    /// The tonic server.
    pub fn into_server(self) -> TrustServiceServer<Self> {
        TrustServiceServer::new(self)
    }
}

/// The message for one snapshot.
pub fn trust_update(snapshot: &Snapshot) -> pb::TrustUpdate {
    pb::TrustUpdate {
        version: snapshot.generation(),
        roots: snapshot.roots_der().iter().map(|r| r.to_vec()).collect(),
        authorities: snapshot
            .entries()
            .iter()
            .map(|e| pb::Authority {
                id: e.id.clone(),
                state: match e.state {
                    AuthorityState::Prepared => pb::AuthorityState::Prepared,
                    AuthorityState::Active => pb::AuthorityState::Active,
                    AuthorityState::Old => pb::AuthorityState::Old,
                } as i32,
                tainted: e.tainted,
                certificate: e.authority.signing_cert_der().to_vec(),
                chain: e.authority.chain_der().iter().map(|c| c.to_vec()).collect(),
                crl: e.crl_der.clone(),
            })
            .collect(),
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::TrustUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl TrustService for TrustStream {
    type WatchTrustStream = UpdateStream;

    async fn watch_trust(
        &self,
        _request: Request<pb::WatchTrustRequest>,
    ) -> Result<Response<Self::WatchTrustStream>, Status> {
        let mut rx: watch::Receiver<Arc<Snapshot>> = self.authorities.subscribe();
        let stream = async_stream(move |tx| async move {
            loop {
                let update = trust_update(&rx.borrow_and_update());
                if tx.send(Ok(update)).await.is_err() {
                    return;
                }
                tokio::select! {
                    () = tx.closed() => return,
                    changed = rx.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(stream))
    }
}

/// A stream fed by a task through a small channel (dropped with the caller).
fn async_stream<F, Fut>(body: F) -> UpdateStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::TrustUpdate, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
