//! The proxy's side of the node agent's mTLS policy stream
//! (`meshid.policy.v1` `PolicyDiscovery/WatchPolicy`): keep the workload's
//! effective mode current, as a [`ProxyPolicy`] on a `watch` channel that the
//! listeners read for every new connection.
//!
//! Owns the wire → domain conversion (`TryFrom<PolicyUpdate>`), the agent
//! socket channel ([`uds_channel`]) and the reconnect loop ([`watch_policy`]).
//! Not what a mode means for a connection ([`super::enforce`]).
//!
//! Rules enforced:
//! - an update is taken whole or not at all: UNSPECIFIED or unknown modes (on
//!   the workload or any port), a malformed identity or trust domain, or an
//!   identity outside the trust domain refuse the update; the last good
//!   policy stays in force and the refusal is logged;
//! - if the agent is away (socket missing at start, agent restarting, stream
//!   ended or failed), the proxy keeps its current policy and reconnects with
//!   capped exponential backoff and jitter; until a first policy arrives the
//!   channel holds `None`, and the listeners decide what that means.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::identity::{SpiffeId, TrustDomain};
use crate::policy::MtlsMode;
use crate::proto::meshid::policy::v1 as proto;
use crate::shutdown::Shutdown;
use proto::policy_discovery_client::PolicyDiscoveryClient;

/// The first reconnect delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);

/// The longest reconnect delay: an agent that comes back is found within it.
pub const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Why an update or a socket path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyWatchError {
    /// A field of an update cannot be used; the update is ignored.
    #[error("policy update refused: {field}: {reason}")]
    InvalidUpdate {
        /// The field, e.g. `port_modes[8080]`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent socket path is not valid UTF-8 (gRPC endpoints are strings).
    #[error("agent socket path {path:?} is not valid UTF-8; choose another --agent-socket")]
    SocketPath {
        /// The path, lossily printed.
        path: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> PolicyWatchError {
    PolicyWatchError::InvalidUpdate {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The effective mTLS policy of this proxy's workload, as the agent resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyPolicy {
    /// The workload-wide mode (never UNSET).
    pub mode: MtlsMode,
    /// Port-level modes (workload port → mode); other ports use [`ProxyPolicy::mode`].
    pub ports: BTreeMap<u32, MtlsMode>,
    /// Where the mode came from, e.g. `namespace shop/default` (for logs).
    pub source: String,
    /// The workload's attested identity.
    pub identity: SpiffeId,
    /// The trust domain peers must belong to.
    pub trust_domain: TrustDomain,
    /// The agent's content version: equal versions, equal policies.
    pub version: String,
}

impl ProxyPolicy {
    /// The mode for connections to the workload's `port`.
    pub fn mode_for_port(&self, port: u16) -> MtlsMode {
        self.ports
            .get(&u32::from(port))
            .copied()
            .unwrap_or(self.mode)
    }
}

/// A wire mode as a policy mode; UNSPECIFIED is not a mode.
impl TryFrom<proto::MtlsMode> for MtlsMode {
    type Error = PolicyWatchError;

    fn try_from(mode: proto::MtlsMode) -> Result<Self, Self::Error> {
        match mode {
            proto::MtlsMode::Unspecified => Err(invalid("mode", "MTLS_MODE_UNSPECIFIED")),
            proto::MtlsMode::Disable => Ok(Self::Disable),
            proto::MtlsMode::Permissive => Ok(Self::Permissive),
            proto::MtlsMode::Strict => Ok(Self::Strict),
            proto::MtlsMode::Audit => Ok(Self::Audit),
        }
    }
}

/// A mode as it is on the wire (an `i32`), named `field` in errors.
pub(crate) fn mode_from_wire(field: &str, value: i32) -> Result<MtlsMode, PolicyWatchError> {
    let mode = proto::MtlsMode::try_from(value)
        .map_err(|_| invalid(field, format!("unknown mode {value}")))?;
    MtlsMode::try_from(mode).map_err(|_| invalid(field, "MTLS_MODE_UNSPECIFIED"))
}

impl TryFrom<proto::PolicyUpdate> for ProxyPolicy {
    type Error = PolicyWatchError;

    fn try_from(update: proto::PolicyUpdate) -> Result<Self, Self::Error> {
        let mode = mode_from_wire("mode", update.mode)?;
        let ports = update
            .port_modes
            .iter()
            .map(|(port, mode)| {
                let field = format!("port_modes[{port}]");
                if !(1..=65535).contains(port) {
                    return Err(invalid(field, "not a port (1-65535)"));
                }
                Ok((*port, mode_from_wire(&field, *mode)?))
            })
            .collect::<Result<_, _>>()?;
        let identity =
            SpiffeId::parse(&update.identity).map_err(|e| invalid("identity", e.to_string()))?;
        let trust_domain = TrustDomain::new(&update.trust_domain)
            .map_err(|e| invalid("trust_domain", e.to_string()))?;
        if !identity.is_member_of(&trust_domain) {
            return Err(invalid(
                "identity",
                format!("{identity} is not in trust domain {trust_domain}"),
            ));
        }
        if update.version.is_empty() {
            return Err(invalid("version", "empty"));
        }
        Ok(Self {
            mode,
            ports,
            source: update.source,
            identity,
            trust_domain,
            version: update.version,
        })
    }
}

/// A gRPC channel to the node agent's Unix socket at `path`. Lazy: nothing
/// is connected until the first call, and each call after a failure tries
/// again, so a socket that does not exist yet is retried, not fatal.
pub fn uds_channel(path: &Path) -> Result<Channel, PolicyWatchError> {
    let text = path.to_str().ok_or_else(|| PolicyWatchError::SocketPath {
        path: path.display().to_string(),
    })?;
    let endpoint = Endpoint::from_shared(format!("unix://{text}")).map_err(|_| {
        PolicyWatchError::SocketPath {
            path: text.to_owned(),
        }
    })?;
    Ok(endpoint.connect_lazy())
}

/// The wait before reconnect attempt `attempt` (0-based): doubling from
/// [`BACKOFF_INITIAL`] up to [`BACKOFF_MAX`], then "equal jitter": half of
/// it fixed, half scaled by `jitter` (in `[0, 1]`), so proxies that lost the
/// same agent do not all come back at once.
pub fn backoff_delay(attempt: u32, jitter: f64) -> Duration {
    let full = BACKOFF_INITIAL
        .saturating_mul(2u32.saturating_pow(attempt.min(16)))
        .min(BACKOFF_MAX);
    full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
}

/// A uniform value in `[0, 1]` for [`backoff_delay`] (0.5 if the system's
/// randomness fails).
pub(crate) fn jitter(rng: &SystemRandom) -> f64 {
    let mut bytes = [0u8; 4];
    match rng.fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

/// Watches this workload's policy over `channel` (see [`uds_channel`]) and
/// publishes each new one on `tx`, until `shutdown`. The stream is reopened
/// after it ends or fails, with [`backoff_delay`]; meanwhile `tx` keeps the
/// last policy. The backoff restarts once an update arrives.
pub async fn watch_policy(
    channel: Channel,
    token: Option<crate::proxy::sds_client::TokenFile>,
    tx: watch::Sender<Option<ProxyPolicy>>,
    shutdown: Shutdown,
) {
    let mut client = PolicyDiscoveryClient::new(channel);
    let rng = SystemRandom::new();
    let mut attempt: u32 = 0;
    loop {
        // The bearer token (if any) is re-read on every (re)connect.
        let mut request = tonic::Request::new(proto::WatchPolicyRequest {});
        let authorized = crate::proxy::sds_client::authorize(&mut request, token.as_ref());
        let call = async {
            match authorized {
                Ok(()) => client.watch_policy(request).await,
                Err(e) => Err(tonic::Status::unauthenticated(e.to_string())),
            }
        };
        let outcome = tokio::select! {
            () = shutdown.triggered() => return,
            response = call => match response {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    loop {
                        let message = tokio::select! {
                            () = shutdown.triggered() => return,
                            message = stream.message() => message,
                        };
                        match message {
                            Ok(Some(update)) => {
                                attempt = 0;
                                publish(&tx, update);
                            }
                            Ok(None) => break "the agent ended the policy stream".to_owned(),
                            Err(status) => break status_text(&status),
                        }
                    }
                }
                Err(status) => status_text(&status),
            },
        };
        let delay = backoff_delay(attempt, jitter(&rng));
        let keeping = tx
            .borrow()
            .as_ref()
            .map_or_else(|| "none yet".to_owned(), |p| p.mode.to_string());
        if attempt == 0 {
            tracing::warn!(reason = %outcome, keeping = %keeping, retry_in = ?delay, "no policy stream from the agent; keeping the current mTLS policy");
        } else {
            tracing::debug!(reason = %outcome, attempt, retry_in = ?delay, "policy stream still unavailable");
        }
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = shutdown.triggered() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Converts `update` and publishes it if it differs from the current policy;
/// a refused update leaves the current policy in force.
fn publish(tx: &watch::Sender<Option<ProxyPolicy>>, update: proto::PolicyUpdate) {
    match ProxyPolicy::try_from(update) {
        Ok(policy) => {
            tx.send_if_modified(|current| {
                if current.as_ref().map(|p| &p.version) == Some(&policy.version) {
                    return false;
                }
                tracing::info!(
                    mode = %policy.mode,
                    ports = ?policy.ports,
                    source = %policy.source,
                    version = %policy.version,
                    "mTLS policy in force"
                );
                *current = Some(policy);
                true
            });
        }
        Err(e) => {
            tracing::error!(error = %e, "ignoring a policy update from the agent; the current policy stays in force");
        }
    }
}
