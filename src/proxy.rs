//! The proxy's building blocks: what a sidecar proxy needs to decide about,
//! and to secure, each connection. The listeners and wiring (inbound,
//! outbound, the policy and SDS streams from the node agent) are built on
//! these and live beside them.
//!
//! - [`sniff`]: is the first thing a client sent a TLS ClientHello? (pure, fuzzed)
//! - [`enforce`]: given the port's mTLS mode and what the connection is, may
//!   it go on, and how? (pure)
//! - [`tls`]: rustls configurations for SPIFFE mTLS (inbound server, outbound
//!   client), the certificate store that is hot-swapped on rotation, and the
//!   verifiers that authenticate peers by SPIFFE ID.
//!
//! Built on them (the sidecar itself, `meshid proxy`):
//!
//! - [`agent_link`]: one channel to the agent, the token sent on it, one reconnect rule;
//! - [`capture`]: the netfilter rules of transparent capture (`meshid proxy init`)
//!   and the original destination of a captured connection;
//! - [`destinations`]: which workload owns an address, from the agent, on demand;
//! - [`sds_client`]: our SVID and bundle from the agent's SDS, ACK/NACK;
//! - [`policy_watch`]: our workload's mTLS mode from the agent's policy stream;
//! - [`inbound`]: sniff, decide, terminate mTLS, forward to the application;
//!   mode changes applied to live connections;
//! - [`outbound`]: originate mTLS to an upstream whose identity is checked;
//! - [`buffers`], [`copy`], [`transport`]: buffers that follow traffic (none
//!   held by an idle connection), the copy both ways, the stream under TLS;
//! - [`memory`]: memory given back to the system after connections close;
//! - [`hbone`]: Istio's HBONE, connections tunnelled as HTTP/2 CONNECT
//!   streams over one pooled mTLS connection per peer (port 15008);
//! - [`metrics`]: connection counters by direction, mode, outcome and principal;
//! - [`server`]: configuration and start-up of all of the above.
//!
//! Rules enforced here: a peer is authenticated only by a certificate that
//! chains to the current trust bundle and carries exactly one URI SAN, a SPIFFE
//! ID in our trust domain (inbound) or the expected one (outbound); a new
//! certificate of ours is checked (our key, our identity, chains, not expired)
//! before it is used; STRICT lets nothing through but verified mTLS.
//!
//! Uses `identity`, `policy` (types), `pki` (key and certificate types) and
//! `time`; never `ca`, `platform`, or `pki`'s signing (tests mint certificates
//! with the real authority).

pub mod accept;
pub mod agent_link;
pub mod buffers;
pub mod capture;
pub mod copy;
pub mod destinations;
pub mod enforce;
pub mod hbone;
pub mod inbound;
pub mod memory;
pub mod metrics;
pub mod outbound;
pub mod policy_watch;
pub mod sds_client;
pub mod server;
pub mod sniff;
pub mod tls;
pub mod transport;
