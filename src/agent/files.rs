//! Certificates on disk, for workloads that read files: `cert-chain.pem`,
//! `key.pem` (0600) and `root-cert.pem` for one configured identity, and
//! `crl.pem` when the CA publishes CRLs, each written to a temporary name and
//! renamed, rewritten on every rotation and every change of the bundle.
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
/// The authorities' CRLs (`X509 CRL` PEM blocks); absent when there is none.
pub const CRL_FILE: &str = "crl.pem";

/// Writes the files for `svid` and `bundle` into `dir` (`crl.pem` only when
/// the bundle has CRLs; a stale one is removed when it has none).
pub fn write_files(dir: &Path, svid: &Svid, bundle: &TrustBundle) -> std::io::Result<()> {
    // The directory of a private key: the owner's alone (issue 12).
    crate::secret_file::ensure_private_dir(dir)?;
    // Key first: a reader that sees a new chain can always find its key.
    write_secret(&dir.join(KEY_FILE), svid.key.secret_pkcs8_pem().as_bytes())?;
    write_public(&dir.join(CHAIN_FILE), svid.chain_pem.as_bytes())?;
    write_public(&dir.join(ROOT_FILE), bundle.pem.as_bytes())?;
    match bundle.crl_pem() {
        Some(pem) => write_public(&dir.join(CRL_FILE), pem.as_bytes())?,
        None => match std::fs::remove_file(dir.join(CRL_FILE)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        },
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::key::{KeyAlgorithm, PrivateKey};
    use rustls_pki_types::CertificateDer;

    fn svid() -> Svid {
        Svid {
            identity: SpiffeId::parse("spiffe://cluster.local/ns/shop/sa/cart").unwrap(),
            chain_der: vec![CertificateDer::from(b"leaf".to_vec())],
            chain_pem: "chain\n".into(),
            key: PrivateKey::generate(KeyAlgorithm::EcdsaP256).unwrap(),
            not_before: time::OffsetDateTime::UNIX_EPOCH,
            not_after: time::OffsetDateTime::UNIX_EPOCH,
            serial_hex: "01".into(),
        }
    }

    #[test]
    fn crl_pem_is_written_with_crls_and_removed_without() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        let mut bundle = TrustBundle::from_roots(Vec::new(), "roots\n".into());
        write_files(&out, &svid(), &bundle).unwrap();
        assert!(!out.join(CRL_FILE).exists());
        bundle.crls_der = vec![b"crl-1".to_vec()];
        write_files(&out, &svid(), &bundle).unwrap();
        let pem = std::fs::read_to_string(out.join(CRL_FILE)).unwrap();
        let ders: Vec<Vec<u8>> = crate::pki::pem::parse_blocks(&pem)
            .unwrap()
            .into_iter()
            .map(|b| b.der.to_vec())
            .collect();
        assert_eq!(ders, bundle.crls_der);
        assert!(pem.starts_with("-----BEGIN X509 CRL-----"));
        bundle.crls_der.clear();
        write_files(&out, &svid(), &bundle).unwrap();
        assert!(!out.join(CRL_FILE).exists(), "a stale CRL file is removed");
    }
}
