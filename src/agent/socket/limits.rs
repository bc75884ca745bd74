//! What one local user can hold on the agent socket.
//!
//! The socket is 0666 by design, so any local user can connect. Rules
//! enforced (issue 12: 20,000 idle connections from uid 65534 exhausted
//! `meshid up`'s file descriptors, after which the Workload API, the mesh and
//! the CA all failed):
//! - a slot of [`SocketLimits::max_connections`] is taken *before* `accept`,
//!   so past the cap clients wait in the listen backlog holding nothing of ours;
//! - a peer uid holds at most [`SocketLimits::max_connections_per_uid`]; a
//!   connection past that is closed at once, so one workload cannot starve
//!   the others (proxies of every pod commonly share uid 1337: the default
//!   leaves room for a full node of them);
//! - a connection must start its first request within
//!   [`SocketLimits::first_request_timeout`], and one with no request in
//!   flight for [`SocketLimits::idle_timeout`] is closed (a watch stream is a
//!   request in flight for as long as it lasts);
//! - HTTP/2 keepalive (set on the server) drops peers that stop answering.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::task::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// The agent socket's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    /// Connections open at once, all peers together.
    pub max_connections: usize,
    /// Connections open at once from one peer uid.
    pub max_connections_per_uid: usize,
    /// From accept to the first request.
    pub first_request_timeout: Duration,
    /// With no request in flight.
    pub idle_timeout: Duration,
}

impl Default for SocketLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            max_connections_per_uid: 256,
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// The connection counts: all peers, and per uid.
#[derive(Debug)]
pub struct Limiter {
    total: Arc<Semaphore>,
    per_uid: Mutex<HashMap<u32, usize>>,
    max_per_uid: usize,
}

impl Limiter {
    /// Counts for `limits`.
    pub fn new(limits: &SocketLimits) -> Arc<Self> {
        Arc::new(Self {
            total: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            per_uid: Mutex::new(HashMap::new()),
            max_per_uid: limits.max_connections_per_uid.max(1),
        })
    }

    /// Waits for a free slot; take it before `accept`.
    pub async fn slot(&self) -> Option<OwnedSemaphorePermit> {
        self.total.clone().acquire_owned().await.ok()
    }

    /// Admits a connection from `uid` (None: the kernel did not say, counted
    /// under no uid), or refuses it when that uid holds its quota already.
    pub fn admit(self: &Arc<Self>, uid: Option<u32>) -> Result<UidSlot, QuotaExceeded> {
        let mut counts = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(uid) = uid {
            let held = counts.entry(uid).or_default();
            if *held >= self.max_per_uid {
                return Err(QuotaExceeded { uid, held: *held });
            }
            *held += 1;
        }
        Ok(UidSlot {
            limiter: Arc::clone(self),
            uid,
        })
    }

    /// Connections `uid` holds now.
    pub fn held_by(&self, uid: u32) -> usize {
        let counts = self.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&uid).copied().unwrap_or(0)
    }
}

/// A uid already holds its quota of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "uid {uid} already holds {held} connections to the agent socket (--max-connections-per-uid)"
)]
pub struct QuotaExceeded {
    /// The peer uid.
    pub uid: u32,
    /// How many it holds.
    pub held: usize,
}

/// One connection counted against its uid; released on drop.
#[derive(Debug)]
pub struct UidSlot {
    limiter: Arc<Limiter>,
    uid: Option<u32>,
}

impl Drop for UidSlot {
    fn drop(&mut self) {
        let Some(uid) = self.uid else { return };
        let mut counts = self
            .limiter
            .per_uid
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(held) = counts.get_mut(&uid) {
            *held -= 1;
            if *held == 0 {
                counts.remove(&uid);
            }
        }
    }
}

/// What one connection is doing: requests in flight, and since when none.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// When the connection last had no request in flight, and whether it
    /// ever had one.
    idle: Mutex<(Instant, bool)>,
    /// The connection's reader, woken when the last request ends so that it
    /// arms the idle timer.
    reader: AtomicWaker,
}

impl Activity {
    /// A connection accepted now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            in_flight: AtomicUsize::new(0),
            idle: Mutex::new((Instant::now(), false)),
            reader: AtomicWaker::new(),
        })
    }

    /// A request starts; it is in flight until the guard is dropped (with the
    /// response body, for streams).
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).1 = true;
        InFlight(Arc::clone(self))
    }

    /// When the connection must be closed if nothing changes: None while a
    /// request is in flight. The reason names the limit.
    pub fn deadline(&self, limits: &SocketLimits) -> Option<(Instant, &'static str)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let (since, ever) = *self.idle.lock().unwrap_or_else(|e| e.into_inner());
        Some(if ever {
            (
                since + limits.idle_timeout,
                "no request in flight for --idle-timeout",
            )
        } else {
            (
                since + limits.first_request_timeout,
                "no request within --first-request-timeout of connecting",
            )
        })
    }

    /// Registers the reader to wake when the last request ends.
    pub fn register(&self, cx: &Context<'_>) {
        self.reader.register(cx.waker());
    }
}

/// A request in flight on a connection.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.lock().unwrap_or_else(|e| e.into_inner()).0 = Instant::now();
            self.0.reader.wake();
        }
    }
}

/// The connection's timer: polled by its reader, armed at [`Activity::deadline`].
#[derive(Debug, Default)]
pub struct IdleTimer {
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    /// `Ready(reason)` once the deadline has passed; otherwise arms the timer
    /// (or disarms it while a request is in flight) and is pending.
    pub fn poll_expired(
        &mut self,
        activity: &Activity,
        limits: &SocketLimits,
        cx: &mut Context<'_>,
    ) -> Poll<&'static str> {
        activity.register(cx);
        let Some((deadline, reason)) = activity.deadline(limits) else {
            self.sleep = None;
            return Poll::Pending;
        };
        match &mut self.sleep {
            Some(sleep) if sleep.deadline() == deadline => {}
            Some(sleep) => sleep.as_mut().reset(deadline),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
        match self.sleep.as_mut().map(|s| s.as_mut().poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(reason),
            _ => Poll::Pending,
        }
    }
}

/// A tower layer for the agent's gRPC server: every request is in flight on
/// its connection's [`Activity`] from its start until its response body ends
/// (or is dropped), so a long watch stream keeps its connection alive and an
/// idle one does not.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackRequests;

impl<S> tower::Layer<S> for TrackRequests {
    type Service = Tracked<S>;
    fn layer(&self, inner: S) -> Tracked<S> {
        Tracked(inner)
    }
}

/// The service [`TrackRequests`] makes.
#[derive(Debug, Clone)]
pub struct Tracked<S>(S);

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for Tracked<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req
            .extensions()
            .get::<super::UdsConnInfo>()
            .map(|info| info.activity.begin());
        let response = self.0.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(GuardedBody {
                        body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its request in flight until it ends.
struct GuardedBody {
    body: tonic::body::Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, tonic::Status>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests;
