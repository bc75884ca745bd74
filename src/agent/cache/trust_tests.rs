//! What the trust stream does to cached certificates: revoked ones replaced
//! at once, tainted ones re-issued in paced batches, and the stream's bundle
//! winning over the CA's answers. Paused time: batches are counted by the
//! instant the CA was asked at.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::{CacheConfig, Svid};
use crate::agent::trust::test_ca::{cache_fixture, update, CacheFixture, TestCa};
use crate::agent::trust::{apply_update, publish, TrustState};
use crate::identity::SpiffeId;
use crate::proto::meshid::ca::v1::AuthorityState;

async fn first(rx: &mut watch::Receiver<Option<Arc<Svid>>>) -> Arc<Svid> {
    rx.wait_for(Option::is_some).await.unwrap().clone().unwrap()
}

fn ids(f: &CacheFixture, n: usize) -> Vec<SpiffeId> {
    (0..n)
        .map(|i| f.env.id("default", &format!("sa-{i}")))
        .collect()
}

/// Applies `update` to an empty state and publishes it; panics on any problem.
fn publish_update(f: &CacheFixture, u: crate::proto::meshid::ca::v1::TrustUpdate) -> TrustState {
    let (state, problems) = apply_update(&TrustState::default(), u);
    assert!(problems.is_empty(), "{problems:?}");
    publish(&f.cache, &state);
    state
}

#[tokio::test(start_paused = true)]
async fn a_revoked_certificate_is_replaced_at_once() {
    let a = Arc::new(TestCa::root("root-a"));
    let f = cache_fixture(a.clone(), CacheConfig::default());
    let id = f.env.id("default", "web");
    let sub = f.cache.subscribe(&id);
    let mut rx = sub.receiver();
    let before = first(&mut rx).await;
    let serial = u64::from_str_radix(&before.serial_hex, 16).unwrap();

    let revoked_at = Instant::now();
    let crl = a.crl(&[serial], time::OffsetDateTime::now_utc());
    publish_update(
        &f,
        update(
            1,
            &[&a],
            vec![a.authority(AuthorityState::Active, false, crl)],
        ),
    );
    let after = rx
        .wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| s.serial_hex != before.serial_hex)
        })
        .await
        .unwrap()
        .clone()
        .unwrap();
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "replaced at once, not at its renewal time (took {:?})",
        revoked_at.elapsed()
    );
    assert_eq!(after.identity, id);
    assert_eq!(f.metrics.revoked_reissues.get(), 1);
    assert_eq!(f.signer.count(), 2);
    f.shutdown.trigger();
}

#[tokio::test(start_paused = true)]
async fn certificates_of_a_tainted_authority_are_reissued_in_paced_batches() {
    let a = Arc::new(TestCa::root("root-a"));
    let b = Arc::new(TestCa::root("root-b"));
    let cfg = CacheConfig {
        workload_ttl: Duration::from_secs(3600),
        taint_batch: 3,
        taint_interval: Duration::from_secs(5),
        ..CacheConfig::default()
    };
    let f = cache_fixture(a.clone(), cfg);
    let ids = ids(&f, 8);
    let subs: Vec<_> = ids.iter().map(|id| f.cache.subscribe(id)).collect();
    let mut old = Vec::new();
    for sub in &subs {
        old.push(first(&mut sub.receiver()).await);
    }
    assert_eq!(f.cache.tainted_remaining(), 0);

    // Rotation: b signs, a is old and tainted.
    f.signer.switch_to(b.clone());
    let asked_before = f.signer.count();
    let tainted_at = Instant::now();
    publish_update(
        &f,
        update(
            2,
            &[&a, &b],
            vec![
                b.authority(AuthorityState::Active, false, Vec::new()),
                a.authority(AuthorityState::Old, true, Vec::new()),
            ],
        ),
    );
    assert_eq!(f.cache.tainted_remaining(), 8);
    while f.cache.tainted_remaining() > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let batches: Vec<(Duration, usize)> = f
        .signer
        .batches_after(asked_before)
        .into_iter()
        .map(|(at, n)| (at - tainted_at, n))
        .collect();
    assert_eq!(
        batches,
        vec![
            (Duration::ZERO, 3),
            (Duration::from_secs(5), 3),
            (Duration::from_secs(10), 2)
        ]
    );
    for (sub, old) in subs.iter().zip(&old) {
        let now = sub.receiver().borrow().clone().unwrap();
        assert_ne!(now.serial_hex, old.serial_hex);
    }
    assert_eq!(f.metrics.taint_reissues.get(), 8);
    f.shutdown.trigger();
}

#[tokio::test(start_paused = true)]
async fn a_taint_needs_the_authoritys_signature_not_only_its_name() {
    let a = Arc::new(TestCa::root("root-a"));
    // Same subject, another key: certificates of `a` do not chain to it.
    let namesake = TestCa::root("root-a");
    let f = cache_fixture(a.clone(), CacheConfig::default());
    let sub = f.cache.subscribe(&f.env.id("default", "web"));
    first(&mut sub.receiver()).await;
    let tainted = namesake.authority(AuthorityState::Old, true, Vec::new());
    publish_update(
        &f,
        update(
            1,
            &[&a, &namesake],
            vec![
                a.authority(AuthorityState::Active, false, Vec::new()),
                tainted,
            ],
        ),
    );
    assert_eq!(f.cache.tainted_remaining(), 0);
    f.shutdown.trigger();
}

#[tokio::test(start_paused = true)]
async fn once_the_stream_delivered_the_cas_answers_no_longer_set_the_bundle() {
    let a = Arc::new(TestCa::root("root-a"));
    let b = TestCa::root("root-b");
    let f = cache_fixture(a.clone(), CacheConfig::default());
    let web = f.cache.subscribe(&f.env.id("default", "web"));
    first(&mut web.receiver()).await;
    let from_answer = f.cache.bundle().borrow().clone().unwrap();
    assert_eq!(
        from_answer.roots_der.len(),
        1,
        "before the stream: the answer's roots"
    );

    let crl = a.crl(&[], time::OffsetDateTime::now_utc());
    publish_update(
        &f,
        update(
            1,
            &[&a, &b],
            vec![
                a.authority(AuthorityState::Active, false, crl.clone()),
                b.authority(AuthorityState::Prepared, false, Vec::new()),
            ],
        ),
    );
    // Another certificate arrives; its answer names root a alone.
    let other = f.cache.subscribe(&f.env.id("default", "other"));
    first(&mut other.receiver()).await;
    let bundle = f.cache.bundle().borrow().clone().unwrap();
    assert_eq!(bundle.roots_der.len(), 2, "the stream's roots stay");
    assert_eq!(bundle.crls_der, vec![crl]);
    f.shutdown.trigger();
}
