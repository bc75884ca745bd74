//! The accept loop both listeners share: accept until shutdown, set
//! `TCP_NODELAY` (small writes such as TLS handshake flights must not wait
//! for delayed ACKs), run each connection in a task tracked by `shutdown`,
//! and cut connections still open [`CONNECTION_GRACE`] after shutdown began.
//!
//! Rule enforced: at most `limit` connections at once across the proxy's
//! listeners (`--max-connections`). A slot is taken *before* accepting, so
//! at the limit new connections wait in the kernel's listen backlog instead
//! of each holding a task, a socket and TLS state — the same backpressure as
//! the CA's connection cap. An HBONE connection takes one slot whatever the
//! number of tunnels it carries.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::shutdown::{Shutdown, CONNECTION_GRACE};

/// A bound listener with what serving it needs: the proxy's shutdown and
/// its connection limit (shared by all of the proxy's listeners).
#[derive(Debug)]
pub struct Listening {
    /// The bound listener.
    pub listener: TcpListener,
    /// Stops accepting; live connections are cut a grace period later.
    pub shutdown: Shutdown,
    /// One permit per open connection (`--max-connections`).
    pub limit: Arc<Semaphore>,
}

/// Serves `listening` until its shutdown, each connection holding one of
/// its limit's permits; `handle` gets each connection and a token cancelled
/// when the connection must end.
pub(crate) async fn serve<F, Fut>(listening: Listening, direction: &'static str, handle: F)
where
    F: Fn(TcpStream, SocketAddr, CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Listening {
        listener,
        shutdown,
        limit,
    } = listening;
    let cut = after_grace(&shutdown);
    loop {
        let slot = match limit.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                tracing::warn!(direction, "connection limit reached (--max-connections); new connections wait in the listen backlog");
                tokio::select! {
                    () = shutdown.triggered() => return,
                    slot = limit.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => return,
                    },
                }
            }
        };
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
            drop(slot);
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// With one slot, a second connection is not handled while the first is
    /// open, and is handled as soon as the first ends.
    #[tokio::test]
    async fn at_the_limit_a_new_connection_waits_until_a_slot_frees() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = Shutdown::new();
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let (release_tx, release) = tokio::sync::watch::channel(false);
        let listening = Listening {
            listener,
            shutdown: shutdown.clone(),
            limit: Arc::new(Semaphore::new(1)),
        };
        tokio::spawn(serve(listening, "inbound", move |_stream, peer, _stop| {
            let started_tx = started_tx.clone();
            let mut release = release.clone();
            async move {
                started_tx.send(peer).unwrap();
                let _ = release.wait_for(|go| *go).await;
            }
        }));
        let _first = TcpStream::connect(addr).await.unwrap();
        let first_peer = started.recv().await.unwrap();
        // The second connects (the kernel's backlog accepts it) but is not handled.
        let second = TcpStream::connect(addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(300), started.recv()).await;
        assert!(
            waited.is_err(),
            "a second connection was handled at the limit"
        );
        // The first ends: the second is handled now.
        release_tx.send(true).unwrap();
        let second_peer = tokio::time::timeout(Duration::from_secs(10), started.recv())
            .await
            .expect("the waiting connection is handled once a slot frees")
            .unwrap();
        assert_ne!(second_peer, first_peer);
        assert_eq!(second_peer, second.local_addr().unwrap());
        shutdown.trigger();
    }
}
