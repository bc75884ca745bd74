//! Test fixtures for the pki tests: identities, a fixed clock, CAs minted with
//! rcgen at test time, and hand-built CSRs for keys rcgen cannot sign with.

use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use super::der::{self, tlv};
use super::key::{KeyAlgorithm, PrivateKey};
use crate::identity::SpiffeId;
use crate::time::TestClock;

/// The fixed "now" of the tests.
pub(crate) fn now() -> OffsetDateTime {
    datetime!(2026-03-01 12:00 UTC)
}

/// A clock frozen at [`now`].
pub(crate) fn clock() -> TestClock {
    TestClock::new(now())
}

/// `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub(crate) fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::parse(&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")).unwrap()
}

/// One RSA-2048 key shared by every test (generation takes a while in debug builds).
pub(crate) fn rsa_2048() -> &'static PrivateKey {
    static KEY: OnceLock<PrivateKey> = OnceLock::new();
    KEY.get_or_init(|| PrivateKey::generate(KeyAlgorithm::Rsa2048).unwrap())
}

/// A CSR built by hand: empty subject, no attributes, `spki` as the key,
/// `sig_alg` (a DER AlgorithmIdentifier) and `sign` over the request info.
pub(crate) fn raw_csr(spki: &[u8], sig_alg: &[u8], sign: &dyn Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let info = tlv(
        der::SEQUENCE,
        &der::cat(&[
            &tlv(der::INTEGER, &[0]),
            &tlv(der::SEQUENCE, &[]),
            spki,
            &tlv(der::CONTEXT_0, &[]),
        ]),
    );
    let mut signature = vec![0u8];
    signature.extend(sign(&info));
    tlv(
        der::SEQUENCE,
        &der::cat(&[&info, sig_alg, &tlv(der::BIT_STRING, &signature)]),
    )
}

/// A CA certificate and key minted with rcgen.
pub(crate) struct TestCa {
    pub(crate) key: KeyPair,
    pub(crate) params: CertificateParams,
    pub(crate) cert: rcgen::Certificate,
}

impl TestCa {
    /// CA parameters: CN, CA:TRUE, keyCertSign + cRLSign, valid a year around [`now`].
    pub(crate) fn params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "meshid tests");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = now() - Duration::days(30);
        params.not_after = now() + Duration::days(365);
        params
    }

    /// A self-signed root from `params`.
    pub(crate) fn root(params: CertificateParams) -> Self {
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self { key, params, cert }
    }

    /// A certificate from `params` signed by `self`, with a new P-256 key.
    pub(crate) fn issue(&self, params: CertificateParams) -> Self {
        let key = KeyPair::generate().unwrap();
        let issuer = rcgen::Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        Self { key, params, cert }
    }

    /// The certificate, PEM.
    pub(crate) fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The key, PKCS#8 PEM.
    pub(crate) fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}
