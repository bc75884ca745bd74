//! `meshid up`: the whole mesh identity system on loopback in one process,
//! for a first run: the CA, one node agent, and three demo workloads (HTTP
//! echo servers) each behind its own proxy, with the frontend calling the
//! backend through the mesh every second.
//!
//! Every component is started by the same function as its own subcommand
//! (`meshid ca`, `meshid agent`, `meshid proxy`), so attestation, audit and
//! TLS are exactly what production runs. The demo side (manifests, tokens,
//! echo servers, the caller) is `demo`; the live display is `status`;
//! `--check` (drive the scenario and report each step) is `check`.
//!
//! Ports are fixed so that the printed commands work as written: CA 15012,
//! its metrics 15014, agent metrics 15020, frontend outbound 15001, inbound
//! 15006 / 15106 / 15206 (frontend, backend, cart), proxy metrics 15016 /
//! 15116 / 15216. The hidden flag `--port-base N` (env `MESHID_PORT_BASE`,
//! default 15000) shifts all of them by `N - 15000`, so that tests can run
//! several `up`s side by side.

mod banner;
mod check;
mod demo;
pub mod demo_app;
mod manifest_watch;
mod netns;
mod ports;
mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use tokio::time::Instant;

use crate::agent::cache::CacheConfig;
use crate::agent::server::AgentConfig;
use crate::agent::{AgentPlatform, AgentSetup};
use crate::ca::{CaConfig, CaPlatform, CaSetup};
use crate::identity::{SpiffeId, TrustDomain};
use crate::pki::key::KeyAlgorithm;
use crate::platform::local::{LocalConfig, LocalPlatform, TokenIssuer};
use crate::platform::Platform;
use crate::proxy::inbound::InboundRoute;
use crate::proxy::outbound::OutboundRoute;
use crate::proxy::server::{self as proxy_server, ProxyConfig, RunningProxy};
use crate::shutdown::Shutdown;
use crate::time::system_clock;
use demo::{CallLog, Workload, WORKLOADS};
use ports::{preflight, Ports};

/// The data directory when none is given.
pub const DEFAULT_DATA_DIR: &str = "meshid-data";

/// Flags of `meshid up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where everything lives: CA root, audit database, manifests (DATA_DIR/manifests), tokens, agent socket. Reused on the next run. Default: ./meshid-data (with --check: a temporary directory, removed afterwards).
    #[arg(long, env = "MESHID_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Lifetime of workload certificates; short values (e.g. 30s) show rotation. Default: 1h (with --check: 6s).
    #[arg(long, env = "MESHID_WORKLOAD_TTL", value_parser = super::parse_duration)]
    pub workload_ttl: Option<Duration>,
    /// Delete the data directory first and start from scratch (new root, empty audit).
    #[arg(long, env = "MESHID_RESET")]
    pub reset: bool,
    /// Drive the scenario automatically, print `PASS|FAIL <step>: <detail>` per step, exit 0 only if all pass.
    #[arg(long, env = "MESHID_CHECK")]
    pub check: bool,
    /// Shift every port: the CA listens on BASE+12, the agent's metrics on BASE+20, the proxies on BASE+1, +6, +106, +206 (metrics +16, +116, +216). For running several `up`s (tests).
    #[arg(long, env = "MESHID_PORT_BASE", default_value_t = 15000, hide = true,
          value_parser = clap::value_parser!(u16).range(1024..=65000))]
    pub port_base: u16,
    /// Root only: run each demo workload in its own network namespace on a bridge (pod IPs 10.88.0.11-13), with capture rules (`proxy init`) and a `--capture` proxy; the frontend calls the backend's pod IP on port 8080, unmodified.
    #[arg(long, env = "MESHID_NETNS", conflicts_with = "check")]
    pub netns: bool,
}

/// One demo workload's proxy, started.
#[derive(Debug)]
pub(crate) struct DemoProxy {
    pub(crate) workload: Workload,
    pub(crate) running: RunningProxy,
    pub(crate) registry: prometheus::Registry,
}

/// Everything `up` started, for the banner, the status and the check.
#[derive(Debug)]
pub(crate) struct Mesh {
    pub(crate) data_dir: PathBuf,
    pub(crate) manifests: PathBuf,
    pub(crate) socket: PathBuf,
    pub(crate) ca_addr: SocketAddr,
    pub(crate) metrics: Vec<(String, SocketAddr)>,
    pub(crate) proxies: Vec<DemoProxy>,
    pub(crate) calls: Arc<Mutex<CallLog>>,
    pub(crate) started: Instant,
    pub(crate) started_at: time::OffsetDateTime,
    pub(crate) ttl: Duration,
    /// Whether the manifest directory is there ([`manifest_watch`]).
    pub(crate) manifests_present: tokio::sync::watch::Receiver<bool>,
    /// Bumped on every change the platform reads (pods, policies).
    pub(crate) platform_changes: tokio::sync::watch::Receiver<u64>,
    /// With `--netns`: the namespaces and processes, removed when dropped.
    pub(crate) namespaces: Option<netns::Netns>,
}

impl Mesh {
    pub(crate) fn proxy(&self, name: &str) -> Option<&DemoProxy> {
        self.proxies.iter().find(|p| p.workload.name == name)
    }
    pub(crate) fn via_frontend(&self) -> Option<SocketAddr> {
        self.proxy("frontend")
            .and_then(|p| p.running.outbound.first().copied())
    }
    pub(crate) fn inbound_of(&self, name: &str) -> Option<SocketAddr> {
        self.proxy(name)
            .and_then(|p| p.running.inbound.first().copied())
    }
}

/// Runs `meshid up` until SIGINT or SIGTERM (or, with `--check`, until the scenario ran).
pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let shutdown = Shutdown::new();
    shutdown
        .trigger_on_signals()
        .context("installing signal handlers")?;
    let temp = args.check && args.data_dir.is_none();
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None if args.check => {
            std::env::temp_dir().join(format!("meshid-up-check-{}", std::process::id()))
        }
        None => PathBuf::from(DEFAULT_DATA_DIR),
    };
    let data_dir = std::path::absolute(&data_dir)
        .with_context(|| format!("--data-dir {}", data_dir.display()))?;
    let ttl = args.workload_ttl.unwrap_or(if args.check {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(3600)
    });
    let ports = Ports(args.port_base);
    preflight(&data_dir, ports)?;
    if args.reset || temp {
        match std::fs::remove_dir_all(&data_dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("--reset: cannot delete {}: {e}", data_dir.display()),
        }
    }
    let pid_file = data_dir.join("up.pid");
    let result = async {
        let mesh = start(&data_dir, ports, ttl, started, args.netns, &shutdown).await?;
        let _ = std::fs::write(&pid_file, std::process::id().to_string());
        if args.check {
            check::run(&mesh, &shutdown).await
        } else {
            banner::print_banner(&mesh, args.data_dir.is_none());
            status::run(&mesh, &shutdown).await;
            Ok(())
        }
    }
    .await;
    shutdown.trigger();
    if !shutdown.drain(Duration::from_secs(5)).await {
        tracing::warn!("some tasks were still running 5 s after shutdown began");
    }
    let _ = std::fs::remove_file(data_dir.join("agent.sock"));
    let _ = std::fs::remove_file(&pid_file);
    if temp {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    if !args.check && result.is_ok() {
        println!("meshid up: stopped; data kept in {}", data_dir.display());
    }
    result
}

/// Data directory, manifests, CA, agent, echo servers and proxies, in order.
async fn start(
    data_dir: &Path,
    ports: Ports,
    ttl: Duration,
    started: Instant,
    with_netns: bool,
    shutdown: &Shutdown,
) -> anyhow::Result<Mesh> {
    let started_at = time::OffsetDateTime::now_utc();
    // First, so that a missing privilege is said before anything starts.
    let mut namespaces = if with_netns {
        Some(netns::Netns::create()?)
    } else {
        None
    };
    crate::secret_file::ensure_private_dir(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let probe = data_dir.join(".meshid-write-probe");
    std::fs::write(&probe, b"")
        .with_context(|| format!("the data directory {} is not writable", data_dir.display()))?;
    let _ = std::fs::remove_file(probe);
    let manifests = data_dir.join("manifests");
    for file in demo::write_manifests(&manifests)? {
        tracing::info!(file = %file.display(), "wrote demo manifest");
    }
    if with_netns {
        for file in netns::label_pods(&manifests)? {
            tracing::info!(file = %file.display(), "meshed label and pod IP added");
        }
    }

    // One local platform for the CA, the agent and `up` itself: the
    // manifests are watched once and their warnings logged once.
    let issuer = TokenIssuer::load_or_create(data_dir)
        .with_context(|| format!("loading the token issuer from {}", data_dir.display()))?;
    let platform = LocalPlatform::open_dir(LocalConfig::new(
        &manifests,
        issuer.verifier(),
        system_clock(),
    ))?;
    shutdown.spawn(platform.clone().run(shutdown.token().clone()));

    let ca = crate::ca::build(
        ca_setup(data_dir, ports, platform.clone())?,
        shutdown.clone(),
    )
    .await
    .context("starting the CA")?;
    let tokens_dir = data_dir.join("tokens");
    crate::secret_file::ensure_private_dir(&tokens_dir)
        .with_context(|| format!("cannot create {}", tokens_dir.display()))?;
    let mut tokens = vec![(
        demo::AGENT_NS.to_owned(),
        demo::AGENT_SA.to_owned(),
        tokens_dir.join("meshid-agent.token"),
    )];
    for w in WORKLOADS {
        tokens.push((
            w.namespace.to_owned(),
            w.name.to_owned(),
            tokens_dir.join(format!("{}.token", w.name)),
        ));
    }
    for (ns, sa, path) in &tokens {
        demo::write_token(&issuer, platform.as_ref(), ns, sa, path)?;
    }
    let token_paths: Vec<PathBuf> = tokens.iter().map(|t| t.2.clone()).collect();
    demo::keep_tokens_fresh(issuer, platform.clone(), tokens, shutdown.clone());

    let socket = data_dir.join("agent.sock");
    let agent = crate::agent::build(
        AgentSetup {
            config: AgentConfig {
                cache: CacheConfig {
                    workload_ttl: ttl,
                    ..CacheConfig::default()
                },
                metrics_listen: Some(ports.agent_metrics()),
                ..AgentConfig::new(demo::NODE, socket.clone())
            },
            ca_address: format!("https://{}", ca.addr),
            ca_root: data_dir.join("root-cert.pem"),
            token_file: token_paths[0].clone(),
            platform: AgentPlatform::Local {
                manifests: manifests.clone(),
                token_jwks_dir: Some(data_dir.to_owned()),
                shared: Some(platform.clone()),
            },
            clock: system_clock(),
        },
        shutdown.clone(),
    )
    .await
    .context("starting the node agent")?;

    let calls = Arc::new(Mutex::new(CallLog::default()));
    let mut pending = Vec::new();
    if let Some(namespaces) = namespaces.as_mut() {
        let backend = SocketAddr::new(netns::pod_ip(1).into(), netns::APP_PORT);
        for (i, token) in token_paths[1..].iter().enumerate() {
            let call = (i == 0).then_some(backend);
            let (socket, calls) = (agent.socket.clone(), calls.clone());
            // Child processes, waited for: off the runtime's worker.
            tokio::task::block_in_place(|| {
                namespaces.start_workload(i, &socket, token, call, calls, started)
            })
            .with_context(|| format!("starting {} in its network namespace", WORKLOADS[i].name))?;
        }
    }
    let in_process = if with_netns {
        &[][..]
    } else {
        &token_paths[1..]
    };
    for ((i, w), token) in (0u16..).zip(WORKLOADS).zip(in_process) {
        let app = demo::echo_server(w.name, shutdown).await?;
        let mut outbound = Vec::new();
        if w.name == "frontend" {
            let backend =
                SpiffeId::for_service_account(&TrustDomain::default(), "default", "backend")?;
            outbound.push(OutboundRoute {
                listen: ports.frontend_outbound(),
                upstream: ports.inbound(1),
                expected: Some(backend),
            });
        }
        let config = ProxyConfig {
            agent_socket: agent.socket.clone(),
            inbound: vec![InboundRoute {
                listen: ports.inbound(i),
                app,
            }],
            outbound,
            token_file: Some(token.clone()),
            metrics_listen: Some(ports.proxy_metrics(i)),
            mode_change_drain: Duration::ZERO,
            max_connections: super::proxy::DEFAULT_MAX_CONNECTIONS as usize,
            capture: None,
        };
        let registry = prometheus::Registry::new();
        let start = proxy_server::start(config, system_clock(), registry.clone(), shutdown.clone());
        pending.push((w, registry, tokio::spawn(start)));
    }
    let mut proxies = Vec::new();
    for (workload, registry, handle) in pending {
        let running = tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .map_err(|_| anyhow::anyhow!("the {} proxy got no certificate or policy from the agent within 30 s (see the log above)", workload.name))?
            .context("the proxy task failed")?
            .with_context(|| format!("starting the {} proxy", workload.name))?;
        proxies.push(DemoProxy {
            workload,
            running,
            registry,
        });
    }
    let mut metrics = vec![
        ("CA".to_owned(), ca.metrics_addr),
        ("agent".to_owned(), agent.metrics_addr),
    ];
    for p in &proxies {
        metrics.push((format!("{} proxy", p.workload.name), p.running.metrics_addr));
    }
    let mesh = Mesh {
        data_dir: data_dir.to_owned(),
        manifests: manifests.clone(),
        socket: agent.socket,
        ca_addr: ca.addr,
        metrics: metrics
            .into_iter()
            .filter_map(|(n, a)| a.map(|a| (n, a)))
            .collect(),
        proxies,
        calls,
        started,
        started_at,
        ttl,
        manifests_present: manifest_watch::watch_manifest_dir(manifests.clone(), shutdown),
        platform_changes: platform.changes(),
        namespaces,
    };
    if let Some(via) = mesh.via_frontend() {
        demo::call_every_second(via, started, mesh.calls.clone(), shutdown);
    }
    Ok(mesh)
}

fn ca_setup(
    data_dir: &Path,
    ports: Ports,
    platform: Arc<LocalPlatform>,
) -> anyhow::Result<CaSetup> {
    let trusted_node_accounts = format!("{}/{}", demo::AGENT_NS, demo::AGENT_SA)
        .parse()
        .map_err(|e| anyhow::anyhow!("trusted node accounts: {e}"))?;
    Ok(CaSetup {
        config: CaConfig {
            listen: ports.ca(),
            metrics_listen: Some(ports.ca_metrics()),
            trusted_node_accounts,
            ..CaConfig::default()
        },
        data_dir: data_dir.to_owned(),
        plugin_ca_dir: None,
        root_key_algorithm: KeyAlgorithm::EcdsaP256,
        audit_commit_delay: Duration::from_millis(1),
        audit_checkpoint_every: Duration::from_secs(10),
        audit_retention: None,
        audit_store: None,
        audit_checkpoint_key: None,
        platform: CaPlatform::Local {
            manifests: None,
            shared: Some(platform),
        },
        rotation: crate::ca::authorities::RotationConfig::default(),
        clock: system_clock(),
    })
}
