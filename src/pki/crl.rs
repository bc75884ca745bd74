//! Certificate revocation lists (X.509 v2 CRLs, RFC 5280 section 5): verified
//! against their issuer, turned into a set of revoked (issuer, serial) pairs,
//! and carried as PEM.
//!
//! Used by the agent (CRLs received from the CA, handed to the proxy and the
//! Workload API) and by the proxy (a peer whose certificate is listed is
//! refused). The CA signs them (rcgen); this module only reads them.
//!
//! Rules enforced here:
//! - a CRL is believed only when [`verify_crl`] accepted it: its issuer name
//!   is exactly the subject of the given CA certificate, that certificate may
//!   sign CRLs, and the signature verifies with its key. Anyone can otherwise
//!   hand us a "CRL" that revokes whom they like;
//! - a CRL we cannot fully understand (a critical extension we do not know,
//!   an indirect CRL, an entry naming another issuer) is refused, not half-read;
//! - serial numbers are compared in one form everywhere: the certificate's
//!   serial bytes with leading 0x00 bytes stripped ([`serial_key`]).
//!
//! Freshness (`nextUpdate` in the past) is the caller's decision: a verified
//! CRL carries its dates, [`verify_crl`] does not read a clock.

use std::collections::{HashMap, HashSet};

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::der;
use super::pem::{self, PemError};

/// The PEM label of a CRL (RFC 7468 section 6).
pub const CRL_PEM_LABEL: &str = "X509 CRL";

/// Why a CRL was refused. Each variant says what to look at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The bytes are not a DER CRL.
    #[error("the CRL does not parse: {reason}")]
    Unparseable {
        /// The parser's complaint.
        reason: String,
    },
    /// The certificate the CRL is checked against does not parse.
    #[error("the CRL issuer certificate does not parse: {reason}")]
    IssuerUnparseable {
        /// The parser's complaint.
        reason: String,
    },
    /// The CRL names another issuer than the certificate it is checked against.
    #[error("the CRL is issued by \"{crl_issuer}\", not by \"{cert_subject}\"")]
    WrongIssuer {
        /// The CRL's issuer name.
        crl_issuer: String,
        /// The certificate's subject name.
        cert_subject: String,
    },
    /// The issuer certificate is not a CA (no basicConstraints CA:TRUE).
    #[error("\"{subject}\" is not a CA certificate, it cannot sign CRLs")]
    NotCa {
        /// The certificate's subject.
        subject: String,
    },
    /// The issuer certificate's key usage does not include cRLSign.
    #[error("\"{subject}\" has a key usage without cRLSign, it cannot sign CRLs")]
    NotCrlSigner {
        /// The certificate's subject.
        subject: String,
    },
    /// The signature does not verify with the issuer's public key.
    #[error("the CRL signature does not verify with the key of \"{issuer}\": {reason}")]
    BadSignature {
        /// The issuer certificate's subject.
        issuer: String,
        /// The verifier's complaint.
        reason: String,
    },
    /// The CRL carries something this reader does not understand and must not ignore.
    #[error("the CRL of \"{issuer}\" is not supported: {reason}")]
    Unsupported {
        /// The CRL's issuer name.
        issuer: String,
        /// What is not supported (a critical extension, an indirect CRL…).
        reason: String,
    },
    /// CRL PEM text is malformed.
    #[error("reading CRL PEM: {0}")]
    Pem(#[from] PemError),
    /// A PEM block that is not a CRL, where only CRLs are allowed.
    #[error("PEM block #{index} is \"{label}\", only \"X509 CRL\" blocks are allowed here")]
    UnexpectedBlock {
        /// 1-based position of the block.
        index: usize,
        /// Its label.
        label: String,
    },
}

/// A serial number in its comparison form: the raw (DER INTEGER content)
/// bytes with the leading 0x00 bytes stripped. A zero serial keeps one byte.
pub fn serial_key(raw: &[u8]) -> Vec<u8> {
    strip_serial(raw).to_vec()
}

/// [`serial_key`] as lowercase hex, the form serials are printed in.
pub fn serial_hex(raw: &[u8]) -> String {
    strip_serial(raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn strip_serial(raw: &[u8]) -> &[u8] {
    match raw.iter().position(|&b| b != 0) {
        Some(start) => &raw[start..],
        None => &raw[raw.len().saturating_sub(1)..],
    }
}

/// A CRL that [`verify_crl`] accepted, with what the rest of meshid reads from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedCrl {
    der: Vec<u8>,
    issuer_raw: Vec<u8>,
    serials: Vec<Vec<u8>>,
    this_update: OffsetDateTime,
    next_update: Option<OffsetDateTime>,
    number: Option<Vec<u8>>,
}

impl VerifiedCrl {
    /// The CRL, DER, as verified.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The issuer name, DER (the issuer certificate's subject, byte for byte).
    pub fn issuer_raw(&self) -> &[u8] {
        &self.issuer_raw
    }

    /// The revoked serials, in [`serial_key`] form, in the CRL's order.
    pub fn serials(&self) -> &[Vec<u8>] {
        &self.serials
    }

    /// When the CRL was issued.
    pub fn this_update(&self) -> OffsetDateTime {
        self.this_update
    }

    /// When the issuer promises the next CRL, if it says.
    pub fn next_update(&self) -> Option<OffsetDateTime> {
        self.next_update
    }

    /// The CRL number (big-endian, leading zeros stripped), if present.
    pub fn number(&self) -> Option<&[u8]> {
        self.number.as_deref()
    }

    /// The CRL number as an integer, if present and at most 64 bits.
    pub fn number_u64(&self) -> Option<u64> {
        let bytes = self.number.as_deref()?;
        if bytes.len() > 8 {
            return None;
        }
        Some(bytes.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b)))
    }

    /// The CRL number as lowercase hex, if present.
    pub fn number_hex(&self) -> Option<String> {
        self.number.as_deref().map(serial_hex)
    }
}

/// Verifies `crl_der` against the CA certificate `issuer_cert_der`.
///
/// Security rule: the CRL is believed only if (1) it parses as one DER CRL
/// with nothing after it, (2) its issuer name is byte for byte the subject of
/// `issuer_cert_der`, (3) that certificate is a CA whose key usage, when
/// present, includes cRLSign, (4) its signature verifies with that
/// certificate's public key, and (5) it carries no critical extension we do
/// not understand, is not an indirect CRL, and no entry names another
/// issuer. Whether `issuer_cert_der` itself is trusted is the caller's
/// decision (it must come from the trust bundle or our own chain).
pub fn verify_crl(crl_der: &[u8], issuer_cert_der: &[u8]) -> Result<VerifiedCrl, CrlError> {
    let crl = parse_crl(crl_der)?;
    let issuer = match X509Certificate::from_der(issuer_cert_der) {
        Ok(([], cert)) => cert,
        Ok((rest, _)) => {
            return Err(CrlError::IssuerUnparseable {
                reason: format!("{} trailing bytes", rest.len()),
            })
        }
        Err(e) => {
            return Err(CrlError::IssuerUnparseable {
                reason: e.to_string(),
            })
        }
    };

    if crl.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(CrlError::WrongIssuer {
            crl_issuer: crl.issuer().to_string(),
            cert_subject: issuer.subject().to_string(),
        });
    }
    let subject = || issuer.subject().to_string();
    if !issuer.is_ca() {
        return Err(CrlError::NotCa { subject: subject() });
    }
    match issuer.key_usage() {
        Ok(None) => {}
        Ok(Some(usage)) if usage.value.crl_sign() => {}
        Ok(Some(_)) => return Err(CrlError::NotCrlSigner { subject: subject() }),
        Err(e) => {
            return Err(CrlError::IssuerUnparseable {
                reason: format!("key usage: {e}"),
            })
        }
    }
    crl.verify_signature(issuer.public_key())
        .map_err(|e| CrlError::BadSignature {
            issuer: subject(),
            reason: e.to_string(),
        })?;
    check_understood(&crl)?;

    let serials = crl
        .iter_revoked_certificates()
        .map(|entry| serial_key(entry.raw_serial()))
        .collect();
    Ok(VerifiedCrl {
        der: crl_der.to_vec(),
        issuer_raw: crl.issuer().as_raw().to_vec(),
        serials,
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        number: crl.crl_number().map(|n| serial_key(&n.to_bytes_be())),
    })
}

/// Reads a CRL whose signature was checked by someone trusted with more
/// than this CRL (a proxy's node agent, which checked it against its
/// authority's certificate, when the proxy does not hold that certificate:
/// an intermediate authority of a plug-in CA). Parsed and checked for
/// extensions as [`verify_crl`] does; the signature is not checked here.
pub fn read_crl_verified_elsewhere(crl_der: &[u8]) -> Result<VerifiedCrl, CrlError> {
    let crl = parse_crl(crl_der)?;
    check_understood(&crl)?;
    Ok(VerifiedCrl {
        der: crl_der.to_vec(),
        issuer_raw: crl.issuer().as_raw().to_vec(),
        serials: crl
            .iter_revoked_certificates()
            .map(|entry| serial_key(entry.raw_serial()))
            .collect(),
        this_update: crl.last_update().to_datetime(),
        next_update: crl.next_update().map(|t| t.to_datetime()),
        number: crl.crl_number().map(|n| serial_key(&n.to_bytes_be())),
    })
}

fn parse_crl(der: &[u8]) -> Result<CertificateRevocationList<'_>, CrlError> {
    match CertificateRevocationList::from_der(der) {
        Ok(([], crl)) => Ok(crl),
        Ok((rest, _)) => Err(CrlError::Unparseable {
            reason: format!("{} trailing bytes", rest.len()),
        }),
        Err(e) => Err(CrlError::Unparseable {
            reason: e.to_string(),
        }),
    }
}

/// Rule (5) of [`verify_crl`]: nothing critical is left unread.
fn check_understood(crl: &CertificateRevocationList<'_>) -> Result<(), CrlError> {
    let unsupported = |reason: String| CrlError::Unsupported {
        issuer: crl.issuer().to_string(),
        reason,
    };
    for ext in crl.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::IssuingDistributionPoint(idp) if idp.indirect_crl => {
                return Err(unsupported("an indirect CRL".into()))
            }
            ParsedExtension::IssuingDistributionPoint(_)
            | ParsedExtension::CRLNumber(_)
            | ParsedExtension::AuthorityKeyIdentifier(_) => {}
            _ if ext.critical => {
                return Err(unsupported(format!("critical extension {}", ext.oid)))
            }
            _ => {}
        }
    }
    for entry in crl.iter_revoked_certificates() {
        // certificateIssuer (the only critical entry extension of RFC 5280)
        // would move the entry to another issuer.
        if let Some(ext) = entry.extensions().iter().find(|ext| ext.critical) {
            return Err(unsupported(format!(
                "critical extension {} on the entry for serial {}",
                ext.oid,
                serial_hex(entry.raw_serial())
            )));
        }
    }
    Ok(())
}

/// The (issuer name DER, [`serial_key`]) of a certificate: what a CRL entry
/// is matched against. `None` when `cert_der` does not have a certificate's shape.
pub fn issuer_and_serial(cert_der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (issuer, serial) = issuer_and_serial_raw(cert_der)?;
    Some((issuer.to_vec(), serial_key(serial)))
}

/// The issuer name (whole DER TLV, as x509-parser's `as_raw`) and the raw
/// serial bytes of a certificate, borrowed. A walk over the first fields of
/// the TBSCertificate, no full parse: this runs on every handshake.
/// `None` when the bytes do not have that shape.
pub fn issuer_and_serial_raw(cert_der: &[u8]) -> Option<(&[u8], &[u8])> {
    let (cert, _) = der::expect(cert_der, der::SEQUENCE)?;
    let (tbs, _) = der::expect(cert, der::SEQUENCE)?;
    // version [0] EXPLICIT, absent for v1.
    let tbs = match der::read_tlv(tbs)? {
        (der::CONTEXT_0, _, rest) => rest,
        _ => tbs,
    };
    let (serial, rest) = der::expect(tbs, der::INTEGER)?;
    let (_signature, rest) = der::expect(rest, der::SEQUENCE)?;
    let (tag, _, after) = der::read_tlv(rest)?;
    if tag != der::SEQUENCE {
        return None;
    }
    Some((&rest[..rest.len() - after.len()], serial))
}

/// The revoked certificates named by verified CRLs, as (issuer name DER,
/// serial) pairs. A lookup is two hash probes: cheap enough for every handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedSet {
    by_issuer: HashMap<Vec<u8>, HashSet<Vec<u8>>>,
    len: usize,
}

impl RevokedSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The set of everything the given CRLs revoke.
    pub fn from_crls<'a>(crls: impl IntoIterator<Item = &'a VerifiedCrl>) -> Self {
        let mut set = Self::new();
        for crl in crls {
            set.insert_crl(crl);
        }
        set
    }

    /// Adds what `crl` revokes.
    pub fn insert_crl(&mut self, crl: &VerifiedCrl) {
        for serial in crl.serials() {
            self.insert(crl.issuer_raw(), serial);
        }
    }

    /// Adds one (issuer name DER, serial in any leading-zero form) pair.
    pub fn insert(&mut self, issuer_raw: &[u8], serial_raw: &[u8]) {
        let serials = self.by_issuer.entry(issuer_raw.to_vec()).or_default();
        if serials.insert(serial_key(serial_raw)) {
            self.len += 1;
        }
    }

    /// Whether the certificate with this issuer name (DER) and serial is revoked.
    pub fn contains(&self, issuer_raw: &[u8], serial_raw: &[u8]) -> bool {
        self.by_issuer
            .get(issuer_raw)
            .is_some_and(|serials| serials.contains(strip_serial(serial_raw)))
    }

    /// Whether `cert_der` is revoked. A certificate that does not parse is
    /// not found here (chain verification refuses it anyway).
    pub fn contains_cert(&self, cert_der: &[u8]) -> bool {
        match issuer_and_serial_raw(cert_der) {
            Some((issuer, serial)) => self.contains(issuer, serial),
            None => false,
        }
    }

    /// How many (issuer, serial) pairs.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is revoked.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// CRLs (DER) as concatenated PEM blocks labelled "X509 CRL".
pub fn crls_to_pem(crls: &[Vec<u8>]) -> String {
    crls.iter()
        .map(|der| pem::encode(CRL_PEM_LABEL, der).to_string())
        .collect()
}

/// The DER CRLs in PEM text, in order. No block at all is no CRL (not an
/// error); a block with another label, or one that does not parse as a CRL,
/// is refused. Signatures are not checked here: use [`verify_crl`].
pub fn parse_pem_crls(pem_text: &str) -> Result<Vec<Vec<u8>>, CrlError> {
    let mut crls = Vec::new();
    for (i, block) in pem::parse_blocks(pem_text)?.into_iter().enumerate() {
        if block.label != CRL_PEM_LABEL {
            return Err(CrlError::UnexpectedBlock {
                index: i + 1,
                label: block.label,
            });
        }
        parse_crl(&block.der).map_err(|e| match e {
            CrlError::Unparseable { reason } => CrlError::Unparseable {
                reason: format!("PEM block #{}: {reason}", i + 1),
            },
            other => other,
        })?;
        crls.push(block.der.to_vec());
    }
    Ok(crls)
}

#[cfg(test)]
mod tests;
