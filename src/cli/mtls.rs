//! `meshid mtls set-mode` and `meshid mtls status`: the namespace-wide mTLS
//! mode of a namespace, written as a PeerAuthentication into the manifest
//! directory (or, with `--platform kube`, applied to the API server), and the
//! effective mode of every pod with where it came from.
//!
//! Owns the command line only: the per-pod report is [`mod@crate::policy::report`],
//! the reading, checking and writing of manifests is the local platform's
//! ([`crate::platform::local::Manifests`], [`crate::platform::local::policy_write`],
//! which enforces one namespace-wide policy per namespace and undoes a write
//! after which the directory no longer loads). Rule enforced here: a manifest
//! the platform refuses makes `status` fail with the platform's message (file,
//! line, field).

mod agent;
mod cluster;
mod status;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Subcommand, ValueEnum};

use super::platform::PlatformKind;
use crate::platform::local::policy_write::set_namespace_mode;
use crate::platform::local::Manifests;
use crate::policy::{MtlsMode, Policies, DEFAULT_ROOT_NAMESPACE};

/// `meshid mtls …`
#[derive(Debug, Subcommand)]
pub enum MtlsCommand {
    /// Set the mTLS mode of a whole namespace (its namespace-wide PeerAuthentication;
    /// for the root namespace, the mesh-wide one).
    SetMode(SetModeArgs),
    /// Show the effective mTLS mode of every pod and which policy it came from.
    Status(StatusArgs),
}

/// Where the manifests are and which namespace is the root.
#[derive(Debug, Args)]
pub struct PolicyDirArgs {
    /// Manifest directory (Kubernetes YAML: pods and PeerAuthentications).
    #[arg(
        long,
        env = "MESHID_MANIFESTS",
        default_value = "meshid-data/manifests"
    )]
    pub manifests: PathBuf,
    /// Root namespace: its PeerAuthentication without selector is mesh-wide.
    #[arg(long, env = "MESHID_ROOT_NAMESPACE", default_value = DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,
    /// Where the policies and pods are: `local` (the manifest directory) or `kube` (the Kubernetes API server).
    #[arg(long, env = "MESHID_PLATFORM", value_enum, default_value_t = PlatformKind::Local)]
    pub platform: PlatformKind,
}

/// Flags of `meshid mtls set-mode`.
#[derive(Debug, Args)]
pub struct SetModeArgs {
    /// The namespace.
    #[arg(short = 'n', long)]
    pub namespace: String,
    /// STRICT, PERMISSIVE, DISABLE or AUDIT (any letter case).
    #[arg(value_parser = parse_mode)]
    pub mode: MtlsMode,
    /// Manifests and root namespace.
    #[command(flatten)]
    pub dir: PolicyDirArgs,
}

/// Flags of `meshid mtls status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only pods of this namespace.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Ask this node agent (its Unix socket) instead of reading the policies:
    /// the pods on its node, resolved as its proxies receive them. Needs uid 0
    /// or the agent's uid, outside any workload's pod.
    #[arg(long, env = "MESHID_MTLS_STATUS_AGENT_SOCKET", conflicts_with_all = ["manifests", "platform"])]
    pub agent_socket: Option<PathBuf>,
    /// Manifests and root namespace.
    #[command(flatten)]
    pub dir: PolicyDirArgs,
}

/// Output formats of `meshid mtls status`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// One JSON object per pod, one per line.
    Json,
}

/// Runs `meshid mtls …`.
pub async fn run(cmd: MtlsCommand) -> anyhow::Result<()> {
    match cmd {
        MtlsCommand::SetMode(args) => match args.dir.platform {
            PlatformKind::Local => set_mode(args),
            PlatformKind::Kube => cluster::set_mode(args).await,
        },
        MtlsCommand::Status(args) => match (args.agent_socket.clone(), args.dir.platform) {
            (Some(socket), _) => agent::status(args, &socket).await,
            (None, PlatformKind::Local) => status::status(args),
            (None, PlatformKind::Kube) => cluster::status(args).await,
        },
    }
}

/// The modes a namespace can be set to; UNSET is refused (delete the file to inherit).
fn parse_mode(s: &str) -> Result<MtlsMode, String> {
    match s.parse::<MtlsMode>() {
        Ok(MtlsMode::Unset) | Err(_) => Err(format!(
            "{s:?} is not a mode to set: use STRICT, PERMISSIVE, DISABLE or AUDIT (any letter case)"
        )),
        Ok(mode) => Ok(mode),
    }
}

/// A namespace name is an RFC 1123 label (it also becomes part of a file name).
fn check_namespace(namespace: &str) -> anyhow::Result<()> {
    let bytes = namespace.as_bytes();
    let ok = (1..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if !ok {
        bail!("--namespace {namespace:?} is not a Kubernetes namespace name (lowercase letters, digits and '-', at most 63)");
    }
    Ok(())
}

fn set_mode(args: SetModeArgs) -> anyhow::Result<()> {
    let namespace = args.namespace.as_str();
    check_namespace(namespace)?;
    let dir = &args.dir.manifests;
    let path = set_namespace_mode(dir, namespace, args.mode, time::OffsetDateTime::now_utc())?;
    let manifests = Manifests::read(dir)?;
    let policies = Policies::new(&args.dir.root_namespace, manifests.peer_authentications());
    status::print_warnings(&policies, Some(namespace));
    let scope = if namespace == policies.root_namespace() {
        "mesh-wide (root namespace)"
    } else {
        "namespace-wide"
    };
    match policies.namespace_policy(namespace) {
        Some(p) => println!(
            "namespace {namespace}: {} {scope}, PeerAuthentication {namespace}/{} in {}",
            p.mode(),
            p.metadata.name,
            path.display()
        ),
        None => bail!(
            "{} was written but no namespace-wide policy for {namespace} is in effect",
            path.display()
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_in_any_case_and_unset_is_refused() {
        assert_eq!(parse_mode("strict"), Ok(MtlsMode::Strict));
        assert_eq!(parse_mode("Audit"), Ok(MtlsMode::Audit));
        for bad in ["unset", "STRICTEST", ""] {
            let e = parse_mode(bad).unwrap_err();
            assert!(e.contains("STRICT, PERMISSIVE, DISABLE or AUDIT"), "{e}");
        }
    }

    #[test]
    fn namespaces_must_be_dns_labels() {
        for ok in ["shop", "a", "meshid-system", "x1"] {
            check_namespace(ok).unwrap();
        }
        for bad in [
            "",
            "Shop",
            "../etc",
            "a/b",
            "-a",
            "a-",
            "a.b",
            &"a".repeat(64),
        ] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }
}
