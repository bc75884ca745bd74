//! The audit log's checkpoint-signing key on Kubernetes, shared by every CA
//! replica through Secret `meshid-audit-checkpoint-key`, as the CA key is
//! shared through `istio-ca-secret` ([`super::secret`]).
//!
//! Owns that Secret: its name, its one data key `key.pk8` (the Ed25519
//! private key as PKCS#8, as `ring` generates it) and its creation. Does not
//! parse or generate keys itself (that is [`NoteSigner::from_pkcs8`] and
//! [`NoteSigner::generate_pkcs8`]) and does not write the verifier key
//! anywhere (the caller does, as on the `local` platform).
//!
//! Rules enforced:
//! - one checkpoint key per cluster: the Secret is created only if absent, and
//!   a replica whose create answers `409 AlreadyExists` loads the winner's key
//!   instead of its own;
//! - a Secret without a usable `key.pk8` stops start-up, the error naming the
//!   Secret and the reason, never the key bytes (no silent replacement: the
//!   log's verifiers know the old key);
//! - an API server that is down or answers 5xx/429 is retried with capped
//!   backoff ([`load_or_create_retrying`]), a 403 names the RBAC permission
//!   that is missing;
//! - key bytes live in zeroizing buffers once received, and the copies in a
//!   create request and its answer are zeroized after the call.

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::api::{Api, ObjectMeta, PostParams};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::{Zeroize as _, Zeroizing};

use super::secret::RetryPolicy;
use crate::audit::tlog::note::{NoteError, NoteSigner};

/// The Secret holding the checkpoint key, in the CA's namespace.
pub const CHECKPOINT_SECRET: &str = "meshid-audit-checkpoint-key";
/// The Secret's data key: the Ed25519 private key, PKCS#8 DER.
pub const KEY_ENTRY: &str = "key.pk8";
/// The Secret's type.
pub const CHECKPOINT_SECRET_TYPE: &str = "Opaque";
/// The label put on the Secret when it is created (`app.kubernetes.io/name`),
/// the CA Deployment's own.
pub const NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "meshid-ca");

/// Why the checkpoint key could not be loaded from (or created in) the cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointSecretError {
    /// The Secret exists but holds no usable key; `reason` says why (it never
    /// contains key bytes).
    #[error("refusing to start: Secret {namespace}/{CHECKPOINT_SECRET}: {reason}")]
    Invalid {
        /// The namespace.
        namespace: String,
        /// Why: data key missing, empty, or not an Ed25519 PKCS#8 key.
        reason: String,
    },
    /// The log's origin cannot be a key name (a configuration error, not the
    /// Secret's).
    #[error("the audit log origin cannot name the checkpoint key: {0}")]
    Origin(#[source] NoteError),
    /// No new key could be generated.
    #[error("cannot generate the audit checkpoint key: {0}")]
    KeyGeneration(#[source] NoteError),
    /// The API server refused a request for lack of an RBAC permission.
    #[error(
        "the CA's service account lacks RBAC permission to {verb} secrets in namespace {namespace} \
         (needed for Secret {CHECKPOINT_SECRET}); grant verb \"{verb}\" on resource \"secrets\" \
         in a Role bound to it. API server said: {message}"
    )]
    Forbidden {
        /// The verb refused: `get` or `create`.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// The API server's message.
        message: String,
    },
    /// The API server answered with an error that retrying will not fix.
    #[error("cannot {verb} Secret {namespace}/{CHECKPOINT_SECRET}: {source}")]
    Api {
        /// The verb: `get` or `create`.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// The error.
        #[source]
        source: ::kube::Error,
    },
    /// The API server stayed unreachable (or failing) until the deadline.
    #[error("the API server was still failing after {attempts} attempts over {waited:?}: {last}")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        waited: Duration,
        /// The last failure.
        #[source]
        last: Box<CheckpointSecretError>,
    },
    /// Shutdown began before the key was loaded.
    #[error("cancelled while loading the audit checkpoint key from the cluster")]
    Cancelled,
    /// The Secret was reported to exist but could not be read back.
    #[error("Secret {namespace}/{CHECKPOINT_SECRET} already exists but a GET returned nothing")]
    Vanished {
        /// The namespace.
        namespace: String,
    },
}

impl CheckpointSecretError {
    /// Whether another attempt may succeed: transport errors, 5xx and 429,
    /// and a Secret that vanished between create and get.
    fn is_transient(&self) -> bool {
        match self {
            Self::Api { source, .. } => match source {
                ::kube::Error::Api(status) => status.code >= 500 || status.code == 429,
                ::kube::Error::SerdeError(_) | ::kube::Error::BuildRequest(_) => false,
                _ => true,
            },
            Self::Vanished { .. } => true,
            _ => false,
        }
    }
}

/// The checkpoint signer for log `origin`, its key read from Secret
/// `meshid-audit-checkpoint-key` in `namespace` (the CA's own), or generated
/// and stored there if the Secret is absent. One attempt: any API failure is
/// returned (see [`load_or_create_retrying`] for start-up).
pub async fn load_or_create(
    client: &::kube::Client,
    namespace: &str,
    origin: &str,
) -> Result<NoteSigner, CheckpointSecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    load_once(&secrets, namespace, origin).await
}

/// [`load_or_create`], retrying transient failures under `retry` until done,
/// the deadline passes, or `cancel` fires (as `load_ca` does for the CA key).
pub async fn load_or_create_retrying(
    client: &::kube::Client,
    namespace: &str,
    origin: &str,
    retry: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<NoteSigner, CheckpointSecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut backoff = retry.initial_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match load_once(&secrets, namespace, origin).await {
            Ok(signer) => return Ok(signer),
            Err(err) if err.is_transient() => err,
            Err(err) => return Err(err),
        };
        let waited = started.elapsed();
        if waited + backoff > retry.deadline {
            return Err(CheckpointSecretError::Unavailable {
                attempts,
                waited,
                last: Box::new(err),
            });
        }
        tracing::warn!(attempt = attempts, retry_in = ?backoff, error = %err, "loading the audit checkpoint key from the cluster failed; retrying");
        tokio::select! {
            () = cancel.cancelled() => return Err(CheckpointSecretError::Cancelled),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(retry.max_backoff);
    }
}

/// One pass: the Secret, else create it, else (409) the winner's.
async fn load_once(
    secrets: &Api<Secret>,
    namespace: &str,
    origin: &str,
) -> Result<NoteSigner, CheckpointSecretError> {
    if let Some(secret) = get(secrets, namespace).await? {
        return signer_from_secret(secret, namespace, origin);
    }

    let pkcs8 =
        Zeroizing::new(NoteSigner::generate_pkcs8().map_err(CheckpointSecretError::KeyGeneration)?);
    // Built before the create, so a bad origin never leaves a Secret behind.
    let signer = note_signer(origin, &pkcs8, namespace)?;
    let mut secret = checkpoint_secret(namespace, &pkcs8);
    drop(pkcs8);
    let created = secrets.create(&PostParams::default(), &secret).await;
    // Rule: key bytes never outlive their use; the request and answer copies are wiped.
    wipe(&mut secret);
    let label = format!("Secret {namespace}/{CHECKPOINT_SECRET}");
    match created {
        Ok(mut answer) => {
            wipe(&mut answer);
            tracing::info!(secret = %label, verifier_key = %signer.verifier_key(), "created the audit checkpoint key");
            Ok(signer)
        }
        Err(::kube::Error::Api(status)) if status.is_already_exists() => {
            // Another replica won the race: its key is the cluster's key.
            drop(signer);
            tracing::info!(secret = %label, "another replica created the audit checkpoint key first; loading it");
            match get(secrets, namespace).await? {
                Some(secret) => signer_from_secret(secret, namespace, origin),
                None => Err(CheckpointSecretError::Vanished {
                    namespace: namespace.to_owned(),
                }),
            }
        }
        Err(source) => Err(classify("create", namespace, source)),
    }
}

/// The signer from a Secret read back from the API server.
fn signer_from_secret(
    secret: Secret,
    namespace: &str,
    origin: &str,
) -> Result<NoteSigner, CheckpointSecretError> {
    let invalid = |reason: String| CheckpointSecretError::Invalid {
        namespace: namespace.to_owned(),
        reason,
    };
    let mut data = secret.data.unwrap_or_default();
    let entry = data.remove(KEY_ENTRY);
    // Other entries are not ours to read, but may be key material too.
    for value in data.values_mut() {
        value.0.zeroize();
    }
    let pkcs8 = match entry {
        Some(ByteString(bytes)) => Zeroizing::new(bytes),
        None => return Err(invalid(format!("it has no data key {KEY_ENTRY}"))),
    };
    if pkcs8.is_empty() {
        return Err(invalid(format!("data key {KEY_ENTRY} is empty")));
    }
    let signer = note_signer(origin, &pkcs8, namespace)?;
    let label = format!("Secret {namespace}/{CHECKPOINT_SECRET}");
    tracing::info!(secret = %label, verifier_key = %signer.verifier_key(), "loaded the audit checkpoint key");
    Ok(signer)
}

/// [`NoteSigner::from_pkcs8`], its errors split between the origin (ours)
/// and the key (the Secret's).
fn note_signer(
    origin: &str,
    pkcs8: &[u8],
    namespace: &str,
) -> Result<NoteSigner, CheckpointSecretError> {
    NoteSigner::from_pkcs8(origin, pkcs8).map_err(|err| match err {
        NoteError::InvalidKeyName(_) => CheckpointSecretError::Origin(err),
        other => CheckpointSecretError::Invalid {
            namespace: namespace.to_owned(),
            reason: format!("data key {KEY_ENTRY} is not an Ed25519 PKCS#8 private key ({other})"),
        },
    })
}

async fn get(
    secrets: &Api<Secret>,
    namespace: &str,
) -> Result<Option<Secret>, CheckpointSecretError> {
    secrets
        .get_opt(CHECKPOINT_SECRET)
        .await
        .map_err(|source| classify("get", namespace, source))
}

fn classify(verb: &'static str, namespace: &str, source: ::kube::Error) -> CheckpointSecretError {
    match source {
        ::kube::Error::Api(status) if status.is_forbidden() => CheckpointSecretError::Forbidden {
            verb,
            namespace: namespace.to_owned(),
            message: status.message,
        },
        source => CheckpointSecretError::Api {
            verb,
            namespace: namespace.to_owned(),
            source,
        },
    }
}

fn wipe(secret: &mut Secret) {
    for value in secret.data.iter_mut().flat_map(|data| data.values_mut()) {
        value.0.zeroize();
    }
}

/// The Secret as created: `key.pk8` only, type `Opaque`, the CA's name label.
fn checkpoint_secret(namespace: &str, pkcs8: &[u8]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(CHECKPOINT_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                NAME_LABEL.0.to_owned(),
                NAME_LABEL.1.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(CHECKPOINT_SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([(
            KEY_ENTRY.to_owned(),
            ByteString(pkcs8.to_vec()),
        )])),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests;
