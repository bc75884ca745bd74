//! The audit log served read-only over HTTP, on the CA's metrics port:
//! `GET /audit/checkpoint` (the latest signed checkpoint, as C2SP's
//! `tlog-tiles` serves its `checkpoint`) and `GET /audit/proof/{serial}`
//! (what `meshid audit prove -o json` prints). Tiles are not served: the
//! store keeps nodes at tile boundaries, not C2SP's tile files.
//!
//! Rule enforced: read-only (a reader connection, kept between requests,
//! used on a blocking thread); a record is served only as part of its
//! proof, to whoever can reach the metrics port: keep that port inside the
//! cluster.

use std::sync::{Arc, Mutex};

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{AuditError, AuditReader, StoreLocation};

/// One reader connection, opened on first use and reopened after an error.
#[derive(Clone)]
struct Reader {
    location: StoreLocation,
    open: Arc<Mutex<Option<Box<dyn AuditReader>>>>,
}

/// The routes, reading the store at `location`.
pub fn routes(location: StoreLocation) -> Router {
    let reader = Reader {
        location,
        open: Arc::new(Mutex::new(None)),
    };
    let for_proof = reader.clone();
    Router::new()
        .route(
            "/audit/checkpoint",
            get(move || {
                let reader = reader.clone();
                async move {
                    read(reader, |store| store.latest_checkpoint())
                        .await
                        .map(|latest| match latest {
                            Some((_, note)) => {
                                ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], note)
                                    .into_response()
                            }
                            None => (StatusCode::NOT_FOUND, "no checkpoint yet\n").into_response(),
                        })
                        .unwrap_or_else(|e| e)
                }
            }),
        )
        .route(
            "/audit/proof/{serial}",
            get(move |Path(serial): Path<String>| {
                let reader = for_proof.clone();
                async move {
                    let serial = serial.to_ascii_lowercase();
                    read(reader, move |store| store.prove(&serial))
                        .await
                        .map(|proof| match serde_json::to_string_pretty(&proof) {
                            Ok(json) => {
                                ([(header::CONTENT_TYPE, "application/json")], json).into_response()
                            }
                            Err(e) => {
                                (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response()
                            }
                        })
                        .unwrap_or_else(|e| e)
                }
            }),
        )
}

/// Runs `f` on the reader connection on a blocking thread; an error
/// becomes its answer (404 for what is not there, 503 otherwise, and the
/// connection is reopened next time).
async fn read<T: Send + 'static>(
    reader: Reader,
    f: impl FnOnce(&mut dyn AuditReader) -> Result<T, AuditError> + Send + 'static,
) -> Result<T, Response> {
    let answer = tokio::task::spawn_blocking(move || {
        let mut open = reader.open.lock().unwrap_or_else(|e| e.into_inner());
        let store = match open.as_mut() {
            Some(store) => store,
            None => open.insert(reader.location.open_reader()?),
        };
        let result = f(store.as_mut());
        if matches!(
            result,
            Err(AuditError::Postgres { .. } | AuditError::StoreConfig { .. })
        ) {
            *open = None;
        }
        result
    })
    .await;
    match answer {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e @ AuditError::Tlog { .. })) => {
            Err((StatusCode::NOT_FOUND, format!("{e}\n")).into_response())
        }
        Ok(Err(e)) => Err((StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response()),
    }
}
