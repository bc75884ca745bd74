//! CSR validation: the security core of issuance.
//!
//! [`validate_csr`] turns untrusted bytes into a [`ValidatedCsr`] that holds
//! **only a public key**. The identity to issue comes from the authenticated
//! caller (`expected`), never from the CSR; the CSR's subject and any
//! extension it requests are checked for consistency and then dropped, so
//! nothing it asks for can reach the certificate (see [`super::template`]).
//!
//! Rules, in the order they are enforced (each names itself in a comment below):
//! 1. size bounded before any parsing;
//! 2. PEM (`CERTIFICATE REQUEST` / `NEW CERTIFICATE REQUEST`) or DER, one
//!    request, no trailing bytes;
//! 3. public key ECDSA P-256/P-384, Ed25519, or RSA of 2048..=8192 bits;
//! 4. signature algorithm SHA-256 or stronger, self-signature verifies;
//! 5. SANs absent, or exactly one URI SAN equal to the caller's identity;
//! 6. no CA:TRUE, no keyCertSign / cRLSign requested.

use std::fmt;
use std::net::IpAddr;

use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry as oids;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::der;
use super::pem::{self, PemError};
use crate::identity::SpiffeId;

/// Largest CSR accepted, PEM or DER. A P-256 CSR is ~400 bytes, RSA-4096 ~1.7 KiB.
pub const MAX_CSR_BYTES: usize = 64 * 1024;

/// Smallest RSA modulus accepted anywhere (DESIGN.md: "RSA 2048+, nothing weaker").
const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus ring verifies.
const MAX_RSA_BITS: usize = 8192;

/// The kind of public key a CSR (or key) carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublicKeyKind {
    /// ECDSA on NIST P-256.
    EcdsaP256,
    /// ECDSA on NIST P-384.
    EcdsaP384,
    /// Ed25519.
    Ed25519,
    /// RSA with a modulus of `bits` bits (at least 2048).
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
}

impl PublicKeyKind {
    /// Whether the key is RSA (its certificate then also gets keyEncipherment).
    pub fn is_rsa(self) -> bool {
        matches!(self, PublicKeyKind::Rsa { .. })
    }
}

impl fmt::Display for PublicKeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublicKeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            PublicKeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            PublicKeyKind::Ed25519 => f.write_str("Ed25519"),
            PublicKeyKind::Rsa { bits } => write!(f, "RSA-{bits}"),
        }
    }
}

/// A CSR that passed every rule: what is left of it is its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedCsr {
    public_key_der: Vec<u8>,
    kind: PublicKeyKind,
    dns_names: Vec<String>,
}

impl ValidatedCsr {
    /// The public key, SubjectPublicKeyInfo DER, exactly as the CSR carried it.
    pub fn public_key_der(&self) -> &[u8] {
        &self.public_key_der
    }

    /// The kind of key.
    pub fn kind(&self) -> PublicKeyKind {
        self.kind
    }

    /// The DNS SANs asked for, each one of the names the caller was allowed
    /// ([`validate_csr_with_dns`]); empty for almost every workload.
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// Lowercase hex SHA-256 of [`Self::public_key_der`] (for the audit record).
    pub fn public_key_sha256_hex(&self) -> String {
        sha256_hex(&self.public_key_der)
    }
}

/// Why a CSR was refused. Messages are meant for the person who sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// The input is larger than [`MAX_CSR_BYTES`]; nothing was parsed.
    #[error("CSR is {size} bytes, the maximum is {max}")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The input is empty, or neither PEM text nor a DER SEQUENCE.
    #[error("CSR is neither PEM (\"-----BEGIN CERTIFICATE REQUEST-----\") nor DER")]
    NotPemOrDer,
    /// The PEM text is malformed.
    #[error("CSR PEM is malformed: {0}")]
    Pem(#[from] PemError),
    /// The PEM text holds no request block, or more than one block.
    #[error("CSR PEM must hold exactly one \"CERTIFICATE REQUEST\" block, found {found:?}")]
    WrongPemBlocks {
        /// Labels of the blocks found.
        found: Vec<String>,
    },
    /// The DER does not parse as a PKCS#10 request.
    #[error("CSR is not a valid PKCS#10 request: {reason}")]
    Malformed {
        /// The parser's complaint.
        reason: String,
    },
    /// Bytes follow the request.
    #[error("CSR has {bytes} trailing bytes after the request")]
    TrailingData {
        /// How many.
        bytes: usize,
    },
    /// The request version is not v1 (0).
    #[error("CSR version is {version}, only version 0 (v1) exists")]
    UnsupportedVersion {
        /// The version field.
        version: u32,
    },
    /// The public key is of a type or size that is not accepted.
    #[error("CSR public key is {key}: only ECDSA P-256, ECDSA P-384, Ed25519 or RSA of 2048 bits or more are accepted")]
    UnsupportedKey {
        /// What the key is, e.g. "RSA-1024" or "EC key on secp256k1".
        key: String,
    },
    /// The SubjectPublicKeyInfo is not canonical DER (a non-minimal length or
    /// integer): the certificate could not carry the same bytes.
    #[error("CSR public key is not in canonical DER (a non-minimal length or integer encoding); re-encode the key")]
    NonCanonicalKey,
    /// The signature algorithm is weak (SHA-1) or unknown.
    #[error("CSR is signed with {algorithm}; sign it with SHA-256 or stronger (or Ed25519)")]
    UnsupportedSignatureAlgorithm {
        /// The algorithm's name or OID.
        algorithm: String,
    },
    /// The self-signature does not verify with the CSR's own key.
    #[error("CSR signature does not verify with its own public key (corrupted, or signed by another key)")]
    BadSignature,
    /// The CSR asks for an identity other than the caller's.
    #[error("CSR asks for {requested} but the caller is {caller}")]
    SanMismatch {
        /// The URI SAN in the CSR.
        requested: String,
        /// The authenticated (or authorized impersonated) identity.
        caller: SpiffeId,
    },
    /// More than one URI SAN.
    #[error("CSR asks for {} URI SANs ({}); an X.509-SVID has exactly one, the caller's identity", uris.len(), uris.join(", "))]
    SeveralUris {
        /// Every URI requested.
        uris: Vec<String>,
    },
    /// A SAN of a type workloads may not request (DNS, IP, email, …).
    #[error("CSR asks for {kind} SAN {value:?}; only the caller's SPIFFE ID, as one URI SAN, may be requested")]
    ForbiddenSan {
        /// "DNS", "IP", "email", …
        kind: &'static str,
        /// The requested value.
        value: String,
    },
    /// A DNS SAN the identity is not configured to hold.
    #[error("CSR asks for DNS SAN {name:?}, which {identity} may not hold (it may hold: {})", allowed.join(", "))]
    DnsNameNotAllowed {
        /// The requested name.
        name: String,
        /// The identity being issued.
        identity: SpiffeId,
        /// The names it may hold.
        allowed: Vec<String>,
    },
    /// The CSR asks for a CA certificate.
    #[error("CSR asks for a CA certificate (BasicConstraints CA:TRUE); workloads get leaf certificates only")]
    RequestsCa,
    /// The CSR asks for a key usage that signs certificates or CRLs.
    #[error(
        "CSR asks for key usage {usage}; workload certificates may not sign certificates or CRLs"
    )]
    RequestsCertSign {
        /// "keyCertSign" or "cRLSign".
        usage: &'static str,
    },
    /// A requested extension the rules depend on does not parse.
    #[error("CSR requests a malformed {extension} extension")]
    MalformedExtension {
        /// Which extension.
        extension: &'static str,
    },
}

/// Validates an untrusted CSR for `expected` and returns its public key. Any
/// SAN other than the one URI is refused.
pub fn validate_csr(input: &[u8], expected: &SpiffeId) -> Result<ValidatedCsr, CsrError> {
    validate_csr_with_dns(input, expected, &[])
}

/// [`validate_csr`], except that DNS SANs from `allowed_dns` (the names the CA
/// is configured to let `expected` hold, such as a webhook's Service name)
/// may be asked for too. Rule: a DNS SAN is granted only by an exact,
/// case-insensitive match with a configured name; no wildcard is expanded, and
/// with nothing configured every DNS SAN is refused as before.
pub fn validate_csr_with_dns(
    input: &[u8],
    expected: &SpiffeId,
    allowed_dns: &[String],
) -> Result<ValidatedCsr, CsrError> {
    // Rule 1: bound the size before looking at a single byte of content.
    if input.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge {
            size: input.len(),
            max: MAX_CSR_BYTES,
        });
    }

    // Rule 2: exactly one request, PEM or DER, nothing after it.
    let pem_der;
    let der: &[u8] = if pem::looks_like_pem(input) {
        let mut blocks = pem::parse_blocks_bytes(input)?;
        let is_csr =
            |label: &str| label == "CERTIFICATE REQUEST" || label == "NEW CERTIFICATE REQUEST";
        if blocks.len() != 1 || !is_csr(&blocks[0].label) {
            return Err(CsrError::WrongPemBlocks {
                found: blocks.into_iter().map(|b| b.label).collect(),
            });
        }
        pem_der = blocks.remove(0).der;
        &pem_der
    } else if input.first() == Some(&der::SEQUENCE) {
        input
    } else {
        return Err(CsrError::NotPemOrDer);
    };
    let (rest, csr) = X509CertificationRequest::from_der(der).map_err(|e| CsrError::Malformed {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData { bytes: rest.len() });
    }
    let info = &csr.certification_request_info;
    if info.version.0 != 0 {
        return Err(CsrError::UnsupportedVersion {
            version: info.version.0,
        });
    }

    // Rule 3: the key type and size, checked before the signature so the
    // refusal names the key (ring could not verify most refused keys anyway).
    let kind = classify(&info.subject_pki).map_err(|key| CsrError::UnsupportedKey { key })?;
    // The leaf is built by rcgen from these exact SPKI bytes: refuse an
    // encoding it cannot reproduce (e.g. RSA parameters other than NULL).
    // Rule: the key must be canonical DER, byte for byte as the certificate
    // will carry it; otherwise the CA would sign and then fail its post-sign
    // check (a way for any caller to make it sign at will).
    let rsa = matches!(kind, PublicKeyKind::Rsa { .. });
    if !der::is_canonical(info.subject_pki.raw, rsa) {
        return Err(CsrError::NonCanonicalKey);
    }
    if rcgen::SubjectPublicKeyInfo::from_der(info.subject_pki.raw).is_err() {
        return Err(CsrError::UnsupportedKey {
            key: format!("{kind} with a non-standard SubjectPublicKeyInfo encoding"),
        });
    }

    // Rule 4: proof of possession. SHA-1 is refused even though ring would
    // verify it for RSA ("nothing weaker" than SHA-256 anywhere).
    check_signature_algorithm(&csr)?;
    if csr.signature_algorithm.algorithm == oids::OID_SIG_ECDSA_WITH_SHA512 {
        verify_ecdsa_sha512(&csr, kind)?;
    } else {
        csr.verify_signature().map_err(|_| CsrError::BadSignature)?;
    }

    // Rules 5 and 6: what the CSR asks for. The subject DN is ignored (never
    // copied); every other requested extension is ignored too, because the
    // certificate is built from scratch.
    let mut uris = Vec::new();
    let mut dns_names = Vec::new();
    for attribute in info.iter_attributes() {
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            continue;
        };
        for extension in &request.extensions {
            match extension.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                            GeneralName::DNSName(name) if !allowed_dns.is_empty() => {
                                let Some(granted) =
                                    allowed_dns.iter().find(|a| a.eq_ignore_ascii_case(name))
                                else {
                                    return Err(CsrError::DnsNameNotAllowed {
                                        name: (*name).to_owned(),
                                        identity: expected.clone(),
                                        allowed: allowed_dns.to_vec(),
                                    });
                                };
                                if !dns_names.contains(granted) {
                                    dns_names.push(granted.clone());
                                }
                            }
                            other => return Err(forbidden_san(other)),
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) if bc.ca => return Err(CsrError::RequestsCa),
                ParsedExtension::KeyUsage(ku) if ku.key_cert_sign() => {
                    return Err(CsrError::RequestsCertSign {
                        usage: "keyCertSign",
                    })
                }
                ParsedExtension::KeyUsage(ku) if ku.crl_sign() => {
                    return Err(CsrError::RequestsCertSign { usage: "cRLSign" })
                }
                ParsedExtension::ParseError { .. } => {
                    let known = [
                        (&oids::OID_X509_EXT_SUBJECT_ALT_NAME, "subjectAltName"),
                        (&oids::OID_X509_EXT_BASIC_CONSTRAINTS, "basicConstraints"),
                        (&oids::OID_X509_EXT_KEY_USAGE, "keyUsage"),
                    ];
                    if let Some((_, name)) = known.iter().find(|(oid, _)| **oid == extension.oid) {
                        return Err(CsrError::MalformedExtension { extension: name });
                    }
                }
                _ => {}
            }
        }
    }
    match uris.as_slice() {
        [] => {}
        [uri] if *uri == expected.to_string() => {}
        [uri] => {
            return Err(CsrError::SanMismatch {
                requested: uri.clone(),
                caller: expected.clone(),
            })
        }
        _ => return Err(CsrError::SeveralUris { uris }),
    }

    Ok(ValidatedCsr {
        public_key_der: info.subject_pki.raw.to_vec(),
        kind,
        dns_names,
    })
}

fn forbidden_san(name: &GeneralName<'_>) -> CsrError {
    let (kind, value) = match name {
        GeneralName::DNSName(dns) => ("DNS", (*dns).to_owned()),
        GeneralName::IPAddress(bytes) => ("IP", ip_string(bytes)),
        GeneralName::RFC822Name(email) => ("email", (*email).to_owned()),
        GeneralName::OtherName(oid, _) => ("otherName", oid.to_id_string()),
        GeneralName::DirectoryName(dn) => ("directoryName", dn.to_string()),
        GeneralName::RegisteredID(oid) => ("registeredID", oid.to_id_string()),
        GeneralName::X400Address(_) => ("x400Address", String::new()),
        GeneralName::EDIPartyName(_) => ("ediPartyName", String::new()),
        GeneralName::Invalid(..) => ("invalid", String::new()),
        GeneralName::URI(uri) => ("URI", (*uri).to_owned()),
    };
    CsrError::ForbiddenSan { kind, value }
}

fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .map(|b| IpAddr::from(b).to_string())
            .unwrap_or_default(),
        16 => <[u8; 16]>::try_from(bytes)
            .map(|b| IpAddr::from(b).to_string())
            .unwrap_or_default(),
        _ => format!("{} bytes", bytes.len()),
    }
}

fn check_signature_algorithm(csr: &X509CertificationRequest<'_>) -> Result<(), CsrError> {
    let alg = &csr.signature_algorithm.algorithm;
    let accepted = [
        &oids::OID_SIG_ECDSA_WITH_SHA256,
        &oids::OID_SIG_ECDSA_WITH_SHA384,
        &oids::OID_SIG_ECDSA_WITH_SHA512,
        &oids::OID_SIG_ED25519,
        &oids::OID_PKCS1_SHA256WITHRSA,
        &oids::OID_PKCS1_SHA384WITHRSA,
        &oids::OID_PKCS1_SHA512WITHRSA,
        // RSA-PSS: x509-parser only verifies it with SHA-256 or stronger.
        &oids::OID_PKCS1_RSASSAPSS,
    ];
    if accepted.contains(&alg) {
        return Ok(());
    }
    let algorithm = match alg.to_id_string().as_str() {
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => "sha1WithRSAEncryption (SHA-1)".to_owned(),
        "1.2.840.10045.4.1" => "ecdsa-with-SHA1 (SHA-1)".to_owned(),
        "1.2.840.113549.1.1.4" => "md5WithRSAEncryption (MD5)".to_owned(),
        other => format!("signature algorithm {other}"),
    };
    Err(CsrError::UnsupportedSignatureAlgorithm { algorithm })
}

/// ecdsa-with-SHA512, which ring does not verify: the SHA-512 digest (from
/// ring) checked against the key with RustCrypto's prehash verifier, which
/// truncates it to the curve's size as ECDSA prescribes.
fn verify_ecdsa_sha512(
    csr: &X509CertificationRequest<'_>,
    kind: PublicKeyKind,
) -> Result<(), CsrError> {
    use p256::ecdsa::signature::hazmat::PrehashVerifier;
    let digest = ring::digest::digest(&ring::digest::SHA512, csr.certification_request_info.raw);
    let point = csr
        .certification_request_info
        .subject_pki
        .subject_public_key
        .data
        .as_ref();
    let sig = csr.signature_value.data.as_ref();
    let verified = match kind {
        PublicKeyKind::EcdsaP256 => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point);
            let sig = p256::ecdsa::Signature::from_der(sig);
            matches!((key, sig), (Ok(k), Ok(s)) if k.verify_prehash(digest.as_ref(), &s).is_ok())
        }
        PublicKeyKind::EcdsaP384 => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point);
            let sig = p384::ecdsa::Signature::from_der(sig);
            matches!((key, sig), (Ok(k), Ok(s)) if k.verify_prehash(digest.as_ref(), &s).is_ok())
        }
        _ => false,
    };
    if verified {
        Ok(())
    } else {
        Err(CsrError::BadSignature)
    }
}

/// Classifies SubjectPublicKeyInfo DER; the error describes the refused key.
pub(crate) fn classify_spki(spki_der: &[u8]) -> Result<PublicKeyKind, String> {
    match SubjectPublicKeyInfo::from_der(spki_der) {
        Ok(([], spki)) => classify(&spki),
        Ok((rest, _)) => Err(format!(
            "a public key followed by {} stray bytes",
            rest.len()
        )),
        Err(_) => Err("not a SubjectPublicKeyInfo".to_owned()),
    }
}

/// Rule 3: the accepted key types. The error names the key for the person.
fn classify(spki: &SubjectPublicKeyInfo<'_>) -> Result<PublicKeyKind, String> {
    let alg = &spki.algorithm.algorithm;
    if *alg == oids::OID_PKCS1_RSAENCRYPTION {
        let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
            return Err("a malformed RSA key".to_owned());
        };
        let bits = rsa_modulus_bits(rsa.modulus);
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA-{bits} (RSA keys must have at least {MIN_RSA_BITS} bits)"
            ));
        }
        if bits > MAX_RSA_BITS {
            return Err(format!("RSA-{bits} (larger than {MAX_RSA_BITS} bits)"));
        }
        return Ok(PublicKeyKind::Rsa { bits });
    }
    if *alg == oids::OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let point_len = spki.subject_public_key.data.len();
        let (kind, expected_len) = match curve {
            Some(c) if c.as_bytes() == der::OID_P256 => (PublicKeyKind::EcdsaP256, 65),
            Some(c) if c.as_bytes() == der::OID_P384 => (PublicKeyKind::EcdsaP384, 97),
            Some(c) => {
                return Err(format!(
                    "an EC key on {}",
                    curve_name(c.as_bytes(), &c.to_id_string())
                ))
            }
            None => return Err("an EC key without a named curve".to_owned()),
        };
        // An uncompressed point (0x04 || X || Y), the only form ring accepts.
        if point_len != expected_len || spki.subject_public_key.data.first() != Some(&0x04) {
            return Err(format!("{kind} with a compressed or malformed point"));
        }
        return Ok(kind);
    }
    if *alg == oids::OID_SIG_ED25519 {
        if spki.algorithm.parameters.is_some() || spki.subject_public_key.data.len() != 32 {
            return Err("a malformed Ed25519 key".to_owned());
        }
        return Ok(PublicKeyKind::Ed25519);
    }
    let name = match alg.to_id_string().as_str() {
        "1.2.840.113549.1.1.10" => "an RSA-PSS-only key (use rsaEncryption keys)".to_owned(),
        "1.2.840.10040.4.1" => "a DSA key".to_owned(),
        "1.3.101.113" => "an Ed448 key".to_owned(),
        "1.3.101.110" | "1.3.101.111" => "an X25519/X448 key-agreement key".to_owned(),
        other => format!("a key of algorithm {other}"),
    };
    Err(name)
}

fn curve_name(oid: &[u8], dotted: &str) -> String {
    match oid {
        [0x2b, 0x81, 0x04, 0x00, 0x0a] => "secp256k1".to_owned(),
        [0x2b, 0x81, 0x04, 0x00, 0x23] => "P-521 (secp521r1)".to_owned(),
        [0x2b, 0x81, 0x04, 0x00, 0x21] => "P-224 (secp224r1)".to_owned(),
        _ => format!("curve {dotted}"),
    }
}

/// Bit length of a big-endian unsigned modulus (leading zero bytes ignored;
/// x509-parser's own `key_size` miscounts moduli without a leading zero).
fn rsa_modulus_bits(modulus: &[u8]) -> usize {
    let start = modulus
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(modulus.len());
    match modulus.get(start) {
        Some(first) => (modulus.len() - start - 1) * 8 + (8 - first.leading_zeros() as usize),
        None => 0,
    }
}

/// Lowercase hex SHA-256 of `bytes`.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests;
