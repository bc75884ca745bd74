//! The `meshid` command line: one file per subcommand. Flags are clap types
//! and stay here; each subcommand turns them into a component's plain config
//! and hands off to the library.

pub mod agent;
pub mod audit;
pub mod ca;
pub mod ca_admin;
pub mod inject;
pub mod mtls;
pub mod platform;
pub mod proxy;
pub mod token;
pub mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::telemetry::{self, LogFormat};

/// meshid: certificate authority and identity service for service meshes.
#[derive(Debug, Parser)]
#[command(name = "meshid", version, about, long_about = None)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, env = "MESHID_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the certificate authority (Istio CA API over TLS).
    Ca(Box<ca::CaArgs>),
    /// Run the node agent (SDS and the SPIFFE Workload API on a Unix socket).
    Agent(agent::AgentArgs),
    /// Run the sidecar proxy: mTLS for one workload, its mode from PeerAuthentication.
    Proxy(proxy::ProxyArgs),
    /// Run the sidecar injector: the mutating admission webhook (HTTPS, POST /inject).
    Injector(inject::InjectorArgs),
    /// Inject the sidecar into the pods and pod templates of a YAML file (like istioctl kube-inject); YAML on stdout.
    Inject(inject::InjectFileArgs),
    /// Service-account tokens from the local issuer.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Read the audit log.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// mTLS policy: set a namespace's mode, show every pod's effective mode.
    #[command(subcommand)]
    Mtls(mtls::MtlsCommand),
    /// Everything on loopback in one process for a first run: CA, agent, three demo workloads behind proxies.
    Up(up::UpArgs),
    /// One demo application of `meshid up --netns` (run by `up` inside a network namespace).
    #[command(hide = true)]
    DemoApp(up::demo_app::DemoAppArgs),
}

/// Runs the binary: parse, set up logs, dispatch; errors print their whole chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `up` prints its own live status; its components' routine logs would
    // drown it, so they default to warnings there (RUST_LOG still overrides).
    let default_filter = if matches!(cli.command, Command::Up(_)) {
        "warn"
    } else {
        "info"
    };
    telemetry::init_tracing(cli.log_format, default_filter);
    let runtime = match &cli.command {
        Command::Proxy(args) => args.runtime(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    run_on(runtime, async move {
        match cli.command {
            Command::Ca(args) => ca::run(*args).await,
            Command::Agent(args) => agent::run(args).await,
            Command::Proxy(args) => proxy::run(args).await,
            Command::Injector(args) => inject::run_injector(args).await,
            Command::Inject(args) => inject::run_file(&args),
            Command::Token(cmd) => token::run(cmd).await,
            Command::Audit(cmd) => audit::run(cmd).await,
            Command::Mtls(cmd) => mtls::run(cmd).await,
            Command::Up(args) => up::run(args).await,
            Command::DemoApp(args) => up::demo_app::run(args).await,
        }
    })
}

/// `meshid-proxy`: the sidecar proxy alone, with the flags of `meshid proxy`.
#[derive(Debug, Parser)]
#[command(name = "meshid-proxy", version, about = "meshid's sidecar proxy: mTLS for one workload, its mode from PeerAuthentication (the same as `meshid proxy`, in a smaller binary)", long_about = None)]
pub struct ProxyCli {
    /// Log format.
    #[arg(long, env = "MESHID_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// The proxy's flags.
    #[command(flatten)]
    pub args: proxy::ProxyArgs,
}

/// Runs the `meshid-proxy` binary. It links only the proxy's code, so an
/// idle sidecar maps fewer pages of its binary than the all-in-one `meshid`.
pub fn proxy_main() -> ExitCode {
    let cli = ProxyCli::parse();
    telemetry::init_tracing(cli.log_format, "info");
    run_on(cli.args.runtime(), proxy::run(cli.args))
}

/// Runs `job` on the runtime `builder` makes; an error prints its whole chain.
fn run_on(
    mut builder: tokio::runtime::Builder,
    job: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(job) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses durations such as `30s`, `24h`, `90d`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration like 30s, 24h or 90d: {e}"))
}
