//! HBONE: Istio's tunnel between proxies, as ztunnel speaks it. Each
//! application connection is an HTTP/2 `CONNECT` stream (its `:authority`
//! the original destination, `IP:PORT`) over one mTLS connection per peer
//! proxy, on the peer's port [`PORT`] with ALPN `h2`.
//!
//! A new application connection to a meshed pod then costs an HTTP/2
//! stream instead of a TLS handshake (two signatures, two chain
//! verifications and a key exchange), and an idle one costs a stream's
//! state instead of a TLS session and its buffers.
//!
//! - [`pool`]: the outbound side, mTLS connections to peers shared by
//!   tunnels and kept while used;
//! - [`stream`]: one tunnel as a byte stream;
//! - the inbound side is [`inbound::hbone`](crate::proxy::inbound::hbone).
//!
//! Rules enforced: the mTLS connection carrying tunnels is authenticated
//! exactly as a direct one (the peer proves exactly the expected identity
//! outbound; inbound, a client certificate in our trust domain is
//! required), and every tunnel on it is judged by the mode of its
//! destination port, with the connection's verified identity.

pub mod pool;
pub mod stream;

use std::time::Duration;

/// The HBONE port (ztunnel's and Istio's).
pub const PORT: u16 = 15008;

/// The ALPN protocol of HBONE's mTLS connections.
pub const ALPN: &[u8] = b"h2";

/// HTTP/2 flow-control window of one tunnel: enough for bulk transfers at
/// this machine's bandwidth-delay product; memory is used only by bytes
/// actually in flight.
pub const STREAM_WINDOW: u32 = 1024 * 1024;

/// HTTP/2 flow-control window of a whole connection.
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Largest HTTP/2 DATA frame.
pub const MAX_FRAME: u32 = 64 * 1024;

/// Bytes of TLS records rustls may hold unsent on an HBONE connection
/// (its default is 64 KiB): a full DATA frame ([`MAX_FRAME`] and its
/// header) is then taken in one write and sent in one system call instead
/// of two. Memory is used only while records wait for the socket.
pub const TLS_BUFFER_LIMIT: usize = 256 * 1024;

/// Tunnels one mTLS connection carries at most (the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS; the client opens another connection
/// past it).
pub const MAX_TUNNELS: u32 = 100;

/// A pooled connection is not given new tunnels after this long, so
/// rotated certificates and bundles reach long-lived peers.
pub const MAX_AGE: Duration = Duration::from_secs(5 * 60);

/// A pooled connection without tunnels for this long is closed.
pub const IDLE_RELEASE: Duration = Duration::from_secs(60);

/// After a peer refused a connection to its HBONE port, direct mTLS is used
/// to it for this long before HBONE is tried again.
pub const NO_HBONE_MEMORY: Duration = Duration::from_secs(60);
