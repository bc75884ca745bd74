//! The CA's authorities and their rotation: one *active* authority signs,
//! a *prepared* one waits to sign next, *old* ones stay trusted until they
//! are revoked or expire (SPIRE's model). Every bundle the CA hands out
//! carries the roots of all of them, so that a rotation never fails a
//! handshake; an old authority can be *tainted* (agents re-issue what chains
//! to it) and then *revoked* (it leaves every bundle). Single leaves are
//! revoked by serial and listed in every authority's CRL.
//!
//! Owns the runtime set ([`Authorities`]: the current [`Snapshot`], changed
//! only through its operations and published on a watch channel), the stored
//! form ([`state`]) and the schedule ([`schedule`]). Does not own the keys'
//! checks ([`crate::pki::authority`]) nor who may call the operations
//! ([`crate::ca::admin`]).
//!
//! Rules enforced:
//! - one change at a time, saved before it is published: a crash leaves the
//!   old state or the new one, never a mix, and no certificate is signed by
//!   an authority that is not stored;
//! - only a prepared authority can be activated, only an old one tainted,
//!   only a tainted old one revoked; the active authority cannot be revoked;
//! - a plug-in CA that fails its checks never becomes an authority: the
//!   current one keeps signing and the problem is named.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use rustls_pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;

use crate::pki::authority::{Authority, AuthorityConfig, AuthorityError};
use crate::pki::bundle;
use crate::time::SharedClock;

pub mod plugin_watch;
pub mod schedule;
pub mod state;

pub use schedule::Policy;
pub use state::{
    normalize_serial, AuthoritySource, AuthorityState, AuthorityStore, FileStore, MemoryStore,
    Revocation, RevocationReason, StoreError, StoredAuthority, StoredState,
};

/// Default lifetime of a CRL: re-signed at half of it, and at every revocation.
pub const DEFAULT_CRL_TTL: Duration = Duration::hours(24);
/// Default lifetime of a root the CA makes.
pub const DEFAULT_AUTHORITY_TTL: Duration = crate::pki::authority::ROOT_VALIDITY;

/// How the CA rotates.
#[derive(Debug, Clone)]
pub struct RotationConfig {
    /// Lifetime of each root the CA makes (`--authority-ttl`).
    pub authority_ttl: Duration,
    /// The schedule.
    pub policy: Policy,
    /// Lifetime of each CRL.
    pub crl_ttl: Duration,
}

impl Default for RotationConfig {
    fn default() -> Self {
        Self {
            authority_ttl: DEFAULT_AUTHORITY_TTL,
            policy: Policy {
                prepare_before: None,
                activate_before: None,
                can_prepare: true,
            },
            crl_ttl: DEFAULT_CRL_TTL,
        }
    }
}

/// One authority in a snapshot.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its id (hex subject key identifier).
    pub id: String,
    /// Its state.
    pub state: AuthorityState,
    /// Whether it is tainted.
    pub tainted: bool,
    /// Where it came from.
    pub source: AuthoritySource,
    /// The loaded authority.
    pub authority: Arc<Authority>,
    /// Its current CRL, DER.
    pub crl_der: Vec<u8>,
}

/// The authorities at one moment. Never changes; a change makes a new one.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    /// Active first, then prepared, then old ones (newest first).
    entries: Vec<Entry>,
    revocations: Vec<Revocation>,
    revoked: HashSet<String>,
    roots: Vec<CertificateDer<'static>>,
    bundle_pem: String,
    crl_resign_at: OffsetDateTime,
    problems: Vec<String>,
}

impl Snapshot {
    /// The stored generation this snapshot was built from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Every authority: active first, then prepared, then old.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The authority that signs.
    pub fn active(&self) -> &Arc<Authority> {
        // A snapshot is only built with an active entry (see `build`).
        &self.entries[0].authority
    }

    /// The active entry.
    pub fn active_entry(&self) -> &Entry {
        &self.entries[0]
    }

    /// The prepared authority, if any.
    pub fn prepared(&self) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.state == AuthorityState::Prepared)
    }

    /// The entry with `id`.
    pub fn entry(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    /// Every root of every authority, deduplicated: the trust bundle.
    pub fn roots_der(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The trust bundle, PEM (the last element of a `CreateCertificate`
    /// answer, `root-cert.pem`, the `istio-ca-root-cert` ConfigMaps).
    pub fn bundle_pem(&self) -> &str {
        &self.bundle_pem
    }

    /// Revoked leaves not yet expired.
    pub fn revocations(&self) -> &[Revocation] {
        &self.revocations
    }

    /// Whether the leaf with this serial (normalized hex) is revoked.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.revoked.contains(serial_hex)
    }

    /// When the CRLs are to be signed again.
    pub fn crl_resign_at(&self) -> OffsetDateTime {
        self.crl_resign_at
    }

    /// Problems to show an operator (a plug-in CA refused, …).
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

/// Why an operation was refused or failed. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RotationError {
    /// The operation does not apply to the state (e.g. activate with nothing prepared).
    #[error("{0}")]
    Refused(String),
    /// The state could not be loaded or saved.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An authority could not be made, loaded or used.
    #[error("authority {id}: {source}")]
    Authority {
        /// Which authority (id, or "new").
        id: String,
        /// What is wrong.
        #[source]
        source: Box<AuthorityError>,
    },
}

fn refused(message: impl Into<String>) -> RotationError {
    RotationError::Refused(message.into())
}

/// `offer_plugin`'s no-op: the authority is already in the stored state.
const ALREADY_HELD: &str = "the plug-in CA is already one of the authorities";

/// How the first authority is made when nothing is stored.
pub type FirstAuthority =
    Box<dyn FnOnce() -> Result<(Authority, AuthoritySource), RotationError> + Send>;

/// The CA's authorities, shared by the issuer, the TLS server, the trust
/// stream and the admin socket.
pub struct Authorities {
    store: Arc<dyn AuthorityStore>,
    cfg: RotationConfig,
    authority_cfg: AuthorityConfig,
    clock: SharedClock,
    /// Serializes changes within this process (the store's generation
    /// check serializes them across replicas).
    ops: tokio::sync::Mutex<()>,
    current: watch::Sender<Arc<Snapshot>>,
    /// Problems kept across snapshots (the last plug-in CA refused).
    problems: Mutex<Vec<String>>,
}

impl std::fmt::Debug for Authorities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorities")
            .field("store", &self.store.name())
            .field("generation", &self.current().generation)
            .finish_non_exhaustive()
    }
}

impl Authorities {
    /// Loads the stored state, or stores a first one whose active authority
    /// `first` makes. A `plugin` authority (a plug-in CA read at start) that
    /// the state does not hold becomes the prepared authority.
    pub async fn open(
        store: Arc<dyn AuthorityStore>,
        cfg: RotationConfig,
        authority_cfg: AuthorityConfig,
        clock: SharedClock,
        first: FirstAuthority,
    ) -> Result<Arc<Self>, RotationError> {
        let stored = match store.load().await? {
            Some(stored) => stored,
            None => {
                let (authority, source) = first()?;
                let stored = StoredState {
                    format: state::FORMAT,
                    generation: 1,
                    authorities: vec![stored_authority(&authority, AuthorityState::Active, source)],
                    revocations: Vec::new(),
                };
                store.save(&stored).await?;
                tracing::info!(store = %store.name(), id = authority.id(), "authorities stored for the first time");
                stored
            }
        };
        let snapshot = build(
            &stored,
            &authority_cfg,
            &cfg,
            &clock,
            &store.name(),
            Vec::new(),
        )?;
        Ok(Arc::new(Self {
            store,
            cfg,
            authority_cfg,
            clock,
            ops: tokio::sync::Mutex::new(()),
            current: watch::Sender::new(Arc::new(snapshot)),
            problems: Mutex::new(Vec::new()),
        }))
    }

    /// One active authority held in memory, no rotation schedule of its own
    /// (tests, benches, tools that sign with a fixed authority).
    pub fn in_memory(
        authority: Authority,
        source: AuthoritySource,
        clock: SharedClock,
    ) -> Result<Arc<Self>, RotationError> {
        let stored = StoredState {
            format: state::FORMAT,
            generation: 1,
            authorities: vec![stored_authority(&authority, AuthorityState::Active, source)],
            revocations: Vec::new(),
        };
        let cfg = RotationConfig::default();
        let authority_cfg = AuthorityConfig::default();
        let snapshot = build(&stored, &authority_cfg, &cfg, &clock, "memory", Vec::new())?;
        Ok(Arc::new(Self {
            store: Arc::new(state::MemoryStore::new(Some(stored))),
            cfg,
            authority_cfg,
            clock,
            ops: tokio::sync::Mutex::new(()),
            current: watch::Sender::new(Arc::new(snapshot)),
            problems: Mutex::new(Vec::new()),
        }))
    }

    /// The current snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.current.borrow().clone()
    }

    /// Every new snapshot, from now on.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.current.subscribe()
    }

    /// The store's name, for messages.
    pub fn store_name(&self) -> String {
        self.store.name()
    }

    /// The rotation settings.
    pub fn config(&self) -> &RotationConfig {
        &self.cfg
    }

    /// Makes a new root and stores it as the prepared authority.
    pub async fn prepare(&self) -> Result<String, RotationError> {
        if !self.cfg.policy.can_prepare {
            return Err(refused(
                "this CA signs with a plug-in CA, whose next authority comes from its operator: \
                 put the new CA where the plug-in CA is read (--plugin-ca-dir, or Secret cacerts) \
                 and it is taken as the prepared authority",
            ));
        }
        let (ttl, cfg, clock) = (
            self.cfg.authority_ttl,
            self.authority_cfg.clone(),
            self.clock.clone(),
        );
        self.change(move |stored, _| {
            if let Some(p) = stored
                .authorities
                .iter()
                .find(|a| a.state == AuthorityState::Prepared)
            {
                return Err(refused(format!(
                    "authority {} is already prepared; activate it first",
                    p.id
                )));
            }
            let made = Authority::create_rotation_root("new authority", &cfg, ttl, clock.as_ref())
                .map_err(|source| RotationError::Authority {
                    id: "new".to_owned(),
                    source: Box::new(source),
                })?;
            let id = made.id().to_owned();
            stored.authorities.push(stored_authority(
                &made,
                AuthorityState::Prepared,
                AuthoritySource::SelfSigned,
            ));
            Ok(format!(
                "authority {id} prepared (valid until {})",
                rfc3339(made.signer_not_after())
            ))
        })
        .await
    }

    /// Activates the prepared authority (`id`, when given, must name it);
    /// the active one becomes old.
    pub async fn activate(&self, id: Option<&str>) -> Result<String, RotationError> {
        let id = id.map(str::to_owned);
        self.change(move |stored, _| {
            let target = match &id {
                Some(id) => {
                    let a = find(stored, id)?;
                    if a.state != AuthorityState::Prepared {
                        return Err(refused(format!(
                            "authority {id} is {}, not prepared: only a prepared authority can be activated",
                            a.state
                        )));
                    }
                    id.clone()
                }
                None => stored
                    .authorities
                    .iter()
                    .find(|a| a.state == AuthorityState::Prepared)
                    .map(|a| a.id.clone())
                    .ok_or_else(|| {
                        refused(
                            "there is no prepared authority to activate: run `meshid ca authority prepare` first",
                        )
                    })?,
            };
            for a in &mut stored.authorities {
                if a.state == AuthorityState::Active {
                    a.state = AuthorityState::Old;
                } else if a.id == target {
                    a.state = AuthorityState::Active;
                }
            }
            Ok(format!("authority {target} activated: it signs every new certificate"))
        })
        .await
    }

    /// Taints an old authority (`id` may be left out when only one old
    /// authority is untainted): agents re-issue what chains to it.
    pub async fn taint(&self, id: Option<&str>) -> Result<String, RotationError> {
        let id = id.map(str::to_owned);
        self.change(move |stored, _| {
            let target = pick_old(stored, id.as_deref(), |a| !a.tainted, "untainted old")?;
            let a = find_mut(stored, &target)?;
            if a.state != AuthorityState::Old {
                return Err(refused(format!(
                    "authority {target} is {}: only an old authority can be tainted (activate its successor first)",
                    a.state
                )));
            }
            if a.tainted {
                return Err(refused(format!("authority {target} is already tainted")));
            }
            a.tainted = true;
            Ok(format!(
                "authority {target} tainted: agents re-issue every certificate that chains to it"
            ))
        })
        .await
    }

    /// Revokes a tainted old authority: it leaves every bundle.
    pub async fn revoke_authority(&self, id: Option<&str>) -> Result<String, RotationError> {
        let id = id.map(str::to_owned);
        self.change(move |stored, _| {
            let target = pick_old(stored, id.as_deref(), |a| a.tainted, "tainted old")?;
            let a = find(stored, &target)?;
            if a.state != AuthorityState::Old {
                return Err(refused(format!(
                    "authority {target} is {}: only a tainted old authority can be revoked",
                    a.state
                )));
            }
            if !a.tainted {
                return Err(refused(format!(
                    "authority {target} is not tainted: taint it first (`meshid ca authority taint --id {target}`) \
                     so that agents re-issue what chains to it, then revoke it"
                )));
            }
            // Rule: a revocation must take its root out of the bundle, or its
            // certificates would go on verifying (plug-in intermediates under
            // one root).
            let roots = crate::pki::bundle::parse_pem_certs(&a.roots_pem).unwrap_or_default();
            if let Some(other) = stored.authorities.iter().find(|o| {
                o.id != target
                    && crate::pki::bundle::parse_pem_certs(&o.roots_pem)
                        .unwrap_or_default()
                        .iter()
                        .any(|r| roots.contains(r))
            }) {
                return Err(refused(format!(
                    "authority {target} shares its root with authority {} ({}): with that root still \
                     trusted, its certificates would go on verifying; revoke them by serial \
                     (`meshid ca revoke`), or wait until it expires",
                    other.id, other.state
                )));
            }
            stored.authorities.retain(|a| a.id != target);
            Ok(format!(
                "authority {target} revoked: it is in no bundle any more, and what chains to it is refused"
            ))
        })
        .await
    }

    /// Revokes one leaf (its issuance looked up by the caller, who audits
    /// it): listed in every CRL until `not_after`.
    pub async fn revoke_certificate(
        &self,
        serial: &str,
        reason: RevocationReason,
        not_after: OffsetDateTime,
    ) -> Result<String, RotationError> {
        let serial = serial.to_owned();
        let now = self.clock.now();
        self.change(move |stored, _| {
            if let Some(r) = stored.revocations.iter().find(|r| r.serial == serial) {
                return Err(refused(format!(
                    "certificate {serial} is already revoked (since {}, {})",
                    rfc3339(r.revoked_at),
                    r.reason
                )));
            }
            stored.revocations.push(Revocation {
                serial: serial.clone(),
                reason,
                revoked_at: now,
                not_after,
            });
            Ok(format!(
                "certificate {serial} revoked ({reason}); it is in every CRL until {}",
                rfc3339(not_after)
            ))
        })
        .await
    }

    /// Takes a plug-in CA read after start as the prepared authority, unless
    /// it is already known. A refused plug-in CA is named in the snapshot's
    /// problems; nothing else changes.
    pub async fn offer_plugin(
        &self,
        loaded: Result<Authority, AuthorityError>,
        from: &str,
    ) -> Result<Option<String>, RotationError> {
        let authority = match loaded {
            Ok(a) => a,
            Err(e) => {
                let problem = format!(
                    "the plug-in CA in {from} was refused, the current authority keeps signing: {e}"
                );
                tracing::error!("{problem}");
                *self.problems.lock().unwrap_or_else(PoisonError::into_inner) = vec![problem];
                self.republish();
                return Ok(None);
            }
        };
        let had_problem =
            !std::mem::take(&mut *self.problems.lock().unwrap_or_else(PoisonError::into_inner))
                .is_empty();
        if self.current().entry(authority.id()).is_some() {
            if had_problem {
                self.republish();
            }
            return Ok(None);
        }
        let from = from.to_owned();
        let message = self
            .change(move |stored, _| {
                // Another replica may have stored it since our snapshot.
                if stored.authorities.iter().any(|a| a.id == authority.id()) {
                    return Err(RotationError::Refused(ALREADY_HELD.to_owned()));
                }
                // A newer plug-in CA replaces one prepared before it.
                stored
                    .authorities
                    .retain(|a| a.state != AuthorityState::Prepared);
                stored.authorities.push(stored_authority(
                    &authority,
                    AuthorityState::Prepared,
                    AuthoritySource::PlugIn,
                ));
                Ok(format!(
                    "the plug-in CA in {from} is the prepared authority {}",
                    authority.id()
                ))
            })
            .await;
        match message {
            Ok(message) => Ok(Some(message)),
            Err(RotationError::Refused(m)) if m == ALREADY_HELD => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Re-reads the store and publishes its state if another replica changed it.
    pub async fn refresh(&self) -> Result<bool, RotationError> {
        let _one = self.ops.lock().await;
        let Some(stored) = self.store.load().await? else {
            return Ok(false);
        };
        if stored.generation == self.current().generation {
            return Ok(false);
        }
        self.publish(&stored)?;
        Ok(true)
    }

    /// Runs the step of the schedule due now, if any; returns when to look again.
    pub async fn tick(&self) -> OffsetDateTime {
        let now = self.clock.now();
        let snapshot = self.current();
        let step = match schedule::due(&snapshot, &self.cfg.policy, now) {
            Ok(step) => step,
            Err(next) => return next,
        };
        let done = match &step {
            schedule::Step::DropExpired(ids) => {
                let ids = ids.clone();
                self.change(move |stored, _| {
                    stored.authorities.retain(|a| !ids.contains(&a.id));
                    Ok(format!("expired authorities dropped: {}", ids.join(", ")))
                })
                .await
            }
            schedule::Step::Prepare => self.prepare().await,
            schedule::Step::Activate => self.activate(None).await,
            schedule::Step::ResignCrls => {
                self.resign_crls().map(|()| "CRLs signed again".to_owned())
            }
        };
        match done {
            Ok(message) => tracing::info!(step = ?step, "{message}"),
            Err(e) => {
                tracing::error!(step = ?step, error = %e, "the rotation schedule's step failed; retrying in 10 s");
                return now + Duration::seconds(10);
            }
        }
        now
    }

    /// Runs the schedule until `cancel`: on every replica the CRLs are kept
    /// fresh; only while `leader` is true are authorities prepared,
    /// activated and dropped (one replica, the Lease holder, on Kubernetes).
    pub async fn run_schedule(
        self: Arc<Self>,
        mut leader: watch::Receiver<bool>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        let mut changes = self.subscribe();
        // A leader channel whose sender is gone keeps its last value.
        let mut leader_open = true;
        loop {
            let next = if *leader.borrow() {
                self.tick().await
            } else {
                if self.current().crl_resign_at() <= self.clock.now() {
                    if let Err(e) = self.resign_crls() {
                        tracing::error!(error = %e, "signing the CRLs failed");
                    }
                }
                self.current().crl_resign_at()
            };
            let wait =
                crate::time::until(next, self.clock.now()).min(std::time::Duration::from_secs(60));
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                changed = leader.changed(), if leader_open => leader_open = changed.is_ok(),
                _ = changes.changed() => {}
            }
        }
    }

    /// Applies `edit` to the latest stored state, saves it with the next
    /// generation and publishes it. Retried when another replica saved first.
    async fn change<F>(&self, edit: F) -> Result<String, RotationError>
    where
        F: Fn(&mut StoredState, &Snapshot) -> Result<String, RotationError> + Send,
    {
        let _one = self.ops.lock().await;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut stored = match self.store.load().await? {
                Some(s) => s,
                None => {
                    return Err(refused(format!(
                        "{} holds no authorities",
                        self.store.name()
                    )))
                }
            };
            let snapshot = self.current();
            let message = edit(&mut stored, &snapshot)?;
            let now = self.clock.now();
            stored
                .authorities
                .retain(|a| a.state != AuthorityState::Old || a.not_after > now);
            stored.revocations.retain(|r| r.not_after > now);
            stored.generation += 1;
            match self.store.save(&stored).await {
                Ok(()) => {
                    self.publish(&stored)?;
                    return Ok(message);
                }
                Err(StoreError::Conflict { .. }) if attempts < 5 => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn publish(&self, stored: &StoredState) -> Result<(), RotationError> {
        let problems = self
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let snapshot = build(
            stored,
            &self.authority_cfg,
            &self.cfg,
            &self.clock,
            &self.store.name(),
            problems,
        )?;
        self.current.send_replace(Arc::new(snapshot));
        Ok(())
    }

    /// Signs every authority's CRL again (their content unchanged).
    fn resign_crls(&self) -> Result<(), RotationError> {
        let current = self.current();
        let now = self.clock.now();
        let mut entries = current.entries.clone();
        for e in &mut entries {
            e.crl_der = sign_crl(&e.authority, &current.revocations, &self.cfg, now)?;
        }
        self.current.send_replace(Arc::new(Snapshot {
            entries,
            revocations: current.revocations.clone(),
            revoked: current.revoked.clone(),
            roots: current.roots.clone(),
            bundle_pem: current.bundle_pem.clone(),
            crl_resign_at: now + self.cfg.crl_ttl / 2,
            problems: current.problems.clone(),
            generation: current.generation,
        }));
        Ok(())
    }

    fn republish(&self) {
        let current = self.current();
        let problems = self
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        self.current.send_replace(Arc::new(Snapshot {
            entries: current.entries.clone(),
            revocations: current.revocations.clone(),
            revoked: current.revoked.clone(),
            roots: current.roots.clone(),
            bundle_pem: current.bundle_pem.clone(),
            crl_resign_at: current.crl_resign_at,
            problems,
            generation: current.generation,
        }));
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn find<'a>(stored: &'a StoredState, id: &str) -> Result<&'a StoredAuthority, RotationError> {
    stored
        .authorities
        .iter()
        .find(|a| a.id == id)
        .ok_or_else(|| unknown(stored, id))
}

fn find_mut<'a>(
    stored: &'a mut StoredState,
    id: &str,
) -> Result<&'a mut StoredAuthority, RotationError> {
    let err = unknown(stored, id);
    stored
        .authorities
        .iter_mut()
        .find(|a| a.id == id)
        .ok_or(err)
}

fn unknown(stored: &StoredState, id: &str) -> RotationError {
    let known: Vec<String> = stored
        .authorities
        .iter()
        .map(|a| format!("{} ({})", a.id, a.state))
        .collect();
    refused(format!(
        "no authority {id}; the authorities are: {}",
        known.join(", ")
    ))
}

/// The authority an operation on old authorities means: `id`, or the only
/// old authority matching `wanted`.
fn pick_old(
    stored: &StoredState,
    id: Option<&str>,
    wanted: impl Fn(&StoredAuthority) -> bool,
    what: &str,
) -> Result<String, RotationError> {
    if let Some(id) = id {
        return find(stored, id).map(|a| a.id.clone());
    }
    let candidates: Vec<&StoredAuthority> = stored
        .authorities
        .iter()
        .filter(|a| a.state == AuthorityState::Old && wanted(a))
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(refused(format!(
            "there is no {what} authority; name one with --id"
        ))),
        many => Err(refused(format!(
            "there are {} {what} authorities ({}); name one with --id",
            many.len(),
            many.iter()
                .map(|a| a.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn stored_authority(
    authority: &Authority,
    state: AuthorityState,
    source: AuthoritySource,
) -> StoredAuthority {
    let pem = authority.to_pem();
    StoredAuthority {
        id: authority.id().to_owned(),
        state,
        tainted: false,
        source,
        key_pem: pem.key_pem,
        cert_pem: pem.cert_pem,
        chain_pem: pem.chain_pem,
        roots_pem: pem.roots_pem,
        not_after: authority.signer_not_after(),
    }
}

fn sign_crl(
    authority: &Authority,
    revocations: &[Revocation],
    cfg: &RotationConfig,
    now: OffsetDateTime,
) -> Result<Vec<u8>, RotationError> {
    let entries: Vec<_> = revocations
        .iter()
        .filter_map(Revocation::crl_entry)
        .collect();
    // The number only grows: milliseconds since the epoch at signing.
    let number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    authority
        .sign_crl(
            &entries,
            number,
            now - Duration::seconds(60),
            now + cfg.crl_ttl,
        )
        .map_err(|source| RotationError::Authority {
            id: authority.id().to_owned(),
            source: Box::new(source),
        })
}

/// Loads every stored authority and signs their CRLs. An old or prepared
/// authority that no longer loads (expired, not yet valid) is left out and
/// named; the active one must load.
fn build(
    stored: &StoredState,
    authority_cfg: &AuthorityConfig,
    cfg: &RotationConfig,
    clock: &SharedClock,
    store: &str,
    mut problems: Vec<String>,
) -> Result<Snapshot, RotationError> {
    let now = clock.now();
    let mut entries = Vec::new();
    for a in &stored.authorities {
        if a.state == AuthorityState::Old && a.not_after <= now {
            continue;
        }
        let label = format!("{store} authority {}", a.id);
        let loaded =
            Authority::load_plugin_files(&a.pem().to_files(&label), authority_cfg, clock.as_ref());
        let authority = match loaded {
            Ok(authority) => authority,
            Err(source) if a.state != AuthorityState::Active => {
                let problem = format!("{} authority {} left out: {source}", a.state, a.id);
                tracing::error!("{problem}");
                problems.push(problem);
                continue;
            }
            Err(source) => {
                return Err(RotationError::Authority {
                    id: a.id.clone(),
                    source: Box::new(source),
                })
            }
        };
        let crl_der = sign_crl(&authority, &stored.revocations, cfg, now)?;
        entries.push(Entry {
            id: a.id.clone(),
            state: a.state,
            tainted: a.tainted,
            source: a.source,
            authority: Arc::new(authority),
            crl_der,
        });
    }
    let rank = |s: AuthorityState| match s {
        AuthorityState::Active => 0,
        AuthorityState::Prepared => 1,
        AuthorityState::Old => 2,
    };
    entries.sort_by(|a, b| {
        rank(a.state).cmp(&rank(b.state)).then(
            b.authority
                .signer_not_before()
                .cmp(&a.authority.signer_not_before()),
        )
    });
    match entries.first() {
        Some(e) if e.state == AuthorityState::Active => {}
        _ => {
            return Err(refused(format!(
                "{store} has no active authority (generation {})",
                stored.generation
            )))
        }
    }
    let mut roots: Vec<CertificateDer<'static>> = Vec::new();
    for e in &entries {
        for root in e.authority.roots_der() {
            if !roots.contains(&root) {
                roots.push(root);
            }
        }
    }
    let bundle_pem = bundle::concat_pem(
        &roots
            .iter()
            .map(|r| bundle::cert_pem(r))
            .collect::<Vec<_>>(),
    );
    Ok(Snapshot {
        generation: stored.generation,
        revoked: stored
            .revocations
            .iter()
            .map(|r| r.serial.clone())
            .collect(),
        revocations: stored.revocations.clone(),
        entries,
        roots,
        bundle_pem,
        crl_resign_at: now + cfg.crl_ttl / 2,
        problems,
    })
}

#[cfg(test)]
mod tests;
