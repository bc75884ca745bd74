//! Watches: `?watch=true&resourceVersion=N` answered with the changes after
//! N as newline-delimited `{"type", "object"}` events, kept open and fed
//! live as objects change (no bookmarks, no server-side timeout).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::watch;

use super::store::{Resource, Selector};
use super::{lock, Shared};

/// A watch: events after `from` (from `0` or none: every current object as
/// `ADDED` first), then every change as it happens, until the client goes.
pub(super) fn watch_response(
    shared: Arc<Shared>,
    resource: &'static Resource,
    namespace: Option<String>,
    selector: Selector,
    from: Option<u64>,
) -> Response {
    let changed = shared.changed.subscribe();
    let (pending, cursor) = {
        let store = lock(&shared.store);
        match from {
            Some(rv) if rv > 0 => (VecDeque::new(), rv),
            _ => {
                let added = store
                    .list(resource, namespace.as_deref(), &selector)
                    .into_iter()
                    .map(|o| json!({"type": "ADDED", "object": o}))
                    .collect();
                (added, store.resource_version())
            }
        }
    };
    let watch = Watch {
        shared,
        resource,
        namespace,
        selector,
        changed,
        pending,
        cursor,
    };
    let stream = futures::stream::unfold(watch, |mut w| async move {
        let event = w.next().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Bytes::from(line)), w))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// One open watch: what it has not sent yet, and how far it has read the log.
struct Watch {
    shared: Arc<Shared>,
    resource: &'static Resource,
    namespace: Option<String>,
    selector: Selector,
    changed: watch::Receiver<u64>,
    pending: VecDeque<Value>,
    cursor: u64,
}

impl Watch {
    /// The next event, waiting for a change when there is none; `None` when the server stops.
    async fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(event);
            }
            // Seen before reading, so a write after the read wakes us.
            self.changed.borrow_and_update();
            {
                let store = lock(&self.shared.store);
                self.pending = store
                    .events_after(
                        self.cursor,
                        self.resource,
                        self.namespace.as_deref(),
                        &self.selector,
                    )
                    .into();
                self.cursor = store.resource_version();
            }
            if self.pending.is_empty() {
                self.changed.changed().await.ok()?;
            }
        }
    }
}
