//! What start-up checks need to know about a CA certificate, parsed once, and
//! the checks themselves. Every error names the file the certificate came from.

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{AuthorityError, Origin};

/// Signature algorithms refused on CA certificates below the root (SHA-1, MD5).
const WEAK_SIGNATURE_OIDS: &[&str] = &[
    "1.2.840.113549.1.1.4",
    "1.2.840.113549.1.1.5",
    "1.3.14.3.2.29",
    "1.2.840.10045.4.1",
];

/// The facts of one certificate, owned (no borrow of the DER).
#[derive(Debug, Clone)]
pub(super) struct CertFacts {
    pub(super) der: CertificateDer<'static>,
    /// The file (or in-memory entry) it was read from.
    pub(super) path: Origin,
    pub(super) subject: String,
    pub(super) issuer: String,
    pub(super) subject_raw: Vec<u8>,
    pub(super) issuer_raw: Vec<u8>,
    pub(super) spki_raw: Vec<u8>,
    pub(super) not_before: OffsetDateTime,
    pub(super) not_after: OffsetDateTime,
    /// BasicConstraints cA, `None` when the extension is absent.
    pub(super) ca: Option<bool>,
    pub(super) path_len: Option<u32>,
    /// KeyUsage keyCertSign, `None` when the extension is absent.
    pub(super) key_cert_sign: Option<bool>,
}

impl CertFacts {
    pub(super) fn parse(
        der: CertificateDer<'static>,
        path: &Origin,
    ) -> Result<Self, AuthorityError> {
        let bad = |reason: String| AuthorityError::Certificate {
            path: path.clone(),
            reason,
        };
        let (_, cert) = X509Certificate::from_der(&der)
            .map_err(|e| bad(format!("certificate does not parse: {e}")))?;
        let bc = cert
            .basic_constraints()
            .map_err(|e| bad(format!("BasicConstraints: {e}")))?;
        let ku = cert
            .key_usage()
            .map_err(|e| bad(format!("KeyUsage: {e}")))?;
        Ok(Self {
            path: path.clone(),
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            subject_raw: cert.subject().as_raw().to_vec(),
            issuer_raw: cert.issuer().as_raw().to_vec(),
            spki_raw: cert.public_key().raw.to_vec(),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            ca: bc.as_ref().map(|bc| bc.value.ca),
            path_len: bc.and_then(|bc| bc.value.path_len_constraint),
            key_cert_sign: ku.map(|ku| ku.value.key_cert_sign()),
            der: der.clone(),
        })
    }

    /// Rule: nothing expired or not yet valid.
    pub(super) fn check_valid_at(&self, now: OffsetDateTime) -> Result<(), AuthorityError> {
        if now < self.not_before {
            return Err(AuthorityError::NotYetValid {
                path: self.path.clone(),
                subject: self.subject.clone(),
                not_before: self.not_before,
                now,
            });
        }
        if now > self.not_after {
            return Err(AuthorityError::Expired {
                path: self.path.clone(),
                subject: self.subject.clone(),
                not_after: self.not_after,
                now,
            });
        }
        Ok(())
    }

    /// Rule: a CA (BasicConstraints CA:TRUE) allowed to sign certificates.
    /// With `require_key_usage`, KeyUsage must be present with keyCertSign
    /// (the signing certificate); otherwise an absent KeyUsage is tolerated
    /// (older roots and intermediates), a present one must have keyCertSign.
    pub(super) fn check_can_sign(&self, require_key_usage: bool) -> Result<(), AuthorityError> {
        let not_ca = |rule| AuthorityError::NotCa {
            path: self.path.clone(),
            subject: self.subject.clone(),
            rule,
        };
        match self.ca {
            Some(true) => {}
            Some(false) => return Err(not_ca("BasicConstraints says CA:FALSE")),
            None => {
                return Err(not_ca(
                    "no BasicConstraints extension (CA:TRUE is required)",
                ))
            }
        }
        match self.key_cert_sign {
            Some(true) => Ok(()),
            Some(false) => Err(not_ca("KeyUsage lacks keyCertSign")),
            None if require_key_usage => {
                Err(not_ca("no KeyUsage extension (keyCertSign is required)"))
            }
            None => Ok(()),
        }
    }

    /// Rule: a root is a self-signed CA.
    pub(super) fn check_self_signed(&self) -> Result<(), AuthorityError> {
        let not_root = |reason: String| AuthorityError::RootNotSelfSigned {
            path: self.path.clone(),
            subject: self.subject.clone(),
            reason,
        };
        if self.subject_raw != self.issuer_raw {
            return Err(not_root(format!("its issuer is \"{}\"", self.issuer)));
        }
        self.signed_by(&self.spki_raw, false).map_err(not_root)?;
        self.check_can_sign(false)
    }

    /// Whether the subject and issuer names are the same (a root, or a cross-signed self-issued CA).
    pub(super) fn is_self_issued(&self) -> bool {
        self.subject_raw == self.issuer_raw
    }

    /// Verifies this certificate's signature with `issuer_spki` (DER). With
    /// `refuse_weak`, SHA-1 and MD5 signatures are refused even if they verify.
    pub(super) fn signed_by(&self, issuer_spki: &[u8], refuse_weak: bool) -> Result<(), String> {
        let (_, cert) = X509Certificate::from_der(&self.der).map_err(|e| e.to_string())?;
        let alg = cert.signature_algorithm.algorithm.to_id_string();
        if refuse_weak && WEAK_SIGNATURE_OIDS.contains(&alg.as_str()) {
            return Err(format!(
                "it is signed with a SHA-1 or MD5 algorithm ({alg})"
            ));
        }
        let spki = match SubjectPublicKeyInfo::from_der(issuer_spki) {
            Ok((_, spki)) => spki,
            Err(e) => return Err(format!("issuer key does not parse: {e}")),
        };
        cert.verify_signature(Some(&spki)).map_err(|e| match e {
            x509_parser::error::X509Error::SignatureUnsupportedAlgorithm => {
                format!("its signature algorithm {alg} is not supported")
            }
            _ => "its signature does not verify with the issuer's public key".to_owned(),
        })
    }

    /// Whether `spki_der` is this certificate's public key (algorithm and key
    /// bits compared, so equivalent encodings of the parameters still match).
    pub(super) fn has_public_key(&self, spki_der: &[u8]) -> bool {
        let parse = |der| {
            SubjectPublicKeyInfo::from_der(der)
                .ok()
                .map(|(_, spki)| spki)
        };
        match (parse(&self.spki_raw), parse(spki_der)) {
            (Some(a), Some(b)) => {
                a.algorithm.algorithm == b.algorithm.algorithm
                    && a.subject_public_key.data == b.subject_public_key.data
            }
            _ => false,
        }
    }
}
