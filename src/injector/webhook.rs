//! Keeps the `caBundle` of the injector's own `MutatingWebhookConfiguration`
//! equal to the trust bundle, so the API server trusts the certificate the
//! CA issued us, with no cert-manager. Only that one object, by name (RBAC:
//! `get` and `patch` on it alone).
//!
//! Each change of the bundle, and every minute (to undo drift such as a
//! `kubectl apply` that emptied the field), reads the configuration and, if
//! any webhook's bundle differs, writes them all in one merge patch carrying
//! the resourceVersion read (a concurrent change makes it fail and retry).

use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::json;
use tokio::sync::watch;

use crate::shutdown::Shutdown;

/// How often the configuration is checked when the bundle does not change.
pub const RECHECK: Duration = Duration::from_secs(60);

/// Why the bundle could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebhookError {
    /// The configuration does not exist.
    #[error("MutatingWebhookConfiguration {0} not found (apply deploy/)")]
    NotFound(String),
    /// The API server refused or failed.
    #[error("MutatingWebhookConfiguration {name}: {source}")]
    Api {
        /// The configuration.
        name: String,
        /// The error.
        source: Box<kube::Error>,
    },
}

/// Makes every webhook of configuration `name` carry `bundle_pem`. Returns
/// whether anything was written.
pub async fn ensure_ca_bundle(
    client: &kube::Client,
    name: &str,
    bundle_pem: &str,
) -> Result<bool, WebhookError> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let api_err = |source| WebhookError::Api {
        name: name.to_owned(),
        source: Box::new(source),
    };
    let config = api
        .get_opt(name)
        .await
        .map_err(api_err)?
        .ok_or_else(|| WebhookError::NotFound(name.to_owned()))?;
    let wanted = bundle_pem.as_bytes();
    let webhooks = config.webhooks.unwrap_or_default();
    if webhooks.iter().all(|w| {
        w.client_config
            .ca_bundle
            .as_ref()
            .is_some_and(|b| b.0 == wanted)
    }) {
        return Ok(false);
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(wanted);
    let mut webhooks = serde_json::to_value(&webhooks).unwrap_or_else(|_| json!([]));
    for webhook in webhooks.as_array_mut().into_iter().flatten() {
        webhook["clientConfig"]["caBundle"] = json!(encoded);
    }
    let patch = json!({
        "metadata": {"resourceVersion": config.metadata.resource_version},
        "webhooks": webhooks,
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(api_err)?;
    Ok(true)
}

/// Runs [`ensure_ca_bundle`] on every bundle change and every [`RECHECK`]
/// until shutdown.
pub async fn keep_ca_bundle(
    client: kube::Client,
    name: String,
    mut bundle: watch::Receiver<Option<String>>,
    shutdown: Shutdown,
) {
    let mut retry = Duration::from_secs(1);
    loop {
        let current = bundle.borrow_and_update().clone();
        let wait = match current {
            None => RECHECK,
            Some(pem) => match ensure_ca_bundle(&client, &name, &pem).await {
                Ok(true) => {
                    tracing::info!(webhook = %name, "caBundle set to the trust bundle");
                    retry = Duration::from_secs(1);
                    RECHECK
                }
                Ok(false) => RECHECK,
                Err(e) => {
                    tracing::warn!(error = %e, "caBundle not written; retrying");
                    retry = (retry * 2).min(RECHECK);
                    retry
                }
            },
        };
        tokio::select! {
            () = shutdown.triggered() => return,
            changed = bundle.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(wait) => {}
        }
    }
}
