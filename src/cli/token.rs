//! `meshid token issue`: a service-account token from the local issuer,
//! shaped exactly like a projected Kubernetes token.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

use crate::platform::local::{LocalConfig, LocalPlatform, TokenIssuer, TokenRequest};
use crate::platform::Platform;
use crate::time::system_clock;

/// `meshid token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Issue a token (written without a trailing newline).
    Issue(IssueArgs),
}

/// Flags of `meshid token issue`.
#[derive(Debug, Args)]
pub struct IssueArgs {
    /// Data directory holding the issuer key (created on first use).
    #[arg(long, env = "MESHID_DATA_DIR", default_value = "meshid-data")]
    pub data_dir: PathBuf,
    /// Manifest directory, to look up the pod's UID and node. Default: DATA_DIR/manifests.
    #[arg(long, env = "MESHID_MANIFESTS")]
    pub manifests: Option<PathBuf>,
    /// Namespace of the service account.
    #[arg(short = 'n', long, env = "MESHID_NAMESPACE")]
    pub namespace: String,
    /// Service account.
    #[arg(long, env = "MESHID_SERVICE_ACCOUNT")]
    pub service_account: String,
    /// Bind the token to this pod (its UID and node come from the manifests).
    #[arg(long, env = "MESHID_POD")]
    pub pod: Option<String>,
    /// The pod UID to put in the token instead of the manifest's.
    #[arg(long, env = "MESHID_POD_UID", requires = "pod")]
    pub pod_uid: Option<String>,
    /// Node name claim (default: the pod's node).
    #[arg(long, env = "MESHID_NODE")]
    pub node: Option<String>,
    /// Audience (repeatable).
    #[arg(
        long = "audience",
        env = "MESHID_AUDIENCES",
        value_delimiter = ',',
        default_value = "istio-ca"
    )]
    pub audiences: Vec<String>,
    /// Lifetime.
    #[arg(long, env = "MESHID_TOKEN_TTL", default_value = "1h", value_parser = super::parse_duration)]
    pub ttl: Duration,
    /// Write to this file (mode 0600) instead of standard output.
    #[arg(short = 'o', long, env = "MESHID_TOKEN_OUTPUT")]
    pub output: Option<PathBuf>,
}

/// Runs `meshid token …`.
pub async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Issue(args) => issue(args),
    }
}

fn issue(args: IssueArgs) -> anyhow::Result<()> {
    crate::secret_file::ensure_private_dir(&args.data_dir)
        .with_context(|| format!("cannot create directory {}", args.data_dir.display()))?;
    let issuer = TokenIssuer::load_or_create(&args.data_dir)
        .with_context(|| format!("loading the token issuer from {}", args.data_dir.display()))?;
    let mut node = args.node.clone().map(|n| (n, None));
    let pod = match (&args.pod, &args.pod_uid) {
        (None, _) => None,
        (Some(name), Some(uid)) => Some((name.clone(), uid.clone())),
        (Some(name), None) => {
            let dir = args
                .manifests
                .clone()
                .unwrap_or_else(|| args.data_dir.join("manifests"));
            let platform = LocalPlatform::open(LocalConfig {
                manifest_dir: dir.clone(),
                verifier: issuer.verifier(),
                clock: system_clock(),
                poll_interval: crate::platform::local::DEFAULT_POLL_INTERVAL,
            })
            .with_context(|| format!("reading manifests from {}", dir.display()))?;
            let Some(found) = platform.pod(&args.namespace, name) else {
                bail!(
                    "pod {}/{} is not in the manifests in {}",
                    args.namespace,
                    name,
                    dir.display()
                );
            };
            if found.service_account != args.service_account {
                bail!(
                    "pod {}/{} runs as service account {:?}, not {:?}",
                    args.namespace,
                    name,
                    found.service_account,
                    args.service_account
                );
            }
            if node.is_none() {
                node = found.node_name.clone().map(|n| (n, None));
            }
            Some((found.name, found.uid))
        }
    };
    let ttl = time::Duration::try_from(args.ttl).context("--ttl is too long")?;
    let request = TokenRequest {
        namespace: args.namespace,
        service_account: args.service_account,
        pod,
        node,
        audiences: args.audiences,
        ttl,
    };
    let token = issuer.issue(&request, time::OffsetDateTime::now_utc())?;
    match args.output {
        Some(path) => crate::secret_file::write_secret(&path, token.as_bytes())
            .with_context(|| format!("writing the token to {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(token.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}
