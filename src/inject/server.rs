//! The admission endpoint: HTTPS (TLS 1.2/1.3, HTTP/1.1), `POST /inject`
//! with an AdmissionReview, answered by [`review::answer`](super::review::answer).
//!
//! Thin on purpose: the certificate comes from outside ([`CertSlot`], filled
//! from files or by meshid's CA and swapped on renewal), and so does the
//! namespace label lookup. Until the slot holds a certificate no handshake
//! completes and [`CertSlot::is_ready`] is false, so `/readyz` keeps the
//! replica out of its Service and the API server calls another.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::review::{self, ReviewError, MAX_REVIEW_BYTES};
use super::{InjectConfig, NamespaceInjection};
use crate::shutdown::Shutdown;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The serving certificate, empty until the first one arrives; new
/// handshakes take the newest, open connections keep theirs.
#[derive(Debug, Default)]
pub struct CertSlot(RwLock<Option<Arc<CertifiedKey>>>);

impl CertSlot {
    /// An empty slot.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Puts `key` in (the first, or a renewal).
    pub fn set(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(key));
    }

    /// Whether a certificate is there to serve with.
    pub fn is_ready(&self) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).is_some()
    }
}

impl ResolvesServerCert for CertSlot {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Tells the `meshid.io/inject` label of a namespace.
pub type NamespaceLabels = Arc<dyn Fn(&str) -> NamespaceInjection + Send + Sync>;

/// The injector's counters.
#[derive(Debug, Clone)]
pub struct InjectorMetrics {
    reviews: IntCounterVec,
    seconds: HistogramVec,
}

impl InjectorMetrics {
    /// Registers `meshid_injector_reviews_total{verdict}` and
    /// `meshid_injector_review_seconds{verdict}` on `registry`.
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let reviews = IntCounterVec::new(
            Opts::new(
                "meshid_injector_reviews_total",
                "AdmissionReviews answered, by verdict (injected, skipped, denied, ignored, bad_request)",
            ),
            &["verdict"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "meshid_injector_review_seconds",
                "Time to answer an AdmissionReview, body read to answer written",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1]),
            &["verdict"],
        )?;
        registry.register(Box::new(reviews.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        Ok(Self { reviews, seconds })
    }
}

/// What the server needs.
#[derive(Clone)]
pub struct InjectorServer {
    /// What is injected.
    pub config: Arc<InjectConfig>,
    /// The serving certificate.
    pub cert: Arc<CertSlot>,
    /// Namespace labels.
    pub namespace_labels: NamespaceLabels,
    /// Counters.
    pub metrics: InjectorMetrics,
}

impl InjectorServer {
    /// Serves `listener` until shutdown; returns at once.
    pub fn spawn(self, listener: TcpListener, shutdown: &Shutdown) {
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_no_client_auth()
                .with_cert_resolver(self.cert.clone())
        });
        let tls = match tls.as_mut() {
            Ok(config) => {
                config.alpn_protocols = vec![b"http/1.1".to_vec()];
                TlsAcceptor::from(Arc::new(config.clone()))
            }
            Err(e) => {
                tracing::error!(error = %e, "injector TLS configuration");
                return;
            }
        };
        let this = Arc::new(self);
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    () = stop.triggered() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "injector accept");
                            continue;
                        }
                    },
                };
                let (tls, this, stop) = (tls.clone(), this.clone(), stop.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        () = stop.triggered() => {}
                        () = this.connection(tls, tcp, peer) => {}
                    }
                });
            }
        });
    }

    async fn connection(
        self: Arc<Self>,
        tls: TlsAcceptor,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
    ) {
        if !self.cert.is_ready() {
            // No certificate yet: close at once (not ready; the API server
            // tries another replica).
            tracing::debug!(%peer, "no serving certificate yet; connection closed");
            return;
        }
        let _ = tcp.set_nodelay(true);
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "injector TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "injector TLS handshake timed out");
                return;
            }
        };
        let this = self.clone();
        let service = hyper::service::service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, Infallible>(this.handle(req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!(%peer, error = %e, "injector connection");
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.uri().path() != "/inject" {
            return text(
                StatusCode::NOT_FOUND,
                "not found: the injector serves POST /inject",
            );
        }
        if req.method() != Method::POST {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST an AdmissionReview to /inject",
            );
        }
        let started = tokio::time::Instant::now();
        let body = match read_body(req.into_body()).await {
            Ok(body) => body,
            Err(err) => return self.bad_request(&err, started),
        };
        let labels = &self.namespace_labels;
        match review::answer(&body, |ns| labels(ns), &self.config) {
            Ok(answer) => {
                let verdict = answer.verdict.label();
                match &answer.verdict {
                    review::Verdict::Injected => tracing::info!(pod = %answer.pod, "injected"),
                    review::Verdict::Skipped(why) => {
                        tracing::info!(pod = %answer.pod, reason = %why, "left alone")
                    }
                    review::Verdict::Denied(why) => {
                        tracing::warn!(pod = %answer.pod, reason = %why, "denied")
                    }
                    review::Verdict::Ignored(why) => tracing::debug!(reason = %why, "ignored"),
                }
                let body = serde_json::to_vec(&answer.review).unwrap_or_default();
                self.observe(verdict, started);
                Response::builder()
                    .status(StatusCode::OK)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap_or_default()
            }
            Err(e) => self.bad_request(&e, started),
        }
    }

    fn bad_request(&self, e: &ReviewError, started: tokio::time::Instant) -> Response<Full<Bytes>> {
        tracing::warn!(error = %e, "bad AdmissionReview");
        self.observe("bad_request", started);
        text(StatusCode::BAD_REQUEST, &e.to_string())
    }

    fn observe(&self, verdict: &str, started: tokio::time::Instant) {
        self.metrics.reviews.with_label_values(&[verdict]).inc();
        self.metrics
            .seconds
            .with_label_values(&[verdict])
            .observe(started.elapsed().as_secs_f64());
    }
}

fn text(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(format!("{message}\n"))))
        .unwrap_or_default()
}

/// Bytes of a too-large body read and thrown away before the answer, so
/// the client (which is still sending) reads the 400 instead of a reset
/// connection; past this, the connection is simply closed.
const DRAIN_LIMIT: usize = 4 * MAX_REVIEW_BYTES;

/// How long reading a body (or draining a too-large one) may take.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The request body, at most [`MAX_REVIEW_BYTES`] (rule enforced: no more
/// is ever held in memory); a larger one is read on and discarded, up to
/// [`DRAIN_LIMIT`] bytes and [`DRAIN_TIME`], so the answer reaches the client.
async fn read_body(mut body: Incoming) -> Result<Bytes, ReviewError> {
    let mut kept = bytes::BytesMut::new();
    let mut seen = 0usize;
    let reading = async {
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ReviewError::NotJson(format!("reading the body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            seen = seen.saturating_add(data.len());
            if seen <= MAX_REVIEW_BYTES {
                kept.extend_from_slice(&data);
            } else {
                kept = bytes::BytesMut::new();
                if seen > DRAIN_LIMIT {
                    break;
                }
            }
        }
        Ok(())
    };
    // A client too slow to send its body gets an answer anyway.
    let finished = tokio::time::timeout(DRAIN_TIME, reading).await;
    if seen > MAX_REVIEW_BYTES {
        return Err(ReviewError::TooLarge {
            size: MAX_REVIEW_BYTES + 1,
        });
    }
    match finished {
        Ok(Ok(())) => Ok(kept.freeze()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ReviewError::NotJson(
            "reading the body: timed out".to_owned(),
        )),
    }
}
