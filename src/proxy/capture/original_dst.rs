//! Where a captured connection was going: the destination before netfilter's
//! REDIRECT rewrote it (`SO_ORIGINAL_DST`, `IP6T_SO_ORIGINAL_DST`).
//!
//! Rule enforced: a connection that was not redirected (made straight to a
//! capture port), or whose original destination is a capture port, has no
//! usable destination — the proxy refuses it instead of connecting to
//! itself in a loop.

use std::net::SocketAddr;

use tokio::net::TcpStream;

/// Why a captured connection has no destination to forward to.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OriginalDstError {
    /// The kernel has no original destination (the connection was not
    /// redirected by netfilter, or conntrack forgot it).
    #[error("no original destination (not redirected by the capture rules: a client connected straight to the capture port?): {0}")]
    NotRedirected(#[source] std::io::Error),
    /// The original destination is one of the proxy's capture ports.
    #[error("the original destination {0} is a capture port: refused, or the proxy would loop into itself")]
    CapturePort(SocketAddr),
}

/// The original destination of `stream`, refused when it is one of
/// `capture_ports` on any address.
pub fn original_dst(
    stream: &TcpStream,
    capture_ports: &[u16],
) -> Result<SocketAddr, OriginalDstError> {
    let socket = socket2::SockRef::from(stream);
    let local = stream
        .local_addr()
        .map_err(OriginalDstError::NotRedirected)?;
    let raw = if local.is_ipv4() {
        socket.original_dst_v4()
    } else {
        socket.original_dst_v6()
    };
    let dst = raw
        .map_err(OriginalDstError::NotRedirected)?
        .as_socket()
        .ok_or_else(|| {
            OriginalDstError::NotRedirected(std::io::Error::other("not an IP address"))
        })?;
    // An IPv4 destination reported on an IPv6 socket comes back mapped.
    let dst = SocketAddr::new(dst.ip().to_canonical(), dst.port());
    if capture_ports.contains(&dst.port()) {
        return Err(OriginalDstError::CapturePort(dst));
    }
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without netfilter's REDIRECT, the kernel either knows no original
    /// destination or gives the address connected to, which is the capture
    /// port: both are refused.
    #[tokio::test]
    async fn a_connection_straight_to_a_capture_port_has_no_destination() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let _client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let err = original_dst(&server, &[port]).unwrap_err();
        assert!(
            matches!(
                err,
                OriginalDstError::NotRedirected(_) | OriginalDstError::CapturePort(_)
            ),
            "{err}"
        );
    }
}
