//! Public-key infrastructure: keys, CSR validation, leaf templates, the signing
//! authority and trust bundles.
//!
//! Owns every private key the CA holds and every certificate it signs. Does not
//! decide *who* may get *which* identity (that is `ca::authz`), and never reads
//! an identity from a CSR: the SPIFFE ID always comes from the caller.
//!
//! Rules enforced here (see `DESIGN.md`, "X.509-SVID"):
//! - a CSR contributes its public key only, after its self-signature verified
//!   and its requests were checked ([`csr`]);
//! - leaf certificates are built from server-side facts only ([`template`]) and
//!   re-parsed and checked after signing, before they leave ([`validate`]);
//! - private keys zeroize on drop, never print, and are written 0600 ([`key`]);
//! - a plug-in CA is checked file by file at start-up ([`authority`]);
//! - a CRL is believed only once verified against its CA certificate ([`crl`]).
//!
//! Uses `identity` and `time` only.

pub mod authority;
pub mod bundle;
pub mod crl;
pub mod csr;
mod der;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod key;
pub mod pem;
pub mod template;
pub mod validate;

pub use authority::{Authority, AuthorityConfig, AuthorityError, IssuedCert};
pub use bundle::{concat_pem, parse_pem_certs, BundleError};
pub use csr::{
    validate_csr, validate_csr_with_dns, CsrError, PublicKeyKind, ValidatedCsr, MAX_CSR_BYTES,
};
pub use key::{csr_pem, KeyAlgorithm, KeyError, PrivateKey};
pub use pem::PemError;
pub use template::{backdate, LeafRequest, TemplateError};
pub use validate::{check_leaf, ValidateError};
