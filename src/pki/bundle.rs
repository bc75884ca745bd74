//! Trust bundles: PEM files of certificates, parsed strictly, and joined.
//!
//! Used by the CA (plug-in CA files, the root bundle it serves) and by the
//! agent (the root bundle it receives). A file meant to hold certificates that
//! holds anything else (a private key, a CSR) is refused rather than skipped.

use rustls_pki_types::CertificateDer;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::pem::{self, PemError};

/// Why a certificate bundle could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The PEM text is malformed.
    #[error("{0}")]
    Pem(#[from] PemError),
    /// No CERTIFICATE block at all.
    #[error("no \"CERTIFICATE\" PEM block found")]
    Empty,
    /// A block that is not a certificate (its label is named; a key is never printed).
    #[error("PEM block #{index} is \"{label}\", only \"CERTIFICATE\" blocks are allowed here")]
    UnexpectedBlock {
        /// 1-based position of the block.
        index: usize,
        /// Its label.
        label: String,
    },
    /// A CERTIFICATE block whose body is not an X.509 certificate.
    #[error("certificate #{index} does not parse: {reason}")]
    InvalidCertificate {
        /// 1-based position of the block.
        index: usize,
        /// The parser's complaint.
        reason: String,
    },
}

/// Parses every certificate in `pem_text`, in order. At least one is required;
/// each must parse as X.509 with no trailing bytes.
pub fn parse_pem_certs(pem_text: &str) -> Result<Vec<CertificateDer<'static>>, BundleError> {
    let blocks = pem::parse_blocks(pem_text)?;
    if blocks.is_empty() {
        return Err(BundleError::Empty);
    }
    let mut certs = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.into_iter().enumerate() {
        let index = i + 1;
        if block.label != "CERTIFICATE" {
            return Err(BundleError::UnexpectedBlock {
                index,
                label: block.label,
            });
        }
        match X509Certificate::from_der(&block.der) {
            Ok(([], _)) => {}
            Ok((rest, _)) => {
                return Err(BundleError::InvalidCertificate {
                    index,
                    reason: format!("{} trailing bytes", rest.len()),
                })
            }
            Err(e) => {
                return Err(BundleError::InvalidCertificate {
                    index,
                    reason: e.to_string(),
                })
            }
        }
        certs.push(CertificateDer::from(block.der.to_vec()));
    }
    Ok(certs)
}

/// One certificate as a PEM block (64-column base64, final newline).
pub fn cert_pem(der: &[u8]) -> String {
    pem::encode("CERTIFICATE", der).to_string()
}

/// Joins PEM certificates into one bundle, each ending with exactly one newline.
pub fn concat_pem(certs: &[String]) -> String {
    let mut out = String::with_capacity(certs.iter().map(|c| c.len() + 1).sum());
    for cert in certs {
        let cert = cert.trim_end();
        if cert.is_empty() {
            continue;
        }
        out.push_str(cert);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed_pem(cn: &str) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn parses_every_certificate_in_order() {
        let (a, b) = (self_signed_pem("a"), self_signed_pem("b"));
        let bundle = concat_pem(&[a.clone(), b.clone()]);
        let certs = parse_pem_certs(&bundle).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(cert_pem(&certs[0]), a.replace("\r\n", "\n"));
        assert_eq!(cert_pem(&certs[1]), b.replace("\r\n", "\n"));
    }

    #[test]
    fn concat_normalises_newlines() {
        assert_eq!(
            concat_pem(&["A\n\n".into(), "B".into(), String::new()]),
            "A\nB\n"
        );
    }

    #[test]
    fn refuses_empty_keys_and_garbage() {
        assert_eq!(parse_pem_certs("just text"), Err(BundleError::Empty));
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let mixed = format!("{}{}", self_signed_pem("a"), key);
        let err = parse_pem_certs(&mixed).unwrap_err();
        assert_eq!(
            err,
            BundleError::UnexpectedBlock {
                index: 2,
                label: "PRIVATE KEY".into()
            }
        );
        // The message names the block, never its content.
        assert!(!err.to_string().contains(&key[30..60]));
        let garbage = pem::encode("CERTIFICATE", &[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(
            parse_pem_certs(&garbage),
            Err(BundleError::InvalidCertificate { index: 1, .. })
        ));
    }
}
