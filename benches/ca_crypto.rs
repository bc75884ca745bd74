//! The unavoidable crypto of one issuance (CSR signature verify + JWT verify +
//! leaf signature, ring, ECDSA P-256), and the same three steps through our own
//! code (CSR validation, token verification, template + sign + post-sign check),
//! so the overhead of our code over the crypto is visible.
//!
//! `cargo bench --bench ca_crypto`

// A load generator measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING,
};

use meshid::identity::{SpiffeId, TrustDomain};
use meshid::pki::authority::{Authority, AuthorityConfig};
use meshid::pki::csr::validate_csr;
use meshid::pki::key::KeyAlgorithm;
use meshid::pki::template::LeafRequest;
use meshid::test_helpers::{key_and_csr, TestEnv};
use meshid::time::{Clock, SystemClock};

fn keypair(
    alg: &'static ring::signature::EcdsaSigningAlgorithm,
    rng: &SystemRandom,
) -> EcdsaKeyPair {
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(alg, rng).expect("keygen");
    EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), rng).expect("key")
}

fn unavoidable(c: &mut Criterion) {
    let rng = SystemRandom::new();
    let workload = keypair(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng);
    let issuer = keypair(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng);
    let ca = keypair(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng);
    // Sizes close to the real messages: a CSR body, a JWT signing input, a leaf TBS.
    let csr_body = vec![0x30u8; 250];
    let jwt_input = vec![b'e'; 900];
    let tbs = vec![0x30u8; 450];
    let csr_sig = workload.sign(&rng, &csr_body).expect("sign");
    let jwt_sig = issuer.sign(&rng, &jwt_input).expect("sign");
    let workload_pk = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_ASN1,
        workload.public_key().as_ref().to_vec(),
    );
    let issuer_pk = UnparsedPublicKey::new(
        &ECDSA_P256_SHA256_FIXED,
        issuer.public_key().as_ref().to_vec(),
    );

    let mut group = c.benchmark_group("unavoidable");
    group.bench_function("csr_verify", |b| {
        b.iter(|| {
            workload_pk
                .verify(black_box(&csr_body), csr_sig.as_ref())
                .expect("ok")
        })
    });
    group.bench_function("jwt_verify", |b| {
        b.iter(|| {
            issuer_pk
                .verify(black_box(&jwt_input), jwt_sig.as_ref())
                .expect("ok")
        })
    });
    group.bench_function("leaf_sign", |b| {
        b.iter(|| ca.sign(&rng, black_box(&tbs)).expect("sign"))
    });
    group.bench_function("all_three", |b| {
        b.iter(|| {
            workload_pk
                .verify(black_box(&csr_body), csr_sig.as_ref())
                .expect("ok");
            issuer_pk
                .verify(black_box(&jwt_input), jwt_sig.as_ref())
                .expect("ok");
            ca.sign(&rng, black_box(&tbs)).expect("sign")
        })
    });
    group.finish();
}

fn ours(c: &mut Criterion) {
    let env = TestEnv::new();
    let td = TrustDomain::default();
    let id = SpiffeId::for_service_account(&td, "default", "web").expect("id");
    let (_key, csr) = key_and_csr(&id);
    let token = env.token("default", "web", None, None);
    let verifier = env.issuer().verifier();
    let audiences = vec!["istio-ca".to_owned()];
    let clock = SystemClock;
    let cfg = AuthorityConfig {
        trust_domain: td,
        key_algorithm: KeyAlgorithm::EcdsaP256,
        clock_skew: time::Duration::seconds(60),
        ..AuthorityConfig::default()
    };
    let authority =
        Authority::load_or_create_self_signed(&env.data_dir, &cfg, &clock).expect("authority");
    let validated = validate_csr(csr.as_bytes(), &id).expect("csr");
    let leaf = LeafRequest {
        id: id.clone(),
        ttl: time::Duration::hours(24),
        dns_names: Vec::new(),
        ip_addresses: Vec::new(),
    };

    let mut group = c.benchmark_group("ours");
    group.bench_function("validate_csr", |b| {
        b.iter(|| validate_csr(black_box(csr.as_bytes()), &id).expect("ok"))
    });
    group.bench_function("verify_token", |b| {
        b.iter(|| {
            verifier
                .verify(black_box(&token), &audiences, clock.now())
                .expect("ok")
        })
    });
    group.bench_function("sign_leaf", |b| {
        b.iter(|| {
            authority
                .sign_leaf(validated.public_key_der(), &leaf, &clock)
                .expect("ok")
        })
    });
    group.bench_function("all_three", |b| {
        b.iter(|| {
            let v = validate_csr(black_box(csr.as_bytes()), &id).expect("ok");
            verifier
                .verify(black_box(&token), &audiences, clock.now())
                .expect("ok");
            authority
                .sign_leaf(v.public_key_der(), &leaf, &clock)
                .expect("ok")
        })
    });
    group.finish();
}

criterion_group!(benches, unavoidable, ours);
criterion_main!(benches);
