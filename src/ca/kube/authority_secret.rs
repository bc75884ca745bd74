//! The CA's authorities on Kubernetes: the stored state of
//! [`crate::ca::authorities::state`] under data key `authorities.json` of
//! Secret `istio-ca-secret` in the CA's namespace ([`KubeSecretStore`]),
//! and the two tasks that keep every replica in step with the cluster:
//! [`spawn_follow`] re-reads that state, so a change made through one
//! replica's admin socket (or by the Lease holder's schedule) reaches every
//! replica within [`FOLLOW_EVERY`]; [`spawn_plugin_watch`] reads Secret
//! `cacerts` and offers a changed plug-in CA as the prepared authority.
//!
//! Owns that data key (the Secret's other keys, Istio's layout of the first
//! self-signed root, are kept as they are) and the polling. Does not decide
//! what a change is ([`crate::ca::authorities`]) nor who may ask for one
//! ([`crate::ca::admin`]).
//!
//! Rules enforced:
//! - one change wins: [`KubeSecretStore`]'s save checks that the stored
//!   generation is the one before the state's, and replaces the Secret
//!   carrying the `resourceVersion` it just read, so when another replica
//!   saved in between the API server answers `409` and the save fails with
//!   [`StoreError::Conflict`] (no home-made consensus);
//! - key material is never logged nor kept: errors name the Secret and the
//!   data key, never its bytes; every Secret read or sent is zeroized once
//!   used, and `cacerts` is remembered by a digest only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::{Api, ObjectMeta, PostParams};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use zeroize::Zeroize as _;

use super::secret::{memory_files, PLUGIN_SECRET, SELF_SIGNED_SECRET, SELF_SIGNED_SECRET_TYPE};
use crate::ca::authorities::state::StoreFuture;
use crate::ca::authorities::{Authorities, AuthorityStore, StoreError, StoredState};
use crate::pki::authority::{Authority, AuthorityConfig};
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// The data key of `istio-ca-secret` holding the authorities' state.
pub const STATE_KEY: &str = "authorities.json";
/// How often every replica re-reads the state.
pub const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// How often Secret `cacerts` is read for a new plug-in CA.
pub const PLUGIN_POLL: Duration = Duration::from_secs(2);

/// A Secret whose data is zeroized when it is dropped (it holds CA keys).
struct Wiped(Secret);

impl Drop for Wiped {
    fn drop(&mut self) {
        for value in self.0.data.iter_mut().flat_map(|data| data.values_mut()) {
            value.0.zeroize();
        }
    }
}

/// The authorities' state in Secret `istio-ca-secret` of the CA's namespace.
#[derive(Clone)]
pub struct KubeSecretStore {
    secrets: Api<Secret>,
    namespace: String,
}

impl std::fmt::Debug for KubeSecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSecretStore")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl KubeSecretStore {
    /// The store in `namespace` (the CA's own).
    pub fn new(client: ::kube::Client, namespace: &str) -> Self {
        Self {
            secrets: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
        }
    }

    async fn read(&self) -> Result<Option<Wiped>, StoreError> {
        self.secrets
            .get_opt(SELF_SIGNED_SECRET)
            .await
            .map(|secret| secret.map(Wiped))
            .map_err(|e| self.api_error("get", e))
    }

    /// The state in `secret`, `None` when it has no [`STATE_KEY`].
    fn state_of(&self, secret: &Wiped) -> Result<Option<StoredState>, StoreError> {
        match secret.0.data.as_ref().and_then(|d| d.get(STATE_KEY)) {
            Some(ByteString(bytes)) => StoredState::from_json(&self.name(), bytes).map(Some),
            None => Ok(None),
        }
    }

    async fn generation(&self) -> Result<u64, StoreError> {
        Ok(match self.read().await? {
            Some(secret) => self.state_of(&secret)?.map_or(0, |s| s.generation),
            None => 0,
        })
    }

    fn conflict(&self, found: u64, state: &StoredState) -> StoreError {
        StoreError::Conflict {
            store: self.name(),
            found,
            expected: state.generation.saturating_sub(1),
        }
    }

    fn api_error(&self, verb: &str, e: ::kube::Error) -> StoreError {
        let reason = match e {
            ::kube::Error::Api(status) if status.is_forbidden() => format!(
                "the CA's service account lacks RBAC permission to {verb} this Secret; grant verb \
                 \"{verb}\" on resource \"secrets\" (resourceNames [\"{SELF_SIGNED_SECRET}\"]) in a \
                 Role bound to it. API server said: {}",
                status.message
            ),
            e => format!("cannot {verb} it: {e}"),
        };
        StoreError::Api {
            store: self.name(),
            reason,
        }
    }

    /// Replaces the read Secret with `state` under [`STATE_KEY`].
    async fn replace(&self, mut secret: Wiped, state: &StoredState) -> Result<(), StoreError> {
        let found = self.state_of(&secret)?.map_or(0, |s| s.generation);
        if found + 1 != state.generation {
            return Err(self.conflict(found, state));
        }
        secret
            .0
            .data
            .get_or_insert_with(BTreeMap::new)
            .insert(STATE_KEY.to_owned(), ByteString(state.to_json().to_vec()));
        // The body carries the resourceVersion read above: the API server
        // refuses it (409) if another replica wrote in between.
        match self
            .secrets
            .replace(SELF_SIGNED_SECRET, &PostParams::default(), &secret.0)
            .await
        {
            Ok(answer) => {
                drop(Wiped(answer));
                Ok(())
            }
            Err(::kube::Error::Api(status)) if status.is_conflict() => {
                let found = self.generation().await.unwrap_or(found);
                Err(self.conflict(found, state))
            }
            Err(e) => Err(self.api_error("update", e)),
        }
    }

    /// Creates the Secret holding only `state` (a plug-in CA, whose CA
    /// keeps its root in `cacerts`: nothing made `istio-ca-secret` yet).
    async fn create(&self, state: &StoredState) -> Result<(), StoreError> {
        if state.generation != 1 {
            return Err(self.conflict(0, state));
        }
        let secret = Wiped(Secret {
            metadata: ObjectMeta {
                name: Some(SELF_SIGNED_SECRET.to_owned()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            type_: Some(SELF_SIGNED_SECRET_TYPE.to_owned()),
            data: Some(BTreeMap::from([(
                STATE_KEY.to_owned(),
                ByteString(state.to_json().to_vec()),
            )])),
            ..Secret::default()
        });
        match self.secrets.create(&PostParams::default(), &secret.0).await {
            Ok(answer) => {
                drop(Wiped(answer));
                Ok(())
            }
            Err(::kube::Error::Api(status)) if status.is_already_exists() => {
                let found = self.generation().await.unwrap_or(0);
                Err(self.conflict(found, state))
            }
            Err(e) => Err(self.api_error("create", e)),
        }
    }
}

impl AuthorityStore for KubeSecretStore {
    fn name(&self) -> String {
        format!(
            "Secret {}/{SELF_SIGNED_SECRET} key {STATE_KEY}",
            self.namespace
        )
    }

    fn load(&self) -> StoreFuture<'_, Option<StoredState>> {
        Box::pin(async move {
            match self.read().await? {
                Some(secret) => self.state_of(&secret),
                None => Ok(None),
            }
        })
    }

    fn save<'a>(&'a self, state: &'a StoredState) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            match self.read().await? {
                Some(secret) => self.replace(secret, state).await,
                None => self.create(state).await,
            }
        })
    }
}

/// Re-reads the stored state every [`FOLLOW_EVERY`] until shutdown, so
/// that what another replica changed is published here too.
pub fn spawn_follow(authorities: Arc<Authorities>, shutdown: &Shutdown) {
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.triggered() => return,
                () = tokio::time::sleep(FOLLOW_EVERY) => {}
            }
            match authorities.refresh().await {
                Ok(changed) => {
                    if changed {
                        tracing::info!(
                            store = %authorities.store_name(),
                            generation = authorities.current().generation(),
                            "the authorities changed in the cluster; following"
                        );
                    }
                    if std::mem::take(&mut failing) {
                        tracing::info!(store = %authorities.store_name(), "the authorities can be read again");
                    }
                }
                // Logged once per outage, not every FOLLOW_EVERY.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "re-reading the authorities failed; keeping the current ones and retrying");
                }
                Err(_) => {}
            }
        }
    });
}

/// A digest of a Secret's data, to notice a change without keeping keys.
fn fingerprint(secret: &Secret) -> Vec<u8> {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    for (key, ByteString(value)) in secret.data.iter().flatten() {
        for part in [key.as_bytes(), value.as_slice()] {
            digest.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
            digest.update(part);
        }
    }
    digest.finish().as_ref().to_vec()
}

/// Reads Secret `cacerts` every [`PLUGIN_POLL`] until shutdown; when its
/// content changes, the CA in it is checked and offered as the prepared
/// authority ([`Authorities::offer_plugin`]). A CA that fails its checks
/// is named and the current authority keeps signing.
pub fn spawn_plugin_watch(
    client: ::kube::Client,
    namespace: &str,
    authorities: Arc<Authorities>,
    cfg: AuthorityConfig,
    clock: SharedClock,
    shutdown: &Shutdown,
) {
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    let namespace = namespace.to_owned();
    let label = format!("Secret {namespace}/{PLUGIN_SECRET}");
    let stop = shutdown.clone();
    shutdown.spawn(async move {
        // None at first: the first read offers what is there (a CA already
        // held is left alone), so a restart picks up a change made while down.
        let mut seen: Option<Vec<u8>> = None;
        let mut failing = false;
        loop {
            tokio::select! {
                () = stop.triggered() => return,
                () = tokio::time::sleep(PLUGIN_POLL) => {}
            }
            let secret = match secrets.get_opt(PLUGIN_SECRET).await {
                Ok(secret) => {
                    failing = false;
                    secret.map(Wiped)
                }
                Err(e) => {
                    if !std::mem::replace(&mut failing, true) {
                        tracing::warn!(secret = %label, error = %e, "reading the plug-in CA failed; retrying");
                    }
                    continue;
                }
            };
            let Some(mut secret) = secret else {
                if seen.take().is_some() {
                    tracing::warn!(secret = %label, "the plug-in CA's Secret was deleted; the authorities stay as they are");
                }
                continue;
            };
            let now = fingerprint(&secret.0);
            if seen.as_ref() == Some(&now) {
                continue;
            }
            if seen.is_some() {
                tracing::info!(secret = %label, "the plug-in CA changed; checking it");
            }
            let files = memory_files(std::mem::take(&mut secret.0), &namespace, PLUGIN_SECRET);
            // Offer against the latest state, not one another replica changed since.
            if let Err(e) = authorities.refresh().await {
                tracing::warn!(error = %e, "re-reading the authorities before the plug-in CA's offer failed");
            }
            let loaded = Authority::load_plugin_files(&files, &cfg, clock.as_ref());
            drop(files);
            match authorities.offer_plugin(loaded, &label).await {
                Ok(message) => {
                    if let Some(message) = message {
                        tracing::info!("{message}");
                    }
                    seen = Some(now);
                }
                // Not remembered: offered again at the next read.
                Err(e) => tracing::error!(secret = %label, error = %e, "storing the new plug-in CA failed; retrying"),
            }
        }
    });
}

#[cfg(test)]
mod tests;
