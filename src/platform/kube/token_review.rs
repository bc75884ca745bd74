//! TokenReview: service-account tokens verified by the API server itself
//! (`--token-verification tokenreview`).
//!
//! Owns [`TokenReviewer`]: one `POST /apis/authentication.k8s.io/v1/tokenreviews`
//! per token (the CA's `authn` caches the result until `exp`), and the mapping
//! of the API server's answer to a [`VerifiedToken`]. It does not check that
//! the pod still exists beyond what the API server does (a token bound to a
//! deleted pod is refused by the review itself), and caches nothing.
//!
//! Rules enforced, each commented where it is checked:
//! - no accepted audience configured → refused (fail closed), before any call;
//! - a token that is not a bounded compact JWS with `exp`, `iss` and `sub` is
//!   refused before the API server is asked (legacy Secret-based tokens have
//!   no `exp` and are refused, as in `jwks` mode);
//! - `status.error` or `authenticated` not `true` → refused, with the API
//!   server's reason (never the token);
//! - `user.username` must be `system:serviceaccount:<ns>:<sa>`: user, node and
//!   other credentials the API server accepts are refused;
//! - `status.audiences` must intersect ours;
//! - the payload's `sub` must equal the reviewed username (the claims we read
//!   unverified belong to the token the API server just authenticated);
//! - pod and node bindings come from `user.extra`, at most one value each;
//! - the API server unreachable, slow, throttling (429) or failing (5xx), or
//!   refusing *us* (401/403: missing RBAC) → [`PlatformError::Unavailable`],
//!   which the CA answers with a retryable UNAVAILABLE.
//!
//! Issuer: a TokenReview does not return `iss`. [`VerifiedToken::issuer`] is
//! the token's `iss` claim, read from the payload without checking the
//! signature; it is trustworthy only because the API server authenticated this
//! very token (it checks `iss` against its `--service-account-issuer` list),
//! and it is used for the record only. `expires_at` is the payload's `exp`,
//! on the same grounds. [`VerifiedToken::audiences`] are the audiences the
//! API server granted (`status.audiences`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration as StdDuration;

use ::kube::api::PostParams;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use serde::Deserialize;
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

use crate::platform::jwt::{parse_subject, MAX_TOKEN_LEN};
use crate::platform::{PlatformError, VerifiedToken};

/// `user.extra` key of the pod a token is bound to.
pub const POD_NAME_KEY: &str = "authentication.kubernetes.io/pod-name";
/// `user.extra` key of the bound pod's uid.
pub const POD_UID_KEY: &str = "authentication.kubernetes.io/pod-uid";
/// `user.extra` key of the node the token was issued on (Kubernetes 1.30+).
pub const NODE_NAME_KEY: &str = "authentication.kubernetes.io/node-name";
/// `user.extra` key of that node's uid.
pub const NODE_UID_KEY: &str = "authentication.kubernetes.io/node-uid";

/// How long one TokenReview may take before the token is answered with
/// [`PlatformError::Unavailable`]: a hung API server must not hang callers.
pub const DEFAULT_REQUEST_TIMEOUT: StdDuration = StdDuration::from_secs(5);

/// What the CA's service account needs for TokenReview; named in every
/// 401/403 answer so an operator can fix it.
const RBAC_HINT: &str = "the CA's service account needs RBAC `create` on `tokenreviews` \
    (group authentication.k8s.io), e.g. a ClusterRoleBinding to system:auth-delegator";

/// Verifies service-account tokens with the API server's TokenReview API.
/// Cheap to clone (the kube client is shared).
#[derive(Clone)]
pub struct TokenReviewer {
    client: ::kube::Client,
    timeout: StdDuration,
}

impl fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer asking the API server behind `client`, with
    /// [`DEFAULT_REQUEST_TIMEOUT`]. Makes no request.
    pub fn new(client: ::kube::Client) -> Self {
        Self {
            client,
            timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// The same reviewer with another per-request timeout.
    pub fn with_request_timeout(mut self, timeout: StdDuration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Verifies `token` (the bare JWT) for one of `audiences` by TokenReview.
    ///
    /// Errors: [`PlatformError::InvalidToken`] (refused; the reason is for the
    /// server log) or [`PlatformError::Unavailable`] (cannot tell now).
    pub async fn verify(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<VerifiedToken, PlatformError> {
        // Rule: with no accepted audience nothing is accepted (fail closed);
        // an empty spec.audiences would mean "the API server's own audience".
        if audiences.is_empty() {
            return Err(PlatformError::invalid_token(
                "no accepted audience is configured",
            ));
        }
        // Rule: refuse what cannot be a usable service-account token before
        // spending an API server round trip on it.
        let claims = UnverifiedClaims::peek(token)?;
        let status = self.review(token, audiences).await?;
        accept(status, claims, audiences)
    }

    /// Sends the TokenReview and returns its `status`.
    ///
    /// Built with kube's own request builder (the request `Api::create`
    /// sends), but decoded here: kube's `Client::request` logs the whole
    /// answer at `warn` when it does not decode, and the API server echoes
    /// `spec.token` in it.
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, PlatformError> {
        let mut review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(audiences.to_vec()),
            },
            ..TokenReview::default()
        };
        let body = serde_json::to_vec(&review);
        if let Some(copy) = review.spec.token.as_mut() {
            copy.zeroize();
        }
        let body = body.map_err(|e| unavailable(format!("cannot encode a TokenReview: {e}")))?;
        let url = <TokenReview as ::kube::Resource>::url_path(&(), None);
        let request = ::kube::core::Request::new(url)
            .create(&PostParams::default(), body)
            .map_err(|e| unavailable(format!("cannot build a TokenReview request: {e}")))?;
        let text = tokio::time::timeout(self.timeout, self.client.request_text(request))
            .await
            .map_err(|_| {
                unavailable(format!(
                    "TokenReview: no answer from the API server within {:?}",
                    self.timeout
                ))
            })?
            .map_err(|e| api_unavailable("TokenReview", &e, RBAC_HINT))?;
        let text = Zeroizing::new(text);
        let mut answer: TokenReview = serde_json::from_str(&text).map_err(|e| {
            unavailable(format!(
                "TokenReview answer cannot be decoded (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        if let Some(mut echoed) = answer.spec.token.take() {
            echoed.zeroize();
        }
        answer
            .status
            .ok_or_else(|| unavailable("TokenReview answer has no status"))
    }
}

/// Maps a failed API server call to [`PlatformError::Unavailable`], naming
/// `what` was asked and, for 401/403, the RBAC the CA lacks (`rbac_hint`).
pub(super) fn api_unavailable(what: &str, err: &::kube::Error, rbac_hint: &str) -> PlatformError {
    match err {
        ::kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            unavailable(format!(
                "{what}: the API server refused the CA's own request ({} {}: {}); {rbac_hint}",
                status.code, status.reason, status.message
            ))
        }
        ::kube::Error::Api(status) => unavailable(format!(
            "{what}: the API server answered {} {}: {}",
            status.code, status.reason, status.message
        )),
        other => unavailable(format!("{what}: the API server is unreachable: {other}")),
    }
}

fn unavailable(message: impl Into<String>) -> PlatformError {
    PlatformError::Unavailable(message.into())
}

fn invalid(reason: impl Into<String>) -> PlatformError {
    PlatformError::invalid_token(reason)
}

/// Turns a TokenReview status into facts, or refuses. Pure.
fn accept(
    status: TokenReviewStatus,
    claims: UnverifiedClaims,
    audiences: &[String],
) -> Result<VerifiedToken, PlatformError> {
    // Rule: the API server's verdict is final. Its `error` (expired, wrong
    // audience, bound pod deleted, bad signature…) is the reason we log.
    if let Some(error) = status.error.as_deref().filter(|e| !e.is_empty()) {
        return Err(invalid(format!("TokenReview refused the token: {error}")));
    }
    if status.authenticated != Some(true) {
        return Err(invalid(
            "TokenReview refused the token: not authenticated (no reason given)",
        ));
    }
    let user = status.user.unwrap_or_default();
    // Rule: only service-account tokens. A user's or a node's credential
    // (also "authenticated" by the API server) never becomes a workload.
    let username = user.username.unwrap_or_default();
    let (namespace, service_account) = parse_subject(&username).map_err(|_| {
        invalid(format!(
            "TokenReview user {username:?} is not system:serviceaccount:<namespace>:<name>"
        ))
    })?;
    // Rule: the audiences the API server granted intersect ours.
    let granted = status.audiences.unwrap_or_default();
    if !granted.iter().any(|a| audiences.contains(a)) {
        return Err(invalid(format!(
            "TokenReview granted audiences {granted:?}, none of the accepted {audiences:?}"
        )));
    }
    // Rule: the unverified claims we keep belong to the reviewed identity.
    if claims.sub != username {
        return Err(invalid(format!(
            "token sub {:?} disagrees with the TokenReview user {username:?}",
            claims.sub
        )));
    }
    let extra = user.extra.unwrap_or_default();
    Ok(VerifiedToken {
        issuer: claims.iss,
        namespace: namespace.to_owned(),
        service_account: service_account.to_owned(),
        audiences: granted,
        pod_name: single(&extra, POD_NAME_KEY)?,
        pod_uid: single(&extra, POD_UID_KEY)?,
        node_name: single(&extra, NODE_NAME_KEY)?,
        node_uid: single(&extra, NODE_UID_KEY)?,
        expires_at: claims.exp,
    })
}

/// The one value of `user.extra[key]`; several values are ambiguous and refused.
fn single(
    extra: &BTreeMap<String, Vec<String>>,
    key: &str,
) -> Result<Option<String>, PlatformError> {
    match extra.get(key).map(Vec::as_slice) {
        None | Some([]) => Ok(None),
        Some([value]) if value.is_empty() => Ok(None),
        Some([value]) => Ok(Some(value.clone())),
        Some(values) => Err(invalid(format!(
            "TokenReview user.extra[{key:?}] has {} values, expected one",
            values.len()
        ))),
    }
}

/// Claims read from the payload WITHOUT checking the signature: used only
/// once the API server has authenticated this exact token.
#[derive(Debug)]
struct UnverifiedClaims {
    iss: String,
    sub: String,
    exp: OffsetDateTime,
}

#[derive(Deserialize)]
struct RawClaims {
    iss: Option<String>,
    sub: Option<String>,
    exp: Option<serde_json::Number>,
}

impl UnverifiedClaims {
    fn peek(token: &str) -> Result<Self, PlatformError> {
        // Rule: bounded input, then exactly header.payload.signature.
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(invalid(format!(
                "token is {} bytes, expected 1..={MAX_TOKEN_LEN}",
                token.len()
            )));
        }
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid("not a compact JWS (header.payload.signature)"));
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(payload)
            .map_err(|e| invalid(format!("payload is not base64url: {e}")))?;
        let raw: RawClaims = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("payload cannot be decoded: {e}")))?;
        // Rule: a token without `exp` could be cached forever; refused.
        let exp = raw
            .exp
            .as_ref()
            .and_then(|n| {
                n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.is_finite())
                        .map(|f| f.floor() as i64)
                })
            })
            .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok())
            .ok_or_else(|| invalid("no usable exp claim"))?;
        Ok(Self {
            iss: raw.iss.ok_or_else(|| invalid("no iss claim"))?,
            sub: raw.sub.ok_or_else(|| invalid("no sub claim"))?,
            exp,
        })
    }
}

#[cfg(test)]
mod tests;
