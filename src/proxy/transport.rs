//! The TCP stream beneath the proxy's TLS connections.
//!
//! rustls asks its transport for at most 4 KiB per read, so a full 16 KiB
//! record would cost four or five `recvfrom` calls. [`TlsTransport`] reads
//! the socket into a bulk buffer borrowed from the thread's pool
//! ([`buffers`](crate::proxy::buffers)) and hands rustls what it asks for
//! from memory; the buffer goes back to the pool as soon as rustls has
//! taken every byte of it. An idle connection, or one in its handshake
//! waiting on the peer, holds no read buffer (a fixed `BufReader` held
//! 32 KiB from accept on, before the peer was authenticated).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::proxy::buffers::Buf;

/// A TCP stream whose reads are buffered only while bytes wait in memory.
#[derive(Debug)]
pub struct TlsTransport {
    tcp: TcpStream,
    /// Read from the socket, not yet handed on: `buf[pos..end]`.
    buf: Option<Buf>,
    pos: usize,
    end: usize,
}

impl TlsTransport {
    /// Wraps `tcp`.
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            buf: None,
            pos: 0,
            end: 0,
        }
    }

    /// The TCP stream.
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    fn hand_on(&mut self, out: &mut ReadBuf<'_>) {
        if let Some(buf) = &self.buf {
            let n = out.remaining().min(self.end - self.pos);
            out.put_slice(&buf[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.end {
                self.buf = None;
            }
        }
    }
}

impl AsyncRead for TlsTransport {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_some() {
            this.hand_on(out);
            return Poll::Ready(Ok(()));
        }
        let mut buf = Buf::take(true);
        if out.remaining() >= buf.len() {
            // A large read needs no buffer of ours.
            return Pin::new(&mut this.tcp).poll_read(cx, out);
        }
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut this.tcp).poll_read(cx, &mut read) {
            Poll::Ready(Ok(())) => {
                let n = read.filled().len();
                if n > 0 {
                    this.pos = 0;
                    this.end = n;
                    this.buf = Some(buf);
                    this.hand_on(out);
                }
                Poll::Ready(Ok(()))
            }
            // The buffer goes back to the pool when dropped here.
            other => other,
        }
    }
}

impl AsyncWrite for TlsTransport {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;
    use crate::proxy::buffers::held_here;

    /// Small reads are served from one socket read, and the buffer is given
    /// back once every byte was handed on; nothing is held while idle.
    #[tokio::test(flavor = "current_thread")]
    async fn small_reads_come_from_one_buffer_given_back_when_drained() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut transport = TlsTransport::new(server);
        let before = held_here();
        client.write_all(&[7u8; 10_000]).await.unwrap();
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while got.len() < 10_000 {
            let n = transport.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, vec![7u8; 10_000]);
        assert_eq!(
            held_here(),
            before,
            "a drained transport still holds its buffer"
        );
        client.shutdown().await.unwrap();
        assert_eq!(transport.read(&mut chunk).await.unwrap(), 0);
    }
}
