//! First-bytes sniffing: does a new inbound connection start with a TLS
//! ClientHello, or with something else (plaintext)?
//!
//! [`sniff`] is a pure function over the bytes seen so far (fuzzed in
//! `fuzz/fuzz_targets/sniff.rs`); [`peek_first_bytes`] applies it to a socket
//! without consuming anything, with a bounded wait.
//!
//! What counts as a ClientHello (RFC 8446 5.1 and 4.1.2, RFC 5246 6.2.1):
//!
//! | bytes | field | accepted |
//! |---|---|---|
//! | 0 | record type | `0x16` (handshake) |
//! | 1–2 | record version | `0x03 0x00` to `0x03 0x04` |
//! | 3–4 | record length | 4 to 2^14 + 2048 |
//! | 5 | handshake type | `0x01` (ClientHello) |
//! | 6–8 | handshake length | at least 41 (the smallest possible ClientHello), at most 131 396 (the largest), and at least the record length minus 4 |
//!
//! The last rule means the first record holds nothing but this ClientHello
//! (or its first fragment, when the hello is larger than a record). A first
//! record shorter than the 4-byte handshake header is legal TLS but no TLS
//! stack sends one; such input is classified as plaintext.
//!
//! The decision is made as early as possible and never changes once made:
//! adding bytes after a [`Sniffed::Tls`] or [`Sniffed::Plaintext`] answer
//! cannot change it, and a prefix of a TLS ClientHello is never
//! [`Sniffed::Plaintext`]. [`SNIFF_BYTES`] bytes always suffice.

use std::time::Duration;

use tokio::net::TcpStream;

/// How many bytes always suffice for a decision: the 5-byte record header
/// plus the 4-byte handshake header. Every real ClientHello is longer (at
/// least 45 bytes), so waiting for these never stalls a TLS client.
pub const SNIFF_BYTES: usize = 9;

/// Largest record length a TLS 1.2 peer may send (2^14 plaintext + 2048 of
/// expansion, RFC 5246 6.2.3); the first ClientHello record is always below.
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;
/// The smallest ClientHello body: version (2), random (32), session id
/// length (1), cipher suites length (2) and one suite (2), compression
/// methods length (1) and one method (1).
const MIN_CLIENT_HELLO_LEN: usize = 41;
/// The largest ClientHello body: version (2), random (32), session id
/// (1 + 32), cipher suites (2 + 65 534), compression methods (1 + 255),
/// extensions (2 + 65 535).
const MAX_CLIENT_HELLO_LEN: usize = 2 + 32 + 33 + 65_536 + 256 + 65_537;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;
const HANDSHAKE_HEADER_LEN: usize = 4;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sniffed {
    /// The start of a TLS ClientHello: hand the connection to a TLS acceptor.
    Tls,
    /// Anything else (including garbage that starts a little like TLS).
    Plaintext,
    /// Consistent with a ClientHello so far, but too short to decide: wait
    /// for more bytes (a ClientHello may arrive one byte per TCP segment).
    NeedMore,
}

/// Classifies the first bytes a client sent. Pure and total: never panics,
/// whatever the input; see the module documentation for the rules.
pub fn sniff(first_bytes: &[u8]) -> Sniffed {
    let b = first_bytes;
    // Each check looks only at bytes already there: `None` while they are
    // missing or fine, `Some(Plaintext)` as soon as one is wrong.
    let plaintext_unless = |fine: bool| (!fine).then_some(Sniffed::Plaintext);
    let checks = [
        b.first()
            .and_then(|&ty| plaintext_unless(ty == RECORD_HANDSHAKE)),
        b.get(1).and_then(|&major| plaintext_unless(major == 0x03)),
        b.get(2).and_then(|&minor| plaintext_unless(minor <= 0x04)),
        b.get(3..5)
            .and_then(|len| plaintext_unless(record_len_ok(be(len)))),
        b.get(5)
            .and_then(|&ty| plaintext_unless(ty == HANDSHAKE_CLIENT_HELLO)),
        b.get(3..9).and_then(|lens| {
            let (record_len, hello_len) = (be(&lens[..2]), be(&lens[3..]));
            plaintext_unless(hello_len_ok(record_len, hello_len))
        }),
    ];
    match checks.into_iter().flatten().next() {
        Some(refused) => refused,
        None if b.len() >= SNIFF_BYTES => Sniffed::Tls,
        None => Sniffed::NeedMore,
    }
}

/// Big-endian unsigned integer of up to 8 bytes.
fn be(bytes: &[u8]) -> usize {
    bytes.iter().fold(0, |acc, &b| (acc << 8) | usize::from(b))
}

fn record_len_ok(record_len: usize) -> bool {
    (HANDSHAKE_HEADER_LEN..=MAX_RECORD_LEN).contains(&record_len)
}

fn hello_len_ok(record_len: usize, hello_len: usize) -> bool {
    (MIN_CLIENT_HELLO_LEN..=MAX_CLIENT_HELLO_LEN).contains(&hello_len)
        && hello_len + HANDSHAKE_HEADER_LEN >= record_len
}

/// Longest pause between two peeks while a partial ClientHello trickles in.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Classifies a new connection from its first bytes, without consuming them
/// (`TcpStream::peek`): the TLS acceptor or the plaintext forwarder then reads
/// the connection from its first byte.
///
/// Waits at most `wait` for enough bytes. Never returns [`Sniffed::NeedMore`]:
///
/// - a client that sends nothing within `wait` (a server-first protocol such
///   as SMTP or MySQL, which waits for the server to speak) is classified as
///   [`Sniffed::Plaintext`], so that it is not stuck: in PERMISSIVE, AUDIT and
///   DISABLE it is forwarded to the application, which then speaks first; in
///   STRICT it is refused like any plaintext;
/// - a client that sent only part of a ClientHello when `wait` runs out, or
///   closed the connection, is classified as plaintext too.
///
/// Bytes that arrive in several TCP segments are peeked again with a short,
/// growing pause in between (the socket stays readable while unread data is
/// buffered, so waiting for readiness would spin).
pub async fn peek_first_bytes(stream: &TcpStream, wait: Duration) -> std::io::Result<Sniffed> {
    let peeking = async {
        let mut buf = [0u8; SNIFF_BYTES];
        let mut pause = Duration::from_millis(1);
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                // End of stream before a decision: nothing more will come.
                return Ok(Sniffed::Plaintext);
            }
            match sniff(&buf[..n]) {
                Sniffed::NeedMore => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_POLL_INTERVAL);
                }
                decided => return Ok(decided),
            }
        }
    };
    match tokio::time::timeout(wait, peeking).await {
        Ok(result) => result,
        Err(_elapsed) => Ok(Sniffed::Plaintext),
    }
}

#[cfg(test)]
mod tests;
