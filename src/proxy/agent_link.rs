//! The proxy's link to its node agent: one gRPC channel to the agent's Unix
//! socket, the bearer token sent on it, and the one reconnect rule every
//! stream from the agent follows (SDS, the policy stream, and those to come).
//!
//! Owns: the channel ([`uds_channel`]), re-reading the token file on every
//! (re)connect ([`AgentLink::authorize`]), and [`Reconnect`] (capped backoff
//! with jitter, one warning when a stream is lost, debug lines while it stays
//! lost). Not what any stream means: each watcher keeps that.
//!
//! Rules enforced:
//! - a lost stream never loses what the proxy holds: the watcher keeps its
//!   current certificate or policy, and the link only waits and reconnects;
//! - proxies that lost the same agent do not come back at once (jitter), and
//!   an agent that comes back is found within [`RECONNECT`]'s cap;
//! - the token is re-read on every (re)connect (the kubelet rotates it), never
//!   logged, and sent as sensitive metadata ([`BearerToken`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use crate::shutdown::Shutdown;
use crate::time::Backoff;
use crate::token::{BearerToken, TokenError};

/// Reconnect delays: 100 ms doubling to 10 s, half of each jittered.
pub const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));

/// Why the link could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentLinkError {
    /// The agent socket path is not valid UTF-8 (gRPC endpoints are strings).
    #[error("agent socket path {path:?} is not valid UTF-8; choose another --agent-socket")]
    SocketPath {
        /// The path, lossily printed.
        path: String,
    },
}

/// A gRPC channel to the node agent's Unix socket at `path`. Lazy: nothing
/// is connected until the first call, and each call after a failure tries
/// again, so a socket that does not exist yet is retried, not fatal.
pub fn uds_channel(path: &Path) -> Result<Channel, AgentLinkError> {
    let text = path.to_str().ok_or_else(|| AgentLinkError::SocketPath {
        path: path.display().to_string(),
    })?;
    let endpoint = Endpoint::from_shared(format!("unix://{text}")).map_err(|_| {
        AgentLinkError::SocketPath {
            path: text.to_owned(),
        }
    })?;
    Ok(endpoint.connect_lazy())
}

/// The channel to the agent and the token (if any) sent on it; cheap to
/// clone, shared by every watcher of one proxy.
#[derive(Debug, Clone)]
pub struct AgentLink {
    channel: Channel,
    /// A projected service-account token, sent so the agent can attest us
    /// when our peer credentials do not.
    token_file: Option<PathBuf>,
}

impl AgentLink {
    /// A link to the agent socket at `socket`, sending the token in
    /// `token_file` when one is given.
    pub fn new(socket: &Path, token_file: Option<PathBuf>) -> Result<Self, AgentLinkError> {
        Ok(Self {
            channel: uds_channel(socket)?,
            token_file,
        })
    }

    /// A link over an existing channel.
    pub fn from_channel(channel: Channel, token_file: Option<PathBuf>) -> Self {
        Self {
            channel,
            token_file,
        }
    }

    /// The channel, for a service client.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Puts `authorization: Bearer …` on `request` when a token file is
    /// configured, reading it now.
    pub fn authorize<T>(&self, request: &mut Request<T>) -> Result<(), TokenError> {
        if let Some(path) = &self.token_file {
            BearerToken::read_file(path)?.authorize(request);
        }
        Ok(())
    }
}

/// The reconnect rule of one stream from the agent: call
/// [`progressed`](Self::progressed) whenever the stream delivers something,
/// and [`wait`](Self::wait) each time it ends.
#[derive(Debug)]
pub struct Reconnect {
    /// The stream, for logs: `SDS`, `policy`.
    stream: &'static str,
    /// Failed attempts since the stream last delivered something.
    retry: u32,
}

impl Reconnect {
    /// The rule for the stream named `stream` in logs.
    pub fn new(stream: &'static str) -> Self {
        Self { stream, retry: 0 }
    }

    /// The stream delivered something: the next loss starts the backoff over.
    pub fn progressed(&mut self) {
        self.retry = 0;
    }

    /// The stream ended because of `reason`, while the watcher keeps
    /// `keeping`: logs it (a warning on the first loss, debug after) and
    /// waits [`RECONNECT`]'s next delay. Returns `false` if `shutdown`
    /// came first.
    pub async fn wait(&mut self, reason: &str, keeping: &str, shutdown: &Shutdown) -> bool {
        let delay = RECONNECT.jittered(self.retry);
        let stream = self.stream;
        if self.retry == 0 {
            tracing::warn!(%reason, %keeping, retry_in = ?delay, "no {stream} stream from the agent; keeping what we hold");
        } else {
            tracing::debug!(%reason, attempt = self.retry, retry_in = ?delay, "{stream} stream still unavailable");
        }
        self.retry = self.retry.saturating_add(1);
        tokio::select! {
            () = shutdown.triggered() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// `CODE: message` of a gRPC status, for logs.
pub fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_path_that_is_not_utf8_is_refused() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff.sock"));
        let err = uds_channel(path).unwrap_err();
        assert!(matches!(err, AgentLinkError::SocketPath { .. }));
        assert!(err.to_string().contains("--agent-socket"), "{err}");
    }

    #[tokio::test]
    async fn the_token_is_reread_on_every_request_and_sensitive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "abc\n").unwrap();
        let link = AgentLink::new(&dir.path().join("agent.sock"), Some(path.clone())).unwrap();
        let header = |link: &AgentLink| {
            let mut request = Request::new(());
            link.authorize(&mut request).map(|()| {
                let value = request.metadata().get("authorization").unwrap().clone();
                assert!(value.is_sensitive());
                value.to_str().unwrap().to_owned()
            })
        };
        assert_eq!(header(&link).unwrap(), "Bearer abc");
        std::fs::write(&path, "def").unwrap();
        assert_eq!(header(&link).unwrap(), "Bearer def");
        std::fs::write(&path, "  \n").unwrap();
        assert!(matches!(header(&link), Err(TokenError::EmptyFile { .. })));
        let none = AgentLink::new(&dir.path().join("agent.sock"), None).unwrap();
        let mut request = Request::new(());
        none.authorize(&mut request).unwrap();
        assert!(request.metadata().get("authorization").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_back_off_until_the_stream_delivers() {
        let shutdown = Shutdown::new();
        let mut rule = Reconnect::new("test");
        let mut waited = Vec::new();
        for _ in 0..3 {
            let start = tokio::time::Instant::now();
            assert!(rule.wait("down", "nothing", &shutdown).await);
            waited.push(start.elapsed());
        }
        assert!(waited[0] >= Duration::from_millis(50) && waited[0] <= Duration::from_millis(100));
        assert!(waited[2] >= Duration::from_millis(200), "{waited:?}");
        rule.progressed();
        let start = tokio::time::Instant::now();
        assert!(rule.wait("down", "nothing", &shutdown).await);
        assert!(start.elapsed() <= Duration::from_millis(100));
        shutdown.trigger();
        assert!(!rule.wait("down", "nothing", &shutdown).await);
    }
}
