//! Pure pieces of the SPIFFE Workload API: the security-header check and the
//! messages built from the cache's certificate and trust bundle.
//!
//! Rules enforced (SPIFFE Workload API spec, and what the `spiffe` crate
//! checks): `x509_svid` is the DER chain, leaf first, intermediates after, no
//! roots; `x509_svid_key` is unencrypted PKCS#8 DER; `bundle` is the
//! concatenated DER roots and never empty; bundle map keys are
//! `spiffe://<trust-domain>`; `crl` is the authorities' CRLs, DER, one per
//! element (verified by the agent's trust task before they get here).

use std::collections::HashMap;

use rustls_pki_types::CertificateDer;
use tonic::metadata::MetadataMap;

use crate::agent::cache::{Svid, TrustBundle};
use crate::agent::workload_api::WorkloadApiError;
use crate::identity::TrustDomain;
use crate::proto::spiffe_workload::{X509BundlesResponse, X509svid, X509svidResponse};

/// The metadata every Workload API request must carry, with value `true`.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Refuses a request without `workload.spiffe.io: true` (the spec's guard
/// against requests forwarded by a confused proxy).
pub fn check_security_header(metadata: &MetadataMap) -> Result<(), WorkloadApiError> {
    match metadata.get(SECURITY_HEADER).map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(WorkloadApiError::MissingSecurityHeader),
    }
}

/// DER certificates back to back, in the order given.
pub fn concat_der(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(certs.iter().map(|c| c.len()).sum());
    for cert in certs {
        out.extend_from_slice(cert);
    }
    out
}

/// The full X.509 state for the caller: its one SVID with key and bundle.
/// `None` when the bundle has no root (the message would be rejected).
pub fn x509_svid_response(svid: &Svid, bundle: &TrustBundle) -> Option<X509svidResponse> {
    if bundle.roots_der.is_empty() || svid.chain_der.is_empty() {
        return None;
    }
    Some(X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: svid.identity.to_string(),
            x509_svid: concat_der(&svid.chain_der),
            x509_svid_key: svid.key.secret_pkcs8_der().to_vec(),
            bundle: concat_der(&bundle.roots_der),
            hint: String::new(),
        }],
        crl: bundle.crls_der.clone(),
        federated_bundles: HashMap::new(),
    })
}

/// The bundles the caller should trust: ours, keyed `spiffe://<trust-domain>`.
/// `None` when the bundle has no root.
pub fn x509_bundles_response(
    trust_domain: &TrustDomain,
    bundle: &TrustBundle,
) -> Option<X509BundlesResponse> {
    if bundle.roots_der.is_empty() {
        return None;
    }
    Some(X509BundlesResponse {
        crl: bundle.crls_der.clone(),
        bundles: HashMap::from([(trust_domain.id_string(), concat_der(&bundle.roots_der))]),
    })
}
