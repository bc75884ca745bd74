//! `--platform local|kube` and `--token-verification`: which backend the CA,
//! the agent and `meshid mtls` take their facts from, and how the `kube`
//! backend is reached.
//!
//! Owns flag parsing and the construction of the kube client and token
//! verifier; the backend itself is [`crate::platform::kube`].

use std::sync::Arc;

use anyhow::Context;
use clap::{Args, ValueEnum};

use crate::platform::kube::oidc::{OidcJwks, OidcJwksConfig};
use crate::platform::kube::token_review::TokenReviewer;
use crate::platform::kube::{TokenVerification, TokenVerifier};
use crate::time::SharedClock;

/// Where facts (pods, namespaces, policies, token keys) come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum PlatformKind {
    /// A directory of Kubernetes-style YAML and the local token issuer.
    #[default]
    Local,
    /// The Kubernetes API server (in-cluster service account, or KUBECONFIG).
    Kube,
}

/// The platform flags of `meshid ca` and `meshid agent`.
#[derive(Debug, Clone, Default, Args)]
pub struct PlatformArgs {
    /// Where facts come from: `local` (a manifest directory) or `kube` (the Kubernetes API server).
    #[arg(long, env = "MESHID_PLATFORM", value_enum, default_value_t = PlatformKind::Local)]
    pub platform: PlatformKind,
    /// With `--platform kube`: verify service-account tokens by `tokenreview` (ask the API server) or `jwks` (the issuer's keys, locally; bound pods checked against the pod cache).
    #[arg(long, env = "MESHID_TOKEN_VERIFICATION", value_enum, default_value_t = TokenVerification::TokenReview)]
    pub token_verification: TokenVerification,
}

/// A client for the API server: the in-cluster service account, or the
/// kubeconfig (`KUBECONFIG`, `~/.kube/config`). Makes no request.
pub async fn kube_client() -> anyhow::Result<(::kube::Client, http::Uri)> {
    let config = ::kube::Config::infer().await.context(
        "--platform kube: no in-cluster service account and no usable kubeconfig (KUBECONFIG or ~/.kube/config)",
    )?;
    let url = config.cluster_url.clone();
    let client = ::kube::Client::try_from(config)
        .context("--platform kube: cannot build a client for the API server")?;
    Ok((client, url))
}

/// The token verifier `mode` asks for. The JWKS verifier starts fetching
/// the issuer's keys in the background (a task of `shutdown`, so it ends
/// with the process's other work), so an API server that is down at start
/// only delays it.
pub fn token_verifier(
    mode: TokenVerification,
    client: ::kube::Client,
    api_server: http::Uri,
    clock: SharedClock,
    shutdown: &crate::shutdown::Shutdown,
) -> Arc<dyn TokenVerifier> {
    match mode {
        TokenVerification::TokenReview => Arc::new(TokenReviewer::new(client)),
        TokenVerification::Jwks => {
            let jwks = Arc::new(OidcJwks::new(
                client,
                OidcJwksConfig {
                    api_server: Some(api_server),
                    ..OidcJwksConfig::default()
                },
                clock,
            ));
            let warm = jwks.clone();
            let stop = shutdown.token().clone();
            shutdown.spawn(async move {
                tokio::select! {
                    () = stop.cancelled() => {}
                    loaded = warm.load() => if let Err(e) = loaded {
                        tracing::warn!(error = %e, "cannot load the service-account issuer's keys yet; will retry on the first token");
                    },
                }
            });
            jwks
        }
    }
}
