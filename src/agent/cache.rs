//! The per-identity certificate cache: one key pair and certificate per
//! identity on this node, shared by every workload of that service account,
//! refreshed before expiry, and pushed to subscribers through `watch` channels.
//!
//! Rules enforced: key pairs are generated here and never leave the node except
//! towards the workload they belong to; a certificate is replaced only by one
//! that checked out ([`check_answer`]); while the CA fails, the current
//! certificate keeps being served and the CSR is retried with capped
//! exponential backoff and jitter; CSRs in flight are bounded; identities with
//! no subscriber and no running pod on this node are evicted.
//!
//! The trust bundle comes from the CA's answers until the trust stream
//! ([`crate::agent::trust`]) delivers one; from then on only the stream sets
//! it ([`CertCache::apply_trust`]). Two rules follow from what the stream says
//! (issue 18): a certificate whose serial a verified CRL lists is replaced at
//! once; a certificate that chains to a *tainted* authority is re-issued before
//! it expires, at most [`CacheConfig::taint_batch`] per
//! [`CacheConfig::taint_interval`], so that a whole node does not ask the CA at
//! once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::agent::metrics::AgentMetrics;
use crate::ca_client::{check_answer, CaClientError, CertSigner};
use crate::identity::{SpiffeId, TrustDomain};
use crate::pki::crl::RevokedSet;
use crate::pki::key::{csr_pem, KeyAlgorithm, PrivateKey};
use crate::platform::Platform;
use crate::shutdown::Shutdown;
use crate::time::{jitter, refresh_at, until, Backoff, SharedClock};

/// How certificates are requested and refreshed.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// Lifetime asked of the CA (`--workload-ttl`).
    pub workload_ttl: Duration,
    /// Fraction of the lifetime after which a certificate is renewed (0.5).
    pub refresh_fraction: f64,
    /// Random spread around that point, as a fraction of the lifetime (0.05).
    pub jitter_fraction: f64,
    /// CSRs in flight at once.
    pub max_concurrent_csrs: usize,
    /// Retry delays after a failure (0.5 s doubling to 60 s, jittered).
    pub backoff: Backoff,
    /// Workload key type.
    pub key_algorithm: KeyAlgorithm,
    /// Certificates chaining to a tainted authority re-issued per
    /// [`taint_interval`](Self::taint_interval) (`--taint-reissue-batch`, 100):
    /// a taint re-issues everything on every node, and the CA must not see
    /// every agent's whole cache at once.
    pub taint_batch: usize,
    /// The pace of those batches (`--taint-reissue-interval`, 5 s).
    pub taint_interval: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            workload_ttl: Duration::from_secs(24 * 3600),
            refresh_fraction: 0.5,
            jitter_fraction: 0.05,
            max_concurrent_csrs: 8,
            backoff: Backoff::new(Duration::from_millis(500), Duration::from_secs(60)),
            key_algorithm: KeyAlgorithm::EcdsaP256,
            taint_batch: 100,
            taint_interval: Duration::from_secs(5),
        }
    }
}

/// A workload certificate with its key.
pub struct Svid {
    /// The identity in the certificate.
    pub identity: SpiffeId,
    /// Leaf first, then intermediates; no roots.
    pub chain_der: Vec<CertificateDer<'static>>,
    /// The same, PEM.
    pub chain_pem: String,
    /// The private key (zeroized on drop; never logged).
    pub key: PrivateKey,
    /// Validity start.
    pub not_before: OffsetDateTime,
    /// Validity end.
    pub not_after: OffsetDateTime,
    /// Serial, lowercase hex without leading zero bytes.
    pub serial_hex: String,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("identity", &self.identity.to_string())
            .field("serial", &self.serial_hex)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The trust bundle: the roots (and CRLs) from the trust stream, or from the
/// CA's last answer until the stream has delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    /// The roots, DER.
    pub roots_der: Vec<CertificateDer<'static>>,
    /// The roots, PEM.
    pub pem: String,
    /// The authorities' CRLs, DER, each verified against its authority's
    /// certificate by the trust task; empty before the stream delivered.
    pub crls_der: Vec<Vec<u8>>,
    /// The (issuer, serial) pairs those CRLs list.
    pub revoked: RevokedSet,
}

impl TrustBundle {
    /// A bundle of roots alone (no CRL).
    pub fn from_roots(roots_der: Vec<CertificateDer<'static>>, pem: String) -> Self {
        Self {
            roots_der,
            pem,
            crls_der: Vec::new(),
            revoked: RevokedSet::default(),
        }
    }

    /// The CRLs as concatenated `X509 CRL` PEM blocks; `None` when there is none.
    pub fn crl_pem(&self) -> Option<String> {
        (!self.crls_der.is_empty()).then(|| crate::pki::crl::crls_to_pem(&self.crls_der))
    }
}

/// What the trust stream says besides the bundle: the certificates of the
/// authorities that are tainted (DER).
#[derive(Debug, Default)]
struct TrustInputs {
    /// Whether the stream has delivered a bundle: then the CA's answers no
    /// longer set it.
    from_stream: bool,
    /// Tainted authorities' certificates: subject (raw DER) and SPKI (DER).
    tainted: Vec<TaintedAuthority>,
}

/// A tainted authority, as much of it as the per-leaf check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TaintedAuthority {
    subject_raw: Vec<u8>,
    certificate_der: Vec<u8>,
}

struct Entry {
    tx: watch::Sender<Option<Arc<Svid>>>,
    subscribers: usize,
    pinned: bool,
    next_refresh: Instant,
    in_flight: bool,
    failures: u32,
    wanted_since: Instant,
    /// The current certificate chains to a tainted authority.
    tainted: bool,
}

/// The cache. Cheap to share: `Arc<CertCache>`.
pub struct CertCache {
    cfg: CacheConfig,
    signer: Arc<dyn CertSigner>,
    platform: Arc<dyn Platform>,
    node: String,
    trust_domain: TrustDomain,
    clock: SharedClock,
    entries: Mutex<HashMap<SpiffeId, Entry>>,
    bundle: watch::Sender<Option<Arc<TrustBundle>>>,
    /// Locked after `entries` when both are held, never before.
    trust: Mutex<TrustInputs>,
    wake: Notify,
    csr_slots: Arc<Semaphore>,
    metrics: AgentMetrics,
    /// Set when an identity lost its last subscriber or the platform
    /// changed: only then can something have become evictable.
    evict_due: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for CertCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertCache")
            .field("node", &self.node)
            .field("identities", &self.len())
            .finish_non_exhaustive()
    }
}

/// Interest in one identity; dropping it releases the interest.
pub struct SvidSubscription {
    rx: watch::Receiver<Option<Arc<Svid>>>,
    identity: SpiffeId,
    cache: Arc<CertCache>,
}

impl SvidSubscription {
    /// The current certificate (None until the first arrives); changes on every rotation.
    pub fn receiver(&self) -> watch::Receiver<Option<Arc<Svid>>> {
        self.rx.clone()
    }

    /// The identity subscribed to.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }
}

impl Drop for SvidSubscription {
    fn drop(&mut self) {
        if let Some(entry) = self.cache.lock().get_mut(&self.identity) {
            entry.subscribers = entry.subscribers.saturating_sub(1);
            if entry.subscribers == 0 {
                self.cache
                    .evict_due
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.cache.wake.notify_one();
    }
}

impl CertCache {
    /// An empty cache for the workloads of `node`.
    pub fn new(
        cfg: CacheConfig,
        signer: Arc<dyn CertSigner>,
        platform: Arc<dyn Platform>,
        node: String,
        trust_domain: TrustDomain,
        clock: SharedClock,
        metrics: AgentMetrics,
    ) -> Arc<Self> {
        let slots = cfg.max_concurrent_csrs.max(1);
        Arc::new(Self {
            cfg,
            signer,
            platform,
            node,
            trust_domain,
            clock,
            entries: Mutex::new(HashMap::new()),
            bundle: watch::Sender::new(None),
            trust: Mutex::new(TrustInputs::default()),
            wake: Notify::new(),
            csr_slots: Arc::new(Semaphore::new(slots)),
            metrics,
            evict_due: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Interest in `identity` while the subscription lives; fetched at once if new.
    pub fn subscribe(self: &Arc<Self>, identity: &SpiffeId) -> SvidSubscription {
        self.subscribe_inner(identity, false)
    }

    /// Like [`CertCache::subscribe`], and the identity is never evicted (`--write-certs`).
    pub fn pin(self: &Arc<Self>, identity: &SpiffeId) -> SvidSubscription {
        self.subscribe_inner(identity, true)
    }

    fn subscribe_inner(self: &Arc<Self>, identity: &SpiffeId, pin: bool) -> SvidSubscription {
        let rx = {
            let mut entries = self.lock();
            let entry = entries.entry(identity.clone()).or_insert_with(|| Entry {
                tx: watch::Sender::new(None),
                subscribers: 0,
                pinned: false,
                next_refresh: Instant::now(),
                in_flight: false,
                failures: 0,
                wanted_since: Instant::now(),
                tainted: false,
            });
            entry.subscribers += 1;
            entry.pinned |= pin;
            self.metrics.cache_size.set(entries.len() as i64);
            entries.get(identity).map(|e| e.tx.subscribe())
        };
        self.wake.notify_one();
        SvidSubscription {
            rx: rx.unwrap_or_else(|| watch::Sender::new(None).subscribe()),
            identity: identity.clone(),
            cache: Arc::clone(self),
        }
    }

    /// The trust bundle (None until the first certificate arrives).
    pub fn bundle(&self) -> watch::Receiver<Option<Arc<TrustBundle>>> {
        self.bundle.subscribe()
    }

    /// Identities cached.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<SpiffeId, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_trust(&self) -> MutexGuard<'_, TrustInputs> {
        self.trust.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refreshes due certificates and evicts unused identities until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) {
        let mut changes = self.platform.changes();
        let mut next_taint_batch = Instant::now();
        loop {
            let next = self.dispatch_due(&shutdown, &mut next_taint_batch);
            self.evict_unused();
            let sleep = tokio::time::sleep_until(
                next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
            );
            tokio::select! {
                _ = shutdown.triggered() => return,
                _ = sleep => {}
                _ = self.wake.notified() => {}
                changed = changes.changed() => {
                    self.evict_due.store(true, std::sync::atomic::Ordering::Relaxed);
                    if changed.is_err() {
                        // The platform went away; keep refreshing on timers alone.
                        changes = watch::Sender::new(0).subscribe();
                    }
                }
            }
        }
    }

    /// Starts a fetch for every due identity, and for the next batch of
    /// tainted ones when `next_taint_batch` has come (then moves it one
    /// [`CacheConfig::taint_interval`] on); returns when something is due next.
    fn dispatch_due(
        self: &Arc<Self>,
        shutdown: &Shutdown,
        next_taint_batch: &mut Instant,
    ) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        let mut earliest = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        let mut tainted_waiting = Vec::new();
        let mut tainted_total = 0;
        {
            let mut entries = self.lock();
            for (id, entry) in entries.iter_mut() {
                tainted_total += usize::from(entry.tainted);
                if entry.in_flight {
                    continue;
                }
                if entry.next_refresh <= now {
                    entry.in_flight = true;
                    due.push(id.clone());
                } else {
                    earliest(entry.next_refresh);
                    if entry.tainted {
                        tainted_waiting.push((entry.next_refresh, id.clone()));
                    }
                }
            }
            // Rule (taint): at most `taint_batch` per `taint_interval`, the
            // soonest renewals first.
            if !tainted_waiting.is_empty() && now >= *next_taint_batch {
                tainted_waiting.sort_unstable_by_key(|(at, _)| *at);
                let take = self.cfg.taint_batch.max(1).min(tainted_waiting.len());
                for (_, id) in tainted_waiting.drain(..take) {
                    if let Some(entry) = entries.get_mut(&id) {
                        entry.in_flight = true;
                        due.push(id);
                    }
                }
                *next_taint_batch = now + self.cfg.taint_interval;
                self.metrics.taint_reissues.inc_by(take as u64);
                tracing::info!(
                    batch = take,
                    left = tainted_waiting.len(),
                    next_batch_in = ?self.cfg.taint_interval,
                    "re-issuing certificates that chain to a tainted authority"
                );
            }
        }
        if !tainted_waiting.is_empty() {
            earliest(*next_taint_batch);
        }
        self.metrics.tainted_certificates.set(tainted_total as i64);
        for id in due {
            shutdown.spawn(Arc::clone(self).fetch(id));
        }
        next
    }

    /// Cached certificates that still chain to a tainted authority (re-issued
    /// ones no longer count): zero once a taint has been fully acted on.
    pub fn tainted_remaining(&self) -> usize {
        self.lock().values().filter(|e| e.tainted).count()
    }

    /// Installs what the trust stream delivered: `bundle` becomes the trust
    /// bundle (and the CA's answers stop setting it); `tainted` (the tainted
    /// authorities' certificates, DER) replaces the taint list. Then every
    /// cached certificate is judged again:
    ///
    /// - Rule (revocation): one whose serial `bundle.revoked` lists is
    ///   replaced at once;
    /// - Rule (taint): one that chains to a tainted authority (its issuer is
    ///   the authority's subject and its signature verifies with the
    ///   authority's key) is marked for re-issue in batches.
    pub fn apply_trust(&self, bundle: TrustBundle, tainted: &[Vec<u8>]) {
        let tainted: Vec<TaintedAuthority> = tainted
            .iter()
            .filter_map(|der| {
                let (_, cert) = X509Certificate::from_der(der).ok()?;
                Some(TaintedAuthority {
                    subject_raw: cert.subject().as_raw().to_vec(),
                    certificate_der: der.clone(),
                })
            })
            .collect();
        let revoked = bundle.revoked.clone();
        {
            let mut trust = self.lock_trust();
            trust.from_stream = true;
            trust.tainted = tainted.clone();
        }
        self.bundle.send_if_modified(|current| {
            if current.as_deref() == Some(&bundle) {
                false
            } else {
                *current = Some(Arc::new(bundle));
                true
            }
        });
        // Judged outside the lock (signatures), applied only where the
        // certificate is still the one judged. A fetch that completes in
        // between judged its new certificate against the new list already.
        let snapshot: Vec<(SpiffeId, Arc<Svid>)> = self
            .lock()
            .iter()
            .filter_map(|(id, e)| e.tx.borrow().clone().map(|s| (id.clone(), s)))
            .collect();
        let verdicts: Vec<(SpiffeId, Arc<Svid>, bool, bool)> = snapshot
            .into_iter()
            .map(|(id, svid)| {
                let leaf = svid
                    .chain_der
                    .first()
                    .map(|c| c.as_ref())
                    .unwrap_or_default();
                let is_revoked = !revoked.is_empty() && revoked.contains_cert(leaf);
                let is_tainted = chains_to_tainted(leaf, &tainted);
                (id, svid, is_revoked, is_tainted)
            })
            .collect();
        let now = Instant::now();
        {
            let mut entries = self.lock();
            for (id, svid, is_revoked, is_tainted) in verdicts {
                let Some(entry) = entries.get_mut(&id) else {
                    continue;
                };
                let current = entry.tx.borrow().clone();
                if !current.is_some_and(|c| Arc::ptr_eq(&c, &svid)) {
                    continue;
                }
                if is_tainted && !entry.tainted {
                    tracing::info!(identity = %id, serial = %svid.serial_hex,
                        "certificate chains to a tainted authority; it will be re-issued");
                }
                entry.tainted = is_tainted;
                if is_revoked && !entry.in_flight && entry.next_refresh > now {
                    entry.next_refresh = now;
                    self.metrics.revoked_reissues.inc();
                    tracing::warn!(identity = %id, serial = %svid.serial_hex,
                        "our certificate is revoked (listed in the CA's CRL); replacing it now");
                }
            }
        }
        self.wake.notify_one();
    }

    async fn fetch(self: Arc<Self>, id: SpiffeId) {
        let result = match self.csr_slots.clone().acquire_owned().await {
            Ok(_slot) => self.obtain(&id).await,
            Err(_) => return,
        };
        let mut new_bundle = None;
        {
            let mut entries = self.lock();
            let Some(entry) = entries.get_mut(&id) else {
                return;
            };
            entry.in_flight = false;
            if entry.subscribers == 0 && !entry.pinned {
                self.evict_due
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            match result {
                Ok((svid, bundle)) => {
                    let at = refresh_at(
                        svid.not_before,
                        svid.not_after,
                        self.cfg.refresh_fraction,
                        self.cfg.jitter_fraction * (2.0 * jitter() - 1.0),
                    );
                    let delay = until(at, self.clock.now());
                    entry.next_refresh = Instant::now() + delay;
                    entry.failures = 0;
                    if entry.tx.borrow().is_none() {
                        self.metrics
                            .time_to_first_cert
                            .observe(entry.wanted_since.elapsed().as_secs_f64());
                    }
                    self.metrics.rotations.inc();
                    self.metrics
                        .cert_expiry
                        .with_label_values(&[&id.to_string()])
                        .set(svid.not_after.unix_timestamp() as f64);
                    tracing::info!(identity = %id, serial = %svid.serial_hex, not_after = %svid.not_after,
                        refresh_in = ?delay, "workload certificate obtained");
                    // Lock order: entries, then trust.
                    let trust = self.lock_trust();
                    entry.tainted = chains_to_tainted(
                        svid.chain_der
                            .first()
                            .map(|c| c.as_ref())
                            .unwrap_or_default(),
                        &trust.tainted,
                    );
                    if !trust.from_stream {
                        new_bundle = Some(bundle);
                    }
                    drop(trust);
                    entry.tx.send_replace(Some(Arc::new(svid)));
                }
                Err(e) => {
                    entry.failures = entry.failures.saturating_add(1);
                    let delay = self.cfg.backoff.jittered(entry.failures - 1);
                    entry.next_refresh = Instant::now() + delay;
                    self.metrics.ca_failures.inc();
                    let serving = entry.tx.borrow().as_ref().map(|s| s.not_after);
                    tracing::warn!(identity = %id, error = %e, retry_in = ?delay, still_serving_until = ?serving,
                        "could not obtain a certificate; keeping the current one");
                }
            }
        }
        if let Some(bundle) = new_bundle {
            self.bundle.send_if_modified(|current| {
                if current.as_deref() == Some(&bundle) {
                    false
                } else {
                    *current = Some(Arc::new(bundle));
                    true
                }
            });
        }
        self.wake.notify_one();
    }

    /// Key pair, CSR, CA, and the checks on its answer.
    async fn obtain(&self, id: &SpiffeId) -> Result<(Svid, TrustBundle), CaClientError> {
        let algorithm = self.cfg.key_algorithm;
        let identity = id.clone();
        let (key, csr) = tokio::task::spawn_blocking(move || {
            let key = PrivateKey::generate(algorithm)
                .map_err(|e| CaClientError::Config(e.to_string()))?;
            let csr = csr_pem(&key, &identity).map_err(|e| CaClientError::Config(e.to_string()))?;
            Ok::<_, CaClientError>((key, csr))
        })
        .await
        .map_err(|e| CaClientError::Config(format!("key generation task: {e}")))??;
        let chain = self.signer.sign(&csr, id, self.cfg.workload_ttl).await?;
        let answer = check_answer(&chain, id, &key.public_key_der())?;
        let bundle = TrustBundle::from_roots(answer.roots_der, answer.roots_pem);
        let svid = Svid {
            identity: id.clone(),
            chain_der: answer.chain_der,
            chain_pem: answer.chain_pem,
            key,
            not_before: answer.not_before,
            not_after: answer.not_after,
            serial_hex: answer.serial_hex,
        };
        Ok((svid, bundle))
    }

    /// Drops identities nobody subscribes to and no running pod on this node
    /// has. Runs only when something may have become evictable, and scans
    /// the platform without holding the cache's lock.
    fn evict_unused(&self) {
        if !self
            .evict_due
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return;
        }
        let idle = |e: &Entry| e.subscribers == 0 && !e.pinned && !e.in_flight;
        if !self.lock().values().any(idle) {
            return;
        }
        let on_node: std::collections::HashSet<SpiffeId> = self
            .platform
            .pods_on_node(&self.node)
            .iter()
            .filter(|p| p.is_running())
            .filter_map(|p| p.identity(&self.trust_domain).ok())
            .collect();
        let mut entries = self.lock();
        entries.retain(|id, e| {
            let keep = !idle(e) || on_node.contains(id);
            if !keep {
                tracing::info!(identity = %id, "no workload of this identity left on the node; evicted");
                let _ = self.metrics.cert_expiry.remove_label_values(&[&id.to_string()]);
            }
            keep
        });
        self.metrics.cache_size.set(entries.len() as i64);
    }
}

/// Whether `leaf_der` was signed by one of `tainted`: its issuer name is the
/// authority's subject and its signature verifies with the authority's key
/// (a name alone could be shared by an authority that is not tainted).
fn chains_to_tainted(leaf_der: &[u8], tainted: &[TaintedAuthority]) -> bool {
    if tainted.is_empty() {
        return false;
    }
    let Ok((_, leaf)) = X509Certificate::from_der(leaf_der) else {
        return false;
    };
    tainted.iter().any(|authority| {
        leaf.issuer().as_raw() == authority.subject_raw.as_slice()
            && X509Certificate::from_der(&authority.certificate_der)
                .ok()
                .is_some_and(|(_, ca)| leaf.verify_signature(Some(ca.public_key())).is_ok())
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
