//! The authority's error type: every start-up failure names the file and the
//! rule it breaks, so an operator can fix the file without reading code.

use std::io;
use std::path::PathBuf;

use time::OffsetDateTime;

use crate::pki::bundle::BundleError;
use crate::pki::key::KeyError;
use crate::pki::template::TemplateError;
use crate::pki::validate::ValidateError;

use super::Origin;

/// Why the authority could not start or sign. File errors name the file and the rule.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// A file (or in-memory entry) could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or entry.
        path: Origin,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file or directory could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file the chosen plug-in layout needs is missing.
    #[error("{path} is missing ({layout})")]
    MissingFile {
        /// The missing file or entry.
        path: Origin,
        /// Which layout was recognised and what it needs.
        layout: &'static str,
    },
    /// The plug-in directory holds neither layout.
    #[error(
        "{store} holds no plug-in CA: expected Istio cacerts files (ca-cert.pem, ca-key.pem, root-cert.pem, \
         cert-chain.pem) or cert-manager files (tls.crt, tls.key, ca.crt)"
    )]
    NoPluginFiles {
        /// The directory or in-memory store.
        store: String,
    },
    /// One of the self-signed CA's two files exists without the other.
    #[error(
        "{} exists but {} does not: refusing to generate a new root over half of an existing CA \
         (every workload would lose trust); restore {1}, or remove {0} to start a new root",
        present.display(), missing.display()
    )]
    HalfWritten {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A key file does not hold a usable key.
    #[error("{path}: {source}")]
    Key {
        /// The key file.
        path: Origin,
        /// What is wrong with the key.
        #[source]
        source: KeyError,
    },
    /// A certificate file does not hold usable certificates.
    #[error("{path}: {source}")]
    Bundle {
        /// The certificate file.
        path: Origin,
        /// What is wrong with it.
        #[source]
        source: BundleError,
    },
    /// A certificate file breaks a rule not covered by a more specific variant.
    #[error("{path}: {reason}")]
    Certificate {
        /// The certificate file.
        path: Origin,
        /// The rule broken.
        reason: String,
    },
    /// The private key does not belong to the signing certificate.
    #[error("the private key in {key} does not belong to the certificate in {cert}")]
    KeyMismatch {
        /// The key file.
        key: Origin,
        /// The certificate file.
        cert: Origin,
    },
    /// A certificate that must sign certificates is not allowed to.
    #[error("{path}: certificate \"{subject}\" cannot sign certificates: {rule}")]
    NotCa {
        /// The file it came from.
        path: Origin,
        /// Its subject.
        subject: String,
        /// The rule broken.
        rule: &'static str,
    },
    /// A certificate has expired.
    #[error("{path}: certificate \"{subject}\" expired at {not_after} (now {now})")]
    Expired {
        /// The file it came from.
        path: Origin,
        /// Its subject.
        subject: String,
        /// Its notAfter.
        not_after: OffsetDateTime,
        /// The clock's now.
        now: OffsetDateTime,
    },
    /// A certificate is not valid yet.
    #[error("{path}: certificate \"{subject}\" is not valid before {not_before} (now {now}); check the clock")]
    NotYetValid {
        /// The file it came from.
        path: Origin,
        /// Its subject.
        subject: String,
        /// Its notBefore.
        not_before: OffsetDateTime,
        /// The clock's now.
        now: OffsetDateTime,
    },
    /// A certificate in the roots file is not a self-signed CA.
    #[error("{path}: root certificate \"{subject}\" is not self-signed ({reason})")]
    RootNotSelfSigned {
        /// The roots file.
        path: Origin,
        /// Its subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// The signing certificate does not chain, signature by signature, to a root.
    #[error("{path}: certificate \"{subject}\" does not chain to a root in {roots}: {reason}")]
    ChainBroken {
        /// The file of the certificate whose issuer was not found.
        path: Origin,
        /// Its subject.
        subject: String,
        /// The roots file.
        roots: Origin,
        /// What was missing or did not verify.
        reason: String,
    },
    /// A CA's pathLenConstraint is smaller than the number of CAs below it.
    #[error(
        "{path}: certificate \"{subject}\" allows {limit} intermediate CA(s) below it (pathLenConstraint) but the chain has {below}"
    )]
    PathLenExceeded {
        /// The file it came from.
        path: Origin,
        /// Its subject.
        subject: String,
        /// Its pathLenConstraint.
        limit: u32,
        /// Intermediate CAs below it.
        below: usize,
    },
    /// rcgen cannot sign correctly with this CA (checked by a probe signature at start-up).
    #[error("{path}: cannot issue certificates with this CA: {reason}")]
    Unusable {
        /// The signing certificate file.
        path: Origin,
        /// Why.
        reason: String,
    },
    /// A new root key could not be generated.
    #[error("could not generate the root CA key: {0}")]
    Generate(#[source] KeyError),
    /// The new root certificate could not be built.
    #[error("could not build the root CA certificate: {0}")]
    RootCertificate(#[source] rcgen::Error),
    /// The public key to certify is of a refused type or encoding.
    #[error("public key cannot be certified: it is {what}")]
    UnsupportedPublicKey {
        /// What the key is.
        what: String,
    },
    /// The leaf parameters could not be built (TTL, expired CA, SAN values).
    #[error("{0}")]
    Template(#[from] TemplateError),
    /// rcgen failed to sign.
    #[error("signing failed: {0}")]
    Sign(#[source] rcgen::Error),
    /// The certificate just signed fails a post-sign check: a bug, never returned.
    #[error("internal error: the certificate just signed fails a check and was discarded: {0}")]
    PostSignCheck(#[source] ValidateError),
}
