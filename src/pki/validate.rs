//! Post-sign checks: every certificate the CA signs is re-parsed with an
//! independent parser (x509-parser, not rcgen) and checked against the
//! X.509-SVID profile before it is audited and returned. A failure here is a
//! bug in meshid, never the caller's fault: the certificate is dropped.

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::identity::SpiffeId;

/// Which X.509-SVID rule a signed certificate breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidateError {
    /// The DER does not parse (or has trailing bytes).
    #[error("certificate does not parse: {reason}")]
    Unparseable {
        /// The parser's complaint.
        reason: String,
    },
    /// An extension appears twice or does not parse.
    #[error("certificate extensions are invalid: {reason}")]
    Extensions {
        /// The parser's complaint.
        reason: String,
    },
    /// Not an X.509 v3 certificate.
    #[error("certificate is not X.509 v3")]
    NotV3,
    /// No SubjectAltName extension.
    #[error("certificate has no SubjectAltName extension")]
    MissingSan,
    /// Not exactly one URI SAN.
    #[error("certificate has {count} URI SANs; an X.509-SVID has exactly one")]
    UriSanCount {
        /// How many there are.
        count: usize,
    },
    /// The URI SAN is not the identity that was to be issued.
    #[error("certificate URI SAN is {found}, expected {expected}")]
    WrongIdentity {
        /// The URI in the certificate.
        found: String,
        /// The identity that was authorized.
        expected: SpiffeId,
    },
    /// The subject is empty but the SAN extension is not critical (RFC 5280 4.2.1.6).
    #[error("certificate subject is empty but its SubjectAltName extension is not critical")]
    SanNotCritical,
    /// No BasicConstraints extension.
    #[error("certificate has no BasicConstraints extension (SPIFFE verifiers require CA:FALSE explicitly)")]
    MissingBasicConstraints,
    /// BasicConstraints says CA:TRUE.
    #[error("leaf certificate has BasicConstraints CA:TRUE")]
    IsCa,
    /// No KeyUsage extension.
    #[error("certificate has no KeyUsage extension")]
    MissingKeyUsage,
    /// KeyUsage is not critical.
    #[error("certificate KeyUsage extension is not critical")]
    KeyUsageNotCritical,
    /// KeyUsage lacks digitalSignature.
    #[error("certificate KeyUsage lacks digitalSignature")]
    NoDigitalSignature,
    /// KeyUsage has keyCertSign or cRLSign.
    #[error("leaf certificate KeyUsage has {usage}")]
    SigningUsage {
        /// "keyCertSign" or "cRLSign".
        usage: &'static str,
    },
    /// EKU is missing or lacks serverAuth / clientAuth.
    #[error("certificate ExtendedKeyUsage lacks {missing}")]
    ExtendedKeyUsage {
        /// "the extension", "serverAuth" or "clientAuth".
        missing: &'static str,
    },
    /// The serial number breaks RFC 5280 4.1.2.2.
    #[error("certificate serial number is {problem}")]
    Serial {
        /// What is wrong: "negative", "zero", "longer than 20 octets".
        problem: &'static str,
    },
    /// No SubjectKeyIdentifier.
    #[error("certificate has no SubjectKeyIdentifier")]
    MissingSki,
    /// No AuthorityKeyIdentifier with a key identifier.
    #[error("certificate has no AuthorityKeyIdentifier key identifier")]
    MissingAki,
    /// The issuer key given does not parse.
    #[error("issuer public key does not parse")]
    BadIssuerKey,
    /// The signature does not verify with the issuer's key.
    #[error("certificate signature does not verify with the issuer's public key")]
    BadSignature,
    /// The certificate does not carry the public key that was asked for.
    #[error("certificate public key is not the one that was asked for")]
    WrongPublicKey,
    /// The issuer name is not the signing certificate's subject, byte for byte.
    #[error("certificate issuer name does not match the signing certificate's subject")]
    WrongIssuerName,
}

/// Checks a freshly signed leaf against the X.509-SVID profile for `expected`,
/// including its signature with `issuer_spki_der` (SubjectPublicKeyInfo DER).
pub fn check_leaf(
    der: &[u8],
    expected: &SpiffeId,
    issuer_spki_der: &[u8],
) -> Result<(), ValidateError> {
    let cert = parse(der)?;
    check_profile(&cert, expected)?;
    let issuer_key = match SubjectPublicKeyInfo::from_der(issuer_spki_der) {
        Ok(([], spki)) => spki,
        _ => return Err(ValidateError::BadIssuerKey),
    };
    cert.verify_signature(Some(&issuer_key))
        .map_err(|_| ValidateError::BadSignature)
}

/// The URI names of a SubjectAlternativeName extension, in order.
pub fn uri_names<'a>(san: &x509_parser::extensions::SubjectAlternativeName<'a>) -> Vec<&'a str> {
    san.general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect()
}

/// The URI SANs of a certificate (empty when it has no SAN extension).
pub fn uri_sans<'a>(
    cert: &'a X509Certificate<'_>,
) -> Result<Vec<&'a str>, x509_parser::error::X509Error> {
    Ok(cert
        .subject_alternative_name()?
        .map(|san| uri_names(san.value))
        .unwrap_or_default())
}

/// The check every issued leaf gets before it leaves (one parse): the
/// X.509-SVID profile for `expected`, exactly `subject_spki_der` as its key,
/// and `issuer_subject_der` as its issuer. The signature itself is verified
/// by [`check_leaf`] on the authority's start-up probe rather than on every
/// leaf: the signer and key cannot change in between, and a P-256 verify
/// would add about half again to the crypto cost of an issuance.
///
/// Returns what the audit record needs from the certificate as signed, read
/// in the same parse.
pub fn check_issued(
    der: &[u8],
    expected: &SpiffeId,
    subject_spki_der: &[u8],
    issuer_subject_der: &[u8],
) -> Result<IssuedFacts, ValidateError> {
    let cert = parse(der)?;
    check_profile(&cert, expected)?;
    if cert.public_key().raw != subject_spki_der {
        return Err(ValidateError::WrongPublicKey);
    }
    if cert.issuer().as_raw() != issuer_subject_der {
        return Err(ValidateError::WrongIssuerName);
    }
    Ok(IssuedFacts {
        serial: cert.raw_serial().to_vec(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// Facts read from a certificate by [`check_issued`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedFacts {
    /// The serial number's content octets, as encoded.
    pub serial: Vec<u8>,
    /// notBefore.
    pub not_before: time::OffsetDateTime,
    /// notAfter.
    pub not_after: time::OffsetDateTime,
}

/// Checks that a signed certificate carries exactly `subject_spki_der` and
/// names `issuer_subject_der` (the signing certificate's raw subject) as issuer.
pub fn check_binding(
    der: &[u8],
    subject_spki_der: &[u8],
    issuer_subject_der: &[u8],
) -> Result<(), ValidateError> {
    let cert = parse(der)?;
    if cert.public_key().raw != subject_spki_der {
        return Err(ValidateError::WrongPublicKey);
    }
    if cert.issuer().as_raw() != issuer_subject_der {
        return Err(ValidateError::WrongIssuerName);
    }
    Ok(())
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, ValidateError> {
    match X509Certificate::from_der(der) {
        Ok(([], cert)) => Ok(cert),
        Ok((rest, _)) => Err(ValidateError::Unparseable {
            reason: format!("{} trailing bytes", rest.len()),
        }),
        Err(e) => Err(ValidateError::Unparseable {
            reason: e.to_string(),
        }),
    }
}

fn check_profile(cert: &X509Certificate<'_>, expected: &SpiffeId) -> Result<(), ValidateError> {
    let ext_err = |e: x509_parser::error::X509Error| ValidateError::Extensions {
        reason: e.to_string(),
    };
    if cert.version().0 != 2 {
        return Err(ValidateError::NotV3);
    }

    // Exactly one URI SAN, the expected identity; critical if the subject is empty.
    let san = cert
        .subject_alternative_name()
        .map_err(ext_err)?
        .ok_or(ValidateError::MissingSan)?;
    let uris = uri_names(san.value);
    match uris.as_slice() {
        [uri] if *uri == expected.to_string() => {}
        [uri] => {
            return Err(ValidateError::WrongIdentity {
                found: (*uri).to_owned(),
                expected: expected.clone(),
            })
        }
        _ => return Err(ValidateError::UriSanCount { count: uris.len() }),
    }
    if cert.subject().iter_rdn().next().is_none() && !san.critical {
        return Err(ValidateError::SanNotCritical);
    }

    // BasicConstraints present with CA:FALSE.
    let bc = cert
        .basic_constraints()
        .map_err(ext_err)?
        .ok_or(ValidateError::MissingBasicConstraints)?;
    if bc.value.ca {
        return Err(ValidateError::IsCa);
    }

    // KeyUsage critical, digitalSignature, never keyCertSign / cRLSign.
    let ku = cert
        .key_usage()
        .map_err(ext_err)?
        .ok_or(ValidateError::MissingKeyUsage)?;
    if !ku.critical {
        return Err(ValidateError::KeyUsageNotCritical);
    }
    if !ku.value.digital_signature() {
        return Err(ValidateError::NoDigitalSignature);
    }
    if ku.value.key_cert_sign() {
        return Err(ValidateError::SigningUsage {
            usage: "keyCertSign",
        });
    }
    if ku.value.crl_sign() {
        return Err(ValidateError::SigningUsage { usage: "cRLSign" });
    }

    // EKU serverAuth + clientAuth.
    let eku =
        cert.extended_key_usage()
            .map_err(ext_err)?
            .ok_or(ValidateError::ExtendedKeyUsage {
                missing: "the extension",
            })?;
    if !eku.value.server_auth {
        return Err(ValidateError::ExtendedKeyUsage {
            missing: "serverAuth",
        });
    }
    if !eku.value.client_auth {
        return Err(ValidateError::ExtendedKeyUsage {
            missing: "clientAuth",
        });
    }

    // Serial: positive, non-zero, at most 20 octets (the DER content octets).
    let serial = cert.raw_serial();
    if serial.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(ValidateError::Serial {
            problem: "negative",
        });
    }
    if serial.iter().all(|b| *b == 0) {
        return Err(ValidateError::Serial { problem: "zero" });
    }
    if serial.len() > 20 {
        return Err(ValidateError::Serial {
            problem: "longer than 20 octets",
        });
    }

    // SKI and AKI (with a key identifier).
    let mut ski = false;
    let mut aki = false;
    for ext in cert.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(_) => ski = true,
            ParsedExtension::AuthorityKeyIdentifier(a) => aki = a.key_identifier.is_some(),
            _ => {}
        }
    }
    if !ski {
        return Err(ValidateError::MissingSki);
    }
    if !aki {
        return Err(ValidateError::MissingAki);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
