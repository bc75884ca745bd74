//! `meshid mtls set-mode` and `meshid mtls status`: the namespace-wide mTLS
//! mode of a namespace, written as a PeerAuthentication into the manifest
//! directory (or, with `--platform kube`, applied to the API server), and the
//! effective mode of every pod with where it came from.
//!
//! Owns the command line only: resolution is [`mod@crate::policy::resolve`], the
//! reading and checking of manifests is the local platform's. Rules enforced:
//! one namespace-wide policy per namespace (an existing one is updated in
//! place, never shadowed by a second); a write is atomic and is undone when
//! the directory no longer loads afterwards; a manifest the platform refuses
//! makes `status` fail with the platform's message (file, line, field).

mod agent;
mod cluster;
mod scan;
mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_yaml::{Mapping, Value};

use self::scan::{scan, FoundPolicy};
use super::platform::PlatformKind;
use crate::platform::jwt::{JwtVerifier, JwtVerifierConfig};
use crate::platform::local::{LocalConfig, LocalPlatform};
use crate::platform::{Platform, PlatformError};
use crate::policy::{MtlsMode, PeerAuthentication, Policies, DEFAULT_ROOT_NAMESPACE};
use crate::time::system_clock;

/// The name `set-mode` gives a new namespace-wide policy (Istio's convention).
const POLICY_NAME: &str = "default";

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

/// Opens the manifests with the local platform, which checks every file.
/// Tokens are not verified here, so the verifier holds no key.
fn open(dir: &Path) -> Result<Arc<LocalPlatform>, PlatformError> {
    let jwks = jsonwebtoken::jwk::JwkSet { keys: Vec::new() };
    let verifier = JwtVerifier::new(JwtVerifierConfig::new(jwks));
    LocalPlatform::open(LocalConfig::new(dir, verifier, system_clock()))
}

fn set_mode(args: SetModeArgs) -> anyhow::Result<()> {
    let namespace = args.namespace.as_str();
    check_namespace(namespace)?;
    let dir = &args.dir.manifests;
    if !dir.is_dir() {
        bail!("the manifest directory {} does not exist", dir.display());
    }
    let found = scan(dir)?;
    let mut existing: Vec<&FoundPolicy> = found
        .policies
        .iter()
        .filter(|p| p.namespace_wide && p.reference.namespace == namespace)
        .collect();
    existing.sort_by(|a, b| a.reference.precedence(&b.reference));
    let (path, yaml) = match existing.first() {
        // Update the policy in effect, where it is, so that no second one shadows it.
        Some(current) => {
            if !current.alone_in_file {
                bail!(
                    "namespace {namespace} already has the namespace-wide PeerAuthentication {} in {}, \
                     which holds other objects too: set spec.mtls.mode there, or move the policy to a file of its own",
                    current.reference,
                    current.file.display()
                );
            }
            let document = with_mode(current.document.clone(), args.mode).with_context(|| {
                format!(
                    "cannot update {} in {}",
                    current.reference,
                    current.file.display()
                )
            })?;
            (current.file.clone(), serde_yaml::to_string(&document)?)
        }
        None => {
            let path = dir.join(format!("peerauthentication-{namespace}.yaml"));
            match found.documents_in(&path) {
                None | Some(Some(0)) => {}
                Some(_) => bail!(
                    "{} exists and holds something other than namespace {namespace}'s policy; refusing to overwrite it",
                    path.display()
                ),
            }
            let mut policy = PeerAuthentication::namespace_wide(namespace, POLICY_NAME, args.mode);
            let now = time::OffsetDateTime::now_utc();
            policy.metadata.creation_timestamp = Some(now.replace_nanosecond(0).unwrap_or(now));
            (path, serde_yaml::to_string(&policy)?)
        }
    };
    write_checked(dir, &path, yaml.as_bytes())?;

    let platform = open(dir)?;
    let policies = Policies::new(&args.dir.root_namespace, platform.peer_authentications());
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

/// `document` with `spec.mtls.mode` set, every other field kept.
fn with_mode(mut document: Value, mode: MtlsMode) -> anyhow::Result<Value> {
    fn child<'a>(map: &'a mut Mapping, key: &str) -> anyhow::Result<&'a mut Mapping> {
        let slot = map.entry(Value::from(key)).or_insert(Value::Null);
        if slot.is_null() {
            *slot = Value::Mapping(Mapping::new());
        }
        slot.as_mapping_mut()
            .with_context(|| format!("{key} is not a mapping"))
    }
    let root = document
        .as_mapping_mut()
        .context("the document is not a mapping")?;
    let mtls = child(child(root, "spec")?, "mtls")?;
    mtls.insert(Value::from("mode"), Value::from(mode.as_str()));
    Ok(document)
}

/// Writes `path` atomically, then checks that the whole directory still
/// loads; if not, puts the previous content back and fails with the reason.
fn write_checked(dir: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let previous = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    crate::secret_file::write_public(path, bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    let Err(problem) = open(dir) else {
        return Ok(());
    };
    let restored = match &previous {
        Some(old) => crate::secret_file::write_public(path, old),
        None => std::fs::remove_file(path),
    };
    match restored {
        Ok(()) => bail!(
            "the manifests in {} do not load with this change, so {} was left as it was: {problem}",
            dir.display(),
            path.display()
        ),
        Err(e) => bail!(
            "the manifests in {} do not load with this change ({problem}), and restoring {} failed: {e}",
            dir.display(),
            path.display()
        ),
    }
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

    #[test]
    fn with_mode_keeps_every_other_field() {
        let doc: Value = serde_yaml::from_str(
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: x\n  \
             creationTimestamp: \"2020-01-01T00:00:00Z\"\n  labels: {a: b}\nspec:\n  mtls:\n    mode: STRICTEST\n",
        )
        .unwrap();
        let out = with_mode(doc.clone(), MtlsMode::Audit).unwrap();
        assert_eq!(out["spec"]["mtls"]["mode"], Value::from("AUDIT"));
        assert_eq!(out["metadata"], doc["metadata"]);
        assert_eq!(out["apiVersion"], doc["apiVersion"]);
        let bare: Value = serde_yaml::from_str("kind: PeerAuthentication\nspec:\n").unwrap();
        let out = with_mode(bare, MtlsMode::Strict).unwrap();
        assert_eq!(out["spec"]["mtls"]["mode"], Value::from("STRICT"));
        assert!(with_mode(Value::from("x"), MtlsMode::Strict).is_err());
    }
}
