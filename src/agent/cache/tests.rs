//! Cache behaviour with an in-process signer built on the real authority.

use std::sync::atomic::{AtomicBool, Ordering};

use super::*;
use crate::pki::authority::{Authority, AuthorityConfig};
use crate::pki::csr::validate_csr;
use crate::pki::template::LeafRequest;
use crate::platform::local::{LocalConfig, LocalPlatform};
use crate::test_helpers::{Calls, TestEnv};
use crate::time::{system_clock, SystemClock};

/// Signs with a real authority; can be told to fail or to answer for the wrong identity.
struct InProcessCa {
    authority: Authority,
    fail: AtomicBool,
    lie: AtomicBool,
    /// Tests wait on calls instead of the clock.
    calls: Calls,
}

impl InProcessCa {
    /// Waits until the CA has been asked `n` times in all.
    async fn asked(&self, n: usize) {
        self.calls.reach(n, "the CA's signing calls").await;
    }
}

impl CertSigner for InProcessCa {
    fn sign<'a>(
        &'a self,
        csr: &'a str,
        identity: &'a SpiffeId,
        ttl: Duration,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Vec<String>, CaClientError>> + Send + 'a>,
    > {
        Box::pin(async move {
            self.calls.hit();
            if self.fail.load(Ordering::SeqCst) {
                return Err(CaClientError::Refused {
                    code: tonic::Code::Unavailable,
                    message: "CA down".into(),
                });
            }
            let csr = validate_csr(csr.as_bytes(), identity).unwrap();
            let who = if self.lie.load(Ordering::SeqCst) {
                SpiffeId::parse("spiffe://cluster.local/ns/default/sa/someone-else").unwrap()
            } else {
                identity.clone()
            };
            let ttl = time::Duration::try_from(ttl).unwrap();
            let leaf = self
                .authority
                .sign_leaf(
                    csr.public_key_der(),
                    &LeafRequest::workload(who, ttl),
                    &SystemClock,
                )
                .unwrap();
            Ok(vec![leaf.pem, self.authority.root_bundle_pem()])
        })
    }
}

struct Fixture {
    env: TestEnv,
    ca: Arc<InProcessCa>,
    cache: Arc<CertCache>,
    shutdown: Shutdown,
}

fn fixture(ttl: Duration) -> Fixture {
    let env = TestEnv::new();
    env.add_pod("default", "web-1", "uid-web-1", "web", "node-a");
    let clock = system_clock();
    let platform = LocalPlatform::open(LocalConfig::new(
        &env.manifests,
        env.issuer().verifier(),
        clock.clone(),
    ))
    .unwrap();
    let authority = Authority::load_or_create_self_signed(
        &env.data_dir,
        &AuthorityConfig::default(),
        &SystemClock,
    )
    .unwrap();
    let ca = Arc::new(InProcessCa {
        authority,
        fail: AtomicBool::new(false),
        lie: AtomicBool::new(false),
        calls: Calls::default(),
    });
    let cfg = CacheConfig {
        workload_ttl: ttl,
        backoff: Backoff::new(Duration::from_millis(20), Duration::from_millis(100)),
        ..CacheConfig::default()
    };
    let metrics = AgentMetrics::register(&prometheus::Registry::new()).unwrap();
    let cache = CertCache::new(
        cfg,
        ca.clone(),
        platform,
        "node-a".into(),
        TrustDomain::default(),
        clock,
        metrics,
    );
    let shutdown = Shutdown::new();
    tokio::spawn(Arc::clone(&cache).run(shutdown.clone()));
    Fixture {
        env,
        ca,
        cache,
        shutdown,
    }
}

async fn next_svid(rx: &mut watch::Receiver<Option<Arc<Svid>>>) -> Arc<Svid> {
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(Option::is_some))
        .await
        .expect("a certificate in time")
        .unwrap()
        .clone()
        .unwrap()
}

#[tokio::test]
async fn one_certificate_per_identity_is_shared_and_the_bundle_follows() {
    let f = fixture(Duration::from_secs(3600));
    let id = f.env.id("default", "web");
    let a = f.cache.subscribe(&id);
    let b = f.cache.subscribe(&id);
    let (mut ra, mut rb) = (a.receiver(), b.receiver());
    let (sa, sb) = (next_svid(&mut ra).await, next_svid(&mut rb).await);
    assert!(Arc::ptr_eq(&sa, &sb), "one certificate per identity");
    assert_eq!(f.ca.calls.count(), 1);
    let bundle = f.cache.bundle().borrow().clone().unwrap();
    assert_eq!(bundle.pem, f.ca.authority.root_bundle_pem());
    f.shutdown.trigger();
}

#[tokio::test]
async fn certificates_rotate_before_expiry() {
    let f = fixture(Duration::from_secs(2));
    let id = f.env.id("default", "web");
    let sub = f.cache.subscribe(&id);
    let mut rx = sub.receiver();
    let first = next_svid(&mut rx).await;
    tokio::time::timeout(Duration::from_secs(10), rx.changed())
        .await
        .unwrap()
        .unwrap();
    let second = rx.borrow().clone().unwrap();
    assert_ne!(first.serial_hex, second.serial_hex);
    assert!(second.not_after >= first.not_after);
    f.shutdown.trigger();
}

#[tokio::test]
async fn ca_failure_keeps_the_current_certificate_and_retries() {
    let f = fixture(Duration::from_secs(2));
    let id = f.env.id("default", "web");
    let sub = f.cache.subscribe(&id);
    let mut rx = sub.receiver();
    let first = next_svid(&mut rx).await;
    f.ca.fail.store(true, Ordering::SeqCst);
    let calls = f.ca.calls.count();
    // The renewal fails, and is retried (with backoff): the first failure
    // has been handled by the time the retry asks.
    f.ca.asked(calls + 2).await;
    assert_eq!(
        rx.borrow().as_ref().unwrap().serial_hex,
        first.serial_hex,
        "still serving"
    );
    f.ca.fail.store(false, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(
        rx.borrow().as_ref().unwrap().serial_hex,
        first.serial_hex,
        "recovered"
    );
    f.shutdown.trigger();
}

#[tokio::test]
async fn an_answer_for_the_wrong_identity_is_refused_and_the_old_one_kept() {
    let f = fixture(Duration::from_secs(2));
    let id = f.env.id("default", "web");
    let sub = f.cache.subscribe(&id);
    let mut rx = sub.receiver();
    let first = next_svid(&mut rx).await;
    let calls = f.ca.calls.count();
    f.ca.lie.store(true, Ordering::SeqCst);
    // The CA is asked, lies, and is asked again: the lie has been judged.
    f.ca.asked(calls + 2).await;
    let current = rx.borrow().clone().unwrap();
    assert_eq!(current.serial_hex, first.serial_hex);
    assert_eq!(current.identity, id);
    f.shutdown.trigger();
}

#[tokio::test]
async fn identities_without_subscribers_or_pods_on_the_node_are_evicted() {
    let f = fixture(Duration::from_secs(3600));
    let web = f.env.id("default", "web");
    let ghost = f.env.id("default", "ghost");
    let (w, g) = (f.cache.subscribe(&web), f.cache.subscribe(&ghost));
    next_svid(&mut w.receiver()).await;
    next_svid(&mut g.receiver()).await;
    assert_eq!(f.cache.len(), 2);
    drop(w);
    drop(g);
    for _ in 0..100 {
        if f.cache.len() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        f.cache.len(),
        1,
        "web keeps its pod on node-a; ghost has none"
    );
    f.shutdown.trigger();
}
