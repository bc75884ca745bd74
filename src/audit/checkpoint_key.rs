//! The key that signs the audit log's checkpoints: an Ed25519 key in the
//! CA's data directory (`audit-checkpoint-key.pk8`, PKCS#8, mode 0600, kept
//! like the CA key), and its verifier key beside it
//! (`audit-checkpoint.vkey`, public) for `meshid audit checkpoint-key` and
//! `audit verify`.
//!
//! Rule enforced: the private key is created 0600, tightened to 0600 (with a
//! warning) when looser, and refused when anyone but its owner or root could
//! have written it (the same checks as the CA key's).

use std::path::{Path, PathBuf};

use crate::audit::tlog::note::{NoteSigner, NoteVerifier};

/// The private key's file in the data directory.
pub const KEY_FILE: &str = "audit-checkpoint-key.pk8";

/// The verifier key's file in the data directory.
pub const VERIFIER_FILE: &str = "audit-checkpoint.vkey";

/// What went wrong with the checkpoint key.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointKeyError {
    /// Reading or writing a key file failed.
    #[error("audit checkpoint key {}: {context}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What we were doing.
        context: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The key file is unsafe or not a key.
    #[error("audit checkpoint key {}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The log's name: its checkpoints' origin line and its key's name.
pub fn origin(trust_domain: &str) -> String {
    format!("{trust_domain}/meshid-audit")
}

/// The signer of `data_dir`, created on first use; writes its verifier key.
pub fn load_or_create(data_dir: &Path, origin: &str) -> Result<NoteSigner, CheckpointKeyError> {
    load_or_create_at(&data_dir.join(KEY_FILE), data_dir, origin)
}

/// The signer whose PKCS#8 key is at `path` (`--audit-checkpoint-key`, shared
/// by replicas), created there on first use; writes its verifier key in
/// `data_dir`.
pub fn load_or_create_at(
    path: &Path,
    data_dir: &Path,
    origin: &str,
) -> Result<NoteSigner, CheckpointKeyError> {
    let path = path.to_owned();
    let io = |context| {
        let path = path.clone();
        move |source| CheckpointKeyError::Io {
            path,
            context,
            source,
        }
    };
    let invalid = |reason: String| CheckpointKeyError::Invalid {
        path: path.clone(),
        reason,
    };
    let pkcs8 = match std::fs::metadata(&path) {
        Ok(meta) => {
            crate::secret_file::check_trusted(&path, &meta).map_err(invalid)?;
            crate::secret_file::tighten(&path, &meta, 0o600).map_err(io("tightening to 0600"))?;
            zeroize::Zeroizing::new(std::fs::read(&path).map_err(io("reading"))?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let pkcs8 = zeroize::Zeroizing::new(
                NoteSigner::generate_pkcs8().map_err(|e| invalid(e.to_string()))?,
            );
            crate::secret_file::write_secret(&path, &pkcs8).map_err(io("creating"))?;
            pkcs8
        }
        Err(e) => return Err(io("reading")(e)),
    };
    let signer = NoteSigner::from_pkcs8(origin, &pkcs8).map_err(|e| invalid(e.to_string()))?;
    write_verifier(data_dir, &signer)?;
    Ok(signer)
}

/// Writes `signer`'s verifier key in `data_dir` (public), for
/// `meshid audit checkpoint-key` and `audit verify`.
pub fn write_verifier(data_dir: &Path, signer: &NoteSigner) -> Result<(), CheckpointKeyError> {
    let vkey = data_dir.join(VERIFIER_FILE);
    crate::secret_file::write_public(&vkey, format!("{}\n", signer.verifier_key()).as_bytes())
        .map_err(|source| CheckpointKeyError::Io {
            path: vkey,
            context: "writing the verifier key",
            source,
        })
}

/// The verifier key written by the CA in `data_dir`.
pub fn read_verifier(data_dir: &Path) -> Result<NoteVerifier, CheckpointKeyError> {
    let path = data_dir.join(VERIFIER_FILE);
    let text = std::fs::read_to_string(&path).map_err(|source| CheckpointKeyError::Io {
        path: path.clone(),
        context: "reading (the CA writes it at start)",
        source,
    })?;
    NoteVerifier::parse(text.trim()).map_err(|e| CheckpointKeyError::Invalid {
        path,
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_0600_and_its_verifier_key_written() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path(), "cluster.local/meshid-audit").unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = load_or_create(dir.path(), "cluster.local/meshid-audit").unwrap();
        assert_eq!(first.verifier_key(), again.verifier_key());
        let verifier = read_verifier(dir.path()).unwrap();
        assert_eq!(verifier.verifier_key(), first.verifier_key());
        assert!(first
            .verifier_key()
            .starts_with("cluster.local/meshid-audit+"));
    }

    #[test]
    fn a_key_readable_by_others_is_tightened_and_one_writable_by_others_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), "td/meshid-audit").unwrap();
        let key = dir.path().join(KEY_FILE);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(dir.path(), "td/meshid-audit").unwrap();
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = load_or_create(dir.path(), "td/meshid-audit").unwrap_err();
        assert!(err.to_string().contains("writable"), "{err}");
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        crate::secret_file::write_secret(&dir.path().join(KEY_FILE), b"not a key").unwrap();
        let err = load_or_create(dir.path(), "td/meshid-audit").unwrap_err();
        assert!(err.to_string().contains(KEY_FILE), "{err}");
    }
}
