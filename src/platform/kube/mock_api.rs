//! A mock Kubernetes API server for the `kube` backend's tests.
//!
//! The pattern kube-rs documents: a [`kube::Client`] built with
//! `Client::new` over `tower_test::mock::pair`, so every request the backend
//! makes arrives here as an `http::Request`, and a test-supplied router
//! answers it with JSON shaped like the real API server's (lists with
//! `metadata.resourceVersion`, watch events as newline-delimited JSON,
//! `Status` objects for errors). Answers may be streams that stay open, so a
//! watch can receive events over time; a router may also answer with a
//! transport error, as an API server that is down would.
//!
//! Every request is recorded ([`MockApi::calls`]) for assertions.

// Each test module uses the parts it needs; the rest is unused in some builds.
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use kube::client::Body;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// The response body the mock sends: frames pushed through a channel, so a
/// watch answer can stay open and deliver events later.
pub(crate) type MockBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// One request the backend made.
#[derive(Debug, Clone)]
pub(crate) struct Call {
    /// `GET`, `POST`, `PUT`, `PATCH`, `DELETE`.
    pub(crate) method: Method,
    /// The path, e.g. `/api/v1/namespaces/default/pods`.
    pub(crate) path: String,
    /// The decoded query parameters, in order.
    pub(crate) query: Vec<(String, String)>,
    /// The `content-type` header, if any (server-side apply sends `application/apply-patch+yaml`).
    pub(crate) content_type: Option<String>,
    /// The request body parsed as JSON (`Value::Null` when empty or not JSON).
    pub(crate) body: Value,
}

impl Call {
    /// The value of query parameter `key`.
    pub(crate) fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a watch (`?watch=true` or `watch=1`).
    pub(crate) fn is_watch(&self) -> bool {
        matches!(self.query("watch"), Some("true") | Some("1"))
    }
}

/// How the mock answers one request.
#[derive(Debug)]
pub(crate) enum Reply {
    /// A complete JSON answer with this status code.
    Json(StatusCode, Value),
    /// A `200` whose body is each value sent on the channel, one JSON object
    /// per line (a watch); the body ends when every sender is dropped.
    Stream(mpsc::Receiver<Value>),
    /// No HTTP answer at all: a transport error, as when the API server is down.
    Unreachable,
}

impl Reply {
    /// `200 OK` with `value`.
    pub(crate) fn ok(value: Value) -> Self {
        Self::Json(StatusCode::OK, value)
    }

    /// An error answer with a `Status` body, as the API server sends.
    pub(crate) fn status(code: u16, reason: &str, message: &str) -> Self {
        let code_status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::Json(code_status, status(code, reason, message))
    }

    /// A finished watch: these events, then the stream ends (the server's watch timeout).
    pub(crate) fn events(events: Vec<Value>) -> Self {
        let (tx, rx) = mpsc::channel(events.len().max(1));
        for event in events {
            // Capacity is the number of events: never full.
            let _ = tx.try_send(event);
        }
        Self::Stream(rx)
    }
}

/// A Kubernetes `Status` object (`kind: Status`), as in every error answer
/// and in a watch's `ERROR` event.
pub(crate) fn status(code: u16, reason: &str, message: &str) -> Value {
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
pub(crate) fn list(
    api_version: &str,
    kind: &str,
    resource_version: &str,
    items: Vec<Value>,
) -> Value {
    json!({
        "kind": format!("{kind}List"),
        "apiVersion": api_version,
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}

/// A watch event: `{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK", "object": ...}`.
pub(crate) fn event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

/// The watch event an API server sends when the requested resourceVersion
/// is too old: `ERROR` with a `410 Expired` Status.
pub(crate) fn gone_event() -> Value {
    event(
        "ERROR",
        status(410, "Expired", "too old resource version: 1 (2)"),
    )
}

/// A running mock API server.
#[derive(Debug, Clone)]
pub(crate) struct MockApi {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl MockApi {
    /// Starts a mock API server on the current tokio runtime and returns a
    /// client talking to it (default namespace `default`). `router` answers
    /// each request in arrival order.
    pub(crate) fn start<F>(mut router: F) -> (kube::Client, Self)
    where
        F: FnMut(&Call) -> Reply + Send + 'static,
    {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<MockBody>>();
        let calls = Arc::new(Mutex::new(Vec::new()));
        let recorded = calls.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let call = read_call(request).await;
                recorded
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(call.clone());
                match router(&call) {
                    Reply::Json(code, value) => {
                        let bytes = serde_json::to_vec(&value).unwrap_or_default();
                        respond.send_response(response(code, single_frame(bytes)));
                    }
                    Reply::Stream(events) => {
                        respond.send_response(response(StatusCode::OK, event_stream(events)));
                    }
                    Reply::Unreachable => {
                        respond.send_error(std::io::Error::new(
                            std::io::ErrorKind::ConnectionRefused,
                            "connection refused (mock API server is down)",
                        ));
                    }
                }
            }
        });
        (kube::Client::new(service, "default"), Self { calls })
    }

    /// Every request so far, in order.
    pub(crate) fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests so far with this method whose path starts with `prefix`.
    pub(crate) fn calls_to(&self, method: &Method, prefix: &str) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|c| c.method == *method && c.path.starts_with(prefix))
            .collect()
    }
}

async fn read_call(request: Request<Body>) -> Call {
    let (parts, body) = request.into_parts();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let query = parts
        .uri
        .query()
        .map(|q| {
            q.split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect()
        })
        .unwrap_or_default();
    Call {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query,
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// Decodes `%XX` escapes and `+` (enough for label and field selectors).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response(code: StatusCode, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = code;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn single_frame(bytes: Vec<u8>) -> MockBody {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx.try_send(Ok(Frame::data(Bytes::from(bytes))));
    StreamBody::new(ReceiverStream::new(rx))
}

fn event_stream(events: mpsc::Receiver<Value>) -> MockBody {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let mut events = ReceiverStream::new(events);
        while let Some(event) = events.next().await {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                break;
            }
        }
    });
    StreamBody::new(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ListParams};

    #[tokio::test]
    async fn mock_answers_a_list_and_records_the_call() {
        let (client, api) = MockApi::start(|call| {
            assert_eq!(call.path, "/api/v1/namespaces");
            Reply::ok(list(
                "v1",
                "Namespace",
                "42",
                vec![json!({"metadata": {"name": "shop", "uid": "u1"}})],
            ))
        });
        let namespaces: Api<Namespace> = Api::all(client);
        let got = namespaces
            .list(&ListParams::default().labels("a=b"))
            .await
            .expect("list");
        assert_eq!(got.items.len(), 1);
        assert_eq!(got.metadata.resource_version.as_deref(), Some("42"));
        let calls = api.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].query("labelSelector"), Some("a=b"));
    }

    #[tokio::test]
    async fn unreachable_reply_is_a_transport_error() {
        let (client, _api) = MockApi::start(|_| Reply::Unreachable);
        let namespaces: Api<Namespace> = Api::all(client);
        let err = namespaces
            .list(&ListParams::default())
            .await
            .expect_err("down");
        assert!(!matches!(err, kube::Error::Api(_)), "{err:?}");
    }

    #[tokio::test]
    async fn status_reply_is_an_api_error_with_its_code() {
        let (client, _api) = MockApi::start(|_| Reply::status(403, "Forbidden", "no"));
        let namespaces: Api<Namespace> = Api::all(client);
        match namespaces.list(&ListParams::default()).await {
            Err(kube::Error::Api(status)) => assert_eq!(status.code, 403),
            other => panic!("expected a 403, got {other:?}"),
        }
    }
}
