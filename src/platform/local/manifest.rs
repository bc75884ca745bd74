//! Reading the manifest directory: which files count, their fingerprint, and
//! Kubernetes-style YAML documents decoded into pods, namespaces, service
//! accounts and PeerAuthentication policies.
//!
//! Owns the file format only; indexing is [`super::snapshot`]'s job. Rules
//! enforced: every error names the file and, when the YAML parser knows it,
//! the line; a Pod without `metadata.uid` is refused (tokens are bound to
//! it); policy `spec`s refuse unknown fields and modes; unknown kinds are
//! skipped; files and document counts are bounded.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Deserializer};

use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::{Namespace, PlatformError, Pod, DEFAULT_SERVICE_ACCOUNT};
use crate::policy::{PeerAuthentication, DEFAULT_NAMESPACE};

/// Manifest files larger than this are refused (a manifest directory is small).
pub(crate) const MAX_FILE_LEN: u64 = 4 * 1024 * 1024;
/// At most this many YAML documents per file.
pub(crate) const MAX_DOCUMENTS: usize = 10_000;

/// One manifest file as last seen: a change in any field means "re-read".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileStamp {
    pub(crate) path: PathBuf,
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// The cheap fingerprint of the directory: its manifest files, sorted by path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    pub(crate) files: Vec<FileStamp>,
    /// Every file was last modified at least [`SETTLE`] before the listing.
    /// File times are coarse (a jiffy, up to seconds on some filesystems), so
    /// a file modified more recently may change again without its stamp
    /// changing: an unchanged fingerprint is only trusted once settled.
    pub(crate) settled: bool,
}

impl Fingerprint {
    /// Whether `other` lists the same files with the same stamps, and this
    /// fingerprint was taken late enough for that to mean "same content".
    pub(crate) fn vouches_for(&self, other: &Fingerprint) -> bool {
        self.settled && self.files == other.files
    }
}

/// How old a file's modification time must be before its stamp is trusted.
pub(crate) const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether a file of this name is a manifest: `*.yaml` / `*.yml`, not hidden
/// (editors' and our own temporaries start with a dot).
pub(crate) fn is_manifest_file_name(name: &str) -> bool {
    !name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Lists `*.yaml` / `*.yml` regular files (symlinks followed, as in a mounted
/// ConfigMap; hidden files such as editors' and our own temporaries skipped).
pub(crate) fn fingerprint(dir: &Path) -> Result<Fingerprint, PlatformError> {
    // Rule: manifests decide who gets which identity and which mTLS mode, so
    // neither the directory nor a file in it may be writable by another local
    // user (issue 12: under umask 000 anyone could add a Pod and obtain
    // kube-system/admin from the agent).
    let dir_meta = fs::metadata(dir).map_err(|e| PlatformError::io(dir, e))?;
    crate::secret_file::check_trusted(dir, &dir_meta)
        .map_err(|reason| manifest_error(dir, None, format!("refused: {reason}")))?;
    let entries = fs::read_dir(dir).map_err(|e| PlatformError::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| PlatformError::io(dir, e))?;
        if !entry
            .file_name()
            .to_str()
            .is_some_and(is_manifest_file_name)
        {
            continue;
        }
        let path = entry.path();
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            // Deleted (or a dangling symlink) between listing and stat: not there.
            Err(e) if e.kind() == ErrorKind::NotFound => continue,
            Err(e) => return Err(PlatformError::io(&path, e)),
        };
        if !meta.is_file() {
            continue;
        }
        files.push(FileStamp {
            path,
            len: meta.len(),
            modified: meta.modified().ok(),
            inode: meta.ino(),
        });
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let now = SystemTime::now();
    let settled = files.iter().all(|f| {
        f.modified
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= SETTLE)
    });
    Ok(Fingerprint { files, settled })
}

/// Everything decoded from the files, each object with the file it came from.
#[derive(Debug, Default)]
pub(crate) struct Objects {
    pub(crate) pods: Vec<(PathBuf, Pod)>,
    pub(crate) namespaces: Vec<(PathBuf, Namespace)>,
    /// `(namespace, name)`.
    pub(crate) service_accounts: Vec<(PathBuf, (String, String))>,
    pub(crate) policies: Vec<(PathBuf, PeerAuthentication)>,
}

/// Reads and decodes every file of `fingerprint`.
pub(crate) fn read_all(fingerprint: &Fingerprint) -> Result<Objects, PlatformError> {
    let mut objects = Objects::default();
    for file in &fingerprint.files {
        let path = &file.path;
        let meta = fs::metadata(path).map_err(|e| PlatformError::io(path, e))?;
        crate::secret_file::check_trusted(path, &meta)
            .map_err(|reason| manifest_error(path, None, format!("refused: {reason}")))?;
        if meta.len() > MAX_FILE_LEN {
            return Err(manifest_error(
                path,
                None,
                format!("file is {} bytes, the limit is {MAX_FILE_LEN}", meta.len()),
            ));
        }
        let bytes = fs::read(path).map_err(|e| PlatformError::io(path, e))?;
        let text = String::from_utf8(bytes)
            .map_err(|e| manifest_error(path, None, format!("not UTF-8: {e}")))?;
        parse_file(path, &text, &mut objects)?;
    }
    Ok(objects)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DocKind {
    Pod,
    Namespace,
    ServiceAccount,
    PeerAuthentication,
    Skip,
}

/// Decodes every YAML document of one file into `out`.
///
/// Two passes over the same text: the first reads each document's `kind`, the
/// second decodes it as that type, straight from the parser, so errors carry
/// the absolute line. serde_yaml's document iterator repeats a syntax error
/// forever, so both passes stop at the first error.
pub(crate) fn parse_file(path: &Path, text: &str, out: &mut Objects) -> Result<(), PlatformError> {
    let mut kinds = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        if index >= MAX_DOCUMENTS {
            return Err(manifest_error(
                path,
                None,
                format!("more than {MAX_DOCUMENTS} documents"),
            ));
        }
        let meta = Option::<TypeMeta>::deserialize(document).map_err(|e| yaml_error(path, e))?;
        kinds.push(match meta {
            None => DocKind::Skip, // an empty document (`---` followed by nothing)
            Some(meta) => classify(path, index, meta)?,
        });
    }
    for (document, kind) in serde_yaml::Deserializer::from_str(text).zip(kinds) {
        match kind {
            DocKind::Skip => {}
            DocKind::Pod => {
                let manifest =
                    PodManifest::deserialize(document).map_err(|e| yaml_error(path, e))?;
                out.pods.push((path.to_owned(), manifest.into_pod(path)?));
            }
            DocKind::Namespace => {
                let m =
                    NamespaceManifest::deserialize(document).map_err(|e| yaml_error(path, e))?;
                check_names(path, "Namespace", &m.metadata.name, DEFAULT_SERVICE_ACCOUNT)?;
                let namespace = Namespace {
                    name: m.metadata.name,
                    labels: m.metadata.labels,
                };
                out.namespaces.push((path.to_owned(), namespace));
            }
            DocKind::ServiceAccount => {
                let m = ServiceAccountManifest::deserialize(document)
                    .map_err(|e| yaml_error(path, e))?;
                let namespace = m
                    .metadata
                    .namespace
                    .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
                check_names(path, "ServiceAccount", &namespace, &m.metadata.name)?;
                out.service_accounts
                    .push((path.to_owned(), (namespace, m.metadata.name)));
            }
            DocKind::PeerAuthentication => {
                let mut policy =
                    PeerAuthentication::deserialize(document).map_err(|e| yaml_error(path, e))?;
                let namespace = policy.namespace_or(DEFAULT_NAMESPACE).to_owned();
                check_names(
                    path,
                    "PeerAuthentication",
                    &namespace,
                    DEFAULT_SERVICE_ACCOUNT,
                )?;
                policy.metadata.namespace = Some(namespace);
                policy
                    .validate()
                    .map_err(|e| manifest_error(path, None, e.to_string()))?;
                out.policies.push((path.to_owned(), policy));
            }
        }
    }
    Ok(())
}

/// Which type a document decodes as. Known kinds must carry their apiVersion;
/// kinds we do not use are skipped (a directory may hold Deployments too).
fn classify(path: &Path, index: usize, meta: TypeMeta) -> Result<DocKind, PlatformError> {
    let Some(kind) = meta.kind else {
        return Err(manifest_error(
            path,
            None,
            format!("document {} has no kind", index + 1),
        ));
    };
    let api_version = meta.api_version.unwrap_or_default();
    let (want, doc_kind) = match kind.as_str() {
        "Pod" => ("v1", DocKind::Pod),
        "Namespace" => ("v1", DocKind::Namespace),
        "ServiceAccount" => ("v1", DocKind::ServiceAccount),
        // The policy type itself refuses versions Istio does not serve.
        "PeerAuthentication" => ("security.istio.io/v1beta1", DocKind::PeerAuthentication),
        _ => {
            tracing::debug!(file = %path.display(), kind = %kind, api_version = %api_version, "skipping a kind the local platform does not use");
            return Ok(DocKind::Skip);
        }
    };
    let ok = match doc_kind {
        DocKind::PeerAuthentication => api_version.starts_with("security.istio.io/"),
        _ => api_version == want,
    };
    if !ok {
        return Err(manifest_error(
            path,
            None,
            format!(
                "document {} is a {kind} with apiVersion {api_version:?}, expected {want:?}",
                index + 1
            ),
        ));
    }
    Ok(doc_kind)
}

/// Namespace and service-account names must make a valid SPIFFE ID.
fn check_names(
    path: &Path,
    what: &str,
    namespace: &str,
    service_account: &str,
) -> Result<(), PlatformError> {
    SpiffeId::for_service_account(&TrustDomain::default(), namespace, service_account)
        .map(|_| ())
        .map_err(|e| manifest_error(path, None, format!("{what}: {e}")))
}

fn manifest_error(path: &Path, line: Option<usize>, message: String) -> PlatformError {
    PlatformError::Manifest {
        file: path.to_owned(),
        line,
        message,
    }
}

fn yaml_error(path: &Path, e: serde_yaml::Error) -> PlatformError {
    manifest_error(path, e.location().map(|l| l.line()), e.to_string())
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TypeMeta {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct PodManifest {
    metadata: PodMeta,
    #[serde(default, deserialize_with = "null_as_default")]
    spec: PodSpec,
    #[serde(default, deserialize_with = "null_as_default")]
    status: PodStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    /// Required: a missing uid is reported by serde with its line.
    uid: String,
    #[serde(default, deserialize_with = "null_as_default")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    annotations: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "rfc3339_opt")]
    creation_timestamp: Option<time::OffsetDateTime>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    service_account_name: Option<String>,
    /// The deprecated alias of `serviceAccountName`, still honoured by Kubernetes.
    #[serde(default)]
    service_account: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pod_ip: Option<String>,
    #[serde(default, rename = "podIPs", deserialize_with = "null_as_default")]
    pod_ips: Vec<PodIp>,
}

#[derive(Deserialize)]
struct PodIp {
    ip: String,
}

impl PodManifest {
    fn into_pod(self, path: &Path) -> Result<Pod, PlatformError> {
        let meta = self.metadata;
        let namespace = meta
            .namespace
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let service_account = self
            .spec
            .service_account_name
            .or(self.spec.service_account)
            .filter(|sa| !sa.is_empty())
            .unwrap_or_else(|| DEFAULT_SERVICE_ACCOUNT.to_owned());
        let pod_ref = format!("Pod {namespace}/{}", meta.name);
        if meta.name.is_empty() {
            return Err(manifest_error(
                path,
                None,
                "a Pod has an empty metadata.name".into(),
            ));
        }
        if meta.uid.trim().is_empty() {
            return Err(manifest_error(
                path,
                None,
                format!("{pod_ref} has an empty metadata.uid"),
            ));
        }
        if self.spec.node_name.as_deref() == Some("") {
            return Err(manifest_error(
                path,
                None,
                format!("{pod_ref} has an empty spec.nodeName"),
            ));
        }
        check_names(path, &pod_ref, &namespace, &service_account)?;
        let pod_ips = pod_ips(&self.status).map_err(|bad| {
            manifest_error(
                path,
                None,
                format!("{pod_ref} has status.podIP(s) {bad:?}, which is not an IP address"),
            )
        })?;
        Ok(Pod {
            namespace,
            name: meta.name,
            uid: meta.uid,
            node_name: self.spec.node_name,
            service_account,
            labels: meta.labels,
            annotations: meta.annotations,
            phase: self.status.phase,
            creation_timestamp: meta.creation_timestamp,
            pod_ips,
        })
    }
}

/// `status.podIPs` (the list), else `status.podIP`, as Kubernetes sets
/// them; the first entry that is not an address is returned as the error.
fn pod_ips(status: &PodStatus) -> Result<Vec<std::net::IpAddr>, String> {
    let mut texts: Vec<&str> = status.pod_ips.iter().map(|p| p.ip.as_str()).collect();
    if let Some(ip) = status.pod_ip.as_deref().filter(|ip| !ip.is_empty()) {
        if !texts.contains(&ip) {
            texts.insert(0, ip);
        }
    }
    texts
        .into_iter()
        .map(|t| t.trim().parse().map_err(|_| t.to_owned()))
        .collect()
}

#[derive(Deserialize)]
struct NamespaceManifest {
    metadata: NamespaceMeta,
}

#[derive(Deserialize)]
struct NamespaceMeta {
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct ServiceAccountManifest {
    metadata: ServiceAccountMeta,
}

#[derive(Deserialize)]
struct ServiceAccountMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

fn rfc3339_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<time::OffsetDateTime>, D::Error> {
    use time::format_description::well_known::Rfc3339;
    Option::<String>::deserialize(d)?
        .map(|s| {
            time::OffsetDateTime::parse(&s, &Rfc3339).map_err(|e| {
                serde::de::Error::custom(format_args!("{s:?} is not an RFC 3339 time: {e}"))
            })
        })
        .transpose()
}
