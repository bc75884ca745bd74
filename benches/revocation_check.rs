//! What checking a peer against the revoked certificates costs per
//! handshake: the inbound verifier (webpki chain + SPIFFE ID + revocation
//! lookup) on one client leaf with no CRL and with a CRL of 10,000 revoked
//! serials; the lookup alone; and a whole in-memory mTLS handshake (TLS 1.3,
//! ECDSA P-256) between two proxies' configurations, without and with the
//! 10,000-serial CRL on both sides.
//!
//! `cargo bench --bench revocation_check`

// A load generator measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConnection, ServerConnection};
use time::{Duration, OffsetDateTime};

use meshid::identity::{SpiffeId, TrustDomain};
use meshid::pki::crl::{issuer_and_serial, verify_crl, RevokedSet};
use meshid::pki::key::PrivateKey;
use meshid::proxy::tls::{
    client_config, server_config, server_name_for, CertStore, ClientAuth, PeerExpectation,
    SpiffeClientCertVerifier, SvidMaterial,
};
use meshid::time::system_clock;

const REVOKED: u32 = 10_000;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    root: CertificateDer<'static>,
}

impl Ca {
    fn new() -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "bench CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let root = params.self_signed(&key).expect("CA").der().clone();
        Self {
            issuer: Issuer::new(params, key),
            root,
        }
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::parse(&format!("spiffe://cluster.local/ns/bench/sa/{sa}")).expect("id")
    }

    /// An SVID for `sa`, as the CA issues them.
    fn svid(&self, sa: &str, serial: u64, crls: Vec<Vec<u8>>) -> SvidMaterial {
        let key = KeyPair::generate().expect("leaf key");
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            Self::id(sa).to_string().try_into().expect("uri"),
        )];
        params.serial_number = Some(SerialNumber::from(serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + Duration::hours(1);
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        SvidMaterial {
            chain: vec![cert.der().clone()],
            key: PrivateKey::from_pem(&key.serialize_pem()).expect("key"),
            bundle: vec![self.root.clone()],
            crls,
        }
    }

    /// A CRL revoking `count` serials none of the SVIDs above carries.
    fn crl(&self, count: u32) -> Vec<u8> {
        let now = OffsetDateTime::now_utc();
        CertificateRevocationListParams {
            this_update: now,
            next_update: now + Duration::hours(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: (0..count)
                .map(|i| RevokedCertParams {
                    // 16 bytes, as the CA's random serials.
                    serial_number: SerialNumber::from_slice(
                        &(u128::from(i) | 0x4000_0000_0000_0000_0000_0000_0000_0000).to_be_bytes(),
                    ),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer)
        .expect("CRL")
        .der()
        .to_vec()
    }
}

fn store(material: SvidMaterial, sa: &str) -> Arc<CertStore> {
    CertStore::new(Ca::id(sa), material, system_clock()).expect("store")
}

/// One TLS 1.3 mTLS handshake, both ends in memory, driven to completion.
fn handshake(server: &Arc<rustls::ServerConfig>, client: &Arc<rustls::ClientConfig>) {
    let name = server_name_for(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut c = ClientConnection::new(client.clone(), name).expect("client");
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let mut buf = Vec::with_capacity(16 * 1024);
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
            s.process_new_packets().expect("server accepts the client");
        }
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
            c.process_new_packets().expect("client accepts the server");
        }
    }
}

fn revocation(c: &mut Criterion) {
    let ca = Ca::new();
    let crl = ca.crl(REVOKED);
    let set = RevokedSet::from_crls([&verify_crl(&crl, &ca.root).expect("CRL verifies")]);
    assert_eq!(set.len(), REVOKED as usize);

    let client = ca.svid("client", 1, Vec::new());
    let client_leaf = client.chain[0].clone();
    let td = TrustDomain::new("cluster.local").expect("td");
    let now = UnixTime::now();

    let mut group = c.benchmark_group("revocation_check");
    group.bench_function("lookup_10k_miss", |b| {
        b.iter(|| black_box(set.contains_cert(black_box(&client_leaf))));
    });
    let (issuer, serial) = issuer_and_serial(&client_leaf).expect("leaf");
    group.bench_function("lookup_10k_parsed_key", |b| {
        b.iter(|| black_box(set.contains(black_box(&issuer), black_box(&serial))));
    });

    for (label, crls) in [("no_crl", Vec::new()), ("crl_10k", vec![crl.clone()])] {
        let server = store(ca.svid("server", 2, crls.clone()), "server");
        let verifier = SpiffeClientCertVerifier::new(server, td.clone(), ClientAuth::Required);
        group.bench_function(format!("verify_client/{label}"), |b| {
            b.iter(|| {
                verifier
                    .verify_client_cert(black_box(&client_leaf), &[], now)
                    .expect("not revoked")
            });
        });
    }

    for (label, crls) in [("no_crl", Vec::new()), ("crl_10k", vec![crl])] {
        let server = store(ca.svid("server", 2, crls.clone()), "server");
        let client = store(ca.svid("client", 3, crls), "client");
        let server_cfg = server_config(server, td.clone(), ClientAuth::Required).expect("cfg");
        let client_cfg =
            client_config(client, PeerExpectation::Exactly(Ca::id("server"))).expect("cfg");
        group.bench_function(format!("mtls_handshake/{label}"), |b| {
            b.iter(|| handshake(&server_cfg, &client_cfg));
        });
    }
    group.finish();
}

criterion_group!(benches, revocation);
criterion_main!(benches);
