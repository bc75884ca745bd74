//! Serving the `:authority` values real gRPC clients send.
//!
//! gRPC C-core (under py-spiffe, and every Python, C++, Ruby, PHP and C#
//! client) sends a Unix socket's path percent-encoded as the HTTP/2
//! `:authority` (`run%2Fmeshid%2Fagent.sock`); grpc-java sends the raw path;
//! grpc-go sends `localhost`; some clients send none. The HTTP/2 server under
//! tonic (h2) parses `:authority` with the `http` crate, which allows `%` only
//! in userinfo and never `/`, and answers such a request with RST_STREAM
//! PROTOCOL_ERROR before any of our code runs. Neither h2 nor http offers a
//! setting for it (hyperium/h2#487 and hyperium/http#861 are unmerged).
//!
//! So every meshid gRPC server reads its connections through
//! [`AuthorityRepair`], which sits between the transport and h2 and removes an
//! `:authority` that h2 would refuse, as if the client had sent none (h2 and
//! tonic serve a request without one). The test is h2's own (`http`'s
//! `Authority` parser), so exactly the requests h2 would refuse are changed.
//! This is safe because no meshid server uses `:authority`: callers are
//! told apart by peer credentials, tokens and client certificates.
//!
//! Changing a header inside HPACK is done without breaking the compression
//! state shared by client and server; [`rewrite`] says how. The decoder is
//! `loona-hpack` (a maintained fork of `hpack` that passes h2spec); the few
//! lines that write literals are ours.

pub mod rewrite;

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub use rewrite::{RewriteError, Rewriter};

/// How much is read from the transport at a time while a frame is parsed.
const READ_CHUNK: usize = 16 * 1024 + 9;

/// A server-side connection whose client-to-server HTTP/2 bytes pass through
/// a [`Rewriter`]; writes go straight to the transport.
#[derive(Debug)]
pub struct AuthorityRepair<S> {
    inner: S,
    rewriter: Rewriter,
    /// Read from the transport, not yet processed (an incomplete frame).
    input: BytesMut,
    /// Processed, not yet handed to the server.
    output: BytesMut,
    eof: bool,
}

impl<S> AuthorityRepair<S> {
    /// Wraps an accepted connection.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Rewriter::new(),
            input: BytesMut::new(),
            output: BytesMut::new(),
            eof: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityRepair<S>
{
    type ConnectInfo = S::ConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityRepair<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.output.is_empty() {
                let n = this.output.len().min(buf.remaining());
                buf.put_slice(&this.output.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // DATA and the other frames that pass unchanged are read straight
            // into the server's buffer, without a copy through ours.
            if let Some(budget) = this.rewriter.passthrough_budget() {
                if this.input.is_empty() && buf.remaining() > 0 {
                    let limit = budget.min(buf.remaining());
                    let dst = buf.initialize_unfilled_to(limit);
                    let mut direct = ReadBuf::new(dst);
                    std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut direct))?;
                    let n = direct.filled().len();
                    buf.advance(n);
                    this.rewriter.passed_through(n);
                    return Poll::Ready(Ok(()));
                }
            }
            this.input.reserve(READ_CHUNK);
            let n = std::task::ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut this.inner),
                cx,
                &mut this.input
            ))?;
            if n == 0 {
                // The client is gone; whatever partial frame it left is the
                // server's to judge.
                this.eof = true;
                this.output.extend_from_slice(&this.input);
                this.input.clear();
                continue;
            }
            if let Err(e) = this.rewriter.process(&mut this.input, &mut this.output) {
                tracing::debug!(error = %e, "HTTP/2 connection refused before the server");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityRepair<S> {
    crate::io_delegate::delegate_async_write!(inner);
}
