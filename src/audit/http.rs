//! The audit log served read-only over HTTP, on the CA's metrics port:
//! `GET /audit/checkpoint` (the latest signed checkpoint, as C2SP's
//! `tlog-tiles` serves its `checkpoint`) and `GET /audit/proof/{serial}`
//! (what `meshid audit prove -o json` prints). Tiles are not served: the
//! store keeps leaf hashes, not tiles.
//!
//! Rule enforced: read-only (a read-only connection per request, on a
//! blocking thread); a record is served only as part of its proof, to
//! whoever can reach the metrics port: keep that port inside the cluster.

use std::path::PathBuf;

use axum::extract::Path;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::{AuditError, SqliteBackend};

/// The routes, reading the store at `db`.
pub fn routes(db: PathBuf) -> Router {
    let for_proof = db.clone();
    Router::new()
        .route(
            "/audit/checkpoint",
            get(move || {
                let db = db.clone();
                async move {
                    read(db, |store| store.latest_checkpoint())
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
                let db = for_proof.clone();
                async move {
                    let serial = serial.to_ascii_lowercase();
                    read(db, move |store| store.prove(&serial))
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

/// Runs `f` on a read-only connection to `db` on a blocking thread; an
/// error becomes its answer (404 for what is not there, 503 otherwise).
async fn read<T: Send + 'static>(
    db: PathBuf,
    f: impl FnOnce(&SqliteBackend) -> Result<T, AuditError> + Send + 'static,
) -> Result<T, Response> {
    let answer = tokio::task::spawn_blocking(move || {
        let store = SqliteBackend::open_read_only(&db)?;
        f(&store)
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
