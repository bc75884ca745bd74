//! `meshid proxy`: the sidecar proxy next to one workload; `meshid proxy
//! init`: its capture rules ([`init`]).

pub mod init;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::identity::SpiffeId;
use crate::proxy::enforce::DEFAULT_MODE_CHANGE_DRAIN;
use crate::proxy::inbound::InboundRoute;
use crate::proxy::outbound::OutboundRoute;
use crate::proxy::server::{self, CaptureConfig, ProxyConfig};
use crate::shutdown::Shutdown;
use crate::time::system_clock;

/// Flags of `meshid proxy`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ProxyArgs {
    /// `init`: program this network namespace's capture rules instead of running the proxy.
    #[command(subcommand)]
    pub command: Option<ProxyCommand>,
    /// The node agent's Unix socket (SDS and the mTLS policy stream).
    #[arg(
        long,
        env = "MESHID_AGENT_SOCKET",
        default_value = "meshid-data/agent.sock"
    )]
    pub agent_socket: PathBuf,
    /// Inbound route `LISTEN=APP_ADDR`, e.g. `127.0.0.1:15006=127.0.0.1:8080` (repeatable; `;` between routes in the variable).
    #[arg(long, env = "MESHID_INBOUND", value_parser = parse_inbound, value_delimiter = ';')]
    pub inbound: Vec<InboundRoute>,
    /// Outbound route `LISTEN=UPSTREAM[@SPIFFE_ID]`; without an ID, any identity in our trust domain is accepted (repeatable; `;` between routes in the variable).
    #[arg(long, env = "MESHID_OUTBOUND", value_parser = parse_outbound, value_delimiter = ';')]
    pub outbound: Vec<OutboundRoute>,
    /// Transparent capture: listen on the capture ports that `meshid proxy init` redirects the pod's TCP traffic to, and send each connection to its original destination (mTLS when a meshed pod owns it). Explicit routes still work beside it.
    #[arg(long, env = "MESHID_CAPTURE")]
    pub capture: bool,
    /// With --capture: the outbound capture listener.
    #[arg(long, env = "MESHID_OUTBOUND_CAPTURE", default_value = "0.0.0.0:15001")]
    pub outbound_capture: SocketAddr,
    /// With --capture: the inbound capture listener (every address: netfilter redirects inbound traffic to the receiving interface's).
    #[arg(long, env = "MESHID_INBOUND_CAPTURE", default_value = "0.0.0.0:15006")]
    pub inbound_capture: SocketAddr,
    /// With --capture: the HBONE listener (Istio's and ztunnel's port 15008), where peer proxies tunnel connections to this pod as HTTP/2 CONNECT streams over one mTLS connection each.
    #[arg(long, env = "MESHID_HBONE_LISTEN", default_value = "0.0.0.0:15008")]
    pub hbone_listen: SocketAddr,
    /// With --capture: no HBONE, neither listened on nor used to peers; every connection to a meshed pod gets its own mTLS handshake.
    #[arg(long, env = "MESHID_NO_HBONE")]
    pub no_hbone: bool,
    /// Our service-account token, sent as `authorization: Bearer` on SDS and the policy stream when peer credentials do not attest us (re-read on every reconnect).
    #[arg(long, env = "MESHID_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "MESHID_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long a live connection that a mode change no longer allows (plaintext after a switch to STRICT) may go on before it is closed.
    #[arg(long, env = "MESHID_MODE_CHANGE_DRAIN", value_parser = super::parse_duration, default_value = "0s")]
    pub mode_change_drain: Duration,
    /// Threads that carry connections. 1 (the default) runs everything on one
    /// thread: a sidecar serves one workload, and one thread spends the least
    /// CPU and memory per connection (no wake-ups across threads); raise it
    /// for a workload that needs more than one core of proxying.
    #[arg(long, env = "MESHID_PROXY_THREADS", default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Connections at once, inbound and outbound together; beyond it new
    /// connections wait in the listen backlog (each open connection holds
    /// up to ~170 KiB of buffers).
    #[arg(long, env = "MESHID_PROXY_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// What `meshid proxy` does besides proxying.
#[derive(Debug, clap::Subcommand)]
pub enum ProxyCommand {
    /// Program the netfilter rules that send this network namespace's TCP traffic through the proxy (run once per pod, before the proxy, with NET_ADMIN and NET_RAW).
    Init(init::InitArgs),
}

/// `--max-connections` when not given.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;

impl ProxyArgs {
    /// The runtime the proxy runs on: one thread, or `threads` workers.
    pub fn runtime(&self) -> tokio::runtime::Builder {
        if self.threads == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(self.threads));
            builder
        }
    }
}

fn parse_inbound(s: &str) -> Result<InboundRoute, String> {
    let (listen, app) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LISTEN=APP_ADDR"))?;
    Ok(InboundRoute {
        listen: listen.parse().map_err(|e| format!("{listen:?}: {e}"))?,
        app: app.parse().map_err(|e| format!("{app:?}: {e}"))?,
    })
}

fn parse_outbound(s: &str) -> Result<OutboundRoute, String> {
    let (listen, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not LISTEN=UPSTREAM[@SPIFFE_ID]"))?;
    let (upstream, expected) = match rest.split_once('@') {
        Some((upstream, id)) => {
            let id = SpiffeId::parse(id).map_err(|e| format!("{id:?}: {e}"))?;
            (upstream, Some(id))
        }
        None => (rest, None),
    };
    Ok(OutboundRoute {
        listen: listen.parse().map_err(|e| format!("{listen:?}: {e}"))?,
        upstream: upstream.parse().map_err(|e| format!("{upstream:?}: {e}"))?,
        expected,
    })
}

/// Runs the proxy until SIGINT or SIGTERM (or `init`, and returns).
pub async fn run(args: ProxyArgs) -> anyhow::Result<()> {
    if let Some(ProxyCommand::Init(init)) = &args.command {
        return init::run(init);
    }
    let shutdown = Shutdown::new();
    shutdown
        .trigger_on_signals()
        .context("installing signal handlers")?;
    let config = ProxyConfig {
        agent_socket: std::path::absolute(&args.agent_socket)
            .with_context(|| format!("--agent-socket {}", args.agent_socket.display()))?,
        inbound: args.inbound,
        outbound: args.outbound,
        token_file: args.token_file,
        metrics_listen: args.metrics_listen,
        mode_change_drain: args.mode_change_drain,
        max_connections: args.max_connections as usize,
        capture: args.capture.then_some(CaptureConfig {
            outbound: args.outbound_capture,
            inbound: args.inbound_capture,
            hbone: (!args.no_hbone).then_some(args.hbone_listen),
        }),
    };
    config.validate()?;
    tracing::info!(
        agent_socket = %config.agent_socket.display(),
        inbound = ?config.inbound,
        outbound = ?config.outbound,
        token_file = ?config.token_file,
        metrics = ?config.metrics_listen,
        mode_change_drain = ?config.mode_change_drain,
        default_drain = ?DEFAULT_MODE_CHANGE_DRAIN,
        "starting proxy; waiting for the first certificate and mTLS policy from the agent"
    );
    let running = match server::start(
        config,
        system_clock(),
        prometheus::Registry::new(),
        shutdown.clone(),
    )
    .await
    {
        Ok(running) => running,
        Err(server::ProxyError::ShutDown) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    // "-" for none, so that the line splits on whitespace.
    let list = |addrs: &[SocketAddr]| {
        if addrs.is_empty() {
            return "-".to_owned();
        }
        addrs
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    let capture = running
        .capture
        .map_or_else(|| "-".to_owned(), |(o, i)| format!("{o},{i}"));
    let hbone = running
        .hbone
        .map_or_else(|| "-".to_owned(), |a| a.to_string());
    println!(
        "meshid proxy ready: inbound {} outbound {} capture {capture} hbone {hbone} metrics {} identity {}",
        list(&running.inbound),
        list(&running.outbound),
        running
            .metrics_addr
            .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        running.identity
    );
    shutdown.triggered().await;
    if !shutdown.drain(Duration::from_secs(5)).await {
        tracing::warn!("some connections were still open 5 s after shutdown began");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_with_and_without_an_expected_identity() {
        let inbound = parse_inbound("127.0.0.1:15006=127.0.0.1:8080").unwrap();
        assert_eq!(inbound.listen.port(), 15006);
        assert_eq!(inbound.app.port(), 8080);
        let with_id =
            parse_outbound("127.0.0.1:15001=10.0.0.2:15006@spiffe://cluster.local/ns/a/sa/b")
                .unwrap();
        assert_eq!(
            with_id.expected.unwrap().to_string(),
            "spiffe://cluster.local/ns/a/sa/b"
        );
        let any = parse_outbound("127.0.0.1:15001=10.0.0.2:15006").unwrap();
        assert!(any.expected.is_none());
    }

    #[test]
    fn malformed_routes_are_refused_with_the_offending_part() {
        assert!(parse_inbound("127.0.0.1:15006")
            .unwrap_err()
            .contains("LISTEN=APP_ADDR"));
        assert!(parse_inbound("x=127.0.0.1:1")
            .unwrap_err()
            .contains("\"x\""));
        assert!(parse_outbound("127.0.0.1:1=127.0.0.1:2@http://nope")
            .unwrap_err()
            .contains("http://nope"));
    }

    #[test]
    fn a_config_without_routes_or_with_a_listen_address_twice_is_refused() {
        let route = parse_inbound("127.0.0.1:15006=127.0.0.1:8080").unwrap();
        let mut config = ProxyConfig {
            agent_socket: PathBuf::from("/tmp/agent.sock"),
            inbound: Vec::new(),
            outbound: Vec::new(),
            token_file: None,
            metrics_listen: None,
            mode_change_drain: Duration::ZERO,
            max_connections: 1,
            capture: None,
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--inbound"));
        config.inbound = vec![route, route];
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("two routes"));
        config.inbound = vec![route];
        assert!(config.validate().is_ok());
        config.max_connections = 0;
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--max-connections"));
    }

    #[test]
    fn threads_default_to_one_and_zero_is_refused() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            args: ProxyArgs,
        }
        let one = Cli::try_parse_from(["meshid-proxy"]).unwrap();
        assert_eq!(one.args.threads, 1);
        let four = Cli::try_parse_from(["meshid-proxy", "--threads", "4"]).unwrap();
        assert_eq!(four.args.threads, 4);
        four.args.runtime().enable_all().build().unwrap();
        let zero = Cli::try_parse_from(["meshid-proxy", "--threads", "0"])
            .err()
            .unwrap()
            .to_string();
        assert!(zero.contains("--threads"), "{zero}");
        assert_eq!(one.args.max_connections, DEFAULT_MAX_CONNECTIONS);
        let none = Cli::try_parse_from(["meshid-proxy", "--max-connections", "0"])
            .err()
            .unwrap()
            .to_string();
        assert!(none.contains("--max-connections"), "{none}");
    }
}
