//! The pure half of the `:authority` repair: HTTP/2 bytes from a client in,
//! the same bytes out, except header blocks whose `:authority` the `http`
//! crate cannot parse, which come out without it.
//!
//! How it stays correct (RFC 9113 §4.3 and §6, RFC 7541):
//! - Every header block of the connection is decoded with the client's HPACK
//!   context, so the decoder always mirrors the client's dynamic table.
//! - While no block needed a change, blocks are forwarded byte for byte, so the
//!   server's decoder mirrors the client's table too (the common case: grpc-go,
//!   the `spiffe` crate, ztunnel and our own clients never trigger a rewrite).
//! - From the first changed block on, every block is re-encoded from its
//!   decoded list as literals that are never indexed: the server's dynamic
//!   table is never added to or referenced again, so it cannot disagree with
//!   anything we send.
//! - Everything that is not a header block (DATA, SETTINGS, WINDOW_UPDATE, …)
//!   passes through untouched; a stream that does not open with the HTTP/2
//!   preface passes through untouched as a whole.
//!
//! What it refuses, each a connection error the server would also raise, or a
//! bound we set: a header block over [`MAX_BLOCK`] bytes encoded or decoding
//! to more than [`MAX_DECODED`] bytes, a dynamic-table size above the protocol
//! default (4,096, what our servers advertise), a frame interleaved into a
//! header block, a PUSH_PROMISE from a client, bad padding, bad HPACK.

use bytes::{Buf, BufMut, BytesMut};

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Frame header length.
const HEAD: usize = 9;
const HEADERS: u8 = 0x1;
const PUSH_PROMISE: u8 = 0x5;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame payload we emit: the protocol's minimum
/// SETTINGS_MAX_FRAME_SIZE, which every server accepts.
const EMIT_FRAME: usize = 16_384;
/// SETTINGS_HEADER_TABLE_SIZE our servers advertise (the default; h2 refuses a
/// larger size update too).
const TABLE_SIZE: usize = 4_096;
/// The largest header block (all its HEADERS and CONTINUATION frames, headers
/// included) we hold. hyper refuses decoded header lists over 16 KiB by default, and HPACK
/// never makes a list much larger than it decodes to, so no request our
/// servers would serve comes near it.
pub const MAX_BLOCK: usize = 64 * 1024;
/// The largest decoded header list (RFC 9113 §6.5.2 size: name + value + 32
/// each) we hold: the bound on indexed fields that each expand to a table
/// entry.
pub const MAX_DECODED: usize = 64 * 1024;

/// Why the byte stream cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RewriteError {
    /// A header block's frames add up to more than [`MAX_BLOCK`].
    #[error("HTTP/2 header block of more than {MAX_BLOCK} bytes")]
    BlockTooLarge,
    /// A header block decodes to more than [`MAX_DECODED`].
    #[error("HTTP/2 header list decodes to more than {MAX_DECODED} bytes")]
    DecodedTooLarge,
    /// A frame other than a CONTINUATION of the same stream arrived inside a
    /// header block (RFC 9113 §6.10).
    #[error("HTTP/2 frame of type {frame_type:#x} inside a header block")]
    InsideHeaderBlock {
        /// The frame type that arrived.
        frame_type: u8,
    },
    /// A CONTINUATION arrived with no header block open.
    #[error("HTTP/2 CONTINUATION with no header block open")]
    StrayContinuation,
    /// A client sent PUSH_PROMISE (RFC 9113 §8.4: only servers push).
    #[error("HTTP/2 PUSH_PROMISE from a client")]
    PushPromise,
    /// PADDED or PRIORITY fields longer than the frame.
    #[error("HTTP/2 HEADERS frame whose padding or priority exceeds its length")]
    Padding,
    /// The HPACK block does not decode.
    #[error("HPACK: {0}")]
    Hpack(String),
}

#[derive(Debug)]
enum State {
    /// Reading the preface; how much of it matched so far.
    Preface(usize),
    /// At a frame boundary.
    FrameHead,
    /// Inside a frame that passes through; bytes left.
    Forward(usize),
    /// Not HTTP/2 with prior knowledge: everything passes through.
    Opaque,
}

/// A header block being assembled from HEADERS + CONTINUATION frames.
#[derive(Debug)]
struct Block {
    stream_id: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    /// The original frames, as received (forwarded when nothing changes).
    raw: BytesMut,
    /// The HPACK fragment, padding and priority removed.
    fragment: BytesMut,
}

/// The decoded list of one block, in one reused arena.
#[derive(Debug, Default)]
struct Decoded {
    bytes: Vec<u8>,
    /// (start, name length, value length) per header, in order.
    fields: Vec<(usize, usize, usize)>,
    /// RFC 9113 §6.5.2 size of the list.
    size: usize,
    /// Whether an `:authority` the `http` crate refuses was seen.
    bad_authority: bool,
}

impl Decoded {
    fn clear(&mut self) {
        self.bytes.clear();
        self.fields.clear();
        self.size = 0;
        self.bad_authority = false;
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        self.size = self.size.saturating_add(name.len() + value.len() + 32);
        if self.size > MAX_DECODED {
            return;
        }
        if name == b":authority" && http::uri::Authority::try_from(value).is_err() {
            // Rule: an authority h2 would refuse with PROTOCOL_ERROR (gRPC
            // C-core's percent-encoded socket path, grpc-java's raw path) is
            // dropped, as if the client had sent none. None of our servers
            // routes or authorizes on it.
            self.bad_authority = true;
            return;
        }
        self.fields
            .push((self.bytes.len(), name.len(), value.len()));
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields.iter().map(|&(start, n, v)| {
            (
                &self.bytes[start..start + n],
                &self.bytes[start + n..start + n + v],
            )
        })
    }
}

/// The client-to-server half of one connection.
pub struct Rewriter {
    state: State,
    decoder: loona_hpack::Decoder<'static>,
    /// Set at the first changed block; from then on every block is re-encoded.
    reencode: bool,
    block: Option<Block>,
    decoded: Decoded,
    /// How many blocks were changed (for tests and logs).
    rewritten: u64,
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("state", &self.state)
            .field("reencode", &self.reencode)
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection.
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(TABLE_SIZE);
        Self {
            state: State::Preface(0),
            decoder,
            reencode: false,
            block: None,
            decoded: Decoded::default(),
            rewritten: 0,
        }
    }

    /// How many header blocks had their `:authority` removed or were
    /// re-encoded after one was.
    pub fn rewritten(&self) -> u64 {
        self.rewritten
    }

    /// When the next bytes pass through unchanged whatever they are: how many
    /// may be read straight into the caller's buffer.
    pub fn passthrough_budget(&self) -> Option<usize> {
        match self.state {
            State::Forward(n) => Some(n),
            State::Opaque => Some(usize::MAX),
            _ => None,
        }
    }

    /// Records `n` bytes read straight through (at most the budget).
    pub fn passed_through(&mut self, n: usize) {
        if let State::Forward(left) = &mut self.state {
            *left -= n.min(*left);
            if *left == 0 {
                self.state = State::FrameHead;
            }
        }
    }

    /// Consumes what it can of `input`, appending what the server should read
    /// to `output`. Bytes of an incomplete frame stay in `input`.
    pub fn process(
        &mut self,
        input: &mut BytesMut,
        output: &mut BytesMut,
    ) -> Result<(), RewriteError> {
        loop {
            match self.state {
                State::Opaque => {
                    output.extend_from_slice(input);
                    input.clear();
                    return Ok(());
                }
                State::Preface(seen) => {
                    let want = &PREFACE[seen..];
                    let n = want.len().min(input.len());
                    if input[..n] != want[..n] {
                        self.state = State::Opaque;
                        continue;
                    }
                    output.extend_from_slice(&input[..n]);
                    input.advance(n);
                    if seen + n < PREFACE.len() {
                        self.state = State::Preface(seen + n);
                        return Ok(());
                    }
                    self.state = State::FrameHead;
                }
                State::Forward(left) => {
                    let n = left.min(input.len());
                    output.extend_from_slice(&input[..n]);
                    input.advance(n);
                    self.passed_through(n);
                    if input.is_empty() {
                        return Ok(());
                    }
                }
                State::FrameHead => {
                    if input.len() < HEAD {
                        return Ok(());
                    }
                    let len = usize::from(input[0]) << 16
                        | usize::from(input[1]) << 8
                        | usize::from(input[2]);
                    let kind = input[3];
                    match kind {
                        HEADERS | CONTINUATION => {
                            let held = self.block.as_ref().map_or(0, |b| b.raw.len());
                            if held + HEAD + len > MAX_BLOCK {
                                return Err(RewriteError::BlockTooLarge);
                            }
                            if input.len() < HEAD + len {
                                return Ok(());
                            }
                            let frame = input.split_to(HEAD + len);
                            self.header_frame(frame, output)?;
                        }
                        PUSH_PROMISE => return Err(RewriteError::PushPromise),
                        other => {
                            if self.block.is_some() {
                                return Err(RewriteError::InsideHeaderBlock { frame_type: other });
                            }
                            output.extend_from_slice(&input[..HEAD]);
                            input.advance(HEAD);
                            self.state = if len == 0 {
                                State::FrameHead
                            } else {
                                State::Forward(len)
                            };
                        }
                    }
                }
            }
        }
    }

    /// One whole HEADERS or CONTINUATION frame.
    fn header_frame(&mut self, frame: BytesMut, output: &mut BytesMut) -> Result<(), RewriteError> {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
        let payload = &frame[HEAD..];
        match (kind, self.block.as_mut()) {
            (HEADERS, None) => {
                let mut body = payload;
                let mut pad = 0usize;
                if flags & PADDED != 0 {
                    let (&p, rest) = body.split_first().ok_or(RewriteError::Padding)?;
                    pad = usize::from(p);
                    body = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    if body.len() < 5 {
                        return Err(RewriteError::Padding);
                    }
                    let mut p = [0u8; 5];
                    p.copy_from_slice(&body[..5]);
                    priority = Some(p);
                    body = &body[5..];
                }
                if pad > body.len() {
                    return Err(RewriteError::Padding);
                }
                let fragment = BytesMut::from(&body[..body.len() - pad]);
                self.block = Some(Block {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    raw: frame.clone(),
                    fragment,
                });
            }
            (CONTINUATION, Some(block)) if block.stream_id == stream_id => {
                block.fragment.extend_from_slice(payload);
                block.raw.extend_from_slice(&frame);
            }
            (CONTINUATION, None) => return Err(RewriteError::StrayContinuation),
            (frame_type, _) => return Err(RewriteError::InsideHeaderBlock { frame_type }),
        }
        if flags & END_HEADERS != 0 {
            if let Some(block) = self.block.take() {
                self.finish(block, output)?;
            }
        }
        Ok(())
    }

    /// Decodes a complete block and forwards it, as it was or re-encoded.
    fn finish(&mut self, block: Block, output: &mut BytesMut) -> Result<(), RewriteError> {
        let decoded = &mut self.decoded;
        decoded.clear();
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| decoded.push(&name, &value))
            .map_err(|e| RewriteError::Hpack(e.to_string()))?;
        if decoded.size > MAX_DECODED {
            return Err(RewriteError::DecodedTooLarge);
        }
        if !self.reencode && !decoded.bad_authority {
            output.extend_from_slice(&block.raw);
            return Ok(());
        }
        self.reencode = true;
        self.rewritten += 1;
        let mut hpack = BytesMut::with_capacity(decoded.bytes.len() + 8 * decoded.fields.len());
        for (name, value) in decoded.iter() {
            // Literal Header Field Never Indexed, new name (RFC 7541 §6.2.3).
            hpack.put_u8(0x10);
            encode_string(name, &mut hpack);
            encode_string(value, &mut hpack);
        }
        emit_block(&block, &hpack, output);
        Ok(())
    }
}

/// Writes a HEADERS frame (and CONTINUATION frames as needed) carrying `hpack`.
fn emit_block(block: &Block, hpack: &[u8], output: &mut BytesMut) {
    let prio_len = if block.priority.is_some() { 5 } else { 0 };
    let first = hpack.len().min(EMIT_FRAME - prio_len);
    let (head, mut rest) = hpack.split_at(first);
    let mut flags = 0;
    if block.end_stream {
        flags |= END_STREAM;
    }
    if block.priority.is_some() {
        flags |= PRIORITY;
    }
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_head(
        output,
        prio_len + head.len(),
        HEADERS,
        flags,
        block.stream_id,
    );
    if let Some(p) = block.priority {
        output.extend_from_slice(&p);
    }
    output.extend_from_slice(head);
    while !rest.is_empty() {
        let n = rest.len().min(EMIT_FRAME);
        let (chunk, tail) = rest.split_at(n);
        let flags = if tail.is_empty() { END_HEADERS } else { 0 };
        frame_head(output, n, CONTINUATION, flags, block.stream_id);
        output.extend_from_slice(chunk);
        rest = tail;
    }
}

fn frame_head(output: &mut BytesMut, len: usize, kind: u8, flags: u8, stream_id: u32) {
    // `len` ≤ EMIT_FRAME, so it fits the 24-bit length field.
    output.put_uint(len as u64, 3);
    output.put_u8(kind);
    output.put_u8(flags);
    output.put_u32(stream_id & 0x7fff_ffff);
}

/// A string literal without Huffman coding (RFC 7541 §5.2).
fn encode_string(s: &[u8], out: &mut BytesMut) {
    encode_integer(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an `prefix`-bit prefix under `flags` (RFC 7541 §5.1).
fn encode_integer(mut value: usize, prefix: u8, flags: u8, out: &mut BytesMut) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.put_u8(flags | value as u8);
        return;
    }
    out.put_u8(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.put_u8((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests;
