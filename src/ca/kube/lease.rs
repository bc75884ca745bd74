//! Leader election over a `coordination.k8s.io/v1` Lease, so that singleton
//! jobs (the root-certificate ConfigMaps) run in one CA replica at a time.
//!
//! Owns the Lease object named in [`LeaseConfig`]; does not decide what a
//! leader does (callers watch [`LeaderElector::subscribe`]).
//!
//! Rules enforced:
//! - no home-made consensus: every change is a create, or a replace carrying
//!   the `resourceVersion` just read, so the API server arbitrates; a
//!   `409 Conflict` (or `AlreadyExists`) means another replica won;
//! - a held lease is taken over only once `renewTime + leaseDurationSeconds`
//!   (the holder's own duration) has passed on our clock;
//! - a leader that cannot renew steps down once `renew_deadline` has passed
//!   since its last renewal, before any other replica may take over.

use std::time::Duration;

use ::kube::api::{Api, ObjectMeta, PostParams};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::time::SharedClock;

/// Which Lease, who we are, and the timing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Namespace of the Lease (the CA's own).
    pub namespace: String,
    /// Name of the Lease, one per singleton job.
    pub name: String,
    /// Our identity in `holderIdentity`: the pod name.
    pub holder: String,
    /// `leaseDurationSeconds` we write: how long others wait before taking over.
    pub lease_duration: Duration,
    /// A leader that has not renewed for this long steps down (shorter than
    /// `lease_duration`, so it stops before anyone else may start).
    pub renew_deadline: Duration,
    /// How often the run loop tries to acquire or renew.
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The usual timing (15 s lease, step down after 10 s, try every 5 s)
    /// for Lease `name` in `namespace`, held as `holder`.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        holder: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            holder: holder.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(5),
        }
    }
}

/// Why a Lease request failed (a lost race is not an error: it is `Ok(false)`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaseError {
    /// The API server refused or failed a request.
    #[error("cannot {verb} Lease {namespace}/{name}: {source}")]
    Api {
        /// `get`, `create` or `update`.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// The Lease.
        name: String,
        /// The error.
        #[source]
        source: ::kube::Error,
    },
    /// The clock is outside what a MicroTime can hold.
    #[error("the clock reads {0}, which a Lease cannot record")]
    Clock(OffsetDateTime),
}

/// What to do with the Lease as observed (a pure decision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No Lease: create it, holding it.
    Create,
    /// We hold it: renew.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Another replica holds it until `until`.
    HeldByOther {
        holder: String,
        until: OffsetDateTime,
    },
}

/// Decides from the observed Lease, our identity and our clock.
pub(crate) fn decide(
    lease: Option<&LeaseSpec>,
    me: &str,
    now: OffsetDateTime,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::TakeOver;
    }
    let last = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map(from_micro);
    let duration = spec
        .lease_duration_seconds
        .map(|s| time::Duration::seconds(i64::from(s)))
        .unwrap_or_else(|| {
            time::Duration::try_from(default_duration).unwrap_or(time::Duration::ZERO)
        });
    match last {
        Some(last) if now < last + duration => Decision::HeldByOther {
            holder: holder.to_owned(),
            until: last + duration,
        },
        // Expired, or never renewed at all.
        _ => Decision::TakeOver,
    }
}

/// Competes for one Lease and publishes whether we hold it.
#[derive(Debug)]
pub struct LeaderElector {
    leases: Api<Lease>,
    cfg: LeaseConfig,
    clock: SharedClock,
    leader: watch::Sender<bool>,
}

impl LeaderElector {
    /// An elector for `cfg.name` in `cfg.namespace`; not leader until it acquires.
    pub fn new(client: ::kube::Client, cfg: LeaseConfig, clock: SharedClock) -> Self {
        Self {
            leases: Api::namespaced(client, &cfg.namespace),
            leader: watch::Sender::new(false),
            cfg,
            clock,
        }
    }

    /// Whether we are leader now and on every change (bounded: one value).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// One round: reads the Lease, then creates, renews or takes it over when
    /// allowed. `Ok(true)`: we hold it now; `Ok(false)`: another replica does
    /// (including when it won a race with a `409`). Updates [`Self::subscribe`].
    pub async fn try_acquire_or_renew(&self) -> Result<bool, LeaseError> {
        let leader = self.attempt().await?;
        self.leader
            .send_if_modified(|current| std::mem::replace(current, leader) != leader);
        Ok(leader)
    }

    async fn attempt(&self) -> Result<bool, LeaseError> {
        let now = self.clock.now();
        let stamp = Some(to_micro(now).ok_or(LeaseError::Clock(now))?);
        let observed = self
            .leases
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.api_error("get", e))?;
        let decision = decide(
            observed.as_ref().and_then(|l| l.spec.as_ref()),
            &self.cfg.holder,
            now,
            self.cfg.lease_duration,
        );
        let mut lease = match (decision, observed) {
            (Decision::HeldByOther { holder, until }, _) => {
                tracing::debug!(lease = %self.cfg.name, %holder, %until, "lease held by another replica");
                return Ok(false);
            }
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.cfg.holder.clone()),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        acquire_time: stamp.clone(),
                        renew_time: stamp,
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                return match self.leases.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(::kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => {
                        Ok(false)
                    }
                    Err(e) => Err(self.api_error("create", e)),
                };
            }
            (decision, Some(lease)) => {
                let mut lease = lease;
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if decision == Decision::TakeOver {
                    spec.holder_identity = Some(self.cfg.holder.clone());
                    spec.acquire_time = stamp.clone();
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                    tracing::info!(lease = %self.cfg.name, "taking over an expired lease");
                }
                spec.lease_duration_seconds = Some(self.duration_seconds());
                spec.renew_time = stamp;
                lease
            }
        };
        // The resourceVersion just read stays in `metadata`: the API server
        // refuses the update with 409 if anyone wrote in between.
        lease.metadata.managed_fields = None;
        match self
            .leases
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(::kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(self.api_error("update", e)),
        }
    }

    /// Gives the Lease up if we hold it (on shutdown), so another replica
    /// takes over at once instead of after `lease_duration`.
    pub async fn release(&self) -> Result<(), LeaseError> {
        self.leader.send_replace(false);
        let Some(mut lease) = self
            .leases
            .get_opt(&self.cfg.name)
            .await
            .map_err(|e| self.api_error("get", e))?
        else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.cfg.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        let now = self.clock.now();
        spec.renew_time = Some(to_micro(now).ok_or(LeaseError::Clock(now))?);
        spec.lease_duration_seconds = Some(1);
        match self
            .leases
            .replace(&self.cfg.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote it: it is no longer ours to release.
            Err(::kube::Error::Api(s)) if s.is_conflict() => Ok(()),
            Err(e) => Err(self.api_error("update", e)),
        }
    }

    /// Acquires or renews every `retry_period` until `cancel`, then releases.
    /// Errors are logged; a leader that has not renewed within
    /// `renew_deadline` (measured on the tokio clock) steps down.
    pub async fn run(self, cancel: CancellationToken) {
        let mut last_renewed: Option<tokio::time::Instant> = None;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Some(tokio::time::Instant::now()),
                Ok(false) => last_renewed = None,
                Err(err) => {
                    tracing::warn!(lease = %self.cfg.name, error = %err, "leader election round failed");
                    let stale = last_renewed.is_none_or(|t| t.elapsed() >= self.cfg.renew_deadline);
                    if stale && self.leader.send_replace(false) {
                        tracing::warn!(lease = %self.cfg.name, "stepping down: could not renew in time");
                    }
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.cfg.retry_period) => {}
            }
        }
        if let Err(err) = self.release().await {
            tracing::warn!(lease = %self.cfg.name, error = %err, "could not release the lease");
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.cfg.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }

    fn api_error(&self, verb: &'static str, source: ::kube::Error) -> LeaseError {
        LeaseError::Api {
            verb,
            namespace: self.cfg.namespace.clone(),
            name: self.cfg.name.clone(),
            source,
        }
    }
}

/// `None` outside the years a MicroTime can hold.
fn to_micro(at: OffsetDateTime) -> Option<MicroTime> {
    let nanos = i32::try_from(at.nanosecond()).ok()?;
    k8s_openapi::jiff::Timestamp::new(at.unix_timestamp(), nanos)
        .ok()
        .map(MicroTime)
}

fn from_micro(at: &MicroTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(at.0.as_nanosecond())
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
