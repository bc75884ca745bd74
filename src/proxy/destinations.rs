//! Which workload owns a destination address, learned from the node agent
//! on demand (`meshid.destination.v1`) for the connections the proxy
//! captures, and kept current while the stream lasts.
//!
//! Rules enforced: an address not yet answered is never guessed — while the
//! agent cannot answer, a lookup fails and the captured connection is
//! refused (an unknown destination might be meshed, and a meshed one must
//! never get plaintext); answers already received are kept across a lost
//! stream and asked again on reconnect.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::ReceiverStream;

use crate::identity::SpiffeId;
use crate::proto::meshid::destination::v1 as proto;
use crate::proxy::agent_link::{status_text, AgentLink, Reconnect};
use crate::shutdown::Shutdown;
use proto::destination_discovery_client::DestinationDiscoveryClient;

/// How long a connection waits for the agent's first answer about its
/// destination before it is refused.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// What owns a destination address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// A meshed pod: mTLS, and its proxy must prove exactly this identity.
    Meshed {
        /// The pod's SPIFFE ID.
        identity: SpiffeId,
        /// `namespace/name`, for logs.
        pod: String,
    },
    /// A pod without meshid's proxy: plaintext.
    Unmeshed {
        /// `namespace/name`, for logs.
        pod: String,
    },
    /// No pod has it: plaintext (outside the mesh).
    Unknown,
}

/// Why a destination could not be looked up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The agent did not answer in time (unreachable, or slow).
    #[error("the node agent did not say who owns {0} within {LOOKUP_TIMEOUT:?} (is it running?)")]
    NoAnswer(IpAddr),
    /// The agent's answer does not parse.
    #[error("the node agent's answer about {address} is unusable: {why}")]
    BadAnswer {
        /// The address.
        address: String,
        /// What is wrong.
        why: String,
    },
}

#[derive(Default)]
struct State {
    known: HashMap<IpAddr, Result<Owner, LookupError>>,
    asked: HashSet<IpAddr>,
}

/// The proxy's view of destination ownership; one per proxy.
pub struct Destinations {
    state: Mutex<State>,
    answered: Notify,
    ask: mpsc::UnboundedSender<IpAddr>,
    connected: watch::Sender<bool>,
}

impl std::fmt::Debug for Destinations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Destinations").finish_non_exhaustive()
    }
}

impl Destinations {
    /// Starts following the agent's answers over `link` until `shutdown`.
    pub fn start(link: AgentLink, shutdown: &Shutdown) -> Arc<Self> {
        let (ask, asks) = mpsc::unbounded_channel();
        let this = Arc::new(Self {
            state: Mutex::new(State::default()),
            answered: Notify::new(),
            ask,
            connected: watch::channel(false).0,
        });
        shutdown.spawn(this.clone().follow(link, asks, shutdown.clone()));
        this
    }

    /// Whether the stream to the agent has been up (the proxy is ready only
    /// then). It stays true when the agent goes away: the answers held keep
    /// serving, and an agent restart must not take every pod out of its
    /// Services; addresses not yet answered are refused meanwhile.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// Who owns `ip`: the answer held, or the agent's first answer.
    pub async fn lookup(&self, ip: IpAddr) -> Result<Owner, LookupError> {
        let wait = async {
            loop {
                let answered = self.answered.notified();
                {
                    let mut state = self.lock();
                    if let Some(known) = state.known.get(&ip) {
                        return known.clone();
                    }
                    if state.asked.insert(ip) {
                        let _ = self.ask.send(ip);
                    }
                }
                answered.await;
            }
        };
        tokio::time::timeout(LOOKUP_TIMEOUT, wait)
            .await
            .unwrap_or(Err(LookupError::NoAnswer(ip)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn apply(&self, update: proto::DestinationUpdate) {
        let mut state = self.lock();
        for destination in update.destinations {
            let Ok(ip) = destination.address.parse::<IpAddr>() else {
                continue;
            };
            let owner = owner_of(&destination);
            if let Ok(owner) = &owner {
                tracing::debug!(%ip, ?owner, "destination owner");
            }
            state.known.insert(ip, owner);
        }
        drop(state);
        self.answered.notify_waiters();
    }

    async fn follow(
        self: Arc<Self>,
        link: AgentLink,
        mut asks: mpsc::UnboundedReceiver<IpAddr>,
        shutdown: Shutdown,
    ) {
        let mut client = DestinationDiscoveryClient::new(link.channel());
        let mut reconnect = Reconnect::new("destination");
        loop {
            let ended = tokio::select! {
                () = shutdown.triggered() => return,
                ended = self.one_stream(&mut client, &link, &mut asks, &mut reconnect) => ended,
            };
            let held = self.lock().known.len();
            let keeping = format!("{held} destination answers");
            if !reconnect.wait(&ended, &keeping, &shutdown).await {
                return;
            }
        }
    }

    /// One stream: ask again for every address asked so far, then forward
    /// new asks and apply answers until the stream ends; returns why.
    async fn one_stream(
        &self,
        client: &mut DestinationDiscoveryClient<tonic::transport::Channel>,
        link: &AgentLink,
        asks: &mut mpsc::UnboundedReceiver<IpAddr>,
        reconnect: &mut Reconnect,
    ) -> String {
        let (tx, rx) = mpsc::channel::<proto::DestinationRequest>(64);
        let again: Vec<String> = self.lock().asked.iter().map(ToString::to_string).collect();
        if !again.is_empty() {
            let _ = tx.try_send(proto::DestinationRequest { addresses: again });
        }
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Err(e) = link.authorize(&mut request) {
            return e.to_string();
        }
        let mut answers = match client.watch_destinations(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => return status_text(&status),
        };
        self.connected.send_replace(true);
        loop {
            tokio::select! {
                ip = asks.recv() => {
                    let Some(ip) = ip else { return "the proxy is stopping".to_owned() };
                    let mut addresses = vec![ip.to_string()];
                    while let Ok(more) = asks.try_recv() {
                        addresses.push(more.to_string());
                    }
                    if tx.send(proto::DestinationRequest { addresses }).await.is_err() {
                        return "the destination stream closed".to_owned();
                    }
                }
                message = answers.message() => match message {
                    Ok(Some(update)) => {
                        reconnect.progressed();
                        self.apply(update);
                    }
                    Ok(None) => return "the agent ended the destination stream".to_owned(),
                    Err(status) => return status_text(&status),
                },
            }
        }
    }
}

/// The agent's answer as an [`Owner`]; a MESHED answer without a valid
/// SPIFFE ID is refused (never downgraded to plaintext).
fn owner_of(d: &proto::Destination) -> Result<Owner, LookupError> {
    let bad = |why: String| LookupError::BadAnswer {
        address: d.address.clone(),
        why,
    };
    match proto::Ownership::try_from(d.ownership) {
        Ok(proto::Ownership::Meshed) => {
            let identity = SpiffeId::parse(&d.identity)
                .map_err(|e| bad(format!("MESHED with identity {:?}: {e}", d.identity)))?;
            Ok(Owner::Meshed {
                identity,
                pod: d.pod.clone(),
            })
        }
        Ok(proto::Ownership::Unmeshed) => Ok(Owner::Unmeshed { pod: d.pod.clone() }),
        Ok(proto::Ownership::Unknown) => Ok(Owner::Unknown),
        Ok(proto::Ownership::Unspecified) | Err(_) => {
            Err(bad(format!("ownership {} is not one we know", d.ownership)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(ownership: proto::Ownership, identity: &str) -> proto::Destination {
        proto::Destination {
            address: "10.0.0.1".into(),
            ownership: ownership.into(),
            identity: identity.into(),
            pod: "shop/a".into(),
        }
    }

    #[test]
    fn a_meshed_answer_needs_a_valid_identity_and_an_unspecified_one_is_refused() {
        let id = "spiffe://cluster.local/ns/shop/sa/a";
        assert_eq!(
            owner_of(&dest(proto::Ownership::Meshed, id)).unwrap(),
            Owner::Meshed {
                identity: SpiffeId::parse(id).unwrap(),
                pod: "shop/a".into()
            }
        );
        // A meshed destination whose identity is unusable is an error, never plaintext.
        assert!(owner_of(&dest(proto::Ownership::Meshed, "")).is_err());
        assert!(owner_of(&dest(proto::Ownership::Meshed, "http://x")).is_err());
        assert!(owner_of(&dest(proto::Ownership::Unspecified, "")).is_err());
        let mut unknown_enum = dest(proto::Ownership::Unknown, "");
        unknown_enum.ownership = 42;
        assert!(owner_of(&unknown_enum).is_err());
        assert_eq!(
            owner_of(&dest(proto::Ownership::Unmeshed, "")).unwrap(),
            Owner::Unmeshed {
                pod: "shop/a".into()
            }
        );
        assert_eq!(
            owner_of(&dest(proto::Ownership::Unknown, "")).unwrap(),
            Owner::Unknown
        );
    }

    #[tokio::test(start_paused = true)]
    async fn without_an_agent_a_lookup_fails_instead_of_guessing() {
        let dir = tempfile::tempdir().unwrap();
        let link = AgentLink::new(&dir.path().join("missing.sock"), None).unwrap();
        let shutdown = Shutdown::new();
        let destinations = Destinations::start(link, &shutdown);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            destinations.lookup(ip).await,
            Err(LookupError::NoAnswer(ip))
        );
        assert!(!*destinations.connected().borrow());
        shutdown.trigger();
    }
}
