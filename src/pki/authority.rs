//! The signing CA: a self-signed root made on first start, or a plug-in CA
//! from files, and the one function that signs leaves. The same checks load
//! either from a directory or from named entries in memory ([`MemoryFiles`],
//! e.g. the data of a Kubernetes Secret), so no key need touch the disk.
//!
//! Owns the CA key and the certificates above it. Rules enforced:
//! - the CA key is written 0600 (temporary name, then rename); a half-written
//!   pair (key without certificate or the reverse) stops start-up instead of
//!   being silently replaced by a new root;
//! - every plug-in file is checked at start-up, each failure naming the file
//!   (or the Secret key) and the rule (see [`Authority::load_plugin`]);
//! - a root generated in memory is handed out only as [`SelfSignedPem`], whose
//!   key zeroizes and never prints;
//! - every signed leaf is re-parsed and checked ([`super::validate`]) before it
//!   is returned; a failure there is an internal error and no certificate.

use std::fmt;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use super::bundle;
use super::csr::{classify_spki, hex, sha256_hex};
use super::key::{KeyAlgorithm, PrivateKey};
use super::template::{self, LeafRequest};
use super::validate::{self, ValidateError};
use crate::identity::{SpiffeId, TrustDomain};
use crate::time::Clock;

mod error;
mod facts;
mod plugin;
mod source;

pub use error::AuthorityError;
pub use source::{MemoryFiles, Origin};

use source::Files;

use facts::CertFacts;

/// File name of the CA key, in the data directory and in Istio's `cacerts`.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// File name of the CA certificate, in the data directory and in Istio's `cacerts`.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// What a self-signed root's store must hold.
const SELF_SIGNED_LAYOUT: &str = "self-signed root: ca-cert.pem and ca-key.pem are required";
/// Validity of a self-signed root.
pub const ROOT_VALIDITY: Duration = Duration::days(3650);
/// Default clock-skew allowance: how far notBefore is backdated.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::seconds(60);

/// How the authority is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityConfig {
    /// The trust domain; the self-signed root's subject is `O=<trust domain>`.
    pub trust_domain: TrustDomain,
    /// Key type of a newly generated root (an existing key is used as it is).
    pub key_algorithm: KeyAlgorithm,
    /// How far notBefore is backdated (capped at a tenth of each leaf's TTL),
    /// so that verifiers whose clock lags a little accept new certificates.
    pub clock_skew: Duration,
    /// Lifetime of a self-signed root made here (the first one too).
    pub root_validity: Duration,
}

impl Default for AuthorityConfig {
    fn default() -> Self {
        Self {
            trust_domain: TrustDomain::default(),
            key_algorithm: KeyAlgorithm::default(),
            clock_skew: DEFAULT_CLOCK_SKEW,
            root_validity: ROOT_VALIDITY,
        }
    }
}

/// A certificate just issued and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub pem: String,
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// Serial number, lowercase hex (for the audit record).
    pub serial_hex: String,
    /// notBefore as written in the certificate (whole seconds).
    pub not_before: OffsetDateTime,
    /// notAfter as written in the certificate (whole seconds).
    pub not_after: OffsetDateTime,
    /// Lowercase hex SHA-256 of the certificate's SubjectPublicKeyInfo DER.
    pub public_key_sha256_hex: String,
}

/// A self-signed root generated in memory, PEM, for the caller to store
/// (e.g. in a Kubernetes Secret). The key zeroizes on drop and never prints.
pub struct SelfSignedPem {
    /// The root's private key, PKCS#8 `PRIVATE KEY` PEM.
    pub key_pem: Zeroizing<String>,
    /// The root certificate, PEM.
    pub cert_pem: String,
}

impl fmt::Debug for SelfSignedPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSignedPem")
            .field("key_pem", &"[redacted]")
            .field("cert_pem", &self.cert_pem)
            .finish()
    }
}

/// The signing certificate and its key.
struct Signer {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// The key again, PKCS#8 PEM, for [`Authority::to_pem`] (the CA's
    /// authority store keeps every authority it may sign with).
    key_pem: Zeroizing<String>,
    origin: Origin,
    der: CertificateDer<'static>,
    subject_raw: Vec<u8>,
    spki_der: Vec<u8>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// Lowercase hex of the SubjectKeyIdentifier (see [`authority_id`]).
    id: String,
}

/// An authority as PEM, to store and load back through
/// [`Authority::load_plugin_files`] (Istio `cacerts` names). The key
/// zeroizes on drop and never prints.
pub struct AuthorityPem {
    /// The signing key, PKCS#8 PEM.
    pub key_pem: Zeroizing<String>,
    /// The signing certificate, PEM.
    pub cert_pem: String,
    /// The certificates between it and its root, issuer first, PEM (empty for a root).
    pub chain_pem: String,
    /// The roots, PEM.
    pub roots_pem: String,
}

impl fmt::Debug for AuthorityPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorityPem")
            .field("key_pem", &"[redacted]")
            .field("cert_pem", &self.cert_pem)
            .finish_non_exhaustive()
    }
}

impl AuthorityPem {
    /// The same PEM as in-memory files in Istio's `cacerts` layout, for
    /// [`Authority::load_plugin_files`]; `label` names them in errors.
    pub fn to_files(&self, label: &str) -> MemoryFiles {
        let mut files = MemoryFiles::new(label);
        files.insert(CA_KEY_FILE, self.key_pem.as_bytes().to_vec());
        files.insert(CA_CERT_FILE, self.cert_pem.as_bytes().to_vec());
        files.insert("cert-chain.pem", self.chain_pem.as_bytes().to_vec());
        files.insert("root-cert.pem", self.roots_pem.as_bytes().to_vec());
        files
    }
}

/// An entry of a certificate revocation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlEntry {
    /// The certificate's serial, big-endian bytes.
    pub serial: Vec<u8>,
    /// When it was revoked.
    pub revoked_at: OffsetDateTime,
    /// RFC 5280 reason code (`None`: unspecified, left out).
    pub reason: Option<rcgen::RevocationReason>,
}

/// An authority's id: the lowercase hex of its certificate's
/// SubjectKeyIdentifier or, when it has none, of the first 20 bytes of the
/// SHA-256 of its subjectPublicKey (RFC 7093 method 1's length).
pub fn authority_id(cert_der: &[u8]) -> Option<String> {
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert_der).ok()?;
    let ski = cert
        .extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(ki) => Some(ki.0.to_vec()),
            _ => None,
        });
    Some(match ski {
        Some(ski) => hex(&ski),
        None => {
            let digest = ring::digest::digest(
                &ring::digest::SHA256,
                &cert.public_key().subject_public_key.data,
            );
            hex(&digest.as_ref()[..20])
        }
    })
}

/// A loaded CA, ready to sign. Cheap to share behind an `Arc`.
pub struct Authority {
    signer: Signer,
    /// Between leaf and root, leaf's issuer first; empty when the signer is the root.
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    root_not_after: OffsetDateTime,
    clock_skew: Duration,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key: only where the CA came from and its shape.
        f.debug_struct("Authority")
            .field("signer", &self.signer.origin)
            .field("signer_not_after", &self.signer.not_after)
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads the self-signed root from `data_dir` (`ca-key.pem`, `ca-cert.pem`),
    /// or creates it on first start: `cfg.key_algorithm`, 10 years, subject
    /// `O=<trust domain>`, CA:TRUE, KeyUsage keyCertSign + cRLSign only.
    pub fn load_or_create_self_signed(
        data_dir: &Path,
        cfg: &AuthorityConfig,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        Self::load_or_create_self_signed_for(data_dir, cfg, cfg.root_validity, clock)
    }

    /// [`Authority::load_or_create_self_signed`], a created root valid for `validity`.
    pub fn load_or_create_self_signed_for(
        data_dir: &Path,
        cfg: &AuthorityConfig,
        validity: Duration,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        let key_path = data_dir.join(CA_KEY_FILE);
        let cert_path = data_dir.join(CA_CERT_FILE);
        match (key_path.exists(), cert_path.exists()) {
            (true, true) => Self::load_self_signed(Files::Dir(data_dir), cfg, clock),
            (false, false) => {
                Self::create_self_signed(data_dir, &key_path, &cert_path, cfg, validity, clock)
            }
            (true, false) => Err(AuthorityError::HalfWritten {
                present: key_path,
                missing: cert_path,
            }),
            (false, true) => Err(AuthorityError::HalfWritten {
                present: cert_path,
                missing: key_path,
            }),
        }
    }

    /// Loads a plug-in CA from `dir`: Istio `cacerts` names (`ca-cert.pem`,
    /// `ca-key.pem`, `cert-chain.pem`, `root-cert.pem`) or cert-manager names
    /// (`tls.crt` = signing certificate then its chain, `tls.key`, `ca.crt` =
    /// roots). Checks that the key matches the certificate; that it is a CA
    /// with keyCertSign; that it chains signature by signature to a root in the
    /// roots file (which may hold several); that the roots are self-signed CAs;
    /// that nothing is expired or not yet valid. Each failure names the file.
    pub fn load_plugin(
        dir: &Path,
        cfg: &AuthorityConfig,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        plugin::load(Files::Dir(dir), cfg, clock)
    }

    /// [`Authority::load_plugin`] from in-memory files (e.g. the data of
    /// Secret `cacerts`): the same layouts and checks, each failure naming
    /// the entry (`Secret meshid-system/cacerts key ca-key.pem`).
    pub fn load_plugin_files(
        files: &MemoryFiles,
        cfg: &AuthorityConfig,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        plugin::load(Files::Memory(files), cfg, clock)
    }

    /// Loads a self-signed root from in-memory files `ca-key.pem` and
    /// `ca-cert.pem` (e.g. the data of Secret `istio-ca-secret`), with the
    /// checks of [`Authority::load_or_create_self_signed`].
    pub fn from_self_signed_files(
        files: &MemoryFiles,
        cfg: &AuthorityConfig,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        Self::load_self_signed(Files::Memory(files), cfg, clock)
    }

    /// Generates a self-signed root in memory (the profile of
    /// [`Authority::load_or_create_self_signed`]) and returns it with its PEM
    /// for the caller to store; `label` names the store in errors (e.g.
    /// `Secret meshid-system/istio-ca-secret`). Nothing is written to disk.
    pub fn create_self_signed_pem(
        label: &str,
        cfg: &AuthorityConfig,
        clock: &dyn Clock,
    ) -> Result<(Self, SelfSignedPem), AuthorityError> {
        let (key, cert) = generate_root(cfg, clock)?;
        let pem = SelfSignedPem {
            key_pem: key.secret_pkcs8_pem(),
            cert_pem: cert.pem(),
        };
        drop(key);
        // Loaded back through the same checks as a stored root: what the
        // caller stores is exactly what the next replica will load.
        let mut files = MemoryFiles::new(label);
        files.insert(CA_KEY_FILE, pem.key_pem.as_bytes().to_vec());
        files.insert(CA_CERT_FILE, pem.cert_pem.as_bytes().to_vec());
        let authority = Self::from_self_signed_files(&files, cfg, clock)?;
        Ok((authority, pem))
    }

    fn create_self_signed(
        data_dir: &Path,
        key_path: &Path,
        cert_path: &Path,
        cfg: &AuthorityConfig,
        validity: Duration,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        let (key, cert) = generate_root_with(cfg, validity, None, clock)?;
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| AuthorityError::Write { path, source }
        };
        crate::secret_file::ensure_private_dir(data_dir).map_err(write_err(data_dir))?;
        // Key first: a crash in between leaves a key without a certificate,
        // which the next start reports instead of overwriting.
        crate::secret_file::write_secret(key_path, key.secret_pkcs8_pem().as_bytes())
            .map_err(write_err(key_path))?;
        crate::secret_file::write_public(cert_path, cert.pem().as_bytes())
            .map_err(write_err(cert_path))?;
        drop(key);
        Self::load_self_signed(Files::Dir(data_dir), cfg, clock)
    }

    fn load_self_signed(
        files: Files<'_>,
        cfg: &AuthorityConfig,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        for name in [CA_KEY_FILE, CA_CERT_FILE] {
            if !files.has(name) {
                return Err(AuthorityError::MissingFile {
                    path: files.origin(name),
                    layout: SELF_SIGNED_LAYOUT,
                });
            }
        }
        let (key_origin, cert_origin) = (files.origin(CA_KEY_FILE), files.origin(CA_CERT_FILE));
        let key = files.read_key(CA_KEY_FILE)?;
        let mut certs = files.read_certs(CA_CERT_FILE)?;
        if certs.len() != 1 {
            return Err(AuthorityError::Certificate {
                path: cert_origin,
                reason: format!(
                    "holds {} certificates, expected exactly one (the root)",
                    certs.len()
                ),
            });
        }
        let root = CertFacts::parse(certs.remove(0), &cert_origin)?;
        if !root.has_public_key(&key.public_key_der()) {
            return Err(AuthorityError::KeyMismatch {
                key: key_origin,
                cert: cert_origin,
            });
        }
        root.check_can_sign(true)?;
        root.check_valid_at(clock.now())?;
        root.check_self_signed()?;
        Self::assemble(
            key,
            &key_origin,
            root.clone(),
            Vec::new(),
            vec![root],
            cfg,
            clock,
        )
    }

    /// Builds the authority from checked parts, then signs and checks one probe
    /// leaf: rcgen re-encodes the issuer name from the parsed certificate, and a
    /// name it cannot reproduce byte for byte (e.g. two OU attributes) must stop
    /// start-up rather than produce leaves that do not chain.
    fn assemble(
        key: PrivateKey,
        key_origin: &Origin,
        signing: CertFacts,
        chain: Vec<CertificateDer<'static>>,
        roots: Vec<CertFacts>,
        cfg: &AuthorityConfig,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        let key_pair = key.to_key_pair().map_err(|source| AuthorityError::Key {
            path: key_origin.clone(),
            source,
        })?;
        let key_pem = key.secret_pkcs8_pem();
        let id = authority_id(&signing.der).ok_or_else(|| AuthorityError::Unusable {
            path: signing.path.clone(),
            reason: "its certificate does not parse".to_owned(),
        })?;
        let issuer = rcgen::Issuer::from_ca_cert_der(&signing.der, key_pair).map_err(|e| AuthorityError::Unusable {
            path: signing.path.clone(),
            reason: format!("its subject name cannot be re-encoded ({e}); multi-valued RDNs are not supported"),
        })?;
        let root_not_after = roots
            .iter()
            .map(|r| r.not_after)
            .min()
            .unwrap_or(signing.not_after);
        let authority = Self {
            signer: Signer {
                issuer,
                key_pem,
                origin: signing.path.clone(),
                der: signing.der.clone(),
                subject_raw: signing.subject_raw.clone(),
                spki_der: signing.spki_raw.clone(),
                not_before: signing.not_before,
                not_after: signing.not_after,
                id,
            },
            chain,
            roots: roots.into_iter().map(|r| r.der).collect(),
            root_not_after,
            clock_skew: cfg.clock_skew,
        };
        let probe_id = SpiffeId::parse(&cfg.trust_domain.id_string()).map_err(|e| {
            AuthorityError::Unusable {
                path: signing.path.clone(),
                reason: e.to_string(),
            }
        })?;
        let probe_key =
            PrivateKey::generate(KeyAlgorithm::EcdsaP256).map_err(AuthorityError::Generate)?;
        let probe = LeafRequest::workload(probe_id.clone(), Duration::minutes(1));
        authority
            .sign_leaf(&probe_key.public_key_der(), &probe, clock)
            .and_then(|issued| {
                // The full check, signature included, once per signing key.
                validate::check_leaf(&issued.der, &probe_id, &authority.signer.spki_der)
                    .map_err(AuthorityError::PostSignCheck)
            })
            .map_err(|e| AuthorityError::Unusable {
                path: signing.path.clone(),
                reason: match e {
                    AuthorityError::PostSignCheck(ValidateError::WrongIssuerName) => {
                        "rcgen re-encodes its subject name differently (repeated attribute types, such as \
                         two OU values, are not supported), so issued certificates would not chain"
                            .to_owned()
                    }
                    other => format!("a probe certificate failed: {other}"),
                },
            })?;
        Ok(authority)
    }

    /// Signs a leaf for `public_key_der` (SubjectPublicKeyInfo DER, normally
    /// from [`super::ValidatedCsr::public_key_der`]) as described by `req`.
    /// The certificate is re-parsed and checked before it is returned.
    pub fn sign_leaf(
        &self,
        public_key_der: &[u8],
        req: &LeafRequest,
        clock: &dyn Clock,
    ) -> Result<IssuedCert, AuthorityError> {
        let kind = classify_spki(public_key_der)
            .map_err(|what| AuthorityError::UnsupportedPublicKey { what })?;
        let spki = rcgen::SubjectPublicKeyInfo::from_der(public_key_der).map_err(|e| {
            AuthorityError::UnsupportedPublicKey {
                what: format!("{kind} in an encoding rcgen cannot reproduce ({e})"),
            }
        })?;
        let params = template::leaf_params(
            req,
            kind.is_rsa(),
            clock.now(),
            self.clock_skew,
            self.signer.not_after,
        )?;
        let cert = params
            .signed_by(&spki, &self.signer.issuer)
            .map_err(AuthorityError::Sign)?;
        let der = cert.der().to_vec();

        // The re-parse and profile check of every leaf before it leaves
        // (rule: re-parse and check every certificate after signing).
        let facts = validate::check_issued(&der, &req.id, public_key_der, &self.signer.subject_raw)
            .map_err(AuthorityError::PostSignCheck)?;
        // check_issued confirmed the certificate's key is `public_key_der`.
        let public_key_sha256_hex = sha256_hex(public_key_der);
        let (serial_hex, not_before, not_after) =
            (hex(&facts.serial), facts.not_before, facts.not_after);
        Ok(IssuedCert {
            pem: bundle::cert_pem(&der),
            der,
            serial_hex,
            not_before,
            not_after,
            public_key_sha256_hex,
        })
    }

    /// The certificates between a leaf and the roots, leaf's issuer first,
    /// each its own PEM element; empty when the signer is itself a root.
    pub fn chain_pem(&self) -> Vec<String> {
        self.chain.iter().map(|c| bundle::cert_pem(c)).collect()
    }

    /// Each root, PEM.
    pub fn roots_pem(&self) -> Vec<String> {
        self.roots.iter().map(|c| bundle::cert_pem(c)).collect()
    }

    /// All roots concatenated: the last element of a CreateCertificate answer.
    pub fn root_bundle_pem(&self) -> String {
        bundle::concat_pem(&self.roots_pem())
    }

    /// Each root, DER.
    pub fn roots_der(&self) -> Vec<CertificateDer<'static>> {
        self.roots.clone()
    }

    /// When the signing certificate expires (no leaf outlives it).
    pub fn signer_not_after(&self) -> OffsetDateTime {
        self.signer.not_after
    }

    /// The earliest root expiry (metric `citadel_server_root_cert_expiry_timestamp`).
    pub fn root_not_after(&self) -> OffsetDateTime {
        self.root_not_after
    }

    /// When the signing certificate became valid.
    pub fn signer_not_before(&self) -> OffsetDateTime {
        self.signer.not_before
    }

    /// The id: lowercase hex of the signing certificate's subject key identifier.
    pub fn id(&self) -> &str {
        &self.signer.id
    }

    /// The signing certificate, DER.
    pub fn signing_cert_der(&self) -> &CertificateDer<'static> {
        &self.signer.der
    }

    /// The certificates between a leaf's issuer and the roots, DER, the
    /// signing certificate's issuer first (empty when the signer is a root).
    pub fn chain_der(&self) -> &[CertificateDer<'static>] {
        self.chain.get(1..).unwrap_or_default()
    }

    /// Where the signing certificate was loaded from.
    pub fn origin(&self) -> &Origin {
        &self.signer.origin
    }

    /// The authority as PEM, to store (see [`AuthorityPem`]).
    pub fn to_pem(&self) -> AuthorityPem {
        AuthorityPem {
            key_pem: self.signer.key_pem.clone(),
            cert_pem: bundle::cert_pem(&self.signer.der),
            chain_pem: bundle::concat_pem(
                &self
                    .chain_der()
                    .iter()
                    .map(|c| bundle::cert_pem(c))
                    .collect::<Vec<_>>(),
            ),
            roots_pem: self.root_bundle_pem(),
        }
    }

    /// Signs a CRL (X.509 v2, RFC 5280 section 5) listing `entries`, valid
    /// from `this_update` to `next_update`, numbered `number`. Rule: a CRL is
    /// signed by the authority whose certificates it revokes, with the key
    /// usage cRLSign (which every root we generate has).
    pub fn sign_crl(
        &self,
        entries: &[CrlEntry],
        number: u64,
        this_update: OffsetDateTime,
        next_update: OffsetDateTime,
    ) -> Result<Vec<u8>, AuthorityError> {
        let params = rcgen::CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: entries
                .iter()
                .map(|e| rcgen::RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&e.serial),
                    revocation_time: e.revoked_at,
                    reason_code: e.reason,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.signer.issuer)
            .map_err(AuthorityError::Sign)?;
        Ok(crl.der().to_vec())
    }

    /// A new self-signed root made for a rotation: the profile of
    /// [`Authority::load_or_create_self_signed`], valid for `validity`, its
    /// subject `O=<trust domain>, CN=meshid authority <random>` so that two
    /// roots of one trust domain have distinct names. Nothing is written.
    pub fn create_rotation_root(
        label: &str,
        cfg: &AuthorityConfig,
        validity: Duration,
        clock: &dyn Clock,
    ) -> Result<Self, AuthorityError> {
        let suffix = template::random_serial()?.to_bytes();
        let cn = format!(
            "meshid authority {}",
            hex(suffix.get(..4).unwrap_or_default())
        );
        let (key, cert) = generate_root_with(cfg, validity, Some(&cn), clock)?;
        let mut files = MemoryFiles::new(label);
        files.insert(CA_KEY_FILE, key.secret_pkcs8_pem().as_bytes().to_vec());
        files.insert(CA_CERT_FILE, cert.pem().into_bytes());
        drop(key);
        Self::from_self_signed_files(&files, cfg, clock)
    }
}

/// A new self-signed root: `cfg.key_algorithm`, 10 years, subject
/// `O=<trust domain>`, CA:TRUE, KeyUsage keyCertSign + cRLSign only.
fn generate_root(
    cfg: &AuthorityConfig,
    clock: &dyn Clock,
) -> Result<(PrivateKey, rcgen::Certificate), AuthorityError> {
    generate_root_with(cfg, cfg.root_validity, None, clock)
}

fn generate_root_with(
    cfg: &AuthorityConfig,
    validity: Duration,
    common_name: Option<&str>,
    clock: &dyn Clock,
) -> Result<(PrivateKey, rcgen::Certificate), AuthorityError> {
    let now = clock.now();
    let key = PrivateKey::generate(cfg.key_algorithm).map_err(AuthorityError::Generate)?;
    let key_pair = key.to_key_pair().map_err(AuthorityError::Generate)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, cfg.trust_domain.as_str());
    if let Some(cn) = common_name {
        params.distinguished_name.push(DnType::CommonName, cn);
    }
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Signs certificates and CRLs, nothing else (no digitalSignature).
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(template::random_serial()?);
    // Backdated for lagging clocks, by at most a tenth of the lifetime (as
    // leaves are): the rotation schedule counts the life from notBefore.
    params.not_before = now - cfg.clock_skew.max(Duration::ZERO).min(validity / 10_i32);
    params.not_after = now + validity;
    let cert = params
        .self_signed(&key_pair)
        .map_err(AuthorityError::RootCertificate)?;
    Ok((key, cert))
}

#[cfg(test)]
mod tests;
