//! The accept loop both listeners share: accept until shutdown, set
//! `TCP_NODELAY` (small writes such as TLS handshake flights must not wait
//! for delayed ACKs), run each connection in a task tracked by `shutdown`,
//! and cut connections still open [`CONNECTION_GRACE`] after shutdown began.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::shutdown::{Shutdown, CONNECTION_GRACE};

/// Serves `listener` until `shutdown`; `handle` gets each connection and a
/// token cancelled when the connection must end.
pub(crate) async fn serve<F, Fut>(
    listener: TcpListener,
    direction: &'static str,
    shutdown: Shutdown,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cut = after_grace(&shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.triggered() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(direction, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let stop = cut.child_token();
        let connection = handle(stream, peer, stop.clone());
        shutdown.spawn(async move {
            tokio::select! {
                () = connection => {}
                () = stop.cancelled() => {}
            }
        });
    }
}

/// A token cancelled [`CONNECTION_GRACE`] after `shutdown` triggers.
pub(crate) fn after_grace(shutdown: &Shutdown) -> CancellationToken {
    let cut = CancellationToken::new();
    let (token, stop) = (cut.clone(), shutdown.clone());
    shutdown.spawn(async move {
        stop.triggered().await;
        tokio::time::sleep(CONNECTION_GRACE).await;
        token.cancel();
    });
    cut
}
