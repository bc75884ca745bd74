//! The in-process transport of the fake API server (unit tests only).
//!
//! The pattern kube-rs documents: a [`kube::Client`] built with
//! `Client::new` over `tower_test::mock::pair`, so every request the backend
//! makes arrives here as an `http::Request`, and a test-supplied router
//! answers it with JSON shaped like the real API server's ([`super::list`],
//! [`super::event`], [`super::status`]). Answers may be streams that stay
//! open, so a watch can receive events over time; a router may also answer
//! with a transport error, as an API server that is down would.
//!
//! Every request is recorded ([`MockApi::calls`]) for assertions.

use std::convert::Infallible;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use kube::client::Body;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

use super::{status, Call};

/// The response body the mock sends: frames pushed through a channel, so a
/// watch answer can stay open and deliver events later.
pub type MockBody = StreamBody<ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

/// How the mock answers one request.
#[derive(Debug)]
pub enum Reply {
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
    pub fn ok(value: Value) -> Self {
        Self::Json(StatusCode::OK, value)
    }

    /// An error answer with a `Status` body, as the API server sends.
    pub fn status(code: u16, reason: &str, message: &str) -> Self {
        let code_status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::Json(code_status, status(code, reason, message))
    }

    /// A finished watch: these events, then the stream ends (the server's watch timeout).
    pub fn events(events: Vec<Value>) -> Self {
        let (tx, rx) = mpsc::channel(events.len().max(1));
        for event in events {
            // Capacity is the number of events: never full.
            let _ = tx.try_send(event);
        }
        Self::Stream(rx)
    }
}

/// A running mock API server.
#[derive(Debug, Clone)]
pub struct MockApi {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl MockApi {
    /// Starts a mock API server on the current tokio runtime and returns a
    /// client talking to it (default namespace `default`). `router` answers
    /// each request in arrival order.
    pub fn start<F>(mut router: F) -> (kube::Client, Self)
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
    pub fn calls(&self) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The requests so far with this method whose path starts with `prefix`.
    pub fn calls_to(&self, method: &Method, prefix: &str) -> Vec<Call> {
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
    Call::new(&parts, &bytes)
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
    use crate::test_helpers::kube_api::list;
    use k8s_openapi::api::core::v1::Namespace;
    use kube::api::{Api, ListParams};
    use serde_json::json;

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
