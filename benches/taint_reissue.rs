//! Time from a taint to every identity re-issued, on one agent's certificate
//! cache (issue 18): N identities hold certificates of authority A; the CA
//! rotates to B and the trust stream says "A is old and tainted"; the cache
//! re-issues through its normal path (new key, CSR, answer checks) in batches
//! of `--batch` per `--interval`. Measured: from the taint to the last
//! certificate that chained to A replaced, the CA's signing time (CSR
//! validation + signing + post-sign check, synchronous, so ≈ its CPU), and
//! this process's CPU over the same window (agent key generation included).
//!
//! The CA is the real signing code ([`meshid::pki::Authority`], two
//! self-signed authorities) called in process, not over gRPC: the trust
//! update is handed to the cache as the agent's trust task would
//! ([`meshid::agent::trust::apply_update`] then `publish`).
//!
//! `cargo bench --bench taint_reissue -- [--identities 1000] [--batch 100] [--interval 5s]`
//! Without `--batch`, runs twice: the default 100 per 5 s, then 1000 per 5 s.

// A load generator measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use meshid::agent::cache::{CacheConfig, CertCache};
use meshid::agent::metrics::AgentMetrics;
use meshid::agent::trust::{apply_update, publish, TrustState};
use meshid::ca_client::{CaClientError, CertSigner};
use meshid::identity::{SpiffeId, TrustDomain};
use meshid::pki::{validate_csr, Authority, AuthorityConfig, LeafRequest};
use meshid::platform::local::{LocalConfig, LocalPlatform};
use meshid::proto::meshid::ca::v1::{Authority as AuthorityMsg, AuthorityState, TrustUpdate};
use meshid::shutdown::Shutdown;
use meshid::test_helpers::{cli_arg, cli_value, TestEnv};
use meshid::time::{system_clock, SystemClock};

/// Signs with the current authority; counts its time.
struct Ca {
    current: Mutex<Arc<Authority>>,
    busy_nanos: AtomicU64,
    calls: AtomicUsize,
}

impl CertSigner for Ca {
    fn sign<'a>(
        &'a self,
        csr: &'a str,
        identity: &'a SpiffeId,
        ttl: Duration,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<String>, CaClientError>> + Send + 'a>> {
        Box::pin(async move {
            let start = Instant::now();
            let authority = self
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let bad = |e: String| CaClientError::BadAnswer(e);
            let csr = validate_csr(csr.as_bytes(), identity).map_err(|e| bad(e.to_string()))?;
            let ttl = time::Duration::try_from(ttl).map_err(|e| bad(e.to_string()))?;
            let leaf = authority
                .sign_leaf(
                    csr.public_key_der(),
                    &LeafRequest::workload(identity.clone(), ttl),
                    &SystemClock,
                )
                .map_err(|e| bad(e.to_string()))?;
            self.busy_nanos
                .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
            self.calls.fetch_add(1, Ordering::Relaxed);
            Ok(vec![leaf.pem, authority.root_bundle_pem()])
        })
    }
}

fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

fn authority_msg(a: &Authority, state: AuthorityState, tainted: bool) -> AuthorityMsg {
    AuthorityMsg {
        id: a.id().to_owned(),
        state: state as i32,
        tainted,
        certificate: a.roots_der()[0].to_vec(),
        chain: Vec::new(),
        crl: Vec::new(),
    }
}

async fn run(identities: usize, batch: usize, interval: Duration) -> anyhow::Result<()> {
    let env = TestEnv::new();
    let dir_a = env.dir.path().join("ca-a");
    let dir_b = env.dir.path().join("ca-b");
    std::fs::create_dir_all(&dir_a)?;
    std::fs::create_dir_all(&dir_b)?;
    let cfg = AuthorityConfig::default();
    let a = Arc::new(Authority::load_or_create_self_signed(
        &dir_a,
        &cfg,
        &SystemClock,
    )?);
    let b = Arc::new(Authority::load_or_create_self_signed(
        &dir_b,
        &cfg,
        &SystemClock,
    )?);
    let ca = Arc::new(Ca {
        current: Mutex::new(a.clone()),
        busy_nanos: AtomicU64::new(0),
        calls: AtomicUsize::new(0),
    });
    let clock = system_clock();
    let platform = LocalPlatform::open(LocalConfig::new(
        &env.manifests,
        env.issuer().verifier(),
        clock.clone(),
    ))?;
    let metrics = AgentMetrics::register(&prometheus::Registry::new())?;
    let cache = CertCache::new(
        CacheConfig {
            workload_ttl: Duration::from_secs(24 * 3600),
            taint_batch: batch,
            taint_interval: interval,
            ..CacheConfig::default()
        },
        ca.clone(),
        platform,
        "node-a".into(),
        TrustDomain::default(),
        clock,
        metrics,
    );
    let shutdown = Shutdown::new();
    tokio::spawn(Arc::clone(&cache).run(shutdown.clone()));

    let subs: Vec<_> = (0..identities)
        .map(|i| cache.subscribe(&env.id("bench", &format!("sa-{i}"))))
        .collect();
    for sub in &subs {
        sub.receiver().wait_for(Option::is_some).await?;
    }
    // The stream's first state: A active.
    let (state, _) = apply_update(
        &TrustState::default(),
        TrustUpdate {
            version: 1,
            roots: vec![a.roots_der()[0].to_vec()],
            authorities: vec![authority_msg(&a, AuthorityState::Active, false)],
        },
    );
    publish(&cache, &state);

    // Rotation to B, A tainted.
    *ca.current.lock().unwrap_or_else(|e| e.into_inner()) = b.clone();
    let (busy0, calls0, cpu0) = (
        ca.busy_nanos.load(Ordering::Relaxed),
        ca.calls.load(Ordering::Relaxed),
        cpu_seconds()?,
    );
    let start = Instant::now();
    let (state, problems) = apply_update(
        &state,
        TrustUpdate {
            version: 2,
            roots: vec![a.roots_der()[0].to_vec(), b.roots_der()[0].to_vec()],
            authorities: vec![
                authority_msg(&b, AuthorityState::Active, false),
                authority_msg(&a, AuthorityState::Old, true),
            ],
        },
    );
    anyhow::ensure!(problems.is_empty(), "{problems:?}");
    publish(&cache, &state);
    let marked = cache.tainted_remaining();
    let mut first_done = None;
    while cache.tainted_remaining() > 0 {
        if first_done.is_none() && cache.tainted_remaining() < marked {
            first_done = Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = start.elapsed();
    let cpu = cpu_seconds()? - cpu0;
    let ca_busy = Duration::from_nanos(ca.busy_nanos.load(Ordering::Relaxed) - busy0);
    let reissued = ca.calls.load(Ordering::Relaxed) - calls0;
    println!(
        "identities={identities} batch={batch} interval={interval:?}: tainted {marked}, re-issued {reissued}; \
         all re-issued after {elapsed:.2?} (first batch done after {:.2?}); \
         CA signing time {ca_busy:.2?} ({:.0} µs per certificate); process CPU {cpu:.2} s ({:.2} ms per identity)",
        first_done.unwrap_or(elapsed),
        ca_busy.as_secs_f64() * 1e6 / reissued.max(1) as f64,
        cpu * 1e3 / reissued.max(1) as f64,
    );
    shutdown.trigger();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let identities: usize = cli_arg("--identities", 1000);
    let interval = cli_value("--interval")
        .map(|s| humantime::parse_duration(&s))
        .transpose()?
        .unwrap_or(Duration::from_secs(5));
    let runs: Vec<usize> = match cli_value("--batch") {
        Some(b) => vec![b.parse()?],
        None => vec![100, identities],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for batch in runs {
        runtime.block_on(run(identities, batch, interval))?;
    }
    Ok(())
}
