//! Certificates on disk, for workloads that read files: `cert-chain.pem`,
//! `key.pem` (0600) and `root-cert.pem` for one configured identity, each
//! written to a temporary name and renamed, rewritten on every rotation.
//!
//! Rule enforced: the key file is readable by the agent's user only, and a
//! reader never sees a half-written file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::agent::cache::{CertCache, Svid, TrustBundle};
use crate::identity::SpiffeId;
use crate::secret_file::{write_public, write_secret};
use crate::shutdown::Shutdown;

/// File names, as Istio's agent writes them.
pub const CHAIN_FILE: &str = "cert-chain.pem";
/// The private key (PKCS#8 PEM, 0600).
pub const KEY_FILE: &str = "key.pem";
/// The trust bundle.
pub const ROOT_FILE: &str = "root-cert.pem";

/// Writes the three files for `svid` and `bundle` into `dir`.
pub fn write_files(dir: &Path, svid: &Svid, bundle: &TrustBundle) -> std::io::Result<()> {
    // The directory of a private key: the owner's alone (issue 12).
    crate::secret_file::ensure_private_dir(dir)?;
    // Key first: a reader that sees a new chain can always find its key.
    write_secret(&dir.join(KEY_FILE), svid.key.secret_pkcs8_pem().as_bytes())?;
    write_public(&dir.join(CHAIN_FILE), svid.chain_pem.as_bytes())?;
    write_public(&dir.join(ROOT_FILE), bundle.pem.as_bytes())?;
    Ok(())
}

/// Keeps `dir` up to date with `identity`'s certificate until shutdown.
pub async fn keep_written(
    cache: Arc<CertCache>,
    identity: SpiffeId,
    dir: PathBuf,
    shutdown: Shutdown,
) {
    let subscription = cache.pin(&identity);
    let mut svids = subscription.receiver();
    let mut bundles = cache.bundle();
    loop {
        let svid = svids.borrow_and_update().clone();
        let bundle = bundles.borrow_and_update().clone();
        if let (Some(svid), Some(bundle)) = (svid, bundle) {
            match write_files(&dir, &svid, &bundle) {
                Ok(()) => {
                    tracing::info!(%identity, dir = %dir.display(), serial = %svid.serial_hex, "certificate files written")
                }
                Err(e) => {
                    tracing::error!(%identity, dir = %dir.display(), error = %e, "cannot write certificate files")
                }
            }
        }
        tokio::select! {
            _ = shutdown.triggered() => return,
            r = svids.changed() => if r.is_err() { return },
            r = bundles.changed() => if r.is_err() { return },
        }
    }
}
