//! The CA's key material in Kubernetes Secrets, as Istio keeps it.
//!
//! Owns the choice of CA at start-up on Kubernetes: a plug-in CA from Secret
//! `cacerts` (Istio's file names) when it exists, else the self-signed root in
//! Secret `istio-ca-secret`, created once and shared by every CA replica. Does
//! not sign anything (that is `pki::authority`) and never writes a key to disk.
//!
//! Rules enforced:
//! - exactly one root per cluster: the Secret is created only if absent, and a
//!   replica whose create answers `409 AlreadyExists` loads the winner's root
//!   instead of its own;
//! - a `cacerts` Secret that fails a check stops start-up, the error naming the
//!   Secret key and the rule (never a silent fallback to a self-signed root);
//! - an API server that is down or answers 5xx/429 is retried with capped
//!   backoff until the caller's deadline or cancellation, each failure logged;
//!   a 403 names the RBAC permission that is missing;
//! - key bytes live in zeroizing buffers once received, and the copy sent in a
//!   create request is zeroized after the call.

use std::time::Duration;

use ::kube::api::{Api, ObjectMeta, PostParams};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::ByteString;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroize as _;

use crate::pki::authority::{
    Authority, AuthorityConfig, AuthorityError, MemoryFiles, CA_CERT_FILE, CA_KEY_FILE,
};
use crate::time::Clock;

/// Secret holding an operator's plug-in CA (Istio's name).
pub const PLUGIN_SECRET: &str = "cacerts";
/// Secret holding the self-signed root shared by all replicas (Istio's name).
pub const SELF_SIGNED_SECRET: &str = "istio-ca-secret";
/// Type of [`SELF_SIGNED_SECRET`], as Istio writes it.
pub const SELF_SIGNED_SECRET_TYPE: &str = "istio.io/ca-root";

/// How long start-up keeps retrying an unreachable API server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// First wait after a failure; doubled after each failure.
    pub initial_backoff: Duration,
    /// Longest wait between two attempts.
    pub max_backoff: Duration,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(10),
            deadline: Duration::from_secs(300),
        }
    }
}

/// Where the loaded CA came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaSource {
    /// Secret `cacerts`: an operator's plug-in CA.
    PluginSecret,
    /// Secret `istio-ca-secret`, created by this replica just now.
    SelfSignedCreated,
    /// Secret `istio-ca-secret`, created earlier or by another replica.
    SelfSignedLoaded,
}

/// The CA loaded from the cluster.
#[derive(Debug)]
pub struct LoadedCa {
    /// Ready to sign.
    pub authority: Authority,
    /// Which Secret it came from.
    pub source: CaSource,
}

/// Why the CA could not be loaded from the cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaSecretError {
    /// The CA in a Secret breaks a rule; the message names the Secret key.
    #[error("refusing to start: {0}")]
    Authority(#[source] AuthorityError),
    /// The API server refused a request for lack of an RBAC permission.
    #[error(
        "the CA's service account lacks RBAC permission to {verb} secrets in namespace {namespace} \
         (needed for Secret {name}); grant verb \"{verb}\" on resource \"secrets\" in a Role \
         bound to it. API server said: {message}"
    )]
    Forbidden {
        /// The verb refused: `get` or `create`.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: &'static str,
        /// The API server's message.
        message: String,
    },
    /// The API server answered with an error that retrying will not fix.
    #[error("cannot {verb} Secret {namespace}/{name}: {source}")]
    Api {
        /// The verb: `get` or `create`.
        verb: &'static str,
        /// The namespace.
        namespace: String,
        /// The Secret.
        name: &'static str,
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
        last: Box<CaSecretError>,
    },
    /// Shutdown began before the CA was loaded.
    #[error("cancelled while loading the CA from the cluster")]
    Cancelled,
    /// `istio-ca-secret` was reported to exist but could not be read back.
    #[error("Secret {namespace}/{SELF_SIGNED_SECRET} already exists but a GET returned nothing")]
    Vanished {
        /// The namespace.
        namespace: String,
    },
}

impl CaSecretError {
    /// Whether another attempt may succeed: transport errors, 5xx and 429,
    /// and a Secret that vanished between create and get.
    fn is_transient(&self) -> bool {
        match self {
            Self::Api { source, .. } => match source {
                ::kube::Error::Api(status) => status.code >= 500 || status.code == 429,
                // Decoding or building a request will fail again the same way.
                ::kube::Error::SerdeError(_) | ::kube::Error::BuildRequest(_) => false,
                _ => true,
            },
            Self::Vanished { .. } => true,
            _ => false,
        }
    }
}

/// Loads the CA from Secrets in `namespace` (the CA's own), creating the
/// self-signed root if there is none; retries transient failures under
/// `retry` until done, the deadline passes, or `cancel` fires.
pub async fn load_ca(
    client: &::kube::Client,
    namespace: &str,
    cfg: &AuthorityConfig,
    clock: &dyn Clock,
    retry: &RetryPolicy,
    cancel: &CancellationToken,
) -> Result<LoadedCa, CaSecretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    let mut backoff = retry.initial_backoff;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let err = match load_once(&secrets, namespace, cfg, clock).await {
            Ok(loaded) => return Ok(loaded),
            Err(err) if err.is_transient() => err,
            Err(err) => return Err(err),
        };
        let waited = started.elapsed();
        if waited + backoff > retry.deadline {
            return Err(CaSecretError::Unavailable {
                attempts,
                waited,
                last: Box::new(err),
            });
        }
        tracing::warn!(attempt = attempts, retry_in = ?backoff, error = %err, "loading the CA from the cluster failed; retrying");
        tokio::select! {
            () = cancel.cancelled() => return Err(CaSecretError::Cancelled),
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(retry.max_backoff);
    }
}

/// One pass: `cacerts`, else `istio-ca-secret`, else create it.
async fn load_once(
    secrets: &Api<Secret>,
    namespace: &str,
    cfg: &AuthorityConfig,
    clock: &dyn Clock,
) -> Result<LoadedCa, CaSecretError> {
    if let Some(secret) = get(secrets, namespace, PLUGIN_SECRET).await? {
        let files = memory_files(secret, namespace, PLUGIN_SECRET);
        let authority =
            Authority::load_plugin_files(&files, cfg, clock).map_err(CaSecretError::Authority)?;
        tracing::info!(secret = %files.label(), "using the plug-in CA");
        return Ok(LoadedCa {
            authority,
            source: CaSource::PluginSecret,
        });
    }
    if let Some(secret) = get(secrets, namespace, SELF_SIGNED_SECRET).await? {
        return load_self_signed(secret, namespace, cfg, clock);
    }

    let label = secret_label(namespace, SELF_SIGNED_SECRET);
    let (authority, pem) =
        Authority::create_self_signed_pem(&label, cfg, clock).map_err(CaSecretError::Authority)?;
    let mut secret = self_signed_secret(namespace, pem.key_pem.as_bytes(), &pem.cert_pem);
    drop(pem);
    let created = secrets.create(&PostParams::default(), &secret).await;
    // Rule: key bytes never outlive their use; the request copy is wiped.
    for value in secret.data.iter_mut().flat_map(|data| data.values_mut()) {
        value.0.zeroize();
    }
    match created {
        Ok(_) => {
            tracing::info!(secret = %label, "created a new self-signed root");
            Ok(LoadedCa {
                authority,
                source: CaSource::SelfSignedCreated,
            })
        }
        Err(::kube::Error::Api(status)) if status.is_already_exists() => {
            // Another replica won the race: its root is the cluster's root.
            drop(authority);
            tracing::info!(secret = %label, "another replica created the root first; loading it");
            match get(secrets, namespace, SELF_SIGNED_SECRET).await? {
                Some(secret) => load_self_signed(secret, namespace, cfg, clock),
                None => Err(CaSecretError::Vanished {
                    namespace: namespace.to_owned(),
                }),
            }
        }
        Err(source) => Err(classify("create", namespace, SELF_SIGNED_SECRET, source)),
    }
}

fn load_self_signed(
    secret: Secret,
    namespace: &str,
    cfg: &AuthorityConfig,
    clock: &dyn Clock,
) -> Result<LoadedCa, CaSecretError> {
    let files = memory_files(secret, namespace, SELF_SIGNED_SECRET);
    let authority =
        Authority::from_self_signed_files(&files, cfg, clock).map_err(CaSecretError::Authority)?;
    tracing::info!(secret = %files.label(), "loaded the self-signed root");
    Ok(LoadedCa {
        authority,
        source: CaSource::SelfSignedLoaded,
    })
}

async fn get(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &'static str,
) -> Result<Option<Secret>, CaSecretError> {
    secrets
        .get_opt(name)
        .await
        .map_err(|source| classify("get", namespace, name, source))
}

fn classify(
    verb: &'static str,
    namespace: &str,
    name: &'static str,
    source: ::kube::Error,
) -> CaSecretError {
    match source {
        ::kube::Error::Api(status) if status.is_forbidden() => CaSecretError::Forbidden {
            verb,
            namespace: namespace.to_owned(),
            name,
            message: status.message,
        },
        source => CaSecretError::Api {
            verb,
            namespace: namespace.to_owned(),
            name,
            source,
        },
    }
}

/// How errors name a Secret: `Secret <namespace>/<name>`.
fn secret_label(namespace: &str, name: &str) -> String {
    format!("Secret {namespace}/{name}")
}

/// The Secret's data moved into zeroizing buffers (`stringData` is
/// write-only and never returned by the API server).
pub(crate) fn memory_files(secret: Secret, namespace: &str, name: &str) -> MemoryFiles {
    let mut files = MemoryFiles::new(secret_label(namespace, name));
    for (key, ByteString(bytes)) in secret.data.unwrap_or_default() {
        files.insert(key, bytes);
    }
    files
}

/// `istio-ca-secret` as Istio writes it: the root in `ca-cert.pem` and
/// `root-cert.pem`, its key in `ca-key.pem`, and empty `cert-chain.pem` and
/// `key.pem`; type `istio.io/ca-root`.
fn self_signed_secret(namespace: &str, key_pem: &[u8], cert_pem: &str) -> Secret {
    let entry = |bytes: &[u8]| ByteString(bytes.to_vec());
    Secret {
        metadata: ObjectMeta {
            name: Some(SELF_SIGNED_SECRET.to_owned()),
            namespace: Some(namespace.to_owned()),
            ..ObjectMeta::default()
        },
        type_: Some(SELF_SIGNED_SECRET_TYPE.to_owned()),
        data: Some(
            [
                (CA_CERT_FILE, entry(cert_pem.as_bytes())),
                (CA_KEY_FILE, entry(key_pem)),
                ("cert-chain.pem", entry(b"")),
                ("key.pem", entry(b"")),
                ("root-cert.pem", entry(cert_pem.as_bytes())),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
        ),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests;
