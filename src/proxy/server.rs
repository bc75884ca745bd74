//! Building and starting a proxy: the agent streams (certificates over SDS,
//! mTLS policy), the inbound and outbound listeners, and the metrics server.
//!
//! Owns [`ProxyConfig`] (plain settings, no clap) and [`start`]. Rules
//! enforced: nothing is served before the first certificate and the first
//! policy arrived (so no connection is ever decided without a mode or served
//! without a checked SVID); an agent that is missing at start, or goes away,
//! is retried with backoff while the current certificate and policy stay in
//! force.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity::SpiffeId;
use crate::proxy::accept::Listening;
use crate::proxy::agent_link::{AgentLink, AgentLinkError};
use crate::proxy::destinations::Destinations;
use crate::proxy::hbone::{self, pool::HbonePool};
use crate::proxy::inbound::hbone::hbone_acceptor;
use crate::proxy::inbound::{Inbound, InboundRoute, InboundTarget};
use crate::proxy::metrics::ProxyMetrics;
use crate::proxy::outbound::captured::CapturedOutbound;
use crate::proxy::outbound::{Outbound, OutboundRoute};
use crate::proxy::policy_watch;
use crate::proxy::sds_client::watch_certificates;
use crate::proxy::tls::{CertStore, ProxyTlsError};
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// How often the wait for the first certificate and policy is reported.
const WAITING_REPORT: Duration = Duration::from_secs(5);

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// A setting is wrong; the message names the flag.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The agent socket path cannot be used.
    #[error(transparent)]
    Socket(#[from] AgentLinkError),
    /// A listener could not be bound.
    #[error("binding {what} {addr}: {source}")]
    Bind {
        /// Which listener (`--inbound`, `--outbound`, `--metrics-listen`).
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] ProxyTlsError),
    /// Metrics could not be registered.
    #[error("registering metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Shutdown began before the proxy was ready.
    #[error("shut down before the first certificate and policy arrived")]
    ShutDown,
}

/// Settings of one proxy (`meshid proxy` flags).
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The node agent's Unix socket (SDS and the policy stream).
    pub agent_socket: PathBuf,
    /// Inbound routes: listen → application.
    pub inbound: Vec<InboundRoute>,
    /// Outbound routes: listen → upstream, with the identity it must prove.
    pub outbound: Vec<OutboundRoute>,
    /// Our service-account token, sent when peer credentials do not attest us.
    pub token_file: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// How long a live connection that a mode change disallows may go on.
    pub mode_change_drain: Duration,
    /// Connections at once across all listeners; more wait in the backlog.
    pub max_connections: usize,
    /// Transparent capture: the two ports the capture rules redirect to.
    pub capture: Option<CaptureConfig>,
}

/// The listeners of transparent capture (`--capture`), where the rules of
/// `meshid proxy init` redirect a pod's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureConfig {
    /// Outbound capture listener (`0.0.0.0:15001`).
    pub outbound: SocketAddr,
    /// Inbound capture listener (`0.0.0.0:15006`): every address, because
    /// netfilter redirects inbound traffic to the receiving interface's.
    pub inbound: SocketAddr,
    /// HBONE listener (`0.0.0.0:15008`), and HBONE used to peers; `None`
    /// (`--no-hbone`): direct mTLS per connection, both ways.
    pub hbone: Option<SocketAddr>,
}

impl CaptureConfig {
    /// The capture ports: a connection whose original destination is one
    /// of them is refused (it would loop).
    pub fn ports(&self) -> Vec<u16> {
        vec![self.outbound.port(), self.inbound.port()]
    }
}

impl ProxyConfig {
    /// Checks the settings; the error names the flag that is wrong.
    pub fn validate(&self) -> Result<(), ProxyError> {
        if self.inbound.is_empty() && self.outbound.is_empty() && self.capture.is_none() {
            return Err(ProxyError::Config(
                "give --capture, or at least one --inbound or --outbound route".to_owned(),
            ));
        }
        if self.max_connections == 0 {
            return Err(ProxyError::Config(
                "--max-connections must be at least 1".to_owned(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let listens = self.inbound.iter().map(|r| r.listen);
        let captures = self
            .capture
            .iter()
            .flat_map(|c| [Some(c.outbound), Some(c.inbound), c.hbone])
            .flatten();
        for addr in listens
            .chain(self.outbound.iter().map(|r| r.listen))
            .chain(captures)
        {
            if addr.port() != 0 && !seen.insert(addr) {
                return Err(ProxyError::Config(format!(
                    "--inbound/--outbound: {addr} is used by two routes"
                )));
            }
        }
        Ok(())
    }
}

/// A started proxy: where it listens and who it is.
#[derive(Debug)]
pub struct RunningProxy {
    /// Bound inbound addresses, in `--inbound` order.
    pub inbound: Vec<SocketAddr>,
    /// Bound outbound addresses, in `--outbound` order.
    pub outbound: Vec<SocketAddr>,
    /// Bound capture addresses (outbound, inbound), with `--capture`.
    pub capture: Option<(SocketAddr, SocketAddr)>,
    /// Bound HBONE address, with `--capture` unless `--no-hbone`.
    pub hbone: Option<SocketAddr>,
    /// Bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Our identity (from the first certificate).
    pub identity: SpiffeId,
}

/// Starts the agent streams, waits for the first certificate and policy,
/// then binds and serves every route. Everything runs until `shutdown`.
pub async fn start(
    config: ProxyConfig,
    clock: SharedClock,
    registry: prometheus::Registry,
    shutdown: Shutdown,
) -> Result<RunningProxy, ProxyError> {
    config.validate()?;
    let metrics = ProxyMetrics::register(&registry)?;
    let link = AgentLink::new(&config.agent_socket, config.token_file.clone())?;
    let (store_tx, mut store_rx) = watch::channel(None);
    let (policy_tx, mut policy_rx) = watch::channel(None);
    shutdown.spawn(watch_certificates(
        link.clone(),
        clock,
        store_tx,
        shutdown.clone(),
    ));
    let destinations = config
        .capture
        .map(|_| Destinations::start(link.clone(), &shutdown));
    shutdown.spawn(policy_watch::watch_policy(
        link,
        policy_tx,
        shutdown.clone(),
    ));
    let metrics_addr = match config.metrics_listen {
        Some(addr) => {
            let (s, p) = (store_rx.clone(), policy_rx.clone());
            // With capture, ready once destinations could be looked up.
            let d = destinations.as_ref().map(|d| d.connected());
            let ready = Arc::new(move || {
                s.borrow().is_some()
                    && p.borrow().is_some()
                    && d.as_ref().is_none_or(|d| *d.borrow())
            });
            let bound = crate::telemetry::serve(addr, registry, ready, shutdown.clone())
                .await
                .map_err(|source| ProxyError::Bind {
                    what: "--metrics-listen",
                    addr,
                    source,
                })?;
            Some(bound)
        }
        None => None,
    };

    let socket = config.agent_socket.display().to_string();
    let store = wait_for(&mut store_rx, &shutdown, "certificate", &socket).await?;
    let policy = wait_for(&mut policy_rx, &shutdown, "mTLS policy", &socket).await?;
    if policy.identity != *store.identity() {
        tracing::error!(certificate = %store.identity(), policy = %policy.identity,
            "the agent attested us as two different identities");
    }
    spawn_expiry_gauge(store.clone(), metrics.clone(), shutdown.clone());
    crate::proxy::memory::spawn_release(metrics.clone(), shutdown.clone());

    let limit = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let listening = |listener| Listening {
        listener,
        shutdown: shutdown.clone(),
        limit: limit.clone(),
    };
    let mut inbound = Vec::new();
    for route in &config.inbound {
        let listener = bind("--inbound", route.listen).await?;
        inbound.push(listener.local_addr().unwrap_or(route.listen));
        let side = Inbound::new(
            InboundTarget::App(route.app),
            store.clone(),
            store.identity().trust_domain().clone(),
            policy_rx.clone(),
            metrics.clone(),
            config.mode_change_drain,
        )?;
        shutdown.spawn(Arc::new(side).run(listening(listener)));
    }
    let mut outbound = Vec::new();
    for route in &config.outbound {
        let listener = bind("--outbound", route.listen).await?;
        outbound.push(listener.local_addr().unwrap_or(route.listen));
        let side = Outbound::new(route.clone(), store.clone(), metrics.clone())?;
        shutdown.spawn(side.run(listening(listener)));
    }
    let mut hbone_bound = None;
    let capture = match (config.capture, destinations) {
        (Some(capture), Some(destinations)) => {
            let out_listeners = bind_capture("--capture (outbound)", capture.outbound).await?;
            let in_listeners = bind_capture("--capture (inbound)", capture.inbound).await?;
            let bound = (
                out_listeners[0].local_addr().unwrap_or(capture.outbound),
                in_listeners[0].local_addr().unwrap_or(capture.inbound),
            );
            let pool = capture
                .hbone
                .map(|_| HbonePool::new(store.clone(), hbone::PORT, metrics.clone()));
            let side = CapturedOutbound::new(
                store.clone(),
                destinations,
                capture.ports(),
                pool,
                metrics.clone(),
            );
            shutdown.spawn(side.run(out_listeners.into_iter().map(listening).collect()));
            let side = Arc::new(Inbound::new(
                InboundTarget::OriginalDst {
                    capture_ports: capture.ports(),
                },
                store.clone(),
                store.identity().trust_domain().clone(),
                policy_rx.clone(),
                metrics.clone(),
                config.mode_change_drain,
            )?);
            shutdown.spawn(
                side.clone()
                    .run_all(in_listeners.into_iter().map(listening).collect()),
            );
            if let Some(addr) = capture.hbone {
                let listeners = bind_capture("--hbone-listen", addr).await?;
                hbone_bound = Some(listeners[0].local_addr().unwrap_or(addr));
                let acceptor =
                    hbone_acceptor(store.clone(), store.identity().trust_domain().clone())?;
                // Tunnels never reach the proxy's own ports.
                let own_ports: Vec<u16> = [Some(addr.port()), metrics_addr.map(|a| a.port())]
                    .into_iter()
                    .flatten()
                    .collect();
                for listener in listeners {
                    shutdown.spawn(side.clone().run_hbone(
                        listening(listener),
                        acceptor.clone(),
                        own_ports.clone(),
                    ));
                }
            }
            Some(bound)
        }
        _ => None,
    };
    Ok(RunningProxy {
        inbound,
        outbound,
        capture,
        hbone: hbone_bound,
        metrics_addr,
        identity: store.identity().clone(),
    })
}

/// A capture listener on `addr`, and when `addr` is `0.0.0.0` also on `[::]`
/// with the same port (IPv6 only, so each socket reports its own family's
/// original destination) when this network namespace has IPv6: `proxy init`
/// redirects IPv6 traffic to the same ports.
async fn bind_capture(
    what: &'static str,
    addr: SocketAddr,
) -> Result<Vec<TcpListener>, ProxyError> {
    let mut listeners = vec![bind(what, addr).await?];
    if addr.ip() == std::net::Ipv4Addr::UNSPECIFIED
        && crate::proxy::capture::init::namespace_has_ipv6()
    {
        let v6 = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, addr.port()));
        match bind_v6_only(v6) {
            Ok(listener) => listeners.push(listener),
            Err(source) => {
                tracing::warn!(%v6, error = %source, "cannot listen for captured IPv6 connections; IPv6 traffic redirected here is refused");
            }
        }
    }
    Ok(listeners)
}

fn bind_v6_only(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_only_v6(true)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { what, addr, source })
}

/// Waits for the first value on `rx`, reporting the wait every few seconds.
async fn wait_for<T: Clone>(
    rx: &mut watch::Receiver<Option<T>>,
    shutdown: &Shutdown,
    what: &str,
    socket: &str,
) -> Result<T, ProxyError> {
    loop {
        if let Some(value) = rx.borrow_and_update().clone() {
            return Ok(value);
        }
        tokio::select! {
            () = shutdown.triggered() => return Err(ProxyError::ShutDown),
            changed = rx.changed() => if changed.is_err() { return Err(ProxyError::ShutDown) },
            () = tokio::time::sleep(WAITING_REPORT) => {
                tracing::warn!(agent_socket = %socket, "still waiting for the first {what} from the node agent; retrying");
            }
        }
    }
}

/// Keeps the certificate-expiry gauge current (swaps happen in the SDS task).
fn spawn_expiry_gauge(store: Arc<CertStore>, metrics: ProxyMetrics, shutdown: Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        loop {
            #[allow(clippy::cast_precision_loss)]
            metrics
                .cert_expiry
                .set(store.not_after().unix_timestamp() as f64);
            tokio::select! {
                () = stop.triggered() => return,
                () = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    });
}
