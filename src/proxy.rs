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
pub mod capture;
pub mod destinations;
pub mod enforce;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod policy_watch;
pub mod sds_client;
pub mod server;
pub mod sniff;
pub mod tls;

/// Bytes each direction of a proxied connection copies at a time: large
/// enough that bulk transfers fill whole TLS records (16 KiB) several at a
/// time instead of one syscall and one record per 8 KiB.
pub const COPY_BUFFER: usize = 64 * 1024;

/// Bytes read from the socket at a time beneath TLS. rustls asks its
/// transport for at most 4 KiB per read, so a full 16 KiB record would cost
/// four or five `recvfrom` calls; a buffer under it turns those into one read
/// of up to this many bytes (two full records) and copies in memory. It is
/// allocated at accept, before the peer is authenticated, so it stays small.
pub const TLS_READ_BUFFER: usize = 32 * 1024;

/// A TCP stream with [`TLS_READ_BUFFER`] bytes of read buffering, the
/// transport under both the inbound and the outbound TLS streams.
pub type TlsTransport = tokio::io::BufReader<tokio::net::TcpStream>;

/// Wraps `tcp` for use beneath TLS (see [`TLS_READ_BUFFER`]).
pub fn tls_transport(tcp: tokio::net::TcpStream) -> TlsTransport {
    tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, tcp)
}
