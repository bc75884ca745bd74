//! Test authorities minted with rcgen while the test runs: roots,
//! intermediates, leaves for a CSR's key, CRLs, and the `Authority` message
//! that describes them in a trust update. Also a [`CertSigner`] that signs
//! with whichever of them is current, so that tests can rotate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use time::OffsetDateTime;
use tokio::time::Instant;

use crate::ca_client::{CaClientError, CertSigner};
use crate::identity::SpiffeId;
use crate::pki::bundle::cert_pem;
use crate::pki::csr::validate_csr;
use crate::proto::meshid::ca::v1::{Authority, AuthorityState, TrustUpdate};

/// Serials unique across every test CA of the process.
static SERIAL: AtomicU64 = AtomicU64::new(0x1000);

/// A CA: its certificate, its key, and the chain above it (issuer first).
pub(crate) struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Certificates between it and its root, its issuer first.
    pub(crate) chain: Vec<Vec<u8>>,
    /// The id used in trust updates.
    pub(crate) id: String,
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "cluster.local");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)));
    params.not_before = OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = OffsetDateTime::now_utc() + time::Duration::days(30);
    params.key_identifier_method = KeyIdMethod::Sha256;
    params
}

impl TestCa {
    /// A self-signed root named `name`.
    pub(crate) fn root(name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let issuer = CertifiedIssuer::self_signed(ca_params(name), key).unwrap();
        // The id the CA gives an authority: its subject key identifier.
        let id = crate::pki::authority::authority_id(issuer.der()).unwrap();
        Self {
            issuer,
            chain: Vec::new(),
            id,
        }
    }

    /// An intermediate named `name`, signed by `self`.
    pub(crate) fn intermediate(&self, name: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut chain = vec![self.der()];
        chain.extend(self.chain.iter().cloned());
        let issuer = CertifiedIssuer::signed_by(ca_params(name), key, &self.issuer).unwrap();
        let id = crate::pki::authority::authority_id(issuer.der()).unwrap();
        Self { issuer, chain, id }
    }

    /// Its certificate, DER.
    pub(crate) fn der(&self) -> Vec<u8> {
        self.issuer.der().to_vec()
    }

    /// Its certificate, PEM.
    pub(crate) fn pem(&self) -> String {
        cert_pem(&self.der())
    }

    /// A workload leaf for `spki_der` naming `id`; returns the DER and the serial.
    pub(crate) fn leaf(&self, spki_der: &[u8], id: &SpiffeId, ttl: Duration) -> (Vec<u8>, u64) {
        let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_before = OffsetDateTime::now_utc() - time::Duration::minutes(1);
        params.not_after = OffsetDateTime::now_utc() + time::Duration::try_from(ttl).unwrap();
        let spki = rcgen::SubjectPublicKeyInfo::from_der(spki_der).unwrap();
        let cert = params.signed_by(&spki, &self.issuer).unwrap();
        (cert.der().to_vec(), serial)
    }

    /// A CRL listing `serials`, issued at `this_update`.
    pub(crate) fn crl(&self, serials: &[u64], this_update: OffsetDateTime) -> Vec<u8> {
        let params = CertificateRevocationListParams {
            this_update,
            next_update: this_update + time::Duration::hours(1),
            crl_number: SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from(*s),
                    revocation_time: this_update,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).unwrap().der().to_vec()
    }

    /// The root above it (itself for a root), DER.
    pub(crate) fn root_der(&self) -> Vec<u8> {
        self.chain.last().cloned().unwrap_or_else(|| self.der())
    }

    /// Its `Authority` message.
    pub(crate) fn authority(
        &self,
        state: AuthorityState,
        tainted: bool,
        crl: Vec<u8>,
    ) -> Authority {
        Authority {
            id: self.id.clone(),
            state: state as i32,
            tainted,
            certificate: self.der(),
            chain: self.chain.clone(),
            crl,
        }
    }
}

/// A trust update with `roots` and `authorities`.
pub(crate) fn update(version: u64, roots: &[&TestCa], authorities: Vec<Authority>) -> TrustUpdate {
    TrustUpdate {
        version,
        roots: roots.iter().map(|ca| ca.root_der()).collect(),
        authorities,
    }
}

/// Signs with the current one of its authorities; records when it was asked.
pub(crate) struct RotatingSigner {
    current: Mutex<std::sync::Arc<TestCa>>,
    /// Every authority it ever signed with, for the root bundle of answers.
    roots: Mutex<Vec<Vec<u8>>>,
    /// The (paused) instant of every signing call.
    pub(crate) calls: Mutex<Vec<Instant>>,
}

impl RotatingSigner {
    /// Signing with `ca`.
    pub(crate) fn new(ca: std::sync::Arc<TestCa>) -> Self {
        Self {
            roots: Mutex::new(vec![ca.root_der()]),
            current: Mutex::new(ca),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Signs with `ca` from now on.
    pub(crate) fn switch_to(&self, ca: std::sync::Arc<TestCa>) {
        let mut roots = self.roots.lock().unwrap();
        if !roots.contains(&ca.root_der()) {
            roots.push(ca.root_der());
        }
        *self.current.lock().unwrap() = ca;
    }

    /// Signing calls so far.
    pub(crate) fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    /// The calls after the first `skip`, grouped by the instant they came
    /// at: (instant, how many).
    pub(crate) fn batches_after(&self, skip: usize) -> Vec<(Instant, usize)> {
        let mut out: Vec<(Instant, usize)> = Vec::new();
        for at in self.calls.lock().unwrap().iter().skip(skip) {
            match out.last_mut() {
                Some((last, n)) if last == at => *n += 1,
                _ => out.push((*at, 1)),
            }
        }
        out
    }
}

impl CertSigner for RotatingSigner {
    fn sign<'a>(
        &'a self,
        csr: &'a str,
        identity: &'a SpiffeId,
        ttl: Duration,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<String>, CaClientError>> + Send + 'a>,
    > {
        Box::pin(async move {
            self.calls.lock().unwrap().push(Instant::now());
            let csr = validate_csr(csr.as_bytes(), identity).unwrap();
            let ca = self.current.lock().unwrap().clone();
            let (leaf, _) = ca.leaf(csr.public_key_der(), identity, ttl);
            let mut answer = vec![cert_pem(&leaf)];
            answer.extend(
                ca.chain
                    .iter()
                    .filter(|c| **c != ca.root_der())
                    .map(|c| cert_pem(c)),
            );
            if !ca.chain.is_empty() {
                answer.insert(1, ca.pem());
            }
            let roots: String = self
                .roots
                .lock()
                .unwrap()
                .iter()
                .map(|r| cert_pem(r))
                .collect();
            answer.push(roots);
            Ok(answer)
        })
    }
}

/// A running cache signing with a [`RotatingSigner`], for the pods of node-a
/// in a fresh [`TestEnv`].
pub(crate) struct CacheFixture {
    pub(crate) env: crate::test_helpers::TestEnv,
    pub(crate) cache: std::sync::Arc<crate::agent::cache::CertCache>,
    pub(crate) signer: std::sync::Arc<RotatingSigner>,
    pub(crate) metrics: crate::agent::metrics::AgentMetrics,
    pub(crate) shutdown: crate::shutdown::Shutdown,
}

/// The cache of [`CacheFixture`], signing with `ca`, running.
pub(crate) fn cache_fixture(
    ca: std::sync::Arc<TestCa>,
    cfg: crate::agent::cache::CacheConfig,
) -> CacheFixture {
    use crate::platform::local::{LocalConfig, LocalPlatform};
    let env = crate::test_helpers::TestEnv::new();
    let clock = crate::time::system_clock();
    let platform = LocalPlatform::open(LocalConfig::new(
        &env.manifests,
        env.issuer().verifier(),
        clock.clone(),
    ))
    .unwrap();
    let signer = std::sync::Arc::new(RotatingSigner::new(ca));
    let metrics =
        crate::agent::metrics::AgentMetrics::register(&prometheus::Registry::new()).unwrap();
    let cache = crate::agent::cache::CertCache::new(
        cfg,
        signer.clone(),
        platform,
        "node-a".into(),
        crate::identity::TrustDomain::default(),
        clock,
        metrics.clone(),
    );
    let shutdown = crate::shutdown::Shutdown::new();
    tokio::spawn(std::sync::Arc::clone(&cache).run(shutdown.clone()));
    CacheFixture {
        env,
        cache,
        signer,
        metrics,
        shutdown,
    }
}
