//! JWKS verification of Kubernetes service-account tokens (projected tokens).
//!
//! Owns [`JwtVerifier`]: from a JWKS (the local issuer's, or the API server's
//! OIDC keys in the kube backend's `jwks` mode, fetched by
//! [`super::kube::oidc`]) and an injected "now" to a [`VerifiedToken`]. It
//! does not fetch keys, cache results or look pods up: the caller does.
//!
//! Rules enforced, in this order (each is commented where it is checked):
//! bounded size; compact JWS shape; `alg` on an allow-list of RS256 and ES256
//! *before* any key is looked at (the algorithm-confusion attack); `kid` names
//! a key of that type; signature; `exp` required and not past, `nbf`/`iat` not
//! in the future (with leeway); `aud` intersects ours; `iss` is ours;
//! `sub = system:serviceaccount:<ns>:<sa>` agrees with the `kubernetes.io`
//! claim. jsonwebtoken's own `decode`/`Validation` is not used: it checks
//! times against the system clock, and here every rule is explicit.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};

use super::{PlatformError, VerifiedToken};
use crate::identity::{SpiffeId, TrustDomain};

/// Tokens longer than this are refused before any parsing (projected tokens are ~1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Default clock-skew allowance for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::seconds(30);

/// The `sub` prefix of every service-account token.
pub const SUBJECT_PREFIX: &str = "system:serviceaccount:";

/// What a [`JwtVerifier`] is built from.
#[derive(Debug, Clone)]
pub struct JwtVerifierConfig {
    /// The required `iss`; `None` accepts any issuer (the keys alone decide).
    pub issuer: Option<String>,
    /// The issuer's public keys. Keys we cannot use safely (symmetric `oct`
    /// keys, curves other than P-256, keys marked for encryption) are skipped.
    pub jwks: JwkSet,
    /// Clock-skew allowance for `exp`, `nbf` and `iat` ([`DEFAULT_LEEWAY`]).
    pub leeway: Duration,
}

impl JwtVerifierConfig {
    /// A config for `jwks` with the default leeway and no issuer requirement.
    pub fn new(jwks: JwkSet) -> Self {
        Self {
            issuer: None,
            jwks,
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// Verifies Kubernetes service-account JWTs against a JWKS. Cheap to clone.
#[derive(Clone)]
pub struct JwtVerifier {
    issuer: Option<String>,
    leeway: Duration,
    keys: Vec<VerifierKey>,
}

#[derive(Clone)]
struct VerifierKey {
    kid: Option<String>,
    /// The only algorithm this key verifies: RS256 for RSA, ES256 for P-256.
    alg: Algorithm,
    key: DecodingKey,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|k| format!("{:?}:{}", k.alg, k.kid.as_deref().unwrap_or("-")))
            .collect();
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .field("keys", &keys)
            .finish()
    }
}

impl JwtVerifier {
    /// Builds a verifier. Unusable keys are skipped with a warning; a verifier
    /// with no key refuses every token (check [`JwtVerifier::key_count`]).
    pub fn new(config: JwtVerifierConfig) -> Self {
        let mut keys = Vec::new();
        for jwk in &config.jwks.keys {
            match usable_key(jwk) {
                Ok((alg, key)) => keys.push(VerifierKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                }),
                Err(why) => tracing::warn!(kid = ?jwk.common.key_id, "skipping JWKS key: {why}"),
            }
        }
        Self {
            issuer: config.issuer,
            leeway: config.leeway,
            keys,
        }
    }

    /// How many keys tokens can be verified with.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether a key with this `kid` is loaded (the kube backend refreshes its
    /// JWKS when a token names a kid it does not have).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// The required issuer, if any.
    pub fn issuer(&self) -> Option<&str> {
        self.issuer.as_deref()
    }

    /// Verifies `token` (the bare JWT) for one of `audiences` at time `now`.
    ///
    /// Every refusal is [`PlatformError::InvalidToken`] with a reason for the
    /// server log; the token itself never appears in it.
    pub fn verify(
        &self,
        token: &str,
        audiences: &[String],
        now: OffsetDateTime,
    ) -> Result<VerifiedToken, PlatformError> {
        // Rule: bounded input, before any decoding work.
        if token.is_empty() {
            return Err(invalid("empty token"));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(invalid(format!(
                "token is {} bytes, the limit is {MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        // Rule: exactly header.payload.signature (JWE and JSON serializations refused).
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a compact JWS (header.payload.signature)"));
        };
        let header: RawHeader = decode_json(header_b64, "header")?;

        // Rule: the algorithm allow-list comes first, before any key lookup.
        // `none` would skip the signature, and HS256/384/512 would let an
        // attacker "sign" with the public key as an HMAC secret (alg confusion).
        let alg = match header.alg.as_str() {
            "RS256" => Algorithm::RS256,
            "ES256" => Algorithm::ES256,
            a if a.eq_ignore_ascii_case("none") => {
                return Err(invalid("alg \"none\": unsigned tokens are refused"))
            }
            a if a.to_ascii_uppercase().starts_with("HS") => {
                return Err(invalid(format!(
                    "alg {a:?}: HMAC-signed tokens are refused"
                )))
            }
            other => return Err(invalid(format!("alg {other:?} is not RS256 or ES256"))),
        };
        // Rule: a critical header extension we do not understand is fatal (RFC 7515 §4.1.11).
        if header.crit.is_some() {
            return Err(invalid("the \"crit\" header is not supported"));
        }

        // Rule: the kid must name a key of the algorithm's type; without a kid,
        // every key of that type is tried.
        let candidates: Vec<&VerifierKey> = match &header.kid {
            Some(kid) => {
                let named: Vec<&VerifierKey> = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_ref() == Some(kid))
                    .collect();
                if named.is_empty() {
                    return Err(invalid(format!("kid {kid:?} is not in the issuer's JWKS")));
                }
                let typed: Vec<&VerifierKey> = named.into_iter().filter(|k| k.alg == alg).collect();
                if typed.is_empty() {
                    return Err(invalid(format!("key {kid:?} cannot verify {alg:?}")));
                }
                typed
            }
            None => self.keys.iter().filter(|k| k.alg == alg).collect(),
        };
        if candidates.is_empty() {
            return Err(invalid(format!("no {alg:?} key in the issuer's JWKS")));
        }

        // Rule: the signature verifies (RSA keys of 2048..=8192 bits only, ring's limit).
        let signed = &token[..header_b64.len() + 1 + payload_b64.len()];
        let verified = candidates.iter().any(|k| {
            jsonwebtoken::crypto::verify(signature_b64, signed.as_bytes(), &k.key, alg)
                .unwrap_or(false)
        });
        if !verified {
            let kid = header.kid.as_deref().unwrap_or("(none)");
            return Err(invalid(format!(
                "signature does not verify ({alg:?}, kid {kid})"
            )));
        }

        // Only now are the claims worth reading.
        let claims: RawClaims = decode_json(payload_b64, "payload")?;
        self.check_claims(claims, audiences, now)
    }

    fn check_claims(
        &self,
        claims: RawClaims,
        audiences: &[String],
        now: OffsetDateTime,
    ) -> Result<VerifiedToken, PlatformError> {
        // Rule: `exp` is required and not past (leeway allowed).
        let exp =
            numeric_date(claims.exp.as_ref(), "exp")?.ok_or_else(|| invalid("no exp claim"))?;
        if now >= exp + self.leeway {
            return Err(invalid(format!(
                "expired at {exp} (now {now}, leeway {})",
                self.leeway
            )));
        }
        // Rule: `nbf` and `iat`, when present, are not in the future (leeway allowed).
        if let Some(nbf) = numeric_date(claims.nbf.as_ref(), "nbf")? {
            if nbf > now + self.leeway {
                return Err(invalid(format!("not valid before {nbf} (now {now})")));
            }
        }
        if let Some(iat) = numeric_date(claims.iat.as_ref(), "iat")? {
            if iat > now + self.leeway {
                return Err(invalid(format!(
                    "issued in the future, at {iat} (now {now})"
                )));
            }
        }
        // Rule: `aud` (a string or an array) names at least one audience we accept.
        // With no configured audience nothing is accepted (fail closed).
        let token_audiences = match claims.aud {
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(list)) => list,
            None => Vec::new(),
        };
        if !token_audiences.iter().any(|a| audiences.contains(a)) {
            return Err(invalid(format!(
                "audience {token_audiences:?} is not one of the accepted {audiences:?}"
            )));
        }
        // Rule: `iss` is present and, when we require one, ours.
        let issuer = claims.iss.ok_or_else(|| invalid("no iss claim"))?;
        if let Some(want) = &self.issuer {
            if &issuer != want {
                return Err(invalid(format!(
                    "issuer {issuer:?} is not the trusted {want:?}"
                )));
            }
        }
        // Rule: `sub` is system:serviceaccount:<ns>:<sa>, both valid names.
        let sub = claims.sub.ok_or_else(|| invalid("no sub claim"))?;
        let (namespace, service_account) = parse_subject(&sub)?;
        // Rule: the `kubernetes.io` claim, when present, agrees with `sub`.
        let (mut pod, mut node) = (None, None);
        if let Some(k) = claims.kubernetes {
            let sa_name = k.serviceaccount.as_ref().map(|s| s.name.as_str());
            if k.namespace.as_deref() != Some(namespace) || sa_name != Some(service_account) {
                return Err(invalid(format!(
                    "sub {sub:?} disagrees with kubernetes.io (namespace {:?}, serviceaccount {sa_name:?})",
                    k.namespace
                )));
            }
            pod = k.pod;
            node = k.node;
        }
        Ok(VerifiedToken {
            issuer,
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            audiences: token_audiences,
            pod_name: pod.as_ref().map(|p| p.name.clone()),
            pod_uid: pod.and_then(|p| p.uid),
            node_name: node.as_ref().map(|n| n.name.clone()),
            node_uid: node.and_then(|n| n.uid),
            expires_at: exp,
        })
    }
}

/// The `kid` in a token's header, read WITHOUT any verification: only for
/// choosing whether to refresh keys before calling [`JwtVerifier::verify`].
pub fn peek_kid(token: &str) -> Option<String> {
    if token.len() > MAX_TOKEN_LEN {
        return None;
    }
    let header = token.split('.').next()?;
    decode_json::<RawHeader>(header, "header").ok()?.kid
}

fn invalid(reason: impl Into<String>) -> PlatformError {
    PlatformError::invalid_token(reason)
}

/// Splits `system:serviceaccount:<ns>:<sa>` and checks both are valid names.
pub(crate) fn parse_subject(sub: &str) -> Result<(&str, &str), PlatformError> {
    let bad = || {
        PlatformError::invalid_token(format!(
            "sub {sub:?} is not system:serviceaccount:<namespace>:<name>"
        ))
    };
    let rest = sub.strip_prefix(SUBJECT_PREFIX).ok_or_else(bad)?;
    let (namespace, service_account) = rest.split_once(':').ok_or_else(bad)?;
    if service_account.contains(':') {
        return Err(bad());
    }
    SpiffeId::for_service_account(&TrustDomain::default(), namespace, service_account)
        .map_err(|e| PlatformError::invalid_token(format!("sub {sub:?}: {e}")))?;
    Ok((namespace, service_account))
}

/// Which algorithm a JWKS entry verifies, if we accept it at all.
fn usable_key(jwk: &Jwk) -> Result<(Algorithm, DecodingKey), String> {
    if jwk
        .common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Err("\"use\" is not \"sig\"".into());
    }
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("\"key_ops\" does not allow \"verify\"".into());
    }
    let alg = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => Algorithm::RS256,
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => Algorithm::ES256,
        AlgorithmParameters::EllipticCurve(p) => {
            return Err(format!("curve {:?} is not supported (P-256 only)", p.curve))
        }
        // Never turn a symmetric key into a verification key: HMAC is refused.
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never used".into())
        }
        AlgorithmParameters::OctetKeyPair(_) => {
            return Err("OKP (EdDSA) keys are not supported".into())
        }
    };
    match (jwk.common.key_algorithm, alg) {
        (None, _)
        | (Some(KeyAlgorithm::RS256), Algorithm::RS256)
        | (Some(KeyAlgorithm::ES256), Algorithm::ES256) => {}
        (Some(other), _) => return Err(format!("key alg {other:?} is not RS256 or ES256")),
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("bad key material: {e}"))?;
    Ok((alg, key))
}

fn decode_json<T: for<'de> Deserialize<'de>>(part: &str, what: &str) -> Result<T, PlatformError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| PlatformError::invalid_token(format!("{what} is not base64url: {e}")))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| PlatformError::invalid_token(format!("{what} cannot be decoded: {e}")))
}

/// A NumericDate claim: seconds since the epoch, integer or not (RFC 7519 §2).
fn numeric_date(
    value: Option<&serde_json::Number>,
    claim: &str,
) -> Result<Option<OffsetDateTime>, PlatformError> {
    let Some(n) = value else { return Ok(None) };
    let secs = n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite())
            .map(|f| f.floor() as i64)
    });
    secs.and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
        .map(Some)
        .ok_or_else(|| PlatformError::invalid_token(format!("{claim} {n} is not a valid time")))
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The claims we read; others (`jti`, `warnafter`, …) are ignored.
#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    aud: Option<Audience>,
    exp: Option<serde_json::Number>,
    nbf: Option<serde_json::Number>,
    iat: Option<serde_json::Number>,
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<KubernetesClaim>,
}

#[derive(Deserialize)]
struct KubernetesClaim {
    namespace: Option<String>,
    serviceaccount: Option<ObjectRef>,
    pod: Option<ObjectRef>,
    node: Option<ObjectRef>,
}

#[derive(Deserialize)]
struct ObjectRef {
    name: String,
    #[serde(default)]
    uid: Option<String>,
}

#[cfg(test)]
mod tests;
