//! `meshid mtls set-mode` on the local platform: the namespace-wide
//! PeerAuthentication of a namespace, written into the manifest directory.
//! The local twin of [`crate::platform::kube::policy_write`].
//!
//! Owns the write of a namespace's policy file. Finding the policy in effect
//! is `locate`'s lenient look (so that a policy the platform refuses can be
//! repaired in place); the check of what was written is the local platform's
//! own loading ([`Manifests::read`]).
//!
//! Rules enforced (the same as on Kubernetes): one namespace-wide policy per
//! namespace — the one in effect (oldest, then by name, as Istio picks it) is
//! updated in place, every other field kept, never shadowed by a second; a
//! file that holds other objects too is not rewritten; a new policy is named
//! [`NAMESPACE_POLICY_NAME`] in `peerauthentication-<namespace>.yaml`, and a
//! file of that name holding something else is not overwritten. A write is
//! atomic and is undone when the directory no longer loads afterwards.

mod locate;

use std::path::{Path, PathBuf};

use serde_yaml::{Mapping, Value};
use time::OffsetDateTime;

use self::locate::{locate, FoundPolicy};
use super::Manifests;
use crate::platform::{PlatformError, NAMESPACE_POLICY_NAME};
use crate::policy::{MtlsMode, PeerAuthentication, PolicyRef};

/// Why a namespace's mode was not written. Messages name the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyWriteError {
    /// `--manifests` names no directory.
    #[error("the manifest directory {} does not exist", dir.display())]
    NoDirectory {
        /// The directory.
        dir: PathBuf,
    },
    /// The directory cannot be listed.
    #[error("cannot read the manifest directory {}", dir.display())]
    ListDir {
        /// The directory.
        dir: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An entry of the directory cannot be read while listing.
    #[error("reading {}", dir.display())]
    ReadDir {
        /// The directory.
        dir: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be read.
    #[error("cannot read {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The policy in effect shares its file with other objects.
    #[error(
        "namespace {namespace} already has the namespace-wide PeerAuthentication {policy} in {}, \
         which holds other objects too: set spec.mtls.mode there, or move the policy to a file of its own",
        file.display()
    )]
    SharedFile {
        /// The namespace.
        namespace: String,
        /// The policy in effect.
        policy: PolicyRef,
        /// Its file.
        file: PathBuf,
    },
    /// The policy in effect is not shaped so that `spec.mtls.mode` can be set.
    #[error("cannot update {policy} in {}: {what} is not a mapping", file.display())]
    NotAMapping {
        /// The policy in effect.
        policy: PolicyRef,
        /// Its file.
        file: PathBuf,
        /// `the document`, `spec` or `mtls`.
        what: String,
    },
    /// The file a new policy would go to holds something else.
    #[error(
        "{} exists and holds something other than namespace {namespace}'s policy; refusing to overwrite it",
        path.display()
    )]
    Occupied {
        /// The namespace.
        namespace: String,
        /// The file.
        path: PathBuf,
    },
    /// The policy cannot be encoded as YAML.
    #[error(transparent)]
    Encode(#[from] serde_yaml::Error),
    /// The directory does not load with the change, which was undone.
    #[error(
        "the manifests in {} do not load with this change, so {} was left as it was",
        dir.display(),
        path.display()
    )]
    DoesNotLoad {
        /// The directory.
        dir: PathBuf,
        /// The file written and restored.
        path: PathBuf,
        /// What the local platform says.
        #[source]
        problem: PlatformError,
    },
    /// The directory does not load with the change, and undoing it failed.
    #[error(
        "the manifests in {} do not load with this change ({problem}), and restoring {} failed",
        dir.display(),
        path.display()
    )]
    RestoreFailed {
        /// The directory.
        dir: PathBuf,
        /// The file written.
        path: PathBuf,
        /// What the local platform says.
        problem: PlatformError,
        /// Why restoring failed.
        #[source]
        source: std::io::Error,
    },
}

/// Sets the mTLS mode of `namespace` (for the root namespace: of the mesh) in
/// the manifest directory `dir`, as described in the module docs; `now` is the
/// creation time of a new policy. Returns the file written.
pub fn set_namespace_mode(
    dir: &Path,
    namespace: &str,
    mode: MtlsMode,
    now: OffsetDateTime,
) -> Result<PathBuf, PolicyWriteError> {
    if !dir.is_dir() {
        return Err(PolicyWriteError::NoDirectory {
            dir: dir.to_owned(),
        });
    }
    let found = locate(dir)?;
    let mut existing: Vec<&FoundPolicy> = found
        .policies
        .iter()
        .filter(|p| p.reference.namespace == namespace)
        .collect();
    existing.sort_by(|a, b| a.reference.precedence(&b.reference));
    let (path, yaml) = match existing.first() {
        // Update the policy in effect, where it is, so that no second one shadows it.
        Some(current) => {
            if !current.alone_in_file {
                return Err(PolicyWriteError::SharedFile {
                    namespace: namespace.to_owned(),
                    policy: current.reference.clone(),
                    file: current.file.clone(),
                });
            }
            let document = with_mode(current.document.clone(), mode).map_err(|what| {
                PolicyWriteError::NotAMapping {
                    policy: current.reference.clone(),
                    file: current.file.clone(),
                    what,
                }
            })?;
            (current.file.clone(), serde_yaml::to_string(&document)?)
        }
        None => {
            let path = dir.join(format!("peerauthentication-{namespace}.yaml"));
            match found.documents_in(&path) {
                None | Some(Some(0)) => {}
                Some(_) => {
                    return Err(PolicyWriteError::Occupied {
                        namespace: namespace.to_owned(),
                        path,
                    })
                }
            }
            let mut policy =
                PeerAuthentication::namespace_wide(namespace, NAMESPACE_POLICY_NAME, mode);
            policy.metadata.creation_timestamp = Some(now.replace_nanosecond(0).unwrap_or(now));
            (path, serde_yaml::to_string(&policy)?)
        }
    };
    write_checked(dir, &path, yaml.as_bytes())?;
    Ok(path)
}

/// `document` with `spec.mtls.mode` set, every other field kept; `Err` names
/// the part that is not a mapping.
fn with_mode(mut document: Value, mode: MtlsMode) -> Result<Value, String> {
    fn child<'a>(map: &'a mut Mapping, key: &str) -> Result<&'a mut Mapping, String> {
        let slot = map.entry(Value::from(key)).or_insert(Value::Null);
        if slot.is_null() {
            *slot = Value::Mapping(Mapping::new());
        }
        slot.as_mapping_mut().ok_or_else(|| key.to_owned())
    }
    let root = document
        .as_mapping_mut()
        .ok_or_else(|| "the document".to_owned())?;
    let mtls = child(child(root, "spec")?, "mtls")?;
    mtls.insert(Value::from("mode"), Value::from(mode.as_str()));
    Ok(document)
}

/// Writes `path` atomically, then checks that the whole directory still
/// loads; if not, puts the previous content back and fails with the reason.
fn write_checked(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), PolicyWriteError> {
    let previous = match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(PolicyWriteError::Read {
                path: path.to_owned(),
                source,
            })
        }
    };
    crate::secret_file::write_public(path, bytes).map_err(|source| PolicyWriteError::Write {
        path: path.to_owned(),
        source,
    })?;
    let Err(problem) = Manifests::read(dir) else {
        return Ok(());
    };
    let restored = match &previous {
        Some(old) => crate::secret_file::write_public(path, old),
        None => std::fs::remove_file(path),
    };
    Err(match restored {
        Ok(()) => PolicyWriteError::DoesNotLoad {
            dir: dir.to_owned(),
            path: path.to_owned(),
            problem,
        },
        Err(source) => PolicyWriteError::RestoreFailed {
            dir: dir.to_owned(),
            path: path.to_owned(),
            problem,
            source,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            with_mode(Value::from("x"), MtlsMode::Strict).unwrap_err(),
            "the document"
        );
        let flat: Value = serde_yaml::from_str("kind: PeerAuthentication\nspec: 1\n").unwrap();
        assert_eq!(with_mode(flat, MtlsMode::Strict).unwrap_err(), "spec");
    }
}
