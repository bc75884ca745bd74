//! The agent's Unix socket: binding it safely, carrying each connection's
//! peer credentials (`SO_PEERCRED`, read through tokio's safe API) into every
//! request on it, and attesting each request's caller once ([`caller`]).
//!
//! Rules enforced: the socket is connectable by any local user (mode 0666) —
//! which is why what one user can hold on it is bounded ([`limits`]) —
//! attestation, not file permissions, decides what a caller gets, as with
//! SPIRE's agent socket; an existing path is replaced only if it is a stale
//! socket nobody listens on (a regular file or a live socket is an error).

pub mod caller;
pub mod limits;

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};

use tokio::sync::OwnedSemaphorePermit;

use crate::agent::attest::PeerCredentials;
use limits::{Activity, IdleTimer, SocketLimits, UidSlot};

/// Why the socket could not be bound.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SocketError {
    /// The path exists and is not a socket.
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket {
        /// The path.
        path: String,
    },
    /// Another process serves the socket.
    #[error("{path} is in use by another process (is another meshid agent running?)")]
    InUse {
        /// The path.
        path: String,
    },
    /// The OS refused.
    #[error("cannot bind {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Binds the agent socket at `path` (creating its directory), mode 0666.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let shown = path.display().to_string();
    let io_err = |source| SocketError::Io {
        path: shown.clone(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(SocketError::NotASocket { path: shown })
        }
        Ok(_) => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(SocketError::InUse { path: shown });
            }
            std::fs::remove_file(path).map_err(io_err)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(e)),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io_err)?;
    }
    let listener = UnixListener::bind(path).map_err(io_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(io_err)?;
    Ok(listener)
}

/// Per-connection facts handed to every request on it.
#[derive(Debug, Clone)]
pub struct UdsConnInfo {
    /// The peer's credentials (None if the kernel did not say).
    pub peer: Option<PeerCredentials>,
    /// Requests in flight on the connection (counted by
    /// [`TrackRequests`](limits::TrackRequests)).
    pub activity: Arc<Activity>,
}

/// An accepted connection on the agent socket.
#[derive(Debug)]
pub struct UdsStream {
    inner: UnixStream,
    info: UdsConnInfo,
    /// Deadlines, when the connection is limited.
    limits: Option<SocketLimits>,
    timer: IdleTimer,
    /// Its place under `--max-connections` and its uid's quota, held until it closes.
    _held: Option<(OwnedSemaphorePermit, UidSlot)>,
}

impl UdsStream {
    /// Wraps an accepted stream, reading its peer credentials now.
    pub fn new(inner: UnixStream) -> Self {
        let peer = inner.peer_cred().ok().map(PeerCredentials::from_tokio);
        Self {
            inner,
            info: UdsConnInfo {
                peer,
                activity: Activity::new(),
            },
            limits: None,
            timer: IdleTimer::default(),
            _held: None,
        }
    }

    /// The same, closed when it starts no request in time or stays idle
    /// ([`SocketLimits`]), holding `slot` and `uid` until it closes.
    pub fn limited(
        inner: UnixStream,
        limits: SocketLimits,
        slot: OwnedSemaphorePermit,
        uid: UidSlot,
    ) -> Self {
        let mut s = Self::new(inner);
        s.limits = Some(limits);
        s._held = Some((slot, uid));
        s
    }

    /// The peer's uid, as the kernel said at accept.
    pub fn peer_uid(&self) -> Option<u32> {
        self.info.peer.as_ref().map(|p| p.uid)
    }
}

impl tonic::transport::server::Connected for UdsStream {
    type ConnectInfo = UdsConnInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for UdsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(limits) = &this.limits {
            if let Poll::Ready(reason) = this.timer.poll_expired(&this.info.activity, limits, cx) {
                tracing::debug!(uid = ?this.info.peer.as_ref().map(|p| p.uid), reason, "agent socket connection closed");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, reason)));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for UdsStream {
    crate::io_delegate::delegate_async_write!(inner);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_path_that_is_not_a_socket_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        std::fs::write(&path, b"precious").unwrap();
        let err = bind(&path).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
    }

    #[tokio::test]
    async fn a_live_socket_is_in_use_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("agent.sock");
        let live = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode, 0o666,
            "any local user may connect; attestation decides"
        );
        assert!(matches!(bind(&path), Err(SocketError::InUse { .. })));
        drop(live);
        // The file remains but nobody listens: it is replaced.
        let _again = bind(&path).unwrap();
    }

    #[tokio::test]
    async fn peer_credentials_are_our_own_on_a_socketpair() {
        let (a, _b) = UnixStream::pair().unwrap();
        let stream = UdsStream::new(a);
        let peer = stream.info.peer.unwrap();
        assert_eq!(peer.pid, Some(std::process::id() as i32));
    }
}
