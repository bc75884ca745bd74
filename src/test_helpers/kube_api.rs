//! The one fake Kubernetes API server, for unit tests and end-to-end tests.
//!
//! Both speak the API server's JSON exactly (lists with
//! `metadata.resourceVersion` and items without kind/apiVersion, watch events
//! as newline-delimited JSON, `Status` objects for errors: [`status`],
//! [`list`], [`event`]) and record every request the same way ([`Call`],
//! query parameters decoded by one [`decode_query`]). Two transports:
//!
//! - `MockApi` (unit tests only, `cfg(test)`): in process, kube-rs's
//!   "API server verifier" pattern over `tower_test::mock::pair`; a
//!   test-supplied router scripts each answer, including a transport error
//!   (`Reply::Unreachable`) and watches kept open.
//! - [`FakeApi`] (feature `testing`): a stateful API server on 127.0.0.1
//!   for the real binaries to reach through a kubeconfig; it keeps objects,
//!   resourceVersions, watches, server-side apply and TokenReview
//!   ([`server`]).
//!
//! Owns nothing of meshid's: it is written from the API's documentation.

#[cfg(test)]
mod mock;
pub mod server;

use serde_json::{json, Value};

#[cfg(test)]
pub use self::mock::{MockApi, MockBody, Reply};
pub use self::server::{
    kubeconfig, FakeApi, Resource, TokenIdentity, CONFIGMAPS, LEASES,
    MUTATING_WEBHOOK_CONFIGURATIONS, NAMESPACES, PEER_AUTHENTICATIONS, PODS, SECRETS,
};
use crate::platform::PlatformError;

/// One request made to a fake.
#[derive(Debug, Clone)]
pub struct Call {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`.
    pub method: http::Method,
    /// The path, e.g. `/api/v1/namespaces/default/pods`.
    pub path: String,
    /// The decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// The `content-type` header, if any (server-side apply sends `application/apply-patch+yaml`).
    pub content_type: Option<String>,
    /// The request body parsed as JSON (`Value::Null` when empty or not JSON).
    pub body: Value,
    /// Whether the fake serves this path, method and selector at all
    /// ([`FakeApi`]; a `MockApi` router answers everything).
    pub served: bool,
}

impl Call {
    /// Records a request from its parts and body bytes.
    pub fn new(parts: &http::request::Parts, body: &[u8]) -> Self {
        Self {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(decode_query).unwrap_or_default(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            body: serde_json::from_slice(body).unwrap_or(Value::Null),
            served: true,
        }
    }

    /// The value of query parameter `key`.
    pub fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a watch (`?watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.query("watch"), Some("true" | "1"))
    }
}

/// A Kubernetes `Status` object (`kind: Status`), as in every error answer
/// and in a watch's `ERROR` event.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
}

/// A list answer: `{"kind": "<kind>List", "metadata": {"resourceVersion": rv}, "items": [...]}`.
pub fn list(api_version: &str, kind: &str, resource_version: &str, items: Vec<Value>) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}

/// A watch event: `{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK", "object": ...}`.
pub fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// The watch event an API server sends when the requested resourceVersion
/// is too old: `ERROR` with a `410 Expired` Status.
pub fn gone_event() -> Value {
    event(
        "ERROR",
        status(410, "Expired", "too old resource version: 1 (2)"),
    )
}

/// The reason of a [`PlatformError::InvalidToken`]; panics on any other
/// error (token verification tests expect a refusal, not an outage).
pub fn refusal_reason(err: PlatformError) -> String {
    match err {
        PlatformError::InvalidToken { reason } => reason,
        other => panic!("expected InvalidToken, got {other:?}"),
    }
}

/// The message of a [`PlatformError::Unavailable`]; panics on any other error.
pub fn unavailable_message(err: PlatformError) -> String {
    match err {
        PlatformError::Unavailable(message) => message,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// `a=b&c=d%3De` → pairs, `%XX` and `+` decoded (enough for label and field selectors).
pub fn decode_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_in_the_query_are_decoded() {
        assert_eq!(
            decode_query("labelSelector=a%3Db&fieldSelector=metadata.name%3Dx+y&watch"),
            vec![
                ("labelSelector".to_owned(), "a=b".to_owned()),
                ("fieldSelector".to_owned(), "metadata.name=x y".to_owned()),
                ("watch".to_owned(), String::new()),
            ]
        );
        assert_eq!(
            decode_query("bad=%zz%4"),
            vec![("bad".to_owned(), "%zz%4".to_owned())]
        );
    }
}
