//! Fetching the service-account issuer's keys: OIDC discovery
//! (`/.well-known/openid-configuration`), then the JWKS at its `jwks_uri`,
//! both over the kube client's authenticated connection to the API server.
//!
//! Rule enforced (`jwks_path`): keys are only ever fetched from the API
//! server, never from a host a discovery document names. A `jwks_uri` is
//! followed when it is a relative reference, when its host and port are the
//! API server's (as configured), or when its path is the standard
//! `/openid/v1/jwks` (which every API server serves, whatever external
//! address `--service-account-jwks-uri` advertises); only its path and query
//! are used, on the API server connection. Anything else (an issuer hosted in
//! a bucket, another cluster) is refused: use TokenReview there.

use std::time::Duration as StdDuration;

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;

use crate::platform::kube::token_review::api_unavailable;
use crate::platform::PlatformError;

/// Where the API server publishes its OIDC discovery document.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
/// Where every API server serves its service-account signing keys.
pub const STANDARD_JWKS_PATH: &str = "/openid/v1/jwks";

/// What a 401/403 on discovery means for an operator.
const RBAC_HINT: &str = "the CA's service account needs `get` on the non-resource URLs \
    /.well-known/openid-configuration and /openid/v1/jwks, e.g. a ClusterRoleBinding to \
    system:service-account-issuer-discovery";

/// The fields of the discovery document we use.
#[derive(Debug, Deserialize)]
struct DiscoveryDocument {
    issuer: String,
    jwks_uri: String,
}

/// The issuer and its keys, as just fetched.
#[derive(Debug)]
pub(super) struct IssuerKeys {
    /// `issuer` from discovery: the `iss` every token must carry.
    pub(super) issuer: String,
    /// The JWKS at `jwks_uri`.
    pub(super) jwks: JwkSet,
}

/// Fetches discovery, then the JWKS. Each request is bounded by `timeout`.
pub(super) async fn fetch(
    client: &::kube::Client,
    api_server: Option<&http::Uri>,
    timeout: StdDuration,
) -> Result<IssuerKeys, PlatformError> {
    let doc: DiscoveryDocument =
        get_json(client, DISCOVERY_PATH, "OIDC discovery", timeout).await?;
    if doc.issuer.is_empty() {
        return Err(jwks_error(
            "the OIDC discovery document has an empty issuer",
        ));
    }
    let path = jwks_path(&doc.jwks_uri, api_server)?;
    let jwks: JwkSet = get_json(client, &path, "JWKS", timeout).await?;
    Ok(IssuerKeys {
        issuer: doc.issuer,
        jwks,
    })
}

async fn get_json<T: for<'de> Deserialize<'de>>(
    client: &::kube::Client,
    path: &str,
    what: &str,
    timeout: StdDuration,
) -> Result<T, PlatformError> {
    let request = http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(Vec::new())
        .map_err(|e| jwks_error(format!("{what}: cannot request {path:?}: {e}")))?;
    let text = tokio::time::timeout(timeout, client.request_text(request))
        .await
        .map_err(|_| {
            PlatformError::Unavailable(format!(
                "{what}: no answer from the API server within {timeout:?}"
            ))
        })?
        .map_err(|e| api_unavailable(&format!("{what} ({path})"), &e, RBAC_HINT))?;
    serde_json::from_str(&text)
        .map_err(|e| jwks_error(format!("{what} ({path}) cannot be decoded: {e}")))
}

/// The path (and query) to fetch `jwks_uri` at on the API server, or a
/// refusal. See the module docs for the rule; this is where it is enforced.
pub(super) fn jwks_path(
    jwks_uri: &str,
    api_server: Option<&http::Uri>,
) -> Result<String, PlatformError> {
    let uri: http::Uri = jwks_uri
        .parse()
        .map_err(|e| jwks_error(format!("jwks_uri {jwks_uri:?} is not a URI: {e}")))?;
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| jwks_error(format!("jwks_uri {jwks_uri:?} has no path")))?;
    let on_api_server = match (uri.authority(), api_server.and_then(http::Uri::authority)) {
        (None, _) => true,
        (Some(ours), Some(theirs)) => {
            ours.host().eq_ignore_ascii_case(theirs.host())
                && ours.port_u16().unwrap_or(443) == theirs.port_u16().unwrap_or(443)
        }
        (Some(_), None) => false,
    };
    if on_api_server || uri.path() == STANDARD_JWKS_PATH {
        Ok(path.to_owned())
    } else {
        Err(jwks_error(format!(
            "jwks_uri {jwks_uri:?} is neither on the API server nor its standard \
             {STANDARD_JWKS_PATH} path; keys are only fetched from the API server \
             (use --token-verification tokenreview for an externally hosted issuer)"
        )))
    }
}

fn jwks_error(reason: impl Into<String>) -> PlatformError {
    PlatformError::Jwks {
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api() -> http::Uri {
        "https://kubernetes.default.svc".parse().unwrap()
    }

    #[test]
    fn standard_path_is_fetched_from_the_api_server_whatever_the_host() {
        let got = jwks_path("https://172.18.0.2:6443/openid/v1/jwks", Some(&api())).unwrap();
        assert_eq!(got, STANDARD_JWKS_PATH);
        assert_eq!(
            jwks_path("https://evil.example/openid/v1/jwks", None).unwrap(),
            STANDARD_JWKS_PATH
        );
    }

    #[test]
    fn api_server_host_keeps_its_own_path_and_query() {
        let got = jwks_path("https://KUBERNETES.default.svc:443/keys?v=2", Some(&api())).unwrap();
        assert_eq!(got, "/keys?v=2");
        assert_eq!(jwks_path("/keys", None).unwrap(), "/keys");
    }

    #[test]
    fn foreign_host_with_another_path_is_refused() {
        for uri in [
            "https://oidc.eks.example.com/id/ABC/keys",
            "https://kubernetes.default.svc:8443/keys",
            "not a uri",
        ] {
            let err = jwks_path(uri, Some(&api())).unwrap_err();
            assert!(matches!(err, PlatformError::Jwks { .. }), "{uri}: {err:?}");
        }
        let err = jwks_path("https://kubernetes.default.svc/keys", None).unwrap_err();
        assert!(err.to_string().contains("tokenreview"), "{err}");
    }
}
