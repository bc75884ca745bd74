//! The proxy's side of the node agent's mTLS policy stream
//! (`meshid.policy.v1` `PolicyDiscovery/WatchPolicy`): keep the workload's
//! effective mode current, as a [`ProxyPolicy`] on a `watch` channel that the
//! listeners read for every new connection.
//!
//! Owns the wire → domain conversion (`TryFrom<PolicyUpdate>`) and the policy
//! stream's loop ([`watch_policy`]). Not what a mode means for a connection
//! ([`super::enforce`]), nor the channel, token and reconnect timing (the
//! [`agent_link`](super::agent_link), shared with SDS).
//!
//! Rules enforced:
//! - an update is taken whole or not at all: UNSPECIFIED or unknown modes (on
//!   the workload or any port), a malformed identity or trust domain, or an
//!   identity outside the trust domain refuse the update; the last good
//!   policy stays in force and the refusal is logged;
//! - if the agent is away (socket missing at start, agent restarting, stream
//!   ended or failed), the proxy keeps its current policy and reconnects
//!   ([`Reconnect`]); until a first policy arrives the channel holds `None`,
//!   and the listeners decide what that means.

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::identity::{SpiffeId, TrustDomain};
use crate::policy::MtlsMode;
use crate::proto::meshid::policy::v1 as proto;
use crate::proxy::agent_link::{status_text, AgentLink, Reconnect};
use crate::shutdown::Shutdown;
use proto::policy_discovery_client::PolicyDiscoveryClient;

/// Why an update was refused.
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

/// Watches this workload's policy over `link` and publishes each new one on
/// `tx`, until `shutdown`. The stream is reopened after it ends or fails
/// ([`Reconnect`]); meanwhile `tx` keeps the last policy.
pub async fn watch_policy(
    link: AgentLink,
    tx: watch::Sender<Option<ProxyPolicy>>,
    shutdown: Shutdown,
) {
    let mut client = PolicyDiscoveryClient::new(link.channel());
    let mut reconnect = Reconnect::new("policy");
    loop {
        let ended = tokio::select! {
            () = shutdown.triggered() => return,
            ended = one_stream(&mut client, &link, &tx, &mut reconnect) => ended,
        };
        let keeping = tx.borrow().as_ref().map_or_else(
            || "no policy yet".to_owned(),
            |p| format!("mTLS mode {}", p.mode),
        );
        if !reconnect.wait(&ended, &keeping, &shutdown).await {
            return;
        }
    }
}

/// One policy stream, until it ends; returns why it ended.
async fn one_stream(
    client: &mut PolicyDiscoveryClient<tonic::transport::Channel>,
    link: &AgentLink,
    tx: &watch::Sender<Option<ProxyPolicy>>,
    reconnect: &mut Reconnect,
) -> String {
    let mut request = tonic::Request::new(proto::WatchPolicyRequest {});
    if let Err(e) = link.authorize(&mut request) {
        return e.to_string();
    }
    let mut stream = match client.watch_policy(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return status_text(&status),
    };
    loop {
        match stream.message().await {
            Ok(Some(update)) => {
                reconnect.progressed();
                publish(tx, update);
            }
            Ok(None) => return "the agent ended the policy stream".to_owned(),
            Err(status) => return status_text(&status),
        }
    }
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
