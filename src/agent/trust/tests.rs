//! What a trust update may change, judged without sockets; and the follower
//! loop driven through channels, on paused time.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::test_ca::{cache_fixture, update, TestCa};
use super::*;
use crate::agent::cache::CacheConfig;
use crate::pki::crl::issuer_and_serial;

fn t0() -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::minutes(10)
}

fn crl_ids(state: &TrustState) -> Vec<(String, Option<Vec<Vec<u8>>>)> {
    state
        .authorities
        .iter()
        .map(|a| (a.id.clone(), a.crl.as_ref().map(|c| c.serials().to_vec())))
        .collect()
}

#[test]
fn a_good_update_gives_roots_crls_and_the_revoked_serials() {
    let root = TestCa::root("root-a");
    let crl = root.crl(&[0x77], t0());
    let (state, problems) = apply_update(
        &TrustState::default(),
        update(
            3,
            &[&root],
            vec![root.authority(AuthorityState::Active, false, crl.clone())],
        ),
    );
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!(state.version, 3);
    assert_eq!(state.roots_der.len(), 1);
    let bundle = state.bundle();
    assert_eq!(bundle.crls_der, vec![crl]);
    assert!(bundle.pem.contains("BEGIN CERTIFICATE"));
    let issuer = issuer_and_serial(&root.der()).unwrap().0;
    assert!(bundle.revoked.contains(&issuer, &[0x77]));
    assert!(!bundle.revoked.contains(&issuer, &[0x78]));
}

#[test]
fn a_tampered_crl_is_not_used_and_the_previous_one_stays() {
    let root = TestCa::root("root-a");
    let good = root.crl(&[0x10], t0());
    let (held, _) = apply_update(
        &TrustState::default(),
        update(
            1,
            &[&root],
            vec![root.authority(AuthorityState::Active, false, good.clone())],
        ),
    );
    // A newer CRL that would un-revoke 0x10 and revoke 0x11, one bit flipped.
    let mut tampered = root.crl(&[0x11], OffsetDateTime::now_utc());
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01;
    let (next, problems) = apply_update(
        &held,
        update(
            2,
            &[&root],
            vec![root.authority(AuthorityState::Active, false, tampered)],
        ),
    );
    assert_eq!(next.version, 2, "the rest of the update applies");
    assert_eq!(
        crl_ids(&next),
        vec![(root.id.clone(), Some(vec![vec![0x10]]))]
    );
    assert_eq!(next.bundle().crls_der, vec![good]);
    match problems.as_slice() {
        [Problem::CrlRejected {
            id,
            kept_previous: true,
            source: CrlRefusal::Invalid(CrlError::BadSignature { .. }),
        }] => assert_eq!(id, &root.id),
        other => panic!("expected one rejected CRL, got {other:?}"),
    }
    let message = problems[0].to_string();
    assert!(
        message.contains(&root.id) && message.contains("previous CRL stays"),
        "{message}"
    );
}

#[test]
fn a_crl_signed_by_another_authority_is_refused() {
    let a = TestCa::root("root-a");
    let b = TestCa::root("root-b");
    let (state, problems) = apply_update(
        &TrustState::default(),
        update(
            1,
            &[&a],
            vec![a.authority(AuthorityState::Active, false, b.crl(&[0x1], t0()))],
        ),
    );
    assert_eq!(crl_ids(&state), vec![(a.id.clone(), None)]);
    assert!(matches!(
        problems.as_slice(),
        [Problem::CrlRejected {
            kept_previous: false,
            source: CrlRefusal::Invalid(CrlError::WrongIssuer { .. }),
            ..
        }]
    ));
}

#[test]
fn an_older_crl_than_the_one_held_is_refused() {
    let root = TestCa::root("root-a");
    let newer = root.crl(&[0x1, 0x2], OffsetDateTime::now_utc());
    let older = root.crl(&[0x1], t0());
    let auth = |crl| vec![root.authority(AuthorityState::Active, false, crl)];
    let (held, _) = apply_update(&TrustState::default(), update(1, &[&root], auth(newer)));
    let (next, problems) = apply_update(&held, update(2, &[&root], auth(older)));
    assert_eq!(
        crl_ids(&next),
        vec![(root.id.clone(), Some(vec![vec![0x1], vec![0x2]]))]
    );
    assert!(matches!(
        problems.as_slice(),
        [Problem::CrlRejected {
            source: CrlRefusal::Older { .. },
            ..
        }]
    ));
}

#[test]
fn an_authority_that_does_not_chain_to_the_roots_is_dropped() {
    let a = TestCa::root("root-a");
    let stranger = TestCa::root("stranger");
    let (state, problems) = apply_update(
        &TrustState::default(),
        update(
            1,
            &[&a],
            vec![
                a.authority(AuthorityState::Active, false, Vec::new()),
                stranger.authority(AuthorityState::Prepared, false, Vec::new()),
            ],
        ),
    );
    let ids: Vec<&str> = state.authorities.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [a.id.as_str()]);
    match problems.as_slice() {
        [p @ Problem::AuthorityDropped { id, .. }] => {
            assert_eq!(id, &stranger.id);
            assert!(p.to_string().contains("not signed by any root"), "{p}");
        }
        other => panic!("expected one dropped authority, got {other:?}"),
    }
}

#[test]
fn an_intermediate_chains_through_its_chain_and_a_forged_chain_is_dropped() {
    let root = TestCa::root("plugin-root");
    let inter = root.intermediate("plugin-intermediate");
    let other_root = TestCa::root("other-root");
    let mut forged = inter.authority(AuthorityState::Old, false, Vec::new());
    forged.id = "forged".into();
    // The chain names a root that is in the update but did not sign it.
    forged.chain = vec![other_root.der()];
    let (state, problems) = apply_update(
        &TrustState::default(),
        update(
            1,
            &[&root, &other_root],
            vec![
                inter.authority(AuthorityState::Active, false, inter.crl(&[], t0())),
                forged,
            ],
        ),
    );
    let ids: Vec<&str> = state.authorities.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(ids, [inter.id.as_str()]);
    assert!(state.authorities[0].crl.is_some());
    assert!(
        matches!(problems.as_slice(), [Problem::AuthorityDropped { id, .. }] if id == "forged"),
        "{problems:?}"
    );
}

#[test]
fn an_update_without_usable_roots_is_refused_whole() {
    let root = TestCa::root("root-a");
    let (held, _) = apply_update(
        &TrustState::default(),
        update(
            1,
            &[&root],
            vec![root.authority(AuthorityState::Active, false, Vec::new())],
        ),
    );
    let mut empty = update(2, &[&root], Vec::new());
    empty.roots.clear();
    let mut garbage = update(3, &[&root], Vec::new());
    garbage.roots.push(b"not a certificate".to_vec());
    for bad in [empty, garbage] {
        let (next, problems) = apply_update(&held, bad);
        assert_eq!(next, held, "the previous state is kept");
        assert!(
            matches!(problems.as_slice(), [Problem::Refused { .. }]),
            "{problems:?}"
        );
    }
}

#[test]
fn only_an_old_authority_can_be_tainted() {
    let active = TestCa::root("active");
    let old = TestCa::root("old");
    let (state, problems) = apply_update(
        &TrustState::default(),
        update(
            1,
            &[&active, &old],
            vec![
                active.authority(AuthorityState::Active, true, Vec::new()),
                old.authority(AuthorityState::Old, true, Vec::new()),
            ],
        ),
    );
    assert_eq!(state.tainted(), vec![old.der()]);
    assert!(
        matches!(problems.as_slice(), [Problem::TaintIgnored { id, .. }] if id == &active.id),
        "{problems:?}"
    );
}

/// Streams handed out one per `watch`, then none (pending forever).
struct FakeSource {
    streams: Mutex<VecDeque<Result<TrustStream, CaClientError>>>,
    opened: crate::test_helpers::Calls,
    trusted: Mutex<Vec<Vec<CertificateDer<'static>>>>,
}

impl FakeSource {
    fn new() -> (
        Arc<Self>,
        Vec<mpsc::Sender<Result<TrustUpdate, tonic::Status>>>,
    ) {
        let mut senders = Vec::new();
        let mut streams = VecDeque::new();
        for _ in 0..3 {
            let (tx, rx) = mpsc::channel(4);
            senders.push(tx);
            streams.push_back(Ok(Box::pin(ReceiverStream::new(rx)) as TrustStream));
        }
        let source = Arc::new(Self {
            streams: Mutex::new(streams),
            opened: Default::default(),
            trusted: Mutex::new(Vec::new()),
        });
        (source, senders)
    }
}

impl TrustSource for FakeSource {
    fn watch(
        &self,
    ) -> Pin<Box<dyn Future<Output = Result<TrustStream, CaClientError>> + Send + '_>> {
        Box::pin(async move {
            let next = self.streams.lock().unwrap().pop_front();
            self.opened.hit();
            match next {
                Some(stream) => stream,
                None => std::future::pending().await,
            }
        })
    }

    fn trust_roots(&self, roots: &[CertificateDer<'static>]) -> Result<(), CaClientError> {
        self.trusted.lock().unwrap().push(roots.to_vec());
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_follower_applies_updates_counts_bad_crls_and_reconnects() {
    let a = Arc::new(TestCa::root("root-a"));
    let b = TestCa::root("root-b");
    let f = cache_fixture(a.clone(), CacheConfig::default());
    let (source, senders) = FakeSource::new();
    let follower = TrustFollower::new(source.clone(), f.cache.clone(), f.metrics.clone());
    tokio::spawn(follower.run(f.shutdown.clone()));
    let mut bundles = f.cache.bundle();

    let crl = a.crl(&[0x42], t0());
    senders[0]
        .send(Ok(update(
            1,
            &[&a],
            vec![a.authority(AuthorityState::Active, false, crl.clone())],
        )))
        .await
        .unwrap();
    let bundle = bundles
        .wait_for(Option::is_some)
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(bundle.crls_der, vec![crl.clone()]);
    assert_eq!(
        source.trusted.lock().unwrap().clone(),
        vec![vec![CertificateDer::from(a.der())]]
    );

    // The stream fails; the follower opens the next one after its backoff.
    senders[0]
        .send(Err(tonic::Status::unavailable("CA restarting")))
        .await
        .unwrap();
    source.opened.reach(2, "a second WatchTrust").await;

    // A bad CRL on the new stream: counted, the previous one kept; a new
    // root: the CA client trusts it too.
    let mut bad = a.crl(&[], OffsetDateTime::now_utc());
    bad[10] ^= 0xff;
    senders[1]
        .send(Ok(update(
            2,
            &[&a, &b],
            vec![
                a.authority(AuthorityState::Active, false, bad),
                b.authority(AuthorityState::Prepared, false, Vec::new()),
            ],
        )))
        .await
        .unwrap();
    let bundle = bundles
        .wait_for(|b| b.as_ref().is_some_and(|b| b.roots_der.len() == 2))
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert_eq!(bundle.crls_der, vec![crl], "the previous CRL stays");
    assert_eq!(f.metrics.crl_rejected.get(), 1);
    assert_eq!(f.metrics.trust_updates.get(), 2);
    assert_eq!(source.trusted.lock().unwrap().len(), 2);
    f.shutdown.trigger();
}

#[test]
fn an_authority_whose_id_is_not_its_key_identifier_is_dropped() {
    let a = TestCa::root("root-a");
    let b = TestCa::root("root-b");
    let mut liar = b.authority(AuthorityState::Old, true, Vec::new());
    // b's certificate under a's id: a taint of "a" must not hit b's leaves.
    liar.id = a.id.clone();
    let (state, problems) = apply_update(
        &TrustState::default(),
        update(
            1,
            &[&a, &b],
            vec![a.authority(AuthorityState::Active, false, Vec::new()), liar],
        ),
    );
    assert_eq!(state.authorities.len(), 1);
    assert!(state.tainted().is_empty());
    assert!(
        matches!(problems.as_slice(), [p @ Problem::AuthorityDropped { .. }] if p.to_string().contains("subject key identifier")),
        "{problems:?}"
    );
}
