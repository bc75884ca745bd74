//! Local verification of service-account tokens against the API server's
//! service-account issuer keys (`--token-verification jwks`), which keeps the
//! API server off the hot path.
//!
//! Owns [`OidcJwks`]: the issuer and key set learnt by OIDC discovery
//! ([`discovery`]), a cache of them, and when to fetch them again. Tokens are
//! checked by the shared [`JwtVerifier`] (RS256/ES256 only, `exp`/`nbf`/`iat`,
//! audiences) with the discovered issuer required. It does not check that a
//! token's bound pod still exists: the `kube` platform does, from its pod cache.
//!
//! Rules enforced:
//! - the issuer every token must carry is the one the API server announces;
//!   keys come only from the API server (`discovery::jwks_path`);
//! - fetching is single-flight and rate-limited (`may_fetch`): at most one
//!   fetch at a time, none within `min_refresh_interval` of the last success
//!   nor within `retry_interval` of the last failure, so a flood of tokens
//!   naming random `kid`s costs the API server at most one request per interval;
//! - a token whose `kid` is not cached triggers a refetch (key rotation); so
//!   do keys older than `max_key_age` (keys withdrawn by the API server stop
//!   being trusted), but a failed refetch keeps the cached keys, and while
//!   one caller refetches stale keys the others verify with them, unblocked;
//! - with no keys loaded every token gets [`PlatformError::Unavailable`]
//!   (retryable), never a refusal; an unknown `kid` while the API server cannot
//!   be reached is Unavailable too: we cannot tell whether the key is new.
//!
//! Locks: the key cache is a `std` lock never held across `.await`; the
//! refresh gate is a tokio mutex held across the fetch on purpose, which is
//! what makes fetching single-flight. It guards no data.

pub mod discovery;

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::Duration as StdDuration;

use time::{Duration, OffsetDateTime};

use crate::platform::jwt::{peek_kid, JwtVerifier, JwtVerifierConfig, DEFAULT_LEEWAY};
use crate::platform::{PlatformError, VerifiedToken};
use crate::time::SharedClock;

/// How [`OidcJwks`] fetches and refreshes keys.
#[derive(Debug, Clone)]
pub struct OidcJwksConfig {
    /// The API server's URL (kube `Config::cluster_url`). A `jwks_uri` on
    /// this host is fetched through the kube client; `None` accepts only the
    /// standard `/openid/v1/jwks` path or a relative one.
    pub api_server: Option<http::Uri>,
    /// Clock-skew allowance for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// No refetch within this long of a successful fetch, whatever `kid`s
    /// tokens name: the bound on what a flood of random `kid`s can cost.
    pub min_refresh_interval: Duration,
    /// No refetch within this long of a failed fetch (shorter, so an API
    /// server that was down at start-up is retried soon).
    pub retry_interval: Duration,
    /// Keys older than this are refetched on the next verification, so a key
    /// the API server withdrew stops verifying.
    pub max_key_age: Duration,
    /// How long one request to the API server may take.
    pub request_timeout: StdDuration,
}

impl Default for OidcJwksConfig {
    fn default() -> Self {
        Self {
            api_server: None,
            leeway: DEFAULT_LEEWAY,
            min_refresh_interval: Duration::seconds(30),
            retry_interval: Duration::seconds(5),
            max_key_age: Duration::hours(1),
            request_timeout: StdDuration::from_secs(5),
        }
    }
}

/// Verifies service-account tokens against the API server's issuer keys,
/// cached. Build it once and share it (`Arc`).
pub struct OidcJwks {
    client: ::kube::Client,
    config: OidcJwksConfig,
    clock: SharedClock,
    cache: RwLock<Cache>,
    /// Held while fetching: concurrent verifications needing a refetch wait
    /// here, then find the fresh keys (or the rate limit) in `cache`.
    refresh_gate: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Cache {
    keys: Option<Keys>,
    last_attempt: Option<Attempt>,
    last_error: Option<String>,
}

struct Keys {
    verifier: Arc<JwtVerifier>,
    fetched_at: OffsetDateTime,
}

/// When keys were last fetched, and whether it worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Attempt {
    at: OffsetDateTime,
    ok: bool,
}

impl fmt::Debug for OidcJwks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cache = self.read();
        f.debug_struct("OidcJwks")
            .field("config", &self.config)
            .field("verifier", &cache.keys.as_ref().map(|k| &k.verifier))
            .field("last_attempt", &cache.last_attempt)
            .finish_non_exhaustive()
    }
}

impl OidcJwks {
    /// A verifier for the API server behind `client`. Makes no request: keys
    /// are fetched by [`OidcJwks::load`] or by the first verification, so it
    /// can be built while the API server is down.
    pub fn new(client: ::kube::Client, config: OidcJwksConfig, clock: SharedClock) -> Self {
        Self {
            client,
            config,
            clock,
            cache: RwLock::new(Cache::default()),
            refresh_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Fetches the issuer and keys now, whatever the rate limit (start-up
    /// warm-up). On failure the cached keys, if any, stay in use.
    pub async fn load(&self) -> Result<(), PlatformError> {
        let _gate = self.refresh_gate.lock().await;
        self.fetch_and_store().await
    }

    /// Whether keys are loaded (for `/readyz`).
    pub fn is_loaded(&self) -> bool {
        self.read().keys.is_some()
    }

    /// The issuer announced by the API server, once loaded.
    pub fn issuer(&self) -> Option<String> {
        let cache = self.read();
        let keys = cache.keys.as_ref()?;
        keys.verifier.issuer().map(str::to_owned)
    }

    /// Verifies `token` (the bare JWT) for one of `audiences`.
    ///
    /// Errors: [`PlatformError::InvalidToken`] (refused; reason for the server
    /// log) or [`PlatformError::Unavailable`] (no keys, or an unknown `kid`
    /// while the API server cannot be reached).
    pub async fn verify(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<VerifiedToken, PlatformError> {
        // Unverified: only decides whether to refetch; JwtVerifier re-reads it.
        let kid = peek_kid(token);
        let need = fetch_need(&self.read(), kid.as_deref(), &self.config, self.clock.now());
        if need != Need::Nothing {
            self.refresh(kid.as_deref(), need).await;
        }
        let (verifier, last_attempt, last_error) = {
            let cache = self.read();
            (
                cache.keys.as_ref().map(|k| k.verifier.clone()),
                cache.last_attempt,
                cache.last_error.clone(),
            )
        };
        let failed = || {
            last_error
                .clone()
                .unwrap_or_else(|| "not fetched yet".into())
        };
        // Rule: no keys is "cannot tell", never a refusal.
        let Some(verifier) = verifier else {
            return Err(PlatformError::Unavailable(format!(
                "service-account issuer keys are not loaded: {}",
                failed()
            )));
        };
        // Rule: an unknown kid while fetching fails may be a rotation we
        // cannot see yet: retryable.
        if let Some(kid) = &kid {
            if !verifier.has_kid(kid) && last_attempt.is_some_and(|a| !a.ok) {
                return Err(PlatformError::Unavailable(format!(
                    "kid {kid:?} is not cached and the issuer keys cannot be refetched: {}",
                    failed()
                )));
            }
        }
        verifier.verify(token, audiences, self.clock.now())
    }

    /// Refetches if, once through the gate, it is still needed and allowed.
    async fn refresh(&self, kid: Option<&str>, need: Need) {
        // Rule: merely stale keys still verify, so a caller never waits for
        // someone else's refetch of them (a hung API server stalls only the
        // one caller that fetches, for at most the request timeout).
        let _gate = match need {
            Need::Stale => match self.refresh_gate.try_lock() {
                Ok(gate) => gate,
                Err(_) => return,
            },
            _ => self.refresh_gate.lock().await,
        };
        let now = self.clock.now();
        {
            let cache = self.read();
            // Someone else may have refetched while we waited at the gate.
            if fetch_need(&cache, kid, &self.config, now) == Need::Nothing
                || !may_fetch(cache.last_attempt, &self.config, now)
            {
                return;
            }
        }
        // The outcome is in the cache; `verify` reads it from there.
        let _ = self.fetch_and_store().await;
    }

    /// Fetches and records the outcome. Callers hold the gate.
    async fn fetch_and_store(&self) -> Result<(), PlatformError> {
        let fetched = discovery::fetch(
            &self.client,
            self.config.api_server.as_ref(),
            self.config.request_timeout,
        )
        .await
        .and_then(|keys| {
            let verifier = JwtVerifier::new(JwtVerifierConfig {
                issuer: Some(keys.issuer),
                jwks: keys.jwks,
                leeway: self.config.leeway,
            });
            if verifier.key_count() == 0 {
                return Err(PlatformError::Jwks {
                    reason: "the API server's JWKS holds no RS256 or ES256 key".into(),
                });
            }
            Ok(verifier)
        });
        let at = self.clock.now();
        let mut cache = self.cache.write().unwrap_or_else(PoisonError::into_inner);
        match fetched {
            Ok(verifier) => {
                tracing::info!(issuer = ?verifier.issuer(), keys = verifier.key_count(), "service-account issuer keys loaded");
                cache.keys = Some(Keys {
                    verifier: Arc::new(verifier),
                    fetched_at: at,
                });
                cache.last_attempt = Some(Attempt { at, ok: true });
                cache.last_error = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    cached = cache.keys.is_some(),
                    "cannot fetch service-account issuer keys: {e}"
                );
                cache.last_attempt = Some(Attempt { at, ok: false });
                cache.last_error = Some(e.to_string());
                Err(e)
            }
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        self.cache.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a token naming `kid` needs the keys fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// The cache serves it.
    Nothing,
    /// The cache cannot: no keys, or `kid` is not among them.
    Keys,
    /// The cache serves it, but the keys are older than `max_key_age`.
    Stale,
}

/// Whether (and how urgently) the cache needs a fetch for a token naming `kid`. Pure.
fn fetch_need(
    cache: &Cache,
    kid: Option<&str>,
    config: &OidcJwksConfig,
    now: OffsetDateTime,
) -> Need {
    match &cache.keys {
        None => Need::Keys,
        Some(keys) if kid.is_some_and(|k| !keys.verifier.has_kid(k)) => Need::Keys,
        Some(keys) if now >= keys.fetched_at + config.max_key_age => Need::Stale,
        Some(_) => Need::Nothing,
    }
}

/// Rule: the rate limit. A fetch is allowed `min_refresh_interval` after a
/// success and `retry_interval` after a failure. Pure.
fn may_fetch(last: Option<Attempt>, config: &OidcJwksConfig, now: OffsetDateTime) -> bool {
    match last {
        None => true,
        Some(Attempt { at, ok: true }) => now >= at + config.min_refresh_interval,
        Some(Attempt { at, ok: false }) => now >= at + config.retry_interval,
    }
}

#[cfg(test)]
mod tests;
