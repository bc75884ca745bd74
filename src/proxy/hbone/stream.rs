//! One HBONE tunnel as a byte stream: DATA frames of an HTTP/2 stream in
//! each direction, flow-control credit given back as bytes are read.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::buffers::{self, Buf};

/// A tunnel: what we send on `send`, what we receive on `recv`.
#[derive(Debug)]
pub struct TunnelStream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received and not yet read.
    pending: Bytes,
    /// End of stream sent.
    shut: bool,
    /// An error that arrived after bytes were given: the next read's.
    failed: Option<io::Error>,
}

impl TunnelStream {
    /// A stream over one HTTP/2 stream's two halves.
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv,
            pending: Bytes::new(),
            shut: false,
            failed: None,
        }
    }
}

fn h2_error(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HBONE tunnel I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, format!("HBONE tunnel: {e}"))
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending.is_empty() {
            if let Some(e) = this.failed.take() {
                return Poll::Ready(Err(e));
            }
        }
        // As much as has arrived, frame after frame, up to `out`'s room:
        // one write to the application per read rather than one per frame.
        let mut gave = false;
        while out.remaining() > 0 {
            if this.pending.is_empty() {
                let polled = if gave {
                    match this.recv.poll_data(cx) {
                        Poll::Ready(polled) => polled,
                        Poll::Pending => break,
                    }
                } else {
                    ready!(this.recv.poll_data(cx))
                };
                match polled {
                    Some(Ok(data)) => {
                        // The window is given back as soon as the bytes leave
                        // h2's buffer: at most one read's worth is held here.
                        let _ = this.recv.flow_control().release_capacity(data.len());
                        this.pending = data;
                        continue;
                    }
                    Some(Err(e)) if !gave => return Poll::Ready(Err(h2_error(e))),
                    // Reported at the next read, after what was given.
                    Some(Err(e)) => {
                        this.failed = Some(h2_error(e));
                        break;
                    }
                    None => break,
                }
            }
            let n = out.remaining().min(this.pending.len());
            out.put_slice(&this.pending.split_to(n));
            gave = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let this = &mut *self;
        this.send.reserve_capacity(buf.len());
        let granted = loop {
            if this.send.capacity() > 0 {
                break this.send.capacity();
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(n)) if n > 0 => break n,
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_error(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "HBONE tunnel closed by the peer",
                    )))
                }
            }
        };
        // The bytes go into a pooled buffer that h2 holds until it has
        // written them, and that returns to the pool then: no allocation,
        // and no page faulted in, per write.
        let n = granted.min(buf.len()).min(buffers::LARGE);
        let mut pooled = Buf::take(n > buffers::SMALL);
        pooled[..n].copy_from_slice(&buf[..n]);
        this.send
            .send_data(Bytes::from_owner(pooled).slice(..n), false)
            .map_err(h2_error)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes frames as soon as they are queued.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_error)?;
        }
        Poll::Ready(Ok(()))
    }
}
