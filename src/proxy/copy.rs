//! Copying a proxied connection's bytes both ways, with buffers that follow
//! traffic ([`buffers`](crate::proxy::buffers)).
//!
//! As `tokio::io::copy_bidirectional`: each direction reads until its end
//! of stream, then shuts the other side's write half down; the copy ends
//! when both directions have, or at the first error. Unlike it, a direction
//! holds no buffer while it waits for bytes: it borrows one from the
//! thread's pool for each read, keeps it until those bytes are written on,
//! and gives it back. A direction whose last read filled a whole buffer
//! borrows a bulk one next.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::proxy::buffers::Buf;

/// Copies `a`'s bytes to `b` and `b`'s to `a` until both ends are done;
/// the bytes copied each way (`a` to `b`, `b` to `a`).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    poll_fn(|cx| {
        let there = a_to_b.poll(cx, &mut *a, &mut *b)?;
        let back = b_to_a.poll(cx, &mut *b, &mut *a)?;
        if there.is_ready() && back.is_ready() {
            Poll::Ready(Ok((a_to_b.copied, b_to_a.copied)))
        } else {
            Poll::Pending
        }
    })
    .await
}

/// One direction of the copy.
#[derive(Debug, Default)]
struct Direction {
    /// Bytes read and not yet all written: `buf[pos..end]`.
    buf: Option<Buf>,
    pos: usize,
    end: usize,
    /// The last read filled its buffer: borrow a bulk one next.
    bulk: bool,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader reached its end of stream.
    read_done: bool,
    /// The writer was shut down: this direction is finished.
    done: bool,
    copied: u64,
}

impl Direction {
    fn poll<R, W>(&mut self, cx: &mut Context<'_>, r: &mut R, w: &mut W) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            // Write what was read.
            if let Some(buf) = &self.buf {
                while self.pos < self.end {
                    let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..self.end]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::WriteZero,
                            "the peer accepted no more bytes",
                        )));
                    }
                    self.pos += n;
                    self.copied += n as u64;
                    self.unflushed = true;
                }
                // All written: the buffer goes back to the pool.
                self.buf = None;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            // Read more, into a buffer borrowed for this read only.
            let mut buf = Buf::take(self.bulk);
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *r).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        self.read_done = true;
                    } else {
                        self.bulk = n == buf.len();
                        self.pos = 0;
                        self.end = n;
                        self.buf = Some(buf);
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing to read now: the buffer goes back (dropped),
                    // and what was written is flushed while we wait.
                    drop(buf);
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
