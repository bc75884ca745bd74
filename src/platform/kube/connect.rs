//! Reaching the API server: the client (in-cluster service account or a
//! kubeconfig) and the token verifier `--token-verification` asks for.
//!
//! Owns only construction; the backend is [`super::KubePlatform`], the
//! verifiers are [`super::token_review`] and [`super::oidc`].

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::oidc::{OidcJwks, OidcJwksConfig};
use super::token_review::TokenReviewer;
use super::{TokenVerification, TokenVerifier};
use crate::time::SharedClock;

/// Why no client for the API server could be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Neither an in-cluster service account nor a kubeconfig was usable.
    #[error(
        "--platform kube: no in-cluster service account and no usable kubeconfig (KUBECONFIG or ~/.kube/config)"
    )]
    NoConfig(#[source] ::kube::config::InferConfigError),
    /// The configuration was found but no client could be built from it.
    #[error("--platform kube: cannot build a client for the API server")]
    Client(#[source] ::kube::Error),
}

/// A client for the API server and the server's URL.
#[derive(Clone)]
pub struct ApiServer {
    /// The client.
    pub client: ::kube::Client,
    /// The API server's URL (where the service-account issuer's keys live).
    pub url: http::Uri,
}

impl ApiServer {
    /// The in-cluster service account, or the kubeconfig (`KUBECONFIG`,
    /// `~/.kube/config`). Makes no request.
    pub async fn infer() -> Result<Self, ConnectError> {
        let config = ::kube::Config::infer()
            .await
            .map_err(ConnectError::NoConfig)?;
        let url = config.cluster_url.clone();
        let client = ::kube::Client::try_from(config).map_err(ConnectError::Client)?;
        Ok(Self { client, url })
    }

    /// The token verifier `mode` asks for. For JWKS also a task to run
    /// (until `stop`) that fetches the issuer's keys in the background, so an
    /// API server that is down at start only delays the first verification.
    pub fn token_verifier(
        &self,
        mode: TokenVerification,
        clock: SharedClock,
        stop: CancellationToken,
    ) -> (
        Arc<dyn TokenVerifier>,
        Option<impl Future<Output = ()> + Send + 'static>,
    ) {
        match mode {
            TokenVerification::TokenReview => {
                (Arc::new(TokenReviewer::new(self.client.clone())), None)
            }
            TokenVerification::Jwks => {
                let jwks = Arc::new(OidcJwks::new(
                    self.client.clone(),
                    OidcJwksConfig {
                        api_server: Some(self.url.clone()),
                        ..OidcJwksConfig::default()
                    },
                    clock,
                ));
                let warm = jwks.clone();
                let task = async move {
                    tokio::select! {
                        () = stop.cancelled() => {}
                        loaded = warm.load() => if let Err(e) = loaded {
                            tracing::warn!(error = %e, "cannot load the service-account issuer's keys yet; will retry on the first token");
                        },
                    }
                };
                (jwks, Some(task))
            }
        }
    }
}
