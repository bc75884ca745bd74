//! The injector's serving certificate.
//!
//! From meshid's CA: a fresh P-256 key, a CSR for the injector's SPIFFE ID
//! plus its Service's DNS names (the API server checks the DNS name; the CA
//! grants it only where `--workload-dns-names` lists it), sent with the
//! injector's own service-account token and no impersonation; the answer is
//! checked like the agent checks its answers; renewed at half its life,
//! retried with backoff. The trust bundle of each answer is published for the
//! webhook's `caBundle`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::sign::CertifiedKey;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::sync::watch;

use crate::ca_client::{check_answer, CaClient, CaClientError, CertSigner};
use crate::identity::SpiffeId;
use crate::inject::server::CertSlot;
use crate::pki::bundle::parse_pem_certs;
use crate::pki::key::{csr_pem_with_dns, KeyAlgorithm, KeyError, PrivateKey};
use crate::shutdown::Shutdown;
use crate::time::{jitter, refresh_at, until, Backoff, SharedClock};

/// Why a serving certificate could not be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServingError {
    /// A file could not be read or holds no usable PEM.
    #[error("{flag} {path}: {message}")]
    File {
        /// `--tls-cert` or `--tls-key`.
        flag: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// The key could not be made or used.
    #[error("serving key: {0}")]
    Key(#[from] KeyError),
    /// rustls refused the key.
    #[error("serving key: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA did not issue one.
    #[error("{0}")]
    Ca(#[from] CaClientError),
}

/// A certificate chain and key from PEM files (`--tls-cert`, `--tls-key`).
pub fn from_files(cert: &Path, key: &Path) -> Result<CertifiedKey, ServingError> {
    let read = |flag, path: &Path| {
        std::fs::read_to_string(path).map_err(|e| ServingError::File {
            flag,
            path: path.display().to_string(),
            message: e.to_string(),
        })
    };
    let chain_pem = read("--tls-cert", cert)?;
    let chain = parse_pem_certs(&chain_pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ServingError::File {
            flag: "--tls-cert",
            path: cert.display().to_string(),
            message: "holds no PEM certificate".to_owned(),
        })?;
    let key_pem = read("--tls-key", key)?;
    let private = PrivateKey::from_pem(&key_pem).map_err(|e| ServingError::File {
        flag: "--tls-key",
        path: key.display().to_string(),
        message: e.to_string(),
    })?;
    let certified = certified_key(chain, &private)?;
    certified.keys_match().map_err(|_| ServingError::File {
        flag: "--tls-key",
        path: key.display().to_string(),
        message: "is not the key of the first certificate in --tls-cert".to_owned(),
    })?;
    Ok(certified)
}

fn certified_key(
    chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    key: &PrivateKey,
) -> Result<CertifiedKey, ServingError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.secret_pkcs8_der().to_vec()));
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&der)?;
    Ok(CertifiedKey::new(chain, signing_key))
}

/// What to ask the CA for.
#[derive(Debug, Clone)]
pub struct CaServing {
    /// The injector's own SPIFFE ID (its service account's).
    pub identity: SpiffeId,
    /// DNS names for the certificate (the webhook Service's).
    pub dns_names: Vec<String>,
    /// Lifetime asked for.
    pub ttl: Duration,
}

/// One certificate from the CA.
pub struct Issued {
    /// The chain and key, for rustls.
    pub key: CertifiedKey,
    /// The trust bundle of the answer (PEM roots).
    pub roots_pem: String,
    /// Validity.
    pub not_before: time::OffsetDateTime,
    /// Validity.
    pub not_after: time::OffsetDateTime,
}

/// Asks the CA once.
pub async fn issue(ca: &CaClient, what: &CaServing) -> Result<Issued, ServingError> {
    let key = PrivateKey::generate(KeyAlgorithm::EcdsaP256)?;
    let csr = csr_pem_with_dns(&key, &what.identity, &what.dns_names)?;
    let chain = ca.sign(&csr, &what.identity, what.ttl).await?;
    let checked = check_answer(&chain, &what.identity, &key.public_key_der())?;
    Ok(Issued {
        key: certified_key(checked.chain_der, &key)?,
        roots_pem: checked.roots_pem,
        not_before: checked.not_before,
        not_after: checked.not_after,
    })
}

/// Keeps `slot` filled from the CA until shutdown, renewing at half the
/// lifetime; each answer's roots go to `bundle`.
pub async fn keep_issued(
    ca: CaClient,
    what: CaServing,
    slot: Arc<CertSlot>,
    bundle: watch::Sender<Option<String>>,
    clock: SharedClock,
    shutdown: Shutdown,
) {
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    let mut failures = 0u32;
    loop {
        let wait = match issue(&ca, &what).await {
            Ok(issued) => {
                failures = 0;
                tracing::info!(
                    identity = %what.identity,
                    dns_names = ?what.dns_names,
                    not_after = %issued.not_after,
                    "injector serving certificate issued"
                );
                slot.set(issued.key);
                bundle.send_if_modified(|b| {
                    let changed = b.as_deref() != Some(issued.roots_pem.as_str());
                    *b = Some(issued.roots_pem.clone());
                    changed
                });
                let at = refresh_at(issued.not_before, issued.not_after, 0.5, jitter() * 0.1);
                until(at, clock.now())
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %e, identity = %what.identity, "injector serving certificate not issued; retrying");
                backoff.jittered(failures)
            }
        };
        tokio::select! {
            () = shutdown.triggered() => return,
            () = tokio::time::sleep(wait) => {}
        }
    }
}
