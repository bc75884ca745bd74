//! Leaf certificate parameters, built from server-side facts only.
//!
//! Rule enforced: the certificate's content comes from the authenticated
//! identity, the granted TTL, the clock and the issuer — never from the CSR.
//! rcgen's `CertificateSigningRequestParams` carries whatever the CSR asked for
//! (a requested CA:TRUE included), so it is never used: [`leaf_params`] starts
//! from an empty `CertificateParams` every time.
//!
//! What every leaf gets (the X.509-SVID profile): empty subject; exactly one URI
//! SAN, critical because the subject is empty (rcgen marks the SAN extension
//! critical exactly when the subject DN is empty, and `validate` re-checks it);
//! BasicConstraints present with CA:FALSE; KeyUsage critical with
//! digitalSignature (plus keyEncipherment for RSA); EKU serverAuth + clientAuth;
//! SKI and AKI; a random positive serial of 16 octets.

use std::net::IpAddr;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom as _;
use time::{Duration, OffsetDateTime};

use crate::identity::SpiffeId;

/// What to issue: decided by the CA from authenticated facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafRequest {
    /// The identity: the caller's own, or an authorized impersonation.
    pub id: SpiffeId,
    /// The granted TTL (already defaulted and clamped by the CA).
    pub ttl: Duration,
    /// DNS SANs: the CA's own serving certificate (ztunnel checks it against
    /// the host name in its CA address), and the few workloads the operator
    /// lists in `--workload-dns-names` (the injector's Service name).
    pub dns_names: Vec<String>,
    /// IP SANs, same purpose as `dns_names` (an address like 127.0.0.1).
    pub ip_addresses: Vec<IpAddr>,
}

impl LeafRequest {
    /// A workload leaf: the identity and TTL, no DNS or IP SANs.
    pub fn workload(id: SpiffeId, ttl: Duration) -> Self {
        Self {
            id,
            ttl,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        }
    }
}

/// Why leaf parameters could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TemplateError {
    /// A TTL of zero or less.
    #[error("granted TTL must be positive, got {ttl}")]
    NonPositiveTtl {
        /// The TTL asked for.
        ttl: Duration,
    },
    /// The issuing certificate has already expired: nothing can be issued.
    #[error("the signing certificate expired at {issuer_not_after}, now is {now}; rotate the CA")]
    IssuerExpired {
        /// The issuer's notAfter.
        issuer_not_after: OffsetDateTime,
        /// The clock's now.
        now: OffsetDateTime,
    },
    /// A DNS name that cannot be an IA5String SAN.
    #[error("DNS name {name:?} cannot be put in a certificate (must be ASCII)")]
    BadDnsName {
        /// The offending name.
        name: String,
    },
    /// The SPIFFE ID cannot be an IA5String (it always can: SpiffeId is ASCII).
    #[error("SPIFFE ID {id} cannot be put in a URI SAN")]
    BadUri {
        /// The identity.
        id: SpiffeId,
    },
    /// The operating system's random generator failed.
    #[error("the system random generator failed while making a serial number")]
    Random,
}

/// How far notBefore is moved into the past: `min(allowance, ttl / 10)`.
///
/// Clients (ztunnel, istio-agent) renew at half of notAfter − notBefore; a
/// backdate comparable to the TTL would put that half-way point in the past
/// and make them renew in a loop, so the backdate is capped at a tenth of the
/// TTL. Never negative.
pub fn backdate(ttl: Duration, allowance: Duration) -> Duration {
    allowance.min(ttl / 10).max(Duration::ZERO)
}

/// A random positive serial number of at most 20 octets (RFC 5280 4.1.2.2):
/// 16 random bytes from the OS generator, top bit cleared so the DER INTEGER is
/// positive without a padding byte, never zero.
pub fn random_serial() -> Result<SerialNumber, TemplateError> {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TemplateError::Random)?;
    bytes[0] &= 0x7f;
    // A leading zero octet would be dropped by DER; keep exactly 16 octets.
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// The parameters of a leaf for `req`, issued at `now` by an issuer whose
/// certificate expires at `issuer_not_after`.
///
/// Validity: notBefore = now − [`backdate`]`(ttl, clock_skew)`;
/// notAfter = min(now + ttl, issuer_not_after), so no leaf outlives its issuer.
pub fn leaf_params(
    req: &LeafRequest,
    rsa_key: bool,
    now: OffsetDateTime,
    clock_skew: Duration,
    issuer_not_after: OffsetDateTime,
) -> Result<CertificateParams, TemplateError> {
    if req.ttl <= Duration::ZERO {
        return Err(TemplateError::NonPositiveTtl { ttl: req.ttl });
    }
    if issuer_not_after <= now {
        return Err(TemplateError::IssuerExpired {
            issuer_not_after,
            now,
        });
    }

    let mut params = CertificateParams::default();
    // Empty subject: the identity is the URI SAN (and rcgen then marks the SAN critical).
    params.distinguished_name = DistinguishedName::new();
    params.not_before = now - backdate(req.ttl, clock_skew);
    params.not_after = (now + req.ttl).min(issuer_not_after);
    params.serial_number = Some(random_serial()?);

    let uri = req
        .id
        .to_string()
        .try_into()
        .map_err(|_| TemplateError::BadUri { id: req.id.clone() })?;
    let mut sans = vec![SanType::URI(uri)];
    for name in &req.dns_names {
        let dns = name
            .clone()
            .try_into()
            .map_err(|_| TemplateError::BadDnsName { name: name.clone() })?;
        sans.push(SanType::DnsName(dns));
    }
    sans.extend(req.ip_addresses.iter().copied().map(SanType::IpAddress));
    params.subject_alt_names = sans;

    // BasicConstraints present, CA:FALSE (the Rust SPIFFE crate rejects a leaf
    // without it). With ExplicitNoCa rcgen also writes the SKI.
    params.is_ca = IsCa::ExplicitNoCa;
    // rcgen always marks KeyUsage critical.
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if rsa_key {
        params.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.key_identifier_method = KeyIdMethod::Sha256;
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn id() -> SpiffeId {
        SpiffeId::parse("spiffe://cluster.local/ns/a/sa/x").unwrap()
    }

    #[test]
    fn backdate_is_capped_at_a_tenth_of_the_ttl() {
        let minute = Duration::seconds(60);
        assert_eq!(backdate(Duration::hours(24), minute), minute);
        assert_eq!(
            backdate(Duration::seconds(100), minute),
            Duration::seconds(10)
        );
        assert_eq!(backdate(Duration::seconds(100), -minute), Duration::ZERO);
    }

    #[test]
    fn validity_never_outlives_the_issuer() {
        let now = datetime!(2026-01-01 0:00 UTC);
        let req = LeafRequest::workload(id(), Duration::hours(24));
        let params = leaf_params(
            &req,
            false,
            now,
            Duration::seconds(60),
            now + Duration::hours(1),
        )
        .unwrap();
        assert_eq!(params.not_after, now + Duration::hours(1));
        assert_eq!(params.not_before, now - Duration::seconds(60));
        let params = leaf_params(
            &req,
            false,
            now,
            Duration::seconds(60),
            now + Duration::days(9),
        )
        .unwrap();
        assert_eq!(params.not_after, now + Duration::hours(24));
    }

    #[test]
    fn refuses_non_positive_ttl_and_expired_issuer() {
        let now = datetime!(2026-01-01 0:00 UTC);
        let req = LeafRequest::workload(id(), Duration::ZERO);
        assert!(matches!(
            leaf_params(&req, false, now, Duration::ZERO, now + Duration::days(1)),
            Err(TemplateError::NonPositiveTtl { .. })
        ));
        let req = LeafRequest::workload(id(), Duration::hours(1));
        assert!(matches!(
            leaf_params(&req, false, now, Duration::ZERO, now),
            Err(TemplateError::IssuerExpired { .. })
        ));
    }

    #[test]
    fn only_server_side_facts_are_used() {
        let now = datetime!(2026-01-01 0:00 UTC);
        let mut req = LeafRequest::workload(id(), Duration::hours(1));
        req.dns_names = vec!["meshid-ca.meshid-system.svc".into()];
        req.ip_addresses = vec![IpAddr::from([127, 0, 0, 1])];
        let params = leaf_params(&req, true, now, Duration::ZERO, now + Duration::days(1)).unwrap();
        assert_eq!(params.subject_alt_names.len(), 3);
        assert!(
            matches!(&params.subject_alt_names[0], SanType::URI(u) if u.as_str() == id().to_string())
        );
        assert_eq!(
            params.key_usages,
            vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment
            ]
        );
        assert_eq!(params.is_ca, IsCa::ExplicitNoCa);
        assert!(params.distinguished_name.iter().next().is_none());
        req.dns_names = vec!["bücher.example".into()];
        assert!(matches!(
            leaf_params(&req, false, now, Duration::ZERO, now + Duration::days(1)),
            Err(TemplateError::BadDnsName { .. })
        ));
    }

    #[test]
    fn serials_are_positive_sixteen_octets_and_distinct() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_eq!(a.len(), 16);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        assert_ne!(a, b);
    }
}
