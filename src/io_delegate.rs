//! One home for the `AsyncWrite` half of our connection wrappers
//! (`CaTlsStream`, `UdsStream`, `AuthorityRepair`): they change what is read
//! or what rides along with a connection, never what is written, so every
//! write goes straight to the wrapped stream.

/// The body of an `impl AsyncWrite` that forwards every call to `self.$field`
/// (which must be `Unpin`).
macro_rules! delegate_async_write {
    ($field:ident) => {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.$field).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            self.$field.is_write_vectored()
        }
    };
}

pub(crate) use delegate_async_write;
