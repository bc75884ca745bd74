use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::*;
use crate::agent::socket::UdsStream;

fn limits() -> SocketLimits {
    SocketLimits {
        max_connections: 8,
        max_connections_per_uid: 2,
        first_request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(300),
    }
}

/// A limited server end and its client end.
async fn pair(limiter: &Arc<Limiter>) -> (UdsStream, UnixStream) {
    let (server, client) = UnixStream::pair().unwrap();
    let slot = limiter.slot().await.unwrap();
    let uid = limiter.admit(Some(4242)).unwrap();
    (UdsStream::limited(server, limits(), slot, uid), client)
}

#[test]
fn a_uid_past_its_quota_is_refused_and_other_uids_are_not() {
    let limiter = Limiter::new(&limits());
    let a = limiter.admit(Some(65534)).unwrap();
    let _b = limiter.admit(Some(65534)).unwrap();
    let err = limiter.admit(Some(65534)).unwrap_err();
    assert_eq!(
        err,
        QuotaExceeded {
            uid: 65534,
            held: 2
        }
    );
    assert!(
        err.to_string().contains("--max-connections-per-uid"),
        "{err}"
    );
    // Another workload is not starved.
    let _other = limiter.admit(Some(1000)).unwrap();
    // A closed connection gives its place back.
    drop(a);
    assert_eq!(limiter.held_by(65534), 1);
    let _again = limiter.admit(Some(65534)).unwrap();
}

#[tokio::test]
async fn the_total_cap_is_taken_before_accept_and_waits() {
    let limiter = Limiter::new(&SocketLimits {
        max_connections: 1,
        ..limits()
    });
    let first = limiter.slot().await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(50), limiter.slot())
            .await
            .is_err(),
        "the second waits"
    );
    drop(first);
    assert!(limiter.slot().await.is_some());
}

#[tokio::test(start_paused = true)]
async fn a_connection_that_starts_no_request_is_closed_after_the_first_request_timeout() {
    let limiter = Limiter::new(&limits());
    let (mut server, _client) = pair(&limiter).await;
    let started = Instant::now();
    let err = server.read(&mut [0u8; 16]).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(err.to_string().contains("--first-request-timeout"), "{err}");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    drop(server);
    assert_eq!(limiter.held_by(4242), 0, "its place is given back");
}

#[tokio::test(start_paused = true)]
async fn a_request_in_flight_keeps_the_connection_and_idleness_starts_when_it_ends() {
    let limiter = Limiter::new(&limits());
    let (mut server, mut client) = pair(&limiter).await;
    let request = server.info.activity.begin();
    // An hour of a watch stream: still open, bytes still flow.
    let mut buf = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_secs(3600), server.read(&mut buf))
            .await
            .is_err(),
        "not closed while a request is in flight"
    );
    client.write_all(b"ping").await.unwrap();
    assert_eq!(server.read(&mut buf).await.unwrap(), 4);
    // The stream ends: closed after --idle-timeout, not before.
    let ended = Instant::now();
    drop(request);
    let err = server.read(&mut buf).await.unwrap_err();
    assert!(err.to_string().contains("--idle-timeout"), "{err}");
    assert_eq!(ended.elapsed(), Duration::from_secs(300));
}
