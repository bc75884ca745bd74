//! Authentication: who is calling? A Kubernetes service-account token
//! (`authorization: Bearer …`, verified by the platform) or a client
//! certificate this CA issued that is still valid (renewal).
//!
//! Rules enforced: the caller's identity comes from a verified credential only;
//! a client certificate counts only if the TLS layer verified its chain to our
//! roots and it carries exactly one URI SAN in our trust domain; verified
//! tokens are remembered by SHA-256 (never by value) and only until they expire.
//! Failure reasons are returned for the log and audit record; the client sees
//! an opaque `UNAUTHENTICATED` — or `UNAVAILABLE` when the platform cannot
//! tell now (API server down), which is never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use crate::identity::{SpiffeId, TrustDomain};
use crate::platform::{Platform, PlatformError, VerifiedToken};
use crate::time::SharedClock;
use crate::token::{BearerToken, TokenError};

/// Longest bearer token looked at; longer ones are refused unparsed.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A workload or node agent, by its service-account token.
    Token(Box<TokenCaller>),
    /// A workload renewing with a certificate we issued.
    Certificate {
        /// The identity in the certificate.
        identity: SpiffeId,
        /// Its serial, lower-case hex as the audit store records it: the key to
        /// the pod it was issued to.
        serial_hex: String,
        /// Its lifetime (notAfter − notBefore): a renewal never gets longer.
        lifetime: std::time::Duration,
    },
}

/// A caller authenticated by token: its identity and the token's claims.
#[derive(Debug, Clone)]
pub struct TokenCaller {
    /// `spiffe://<td>/ns/<ns>/sa/<sa>` from the token's subject.
    pub identity: SpiffeId,
    /// The verified claims.
    pub claims: VerifiedToken,
}

impl Caller {
    /// The caller's own identity.
    pub fn identity(&self) -> &SpiffeId {
        match self {
            Caller::Token(t) => &t.identity,
            Caller::Certificate { identity, .. } => identity,
        }
    }
}

/// Why authentication failed (kept server-side: logged and audited).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthnError {
    /// Neither a bearer token nor a client certificate.
    #[error("no credential: neither an authorization bearer token nor a client certificate")]
    NoCredential,
    /// The client certificate was revoked (`meshid ca revoke`).
    #[error("client certificate {serial} is revoked")]
    Revoked {
        /// Its serial, hex.
        serial: String,
    },
    /// The authorization header is not `Bearer <token>`.
    #[error("authorization metadata is not \"Bearer <token>\"")]
    MalformedHeader,
    /// The token failed verification.
    #[error("token refused: {0}")]
    Token(String),
    /// The client certificate is not a usable SVID of ours.
    #[error("client certificate refused: {0}")]
    Certificate(String),
    /// The token could not be checked now (TokenReview or the issuer's keys
    /// unreachable): not a refusal, so the client should retry.
    #[error("cannot verify the token now: {0}")]
    Unavailable(String),
}

/// Verifies callers' credentials, remembering verified tokens.
#[derive(Clone)]
pub struct Authenticator {
    platform: Arc<dyn Platform>,
    audiences: Arc<[String]>,
    trust_domain: TrustDomain,
    clock: SharedClock,
    cache: Arc<Mutex<TokenCache>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("audiences", &self.audiences)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator accepting tokens for any of `audiences`.
    pub fn new(
        platform: Arc<dyn Platform>,
        audiences: Vec<String>,
        trust_domain: TrustDomain,
        clock: SharedClock,
        cache_size: usize,
    ) -> Self {
        Self {
            platform,
            audiences: audiences.into(),
            trust_domain,
            clock,
            cache: Arc::new(Mutex::new(TokenCache::new(cache_size))),
        }
    }

    /// Authenticates from the `authorization` metadata (absent, a token, or
    /// why it is not one) and the verified client chain. A client certificate
    /// is tried first (as Istio does), then the token.
    pub async fn authenticate(
        &self,
        bearer: Option<Result<&BearerToken, &TokenError>>,
        client_chain: Option<&[CertificateDer<'static>]>,
    ) -> Result<Caller, AuthnError> {
        if let Some(leaf) = client_chain.and_then(|c| c.first()) {
            return renewal_caller(leaf, &self.trust_domain);
        }
        let token = match bearer {
            None => return Err(AuthnError::NoCredential),
            Some(Err(_)) => return Err(AuthnError::MalformedHeader),
            Some(Ok(token)) => token.secret_str(),
        };
        let claims = self.verify_token(token).await?;
        let identity = claims
            .identity(&self.trust_domain)
            .map_err(|e| AuthnError::Token(format!("subject is not a usable identity: {e}")))?;
        Ok(Caller::Token(Box::new(TokenCaller { identity, claims })))
    }

    async fn verify_token(&self, token: &str) -> Result<VerifiedToken, AuthnError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthnError::Token(format!(
                "token is {} bytes, more than {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let key = token_hash(token);
        let now = self.clock.now();
        if let Some(hit) = self.lock_cache().get(&key, now) {
            return Ok(hit);
        }
        let claims = self
            .platform
            .verify_token(token, &self.audiences)
            .await
            .map_err(|e| match e {
                // Rule: "cannot tell now" is not "refused" — a client told
                // UNAUTHENTICATED would give up on a good token, one told
                // UNAVAILABLE retries. Nothing is cached either way.
                PlatformError::Unavailable(reason) => AuthnError::Unavailable(reason),
                refused => AuthnError::Token(refused.to_string()),
            })?;
        self.lock_cache().insert(key, claims.clone(), now);
        Ok(claims)
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, TokenCache> {
        self.cache.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The SPIFFE ID of a client certificate whose chain rustls already verified
/// against our roots (`WebPkiClientVerifier`): exactly one URI SAN, ours.
pub fn identity_from_certificate(
    leaf: &CertificateDer<'_>,
    trust_domain: &TrustDomain,
) -> Result<SpiffeId, AuthnError> {
    let refuse = |m: String| AuthnError::Certificate(m);
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| refuse(format!("unparsable: {e}")))?;
    let uris = crate::pki::validate::uri_sans(&cert)
        .map_err(|e| refuse(format!("bad SAN extension: {e}")))?;
    let [uri] = uris.as_slice() else {
        return Err(refuse(format!(
            "{} URI SANs, an SVID has exactly one",
            uris.len()
        )));
    };
    let id = SpiffeId::parse(uri).map_err(|e| refuse(format!("URI SAN {uri:?}: {e}")))?;
    if !id.is_member_of(trust_domain) {
        return Err(refuse(format!(
            "{id} is not in trust domain {trust_domain}"
        )));
    }
    Ok(id)
}

/// The caller of a renewal: the certificate's identity, serial and lifetime.
fn renewal_caller(
    leaf: &CertificateDer<'_>,
    trust_domain: &TrustDomain,
) -> Result<Caller, AuthnError> {
    let identity = identity_from_certificate(leaf, trust_domain)?;
    // identity_from_certificate parsed it already; this cannot fail now.
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| AuthnError::Certificate(format!("unparsable: {e}")))?;
    let validity = cert.validity();
    let secs = validity.not_after.timestamp() - validity.not_before.timestamp();
    let lifetime = std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok(Caller::Certificate {
        identity,
        serial_hex: crate::pki::csr::hex(cert.raw_serial()),
        lifetime,
    })
}

fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Verified tokens by hash, each until its own expiry; bounded.
#[derive(Debug)]
struct TokenCache {
    capacity: usize,
    entries: HashMap<[u8; 32], VerifiedToken>,
}

impl TokenCache {
    fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: HashMap::new(),
        }
    }

    fn get(&mut self, key: &[u8; 32], now: OffsetDateTime) -> Option<VerifiedToken> {
        match self.entries.get(key) {
            Some(claims) if claims.expires_at > now => Some(claims.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, key: [u8; 32], claims: VerifiedToken, now: OffsetDateTime) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, c| c.expires_at > now);
        }
        if self.entries.len() >= self.capacity {
            // Still full of live tokens: start over rather than grow.
            self.entries.clear();
        }
        self.entries.insert(key, claims);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at: OffsetDateTime) -> VerifiedToken {
        VerifiedToken {
            issuer: "i".into(),
            namespace: "ns".into(),
            service_account: "sa".into(),
            audiences: vec!["istio-ca".into()],
            pod_name: None,
            pod_uid: None,
            node_name: None,
            node_uid: None,
            expires_at,
        }
    }

    /// A platform whose token verification is down: counts its calls.
    struct DownPlatform(std::sync::atomic::AtomicUsize);

    impl Platform for DownPlatform {
        fn verify_token<'a>(
            &'a self,
            _token: &'a str,
            _audiences: &'a [String],
        ) -> crate::platform::VerifyFuture<'a> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async {
                Err(PlatformError::Unavailable(
                    "TokenReview: connection refused".into(),
                ))
            })
        }
        fn pod_by_uid(&self, _uid: &str) -> Option<crate::platform::Pod> {
            None
        }
        fn pod(&self, _namespace: &str, _name: &str) -> Option<crate::platform::Pod> {
            None
        }
        fn pods_on_node(&self, _node: &str) -> Vec<crate::platform::Pod> {
            Vec::new()
        }
        fn pods_with_ip(&self, _ip: std::net::IpAddr) -> Vec<crate::platform::Pod> {
            Vec::new()
        }
        fn pods_for_service_account(&self, _ns: &str, _sa: &str) -> Vec<crate::platform::Pod> {
            Vec::new()
        }
        fn namespaces(&self) -> Vec<crate::platform::Namespace> {
            Vec::new()
        }
        fn peer_authentications(&self) -> Vec<crate::policy::PeerAuthentication> {
            Vec::new()
        }
        fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
            tokio::sync::watch::channel(0).1
        }
        fn is_ready(&self) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn platform_unavailable_is_not_a_refusal_and_is_not_cached() {
        let platform = Arc::new(DownPlatform(Default::default()));
        let authn = Authenticator::new(
            platform.clone(),
            vec!["istio-ca".into()],
            TrustDomain::default(),
            crate::time::system_clock(),
            16,
        );
        let token = BearerToken::from_header("Bearer a.b.c").expect("bearer");
        for _ in 0..2 {
            let err = authn
                .authenticate(Some(Ok(&token)), None)
                .await
                .unwrap_err();
            assert!(
                matches!(err, AuthnError::Unavailable(ref r) if r.contains("TokenReview")),
                "{err:?}"
            );
        }
        assert_eq!(platform.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[test]
    fn token_cache_forgets_expired_tokens_and_stays_bounded() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
        let mut cache = TokenCache::new(2);
        cache.insert([1; 32], claims(now + time::Duration::seconds(10)), now);
        assert!(cache.get(&[1; 32], now).is_some());
        assert!(cache
            .get(&[1; 32], now + time::Duration::seconds(10))
            .is_none());
        for i in 0..10u8 {
            cache.insert([i; 32], claims(now + time::Duration::hours(1)), now);
            assert!(cache.entries.len() <= 2);
        }
    }
}
