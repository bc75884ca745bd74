//! Private keys: generation, PEM loading, and the one type that holds them.
//!
//! Rule enforced: a private key lives only in [`PrivateKey`], which zeroizes its
//! PKCS#8 bytes on drop, prints as `PrivateKey([redacted])`, cannot be cloned by
//! accident (only [`PrivateKey::clone_key`]), and names every accessor to the
//! secret `secret_*` so that a reviewer sees each place it leaves the type.
//!
//! Known limit: signing goes through rcgen's `KeyPair` (ring inside), whose own
//! copies of the key are not zeroized on drop. We keep those copies few (one
//! per authority) and short-lived everywhere else.

use std::fmt;
use std::str::FromStr;

use rcgen::PublicKeyData as _;
use zeroize::Zeroizing;

use super::csr::{classify_spki, PublicKeyKind};
use super::der;
use super::pem::{self, PemError};
use crate::identity::SpiffeId;

/// The key types meshid generates and signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256: the default for roots and workloads.
    #[default]
    EcdsaP256,
    /// ECDSA on NIST P-384 with SHA-384.
    EcdsaP384,
    /// RSA, 2048-bit modulus, PKCS#1 v1.5 signatures with SHA-256.
    Rsa2048,
    /// RSA, 3072-bit modulus.
    Rsa3072,
    /// RSA, 4096-bit modulus.
    Rsa4096,
}

impl KeyAlgorithm {
    /// Every algorithm, in the order `--help` lists them.
    pub const ALL: [KeyAlgorithm; 5] = [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::EcdsaP384,
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::Rsa3072,
        KeyAlgorithm::Rsa4096,
    ];

    /// The name used on the command line, e.g. `ecdsa-p256`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// Whether this is an RSA algorithm (leaves then also get keyEncipherment).
    pub fn is_rsa(self) -> bool {
        self.rsa_bits().is_some()
    }

    fn rsa_bits(self) -> Option<usize> {
        match self {
            KeyAlgorithm::Rsa2048 => Some(2048),
            KeyAlgorithm::Rsa3072 => Some(3072),
            KeyAlgorithm::Rsa4096 => Some(4096),
            KeyAlgorithm::EcdsaP256 | KeyAlgorithm::EcdsaP384 => None,
        }
    }

    fn from_kind(kind: PublicKeyKind) -> Option<Self> {
        match kind {
            PublicKeyKind::EcdsaP256 => Some(KeyAlgorithm::EcdsaP256),
            PublicKeyKind::EcdsaP384 => Some(KeyAlgorithm::EcdsaP384),
            PublicKeyKind::Rsa { bits: 2048 } => Some(KeyAlgorithm::Rsa2048),
            PublicKeyKind::Rsa { bits: 3072 } => Some(KeyAlgorithm::Rsa3072),
            PublicKeyKind::Rsa { bits: 4096 } => Some(KeyAlgorithm::Rsa4096),
            PublicKeyKind::Rsa { .. } | PublicKeyKind::Ed25519 => None,
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        KeyAlgorithm::ALL
            .into_iter()
            .find(|alg| alg.as_str() == s)
            .ok_or_else(|| KeyError::UnknownAlgorithm {
                given: s.to_owned(),
            })
    }
}

/// Why a key could not be generated, loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key algorithm name that is not one of [`KeyAlgorithm::ALL`].
    #[error(
        "unknown key algorithm {given:?}: expected one of ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096"
    )]
    UnknownAlgorithm {
        /// What was given.
        given: String,
    },
    /// The random generator or the key generator failed.
    #[error("could not generate a {algorithm} key: {reason}")]
    Generate {
        /// The algorithm asked for.
        algorithm: KeyAlgorithm,
        /// What failed.
        reason: String,
    },
    /// The PEM text itself is malformed.
    #[error("private key PEM: {0}")]
    Pem(#[from] PemError),
    /// No key block in the PEM text.
    #[error(
        "no \"PRIVATE KEY\", \"EC PRIVATE KEY\" or \"RSA PRIVATE KEY\" block found (blocks present: {found:?}); \
         encrypted keys are not supported"
    )]
    NoKey {
        /// Labels of the blocks that were there.
        found: Vec<String>,
    },
    /// More than one key block: which one is meant is ambiguous.
    #[error("{count} private keys found where exactly one is expected")]
    SeveralKeys {
        /// How many key blocks there were.
        count: usize,
    },
    /// The key bytes do not parse as the format their label announces.
    #[error("{format} private key is malformed: {reason}")]
    Malformed {
        /// "PKCS#8", "SEC1 (EC PRIVATE KEY)" or "PKCS#1 (RSA PRIVATE KEY)".
        format: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A valid key of a type meshid does not sign with.
    #[error("unsupported private key: {what}; supported: ecdsa-p256, ecdsa-p384, rsa-2048, rsa-3072, rsa-4096")]
    Unsupported {
        /// The key type found, e.g. "Ed25519" or "RSA-1024".
        what: String,
    },
    /// rcgen refused to build a CSR.
    #[error("could not build a CSR: {0}")]
    Csr(#[source] rcgen::Error),
}

/// A private key (PKCS#8 DER) that zeroizes on drop and never prints.
pub struct PrivateKey {
    pkcs8: Zeroizing<Vec<u8>>,
    algorithm: KeyAlgorithm,
    /// SubjectPublicKeyInfo DER, computed once at construction.
    public_key_der: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

impl PrivateKey {
    /// Generates a fresh key.
    pub fn generate(algorithm: KeyAlgorithm) -> Result<Self, KeyError> {
        let generate_err = |reason: String| KeyError::Generate { algorithm, reason };
        let pkcs8 = match algorithm.rsa_bits() {
            None => {
                let signing = match algorithm {
                    KeyAlgorithm::EcdsaP384 => &ring::signature::ECDSA_P384_SHA384_ASN1_SIGNING,
                    _ => &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
                };
                let rng = ring::rand::SystemRandom::new();
                let doc = ring::signature::EcdsaKeyPair::generate_pkcs8(signing, &rng)
                    .map_err(|_| generate_err("the system random generator failed".to_owned()))?;
                Zeroizing::new(doc.as_ref().to_vec())
            }
            Some(bits) => {
                // ring cannot generate RSA keys, so generation (only) uses the
                // `rsa` crate; the key is then loaded into ring/rcgen for every
                // signature. The rsa crate's known timing issue (RUSTSEC-2023-0071)
                // concerns decryption and signing, which we never do with it.
                use rsa::pkcs8::EncodePrivateKey as _;
                let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                    .map_err(|e| generate_err(e.to_string()))?;
                let doc = key
                    .to_pkcs8_der()
                    .map_err(|e| generate_err(e.to_string()))?;
                Zeroizing::new(doc.as_bytes().to_vec())
            }
        };
        Self::from_pkcs8(pkcs8)
    }

    /// Loads a key from PEM: PKCS#8 (`PRIVATE KEY`), SEC1 (`EC PRIVATE KEY`)
    /// or PKCS#1 (`RSA PRIVATE KEY`), the forms found in Istio `cacerts` and
    /// cert-manager secrets. Other blocks (certificates) in the text are ignored.
    pub fn from_pem(pem_text: &str) -> Result<Self, KeyError> {
        let blocks = pem::parse_blocks(pem_text)?;
        let mut keys = blocks.iter().filter(|b| {
            matches!(
                b.label.as_str(),
                "PRIVATE KEY" | "EC PRIVATE KEY" | "RSA PRIVATE KEY"
            )
        });
        let (Some(block), None) = (keys.next(), keys.next()) else {
            let count = blocks
                .iter()
                .filter(|b| b.label.ends_with("PRIVATE KEY"))
                .count();
            return Err(if count > 1 {
                KeyError::SeveralKeys { count }
            } else {
                KeyError::NoKey {
                    found: blocks.iter().map(|b| b.label.clone()).collect(),
                }
            });
        };
        let pkcs8 = match block.label.as_str() {
            "EC PRIVATE KEY" => sec1_to_pkcs8(&block.der)?,
            "RSA PRIVATE KEY" => pkcs1_to_pkcs8(&block.der)?,
            _ => Zeroizing::new(block.der.to_vec()),
        };
        Self::from_pkcs8(pkcs8)
    }

    /// Loads a key from unencrypted PKCS#8 DER.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        Self::from_pkcs8(Zeroizing::new(der.to_vec()))
    }

    fn from_pkcs8(pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, KeyError> {
        let key_pair =
            rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(|e| KeyError::Malformed {
                format: "PKCS#8",
                reason: e.to_string(),
            })?;
        let public_key_der = key_pair.subject_public_key_info();
        let kind = classify_spki(&public_key_der).map_err(|what| KeyError::Unsupported { what })?;
        let algorithm = KeyAlgorithm::from_kind(kind).ok_or(KeyError::Unsupported {
            what: kind.to_string(),
        })?;
        Ok(Self {
            pkcs8,
            algorithm,
            public_key_der,
        })
    }

    /// An explicit copy (there is deliberately no `Clone`).
    pub fn clone_key(&self) -> Self {
        Self {
            pkcs8: self.pkcs8.clone(),
            algorithm: self.algorithm,
            public_key_der: self.public_key_der.clone(),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// The secret key as unencrypted PKCS#8 DER (what the Workload API sends).
    pub fn secret_pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The secret key as a `PRIVATE KEY` PEM block (what SDS and key files carry).
    pub fn secret_pkcs8_pem(&self) -> Zeroizing<String> {
        pem::encode("PRIVATE KEY", &self.pkcs8)
    }

    /// The public key as SubjectPublicKeyInfo DER.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public_key_der.clone()
    }

    /// The key as an rcgen signing key (ring inside).
    pub(crate) fn to_key_pair(&self) -> Result<rcgen::KeyPair, KeyError> {
        rcgen::KeyPair::try_from(self.pkcs8.as_slice()).map_err(|e| KeyError::Malformed {
            format: "PKCS#8",
            reason: e.to_string(),
        })
    }
}

/// A CSR (PEM) for `id`: empty subject, the ID as its only (critical) URI SAN,
/// signed by `key`. What the node agent sends to the CA.
pub fn csr_pem(key: &PrivateKey, id: &SpiffeId) -> Result<String, KeyError> {
    csr_pem_with_dns(key, id, &[])
}

/// [`csr_pem`] that also asks for DNS SANs (the injector's Service name; the
/// CA grants them only where `--workload-dns-names` says so).
pub fn csr_pem_with_dns(
    key: &PrivateKey,
    id: &SpiffeId,
    dns_names: &[String],
) -> Result<String, KeyError> {
    let key_pair = key.to_key_pair()?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    let uri = rcgen::string::Ia5String::try_from(id.to_string()).map_err(KeyError::Csr)?;
    params.subject_alt_names = vec![rcgen::SanType::URI(uri)];
    for name in dns_names {
        let name = rcgen::string::Ia5String::try_from(name.as_str()).map_err(KeyError::Csr)?;
        params.subject_alt_names.push(rcgen::SanType::DnsName(name));
    }
    let csr = params.serialize_request(&key_pair).map_err(KeyError::Csr)?;
    csr.pem().map_err(KeyError::Csr)
}

/// Wraps a PKCS#1 `RSAPrivateKey` into PKCS#8 (RFC 5208):
/// `SEQUENCE { 0, { rsaEncryption, NULL }, OCTET STRING pkcs1 }`.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let malformed = |reason: &str| KeyError::Malformed {
        format: "PKCS#1 (RSA PRIVATE KEY)",
        reason: reason.to_owned(),
    };
    match der::read_tlv(pkcs1) {
        Some((der::SEQUENCE, _, [])) => {}
        _ => return Err(malformed("not a single DER SEQUENCE")),
    }
    let alg = der::tlv(
        der::SEQUENCE,
        &der::cat(&[
            &der::tlv(der::OID, der::OID_RSA_ENCRYPTION),
            &der::tlv(der::NULL, &[]),
        ]),
    );
    Ok(wrap_pkcs8(&alg, pkcs1))
}

/// Wraps a SEC1 `ECPrivateKey` (RFC 5915) into PKCS#8, taking the curve from
/// its `[0] parameters` (which ring then checks against the curve it expects).
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let malformed = |reason: &str| KeyError::Malformed {
        format: "SEC1 (EC PRIVATE KEY)",
        reason: reason.to_owned(),
    };
    let (body, rest) =
        der::expect(sec1, der::SEQUENCE).ok_or_else(|| malformed("not a DER SEQUENCE"))?;
    if !rest.is_empty() {
        return Err(malformed("trailing bytes after the key"));
    }
    let (_version, body) =
        der::expect(body, der::INTEGER).ok_or_else(|| malformed("no version"))?;
    let (_secret, mut body) =
        der::expect(body, der::OCTET_STRING).ok_or_else(|| malformed("no private key"))?;
    let mut curve = None;
    while let Some((tag, content, rest)) = der::read_tlv(body) {
        if tag == der::CONTEXT_0 {
            curve = der::expect(content, der::OID).map(|(oid, _)| oid);
        }
        body = rest;
    }
    let curve = curve.ok_or_else(|| {
        malformed("no curve parameters ([0] namedCurve); re-export it with openssl")
    })?;
    if curve != der::OID_P256 && curve != der::OID_P384 {
        return Err(KeyError::Unsupported {
            what: "an EC key on a curve other than P-256 or P-384".to_owned(),
        });
    }
    let alg = der::tlv(
        der::SEQUENCE,
        &der::cat(&[
            &der::tlv(der::OID, der::OID_EC_PUBLIC_KEY),
            &der::tlv(der::OID, curve),
        ]),
    );
    Ok(wrap_pkcs8(&alg, sec1))
}

fn wrap_pkcs8(algorithm_identifier: &[u8], private_key: &[u8]) -> Zeroizing<Vec<u8>> {
    let octets = Zeroizing::new(der::tlv(der::OCTET_STRING, private_key));
    let body = Zeroizing::new(der::cat(&[
        &der::tlv(der::INTEGER, &[0]),
        algorithm_identifier,
        &octets,
    ]));
    Zeroizing::new(der::tlv(der::SEQUENCE, &body))
}

#[cfg(test)]
mod tests;
