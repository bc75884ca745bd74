//! Destination discovery: which workload owns an IP address, served to the
//! proxies on this node for the connections they capture, on demand and
//! kept current (`meshid.destination.v1.DestinationDiscovery`).
//!
//! Why on demand: a sidecar needs the few destinations its workload calls,
//! not every pod of the cluster; the proxy asks for an address the first
//! time it sees it and the agent then pushes changes for the addresses that
//! stream asked about, so memory in a proxy follows its traffic.
//!
//! Rules enforced: only attested workloads of this node may ask (token, else
//! peer credentials, as the policy stream); an address is MESHED only when a
//! running pod has it and carries `security.meshid.io/tlsMode: meshid`, and
//! the identity given is that pod's; when two running pods claim one address
//! the newest wins and the conflict is logged with both.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::agent::socket::caller::{AttestPolicy, SocketAttestor};
use crate::identity::TrustDomain;
use crate::platform::{Platform, Pod};
use crate::proto::meshid::destination::v1 as proto;
use crate::shutdown::Shutdown;
use proto::destination_discovery_server::{DestinationDiscovery, DestinationDiscoveryServer};

/// Updates buffered per stream.
const STREAM_BUFFER: usize = 16;

/// Addresses one stream may follow; more are refused (the socket is 0666, so
/// one caller must not make the agent hold unbounded state).
pub const MAX_ADDRESSES_PER_STREAM: usize = 65_536;

/// The destination discovery server: one per agent.
#[derive(Clone)]
pub struct DestinationService {
    socket: SocketAttestor,
    platform: Arc<dyn Platform>,
    trust_domain: TrustDomain,
    stop: CancellationToken,
}

impl std::fmt::Debug for DestinationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DestinationService")
            .field("trust_domain", &self.trust_domain.as_str())
            .finish_non_exhaustive()
    }
}

impl DestinationService {
    /// A service answering from `platform`.
    pub fn new(
        socket: SocketAttestor,
        platform: Arc<dyn Platform>,
        trust_domain: TrustDomain,
    ) -> Self {
        Self {
            socket,
            platform,
            trust_domain,
            stop: CancellationToken::new(),
        }
    }

    /// Ends open streams when `shutdown` triggers.
    pub fn with_shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.stop = shutdown.token().child_token();
        self
    }

    /// The tonic service.
    pub fn into_server(self) -> DestinationDiscoveryServer<Self> {
        DestinationDiscoveryServer::new(self)
    }

    /// What this agent knows about `ip`, answering `address`.
    pub fn resolve(&self, address: &str, ip: IpAddr) -> proto::Destination {
        resolve(self.platform.as_ref(), &self.trust_domain, address, ip)
    }
}

/// The answer for `ip`: the running pod that has it (the newest, when two
/// claim it), meshed or not; UNKNOWN when none does.
pub fn resolve(
    platform: &dyn Platform,
    trust_domain: &TrustDomain,
    address: &str,
    ip: IpAddr,
) -> proto::Destination {
    let mut running: Vec<Pod> = platform
        .pods_with_ip(ip)
        .into_iter()
        .filter(Pod::is_running)
        .collect();
    running.sort_by_key(|p| std::cmp::Reverse(p.creation_timestamp));
    if running.len() > 1 {
        let claims: Vec<String> = running
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        tracing::warn!(%ip, pods = ?claims, chosen = %claims[0],
            "two running pods claim one IP address; the newest is taken");
    }
    let unknown = || proto::Destination {
        address: address.to_owned(),
        ownership: proto::Ownership::Unknown.into(),
        identity: String::new(),
        pod: String::new(),
    };
    let Some(pod) = running.first() else {
        return unknown();
    };
    let Ok(identity) = pod.identity(trust_domain) else {
        return unknown();
    };
    let ownership = if pod.is_meshed() {
        proto::Ownership::Meshed
    } else {
        proto::Ownership::Unmeshed
    };
    proto::Destination {
        address: address.to_owned(),
        ownership: ownership.into(),
        identity: identity.to_string(),
        pod: format!("{}/{}", pod.namespace, pod.name),
    }
}

#[tonic::async_trait]
impl DestinationDiscovery for DestinationService {
    type WatchDestinationsStream = ReceiverStream<Result<proto::DestinationUpdate, Status>>;

    async fn watch_destinations(
        &self,
        request: Request<Streaming<proto::DestinationRequest>>,
    ) -> Result<Response<Self::WatchDestinationsStream>, Status> {
        let workload = self
            .socket
            .attest(AttestPolicy::TokenThenPeer, &request)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "destination stream caller refused");
                Status::permission_denied(e.to_string())
            })?;
        if !self.platform.addresses_synced() {
            // Not UNKNOWN: an address not yet seen may belong to a meshed pod.
            return Err(Status::unavailable(
                "the node agent has not yet listed the cluster's pod addresses; retry",
            ));
        }
        tracing::debug!(identity = %workload.identity, "destination stream opened");
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(self.clone().follow(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

type Sender = mpsc::Sender<Result<proto::DestinationUpdate, Status>>;

impl DestinationService {
    /// One stream: answer what is asked, then re-answer what changed.
    async fn follow(self, mut incoming: Streaming<proto::DestinationRequest>, tx: Sender) {
        let mut asked: BTreeMap<String, (IpAddr, proto::Destination)> = BTreeMap::new();
        let mut changes = self.platform.address_changes();
        loop {
            let update = tokio::select! {
                () = self.stop.cancelled() => {
                    let _ = tx.send(Err(Status::unavailable("the node agent is shutting down"))).await;
                    return;
                }
                () = tx.closed() => return,
                message = incoming.message() => match message {
                    Ok(Some(request)) => match self.answer(&mut asked, request) {
                        Ok(update) => update,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    Ok(None) | Err(_) => return,
                },
                changed = changes.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.reanswer(&mut asked)
                }
            };
            if !update.destinations.is_empty() && tx.send(Ok(update)).await.is_err() {
                return;
            }
        }
    }

    /// Answers a request; a malformed address ends the stream naming it.
    fn answer(
        &self,
        asked: &mut BTreeMap<String, (IpAddr, proto::Destination)>,
        request: proto::DestinationRequest,
    ) -> Result<proto::DestinationUpdate, Status> {
        let mut destinations = Vec::new();
        for address in request.addresses {
            let ip: IpAddr = address.parse().map_err(|_| {
                Status::invalid_argument(format!("{address:?} is not an IP address"))
            })?;
            if !asked.contains_key(&address) && asked.len() >= MAX_ADDRESSES_PER_STREAM {
                return Err(Status::resource_exhausted(format!(
                    "a stream follows at most {MAX_ADDRESSES_PER_STREAM} addresses; open another"
                )));
            }
            let answer = self.resolve(&address, ip);
            asked.insert(address, (ip, answer.clone()));
            destinations.push(answer);
        }
        Ok(proto::DestinationUpdate { destinations })
    }

    /// After a platform change: the answers that differ from those sent.
    fn reanswer(
        &self,
        asked: &mut BTreeMap<String, (IpAddr, proto::Destination)>,
    ) -> proto::DestinationUpdate {
        let mut destinations = Vec::new();
        for (address, (ip, last)) in asked.iter_mut() {
            let now = self.resolve(address, *ip);
            if now != *last {
                *last = now.clone();
                destinations.push(now);
            }
        }
        proto::DestinationUpdate { destinations }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::jwt::{JwtVerifier, JwtVerifierConfig};
    use crate::platform::local::{LocalConfig, LocalPlatform};
    use crate::time::system_clock;

    fn pod(name: &str, ip: &str, meshed: bool, phase: &str, created: &str) -> String {
        let label = if meshed {
            "  labels: {security.meshid.io/tlsMode: meshid}\n"
        } else {
            ""
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\n  uid: uid-{name}\n  \
             creationTimestamp: \"{created}\"\n{label}spec:\n  serviceAccountName: sa-{name}\n\
             status:\n  phase: {phase}\n  podIP: {ip}\n---\n"
        )
    }

    fn platform(yaml: &str) -> (tempfile::TempDir, Arc<LocalPlatform>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), yaml).unwrap();
        let verifier = JwtVerifier::new(JwtVerifierConfig::new(jsonwebtoken::jwk::JwkSet {
            keys: Vec::new(),
        }));
        let platform =
            LocalPlatform::open(LocalConfig::new(dir.path(), verifier, system_clock())).unwrap();
        (dir, platform)
    }

    fn answer(platform: &LocalPlatform, ip: &str) -> (proto::Ownership, String, String) {
        let d = resolve(platform, &TrustDomain::default(), ip, ip.parse().unwrap());
        (d.ownership(), d.identity, d.pod)
    }

    #[test]
    fn an_address_is_meshed_only_for_a_running_labelled_pod_and_names_its_identity() {
        let yaml = [
            pod("a", "10.0.0.1", true, "Running", "2025-01-01T00:00:00Z"),
            pod("b", "10.0.0.2", false, "Running", "2025-01-01T00:00:00Z"),
            pod("c", "10.0.0.3", true, "Succeeded", "2025-01-01T00:00:00Z"),
        ]
        .concat();
        let (_dir, p) = platform(&yaml);
        assert_eq!(
            answer(&p, "10.0.0.1"),
            (
                proto::Ownership::Meshed,
                "spiffe://cluster.local/ns/shop/sa/sa-a".into(),
                "shop/a".into()
            )
        );
        assert_eq!(answer(&p, "10.0.0.2").0, proto::Ownership::Unmeshed);
        // A finished pod's address belongs to nobody.
        assert_eq!(answer(&p, "10.0.0.3").0, proto::Ownership::Unknown);
        assert_eq!(answer(&p, "10.9.9.9").0, proto::Ownership::Unknown);
    }

    #[test]
    fn two_running_pods_on_one_address_give_the_newest_and_a_finished_one_loses() {
        let yaml = [
            pod("old", "10.0.0.5", true, "Running", "2025-01-01T00:00:00Z"),
            pod("new", "10.0.0.5", false, "Running", "2025-02-01T00:00:00Z"),
            pod("done", "10.0.0.6", true, "Failed", "2025-03-01T00:00:00Z"),
            pod("live", "10.0.0.6", false, "Running", "2025-01-01T00:00:00Z"),
        ]
        .concat();
        let (_dir, p) = platform(&yaml);
        let (ownership, _, pod) = answer(&p, "10.0.0.5");
        assert_eq!(
            (ownership, pod.as_str()),
            (proto::Ownership::Unmeshed, "shop/new")
        );
        assert_eq!(answer(&p, "10.0.0.6").2, "shop/live");
    }
}
