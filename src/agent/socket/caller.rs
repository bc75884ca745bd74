//! Who is calling on the agent socket: the one place a request's credentials
//! (the connection's peer credentials, an `authorization: Bearer` token) are
//! turned into a [`Workload`], for every service on the socket.
//!
//! Owns which credential wins ([`AttestPolicy`]) and counting refused callers;
//! not what each credential proves (that is [`Attestor`]'s) nor what a service
//! does with the workload.
//!
//! Rule (which credential wins), written once, here:
//! - [`AttestPolicy::TokenThenPeer`] (SDS and the policy stream, which
//!   istio-agent-style proxies call with their pod's token): a request that
//!   carries a bearer token is attested by the token alone; a token that does
//!   not attest is refused, never retried as peer credentials, so a proxy with
//!   a broken token is told so instead of silently getting whatever its uid
//!   maps to. A request without a token is attested by its peer credentials.
//!   A malformed `authorization` value counts as no token.
//! - [`AttestPolicy::PeerOnly`] (the SPIFFE Workload API, whose clients send
//!   no token): peer credentials alone; a token, if sent, is not read.

use std::future::Future;
use std::sync::Arc;

use tonic::Request;

use crate::agent::attest::{Attestor, PeerCredentials, Workload};
use crate::agent::metrics::AgentMetrics;
use crate::agent::socket::UdsConnInfo;
use crate::token::BearerToken;

/// Which credentials a service accepts, in which order (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestPolicy {
    /// A bearer token when one is sent, else peer credentials.
    TokenThenPeer,
    /// Peer credentials only.
    PeerOnly,
}

/// Why a caller could not be tied to a workload on this node. Services answer
/// it with `PERMISSION_DENIED` and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("caller not attested: {reason}")]
pub struct Unattested {
    /// Why (each credential tried, and what it said).
    pub reason: String,
}

/// Attests callers on the agent socket; one per agent, shared by its services.
#[derive(Clone)]
pub struct SocketAttestor {
    attestor: Arc<Attestor>,
    /// Audiences accepted on tokens in `authorization` metadata.
    audiences: Arc<[String]>,
    /// Counts refused callers.
    metrics: AgentMetrics,
}

impl std::fmt::Debug for SocketAttestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketAttestor")
            .field("node", &self.attestor.node())
            .field("audiences", &self.audiences)
            .finish_non_exhaustive()
    }
}

impl SocketAttestor {
    /// Attests with `attestor`, accepting tokens for any of `audiences`.
    pub fn new(attestor: Arc<Attestor>, audiences: Vec<String>, metrics: AgentMetrics) -> Self {
        Self {
            attestor,
            audiences: audiences.into(),
            metrics,
        }
    }

    /// The attestor underneath (its node, its peer lookups).
    pub fn attestor(&self) -> &Attestor {
        &self.attestor
    }

    /// Attests the caller of `request` under `policy`. What the request says
    /// is read now, so the returned future does not borrow it (a streaming
    /// request is not `Sync`). Refusals are counted.
    pub fn attest<T>(
        &self,
        policy: AttestPolicy,
        request: &Request<T>,
    ) -> impl Future<Output = Result<Workload, Unattested>> + Send + '_ {
        let peer = request
            .extensions()
            .get::<UdsConnInfo>()
            .and_then(|info| info.peer);
        let token = match policy {
            AttestPolicy::TokenThenPeer => {
                BearerToken::from_metadata(request.metadata()).and_then(Result::ok)
            }
            AttestPolicy::PeerOnly => None,
        };
        async move {
            let result = self.decide(policy, peer, token).await;
            if result.is_err() {
                self.metrics.attestation_failures.inc();
            }
            result
        }
    }

    async fn decide(
        &self,
        policy: AttestPolicy,
        peer: Option<PeerCredentials>,
        token: Option<BearerToken>,
    ) -> Result<Workload, Unattested> {
        let refused = |reason: String| Unattested { reason };
        if let Some(token) = token {
            return self
                .attestor
                .attest_token(&token, &self.audiences)
                .await
                .map_err(|e| refused(format!("bearer token refused: {e}")));
        }
        let no_token = match policy {
            AttestPolicy::TokenThenPeer => " and no bearer token",
            AttestPolicy::PeerOnly => "",
        };
        let Some(creds) = peer else {
            return Err(refused(format!(
                "no peer credentials on this connection{no_token}"
            )));
        };
        self.attestor.attest_peer(&creds).map_err(|e| match policy {
            AttestPolicy::TokenThenPeer => refused(format!(
                "{e}, and no bearer token in authorization metadata"
            )),
            AttestPolicy::PeerOnly => refused(e.to_string()),
        })
    }
}

#[cfg(test)]
mod tests {
    //! The precedence rule, and attempts to get around it.

    use super::*;
    use crate::agent::socket::limits::Activity;
    use crate::identity::TrustDomain;
    use crate::platform::local::{LocalConfig, LocalPlatform};
    use crate::test_helpers::TestEnv;
    use crate::token::AUTHORIZATION;

    const NODE: &str = "node-a";
    const WEB_UID: &str = "4e8a2f3c-1b2d-4f5e-9a8b-7c6d5e4f3a2b";
    const DB_UID: &str = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0";
    /// The Unix uid the `web` pod's processes run as.
    const WEB_UNIX_UID: u32 = 5001;

    struct Fixture {
        env: TestEnv,
        socket: SocketAttestor,
        metrics: AgentMetrics,
    }

    impl Fixture {
        /// Two pods on this node: `web` (attests by its Unix uid) and `db`.
        fn new() -> Self {
            let env = TestEnv::new();
            env.add_pod_with_unix_uid("shop", "web", WEB_UID, "web", NODE, WEB_UNIX_UID);
            env.add_pod("shop", "db", DB_UID, "db", NODE);
            let cfg = LocalConfig::new(
                &env.manifests,
                env.issuer().verifier(),
                crate::time::system_clock(),
            );
            let platform = LocalPlatform::open(cfg).unwrap();
            let attestor = Attestor::new(platform, NODE.into(), TrustDomain::default());
            let metrics = AgentMetrics::register(&prometheus::Registry::new()).unwrap();
            let socket =
                SocketAttestor::new(Arc::new(attestor), vec!["istio-ca".into()], metrics.clone());
            Self {
                env,
                socket,
                metrics,
            }
        }

        fn db_token(&self) -> String {
            self.env
                .token("shop", "db", Some(("db", DB_UID)), Some(NODE))
        }

        /// A request from Unix uid `uid` (when given) with `authorization`.
        fn request(&self, uid: Option<u32>, authorization: Option<&str>) -> Request<()> {
            let mut request = Request::new(());
            request.extensions_mut().insert(UdsConnInfo {
                peer: uid.map(|uid| PeerCredentials {
                    pid: None,
                    uid,
                    gid: uid,
                }),
                activity: Activity::new(),
            });
            if let Some(value) = authorization {
                request
                    .metadata_mut()
                    .insert(AUTHORIZATION, value.parse().unwrap());
            }
            request
        }

        async fn attest(
            &self,
            policy: AttestPolicy,
            uid: Option<u32>,
            authorization: Option<&str>,
        ) -> Result<Workload, Unattested> {
            let request = self.request(uid, authorization);
            self.socket.attest(policy, &request).await
        }
    }

    #[tokio::test]
    async fn a_token_decides_over_peer_credentials() {
        let f = Fixture::new();
        let bearer = format!("Bearer {}", f.db_token());
        let workload = f
            .attest(
                AttestPolicy::TokenThenPeer,
                Some(WEB_UNIX_UID),
                Some(&bearer),
            )
            .await
            .unwrap();
        assert_eq!(workload.pod.name, "db");
    }

    #[tokio::test]
    async fn a_refused_token_is_never_retried_as_peer_credentials() {
        let f = Fixture::new();
        let err = f
            .attest(
                AttestPolicy::TokenThenPeer,
                Some(WEB_UNIX_UID),
                Some("Bearer not.a.jwt"),
            )
            .await
            .unwrap_err();
        assert!(err.reason.starts_with("bearer token refused"), "{err}");
        assert_eq!(f.metrics.attestation_failures.get(), 1);
    }

    #[tokio::test]
    async fn without_a_token_peer_credentials_decide() {
        let f = Fixture::new();
        for authorization in [None, Some("Basic d2ViOnB3"), Some("Bearer ")] {
            let workload = f
                .attest(
                    AttestPolicy::TokenThenPeer,
                    Some(WEB_UNIX_UID),
                    authorization,
                )
                .await
                .unwrap();
            assert_eq!(workload.pod.name, "web", "{authorization:?}");
        }
        let err = f
            .attest(AttestPolicy::TokenThenPeer, Some(4242), None)
            .await
            .unwrap_err();
        assert!(err.reason.contains("no bearer token"), "{err}");
    }

    #[tokio::test]
    async fn the_workload_api_never_reads_a_token() {
        let f = Fixture::new();
        let bearer = format!("Bearer {}", f.db_token());
        let workload = f
            .attest(AttestPolicy::PeerOnly, Some(WEB_UNIX_UID), Some(&bearer))
            .await
            .unwrap();
        assert_eq!(workload.pod.name, "web");
        // A valid token does not stand in for missing peer credentials.
        let err = f
            .attest(AttestPolicy::PeerOnly, None, Some(&bearer))
            .await
            .unwrap_err();
        assert_eq!(err.reason, "no peer credentials on this connection");
        assert_eq!(f.metrics.attestation_failures.get(), 1);
    }
}
