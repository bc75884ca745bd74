//! The CA's admin socket: `DATA_DIR/ca-admin.sock`, through which
//! `meshid ca authority …` and `meshid ca revoke` reach the running CA. One
//! JSON request per connection, one JSON answer ([`AdminRequest`],
//! [`AdminResponse`]).
//!
//! Rules enforced (who may rotate or revoke):
//! - only the CA's own user: the socket is created inside the data
//!   directory (0700) and then set to 0600, so no other user can connect; and
//!   every connection's peer credentials (`SO_PEERCRED`) are checked against
//!   the socket owner's uid, so a socket whose mode was loosened still
//!   refuses other users (root included, unless the CA runs as root);
//! - a request is at most [`MAX_REQUEST`] bytes and must arrive within
//!   [`REQUEST_DEADLINE`];
//! - a certificate is revoked only if this CA's audit log recorded issuing
//!   it, and the revocation is audited.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::audit::{AuditLog, AuditQuery, AuditRecord, Outcome, StoreLocation};
use crate::ca::authorities::{
    normalize_serial, Authorities, AuthorityState, RevocationReason, RotationError, Snapshot,
};
use crate::shutdown::Shutdown;
use crate::time::SharedClock;

/// The socket's file name in the data directory.
pub const SOCKET_FILE: &str = "ca-admin.sock";
/// Longest request accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// How long a caller has to send its request.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

/// One command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AdminRequest {
    /// Every authority.
    List,
    /// Make the next authority.
    Prepare,
    /// Activate the prepared authority.
    Activate {
        /// Must name the prepared authority when given.
        id: Option<String>,
    },
    /// Taint an old authority.
    Taint {
        /// Which; may be left out when only one old authority is untainted.
        id: Option<String>,
    },
    /// Revoke a tainted old authority.
    Revoke {
        /// Which; may be left out when only one old authority is tainted.
        id: Option<String>,
    },
    /// Revoke one certificate.
    RevokeCertificate {
        /// Its serial, hex as typed.
        serial: String,
        /// Why.
        reason: RevocationReason,
    },
}

/// One authority, as `meshid ca authority list -o json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorityInfo {
    /// The id (hex subject key identifier).
    pub id: String,
    /// `prepared`, `active` or `old`.
    pub state: AuthorityState,
    /// Whether it is tainted.
    pub tainted: bool,
    /// When its signing certificate expires.
    #[serde(with = "crate::ca::authorities::state::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The signing certificate's subject key identifier, hex.
    pub subject_key_id: String,
}

/// The answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminResponse {
    /// What was done (on success).
    #[serde(default)]
    pub message: Option<String>,
    /// Why nothing was done (on failure).
    #[serde(default)]
    pub error: Option<String>,
    /// The authorities after the command.
    #[serde(default)]
    pub authorities: Vec<AuthorityInfo>,
    /// Problems an operator should see (a plug-in CA refused, …).
    #[serde(default)]
    pub problems: Vec<String>,
}

/// What the admin socket acts on.
#[derive(Clone)]
pub struct AdminDeps {
    /// The authorities.
    pub authorities: Arc<Authorities>,
    /// The audit store (its name, for messages).
    pub audit_store: StoreLocation,
    /// The audit log: issuance look-ups and revocation records.
    pub audit: AuditLog,
    /// Time.
    pub clock: SharedClock,
}

/// The authorities as listed.
pub fn authority_infos(snapshot: &Snapshot) -> Vec<AuthorityInfo> {
    snapshot
        .entries()
        .iter()
        .map(|e| AuthorityInfo {
            id: e.id.clone(),
            state: e.state,
            tainted: e.tainted,
            not_after: e.authority.signer_not_after(),
            subject_key_id: e.id.clone(),
        })
        .collect()
}

/// Binds `path` (replacing a stale socket) and serves it until shutdown.
pub fn serve(path: &Path, deps: AdminDeps, shutdown: &Shutdown) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()) => {
            std::fs::remove_file(path)?
        }
        Ok(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; remove it",
            ))
        }
        Err(_) => {}
    }
    let listener = UnixListener::bind(path)?;
    // The data directory is 0700, so nobody else could reach the socket
    // before this chmod; after it, not even through a looser directory.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let owner = std::fs::metadata(path)?.uid();
    let path: PathBuf = path.to_owned();
    tracing::info!(socket = %path.display(), uid = owner, "admin socket ready");
    let stop = shutdown.clone();
    let deps = Arc::new(deps);
    shutdown.spawn(async move {
        loop {
            let stream = tokio::select! {
                () = stop.triggered() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let deps = deps.clone();
            tokio::spawn(async move { one_connection(stream, owner, &deps).await });
        }
        let _ = std::fs::remove_file(&path);
    });
    Ok(())
}

async fn one_connection(mut stream: UnixStream, owner: u32, deps: &AdminDeps) {
    let uid = match stream.peer_cred() {
        Ok(cred) => cred.uid(),
        Err(e) => {
            tracing::warn!(error = %e, "admin socket: no peer credentials; refused");
            return;
        }
    };
    let response = if uid != owner {
        // Rule: only the CA's user (see the module docs). The request is
        // read (bounded) and dropped, so that the refusal reaches the caller
        // instead of a reset.
        let _ = read_request(&mut stream).await;
        tracing::warn!(
            uid,
            owner,
            "admin socket: a user that is not the CA's was refused"
        );
        AdminResponse {
            error: Some(format!(
                "refused: uid {uid} is not the CA's user (uid {owner}); only the CA's user may rotate or revoke"
            )),
            ..AdminResponse::default()
        }
    } else {
        match read_request(&mut stream).await {
            Ok(request) => {
                tracing::info!(uid, request = ?request, "admin command");
                handle(request, uid, deps).await
            }
            Err(error) => AdminResponse {
                error: Some(error),
                ..AdminResponse::default()
            },
        }
    };
    let mut line = serde_json::to_vec(&response).unwrap_or_default();
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
}

async fn read_request(stream: &mut UnixStream) -> Result<AdminRequest, String> {
    let mut line = Vec::new();
    let mut reader = BufReader::new(stream).take(MAX_REQUEST as u64 + 1);
    tokio::time::timeout(REQUEST_DEADLINE, reader.read_until(b'\n', &mut line))
        .await
        .map_err(|_| format!("no request within {REQUEST_DEADLINE:?}"))?
        .map_err(|e| format!("reading the request: {e}"))?;
    if line.len() > MAX_REQUEST {
        return Err(format!("the request is longer than {MAX_REQUEST} bytes"));
    }
    serde_json::from_slice(&line).map_err(|e| format!("bad request: {e}"))
}

/// Runs one command and describes the result.
pub async fn handle(request: AdminRequest, uid: u32, deps: &AdminDeps) -> AdminResponse {
    let a = &deps.authorities;
    let result = match request {
        AdminRequest::List => Ok(None),
        AdminRequest::Prepare => text(a.prepare().await),
        AdminRequest::Activate { id } => text(a.activate(id.as_deref()).await),
        AdminRequest::Taint { id } => text(a.taint(id.as_deref()).await),
        AdminRequest::Revoke { id } => text(a.revoke_authority(id.as_deref()).await),
        AdminRequest::RevokeCertificate { serial, reason } => {
            revoke_certificate(&serial, reason, uid, deps)
                .await
                .map(Some)
        }
    };
    let snapshot = a.current();
    let (message, error) = match result {
        Ok(message) => (message, None),
        Err(e) => (None, Some(e)),
    };
    if let Some(message) = &message {
        tracing::info!("{message}");
    }
    AdminResponse {
        message,
        error,
        authorities: authority_infos(&snapshot),
        problems: snapshot.problems().to_vec(),
    }
}

fn text(result: Result<String, RotationError>) -> Result<Option<String>, String> {
    result.map(Some).map_err(|e| e.to_string())
}

/// Revokes the certificate with `serial` after finding its issuance in the
/// audit log, and audits the revocation.
async fn revoke_certificate(
    serial: &str,
    reason: RevocationReason,
    uid: u32,
    deps: &AdminDeps,
) -> Result<String, String> {
    let normalized = normalize_serial(serial).ok_or_else(|| {
        format!("--serial {serial:?} is not a certificate serial number (hex, at most 20 bytes)")
    })?;
    let issued = deps
        .audit
        .query(AuditQuery {
            serial: Some(normalized.clone()),
            outcome: Some(Outcome::Issued),
            limit: Some(1),
            ..AuditQuery::default()
        })
        .await
        .map_err(|e| format!("looking serial {normalized} up in the audit store: {e}"))?
        .into_iter()
        .next()
        .ok_or_else(|| {
            format!(
                "no certificate with serial {normalized} was issued by this CA (audit store {}); \
                 `meshid audit list --serial {normalized}` shows what the log holds",
                deps.audit_store.name()
            )
        })?;
    let now = deps.clock.now();
    let not_after = issued.not_after.unwrap_or(now);
    if not_after <= now {
        return Err(format!(
            "certificate {normalized} expired at {not_after}: no verifier accepts it any more, nothing to revoke",
            not_after = not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        ));
    }
    let message = deps
        .authorities
        .revoke_certificate(&normalized, reason, not_after)
        .await
        .map_err(|e: RotationError| e.to_string())?;
    let mut record = AuditRecord::new(now, Outcome::Revoked);
    record.caller = Some(format!("uid {uid} (admin socket)"));
    record.requested_identity = issued.granted_identity.clone();
    record.granted_identity = issued.granted_identity.clone();
    record.namespace = issued.namespace.clone();
    record.service_account = issued.service_account.clone();
    record.pod_name = issued.pod_name.clone();
    record.pod_uid = issued.pod_uid.clone();
    record.node = issued.node.clone();
    record.serial = Some(normalized.clone());
    record.public_key_sha256 = issued.public_key_sha256.clone();
    record.not_before = issued.not_before;
    record.not_after = issued.not_after;
    record.reason = Some(format!("revoked: {reason}"));
    if let Err(e) = deps.audit.record(record).await {
        tracing::error!(serial = %normalized, error = %e, "the revocation took effect but its audit record was not written");
        return Err(format!(
            "certificate {normalized} is revoked, but its audit record could not be written yet: {e}"
        ));
    }
    Ok(message)
}

/// Sends one request to the CA's admin socket at `path` and reads the answer.
pub async fn call(path: &Path, request: &AdminRequest) -> Result<AdminResponse, String> {
    let mut stream = UnixStream::connect(path)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => format!(
            "cannot connect to {}: permission denied; only the CA's user may use its admin socket",
            path.display()
        ),
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
                "cannot connect to {}: {e}; is `meshid ca` running with this --data-dir?",
                path.display()
            ),
            _ => format!("cannot connect to {}: {e}", path.display()),
        })?;
    let mut line = serde_json::to_vec(request).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .await
        .map_err(|e| format!("sending to {}: {e}", path.display()))?;
    let mut answer = Vec::new();
    BufReader::new(stream)
        .take(16 * 1024 * 1024)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("reading from {}: {e}", path.display()))?;
    serde_json::from_slice(&answer).map_err(|e| {
        format!(
            "the CA's answer on {} is not understood: {e}",
            path.display()
        )
    })
}
