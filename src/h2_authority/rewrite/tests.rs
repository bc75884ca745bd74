use bytes::{BufMut, BytesMut};
use proptest::prelude::*;

use super::*;

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

/// A gRPC request's headers with the given `:authority` (None: no authority).
fn grpc_headers(authority: Option<&str>) -> Headers {
    let mut h: Headers = vec![
        (b":method".to_vec(), b"POST".to_vec()),
        (b":scheme".to_vec(), b"http".to_vec()),
        (
            b":path".to_vec(),
            b"/SpiffeWorkloadAPI/FetchX509SVID".to_vec(),
        ),
    ];
    if let Some(a) = authority {
        h.insert(2, (b":authority".to_vec(), a.as_bytes().to_vec()));
    }
    h.push((b"te".to_vec(), b"trailers".to_vec()));
    h.push((b"content-type".to_vec(), b"application/grpc".to_vec()));
    h.push((b"workload.spiffe.io".to_vec(), b"true".to_vec()));
    h
}

fn without_authority(h: &Headers) -> Headers {
    h.iter()
        .filter(|(n, _)| n != b":authority")
        .cloned()
        .collect()
}

fn head(out: &mut BytesMut, len: usize, kind: u8, flags: u8, stream: u32) {
    out.put_uint(len as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
}

/// A client: the preface and an empty SETTINGS frame.
fn preface() -> BytesMut {
    let mut b = BytesMut::from(PREFACE);
    head(&mut b, 0, 0x4, 0, 0);
    b
}

/// One HEADERS frame (END_HEADERS) carrying `block`.
fn headers_frame(out: &mut BytesMut, stream: u32, block: &[u8]) {
    head(out, block.len(), HEADERS, END_HEADERS, stream);
    out.extend_from_slice(block);
}

/// The client's HPACK block for `headers`.
fn encode(client: &mut loona_hpack::Encoder<'_>, headers: &Headers) -> Vec<u8> {
    client.encode(headers.iter().map(|(n, v)| (&n[..], &v[..])))
}

/// A client connection carrying one request with `headers` on stream 1.
fn one_request(headers: &Headers) -> BytesMut {
    let mut client = loona_hpack::Encoder::new();
    let mut input = preface();
    headers_frame(&mut input, 1, &encode(&mut client, headers));
    input
}

/// Runs `input` through a fresh rewriter in one call.
fn run(input: &[u8]) -> Result<(BytesMut, Rewriter), RewriteError> {
    let mut r = Rewriter::new();
    let mut inp = BytesMut::from(input);
    let mut out = BytesMut::new();
    r.process(&mut inp, &mut out)?;
    assert!(inp.is_empty(), "every whole frame is consumed");
    Ok((out, r))
}

/// The server's view: splits `bytes` (after the preface) into frames and
/// decodes each header block with one decoder, as h2 does.
struct Server {
    decoder: loona_hpack::Decoder<'static>,
}

#[derive(Debug, PartialEq)]
struct Request {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    headers: Headers,
}

impl Server {
    fn new() -> Self {
        Self {
            decoder: loona_hpack::Decoder::new(),
        }
    }

    /// Every header block in `bytes`, and every other frame's (type, payload).
    fn read(&mut self, mut bytes: &[u8]) -> (Vec<Request>, Vec<(u8, Vec<u8>)>) {
        if bytes.starts_with(PREFACE) {
            bytes = &bytes[PREFACE.len()..];
        }
        let mut requests = Vec::new();
        let mut others = Vec::new();
        let mut open: Option<(Request, Vec<u8>)> = None;
        while !bytes.is_empty() {
            let len = (bytes[0] as usize) << 16 | (bytes[1] as usize) << 8 | bytes[2] as usize;
            let (kind, flags) = (bytes[3], bytes[4]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            let payload = &bytes[HEAD..HEAD + len];
            assert!(
                len <= EMIT_FRAME,
                "no frame over the minimum max frame size"
            );
            bytes = &bytes[HEAD + len..];
            match kind {
                HEADERS => {
                    assert!(open.is_none());
                    assert_eq!(flags & PADDED, 0, "our frames are not padded");
                    let (priority, block) = if flags & PRIORITY != 0 {
                        (Some(payload[..5].try_into().unwrap()), &payload[5..])
                    } else {
                        (None, payload)
                    };
                    let req = Request {
                        stream,
                        end_stream: flags & END_STREAM != 0,
                        priority,
                        headers: vec![],
                    };
                    open = Some((req, block.to_vec()));
                }
                CONTINUATION => open.as_mut().unwrap().1.extend_from_slice(payload),
                _ => {
                    assert!(open.is_none());
                    others.push((kind, payload.to_vec()));
                    continue;
                }
            }
            if flags & END_HEADERS != 0 {
                let (mut req, block) = open.take().unwrap();
                req.headers = self.decoder.decode(&block).unwrap();
                requests.push(req);
            }
        }
        assert!(open.is_none(), "no header block left open");
        (requests, others)
    }
}

#[test]
fn grpc_c_core_percent_encoded_socket_path_is_removed() {
    let sent = grpc_headers(Some("run%2Fmeshid%2Fagent.sock"));
    let (out, r) = run(&one_request(&sent)).unwrap();
    let (reqs, others) = Server::new().read(&out);
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].headers,
        without_authority(&sent),
        "everything else kept, in order"
    );
    assert_eq!(reqs[0].stream, 1);
    assert_eq!(others, vec![(0x4, vec![])], "SETTINGS passes");
    assert_eq!(r.rewritten(), 1);
}

#[test]
fn raw_socket_paths_and_other_unparsable_authorities_are_removed() {
    for bad in [
        "/run/meshid/agent.sock",
        "%2Ftmp%2Fx.sock",
        "a b",
        "[::1",
        "x/y",
    ] {
        let sent = grpc_headers(Some(bad));
        let (out, _) = run(&one_request(&sent)).unwrap();
        let (reqs, _) = Server::new().read(&out);
        assert_eq!(reqs[0].headers, without_authority(&sent), "{bad}");
    }
}

#[test]
fn authorities_h2_accepts_pass_byte_for_byte() {
    for good in [
        Some("localhost"),
        Some("127.0.0.1:15012"),
        Some("meshid-ca.meshid-system.svc:15012"),
        Some("[::1]:80"),
        None,
    ] {
        let sent = grpc_headers(good);
        let mut client = loona_hpack::Encoder::new();
        let mut input = preface();
        for stream in [1, 3, 5] {
            headers_frame(&mut input, stream, &encode(&mut client, &sent));
            head(&mut input, 5, 0x0, END_STREAM, stream);
            input.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
        let (out, r) = run(&input).unwrap();
        assert_eq!(&out[..], &input[..], "{good:?}");
        assert_eq!(r.rewritten(), 0);
    }
}

#[test]
fn later_requests_that_index_the_removed_authority_keep_decoding_right() {
    // The client's encoder puts `:authority` and the custom header into its
    // dynamic table on the first request and indexes them afterwards: the
    // server must still decode every request right, without the authority.
    let mut client = loona_hpack::Encoder::new();
    let mut input = preface();
    let mut expected = Vec::new();
    for (i, stream) in [1u32, 3, 5, 7].into_iter().enumerate() {
        let mut sent = grpc_headers(Some("run%2Fmeshid%2Fagent.sock"));
        sent.push((b"x-request".to_vec(), format!("n{i}").into_bytes()));
        if i == 2 {
            // A request that needs no change, after one that did.
            sent.remove(2);
        }
        headers_frame(&mut input, stream, &encode(&mut client, &sent));
        expected.push(without_authority(&sent));
    }
    let (out, r) = run(&input).unwrap();
    let (reqs, _) = Server::new().read(&out);
    let got: Vec<Headers> = reqs.into_iter().map(|r| r.headers).collect();
    assert_eq!(got, expected);
    assert_eq!(
        r.rewritten(),
        4,
        "every block after the first change is re-encoded"
    );
}

#[test]
fn padding_priority_and_continuation_frames_are_understood() {
    let sent = grpc_headers(Some("run%2Fmeshid%2Fagent.sock"));
    let mut client = loona_hpack::Encoder::new();
    let block = encode(&mut client, &sent);
    let (a, b) = block.split_at(block.len() / 2);
    let mut input = preface();
    // HEADERS: PADDED (3 bytes) + PRIORITY + END_STREAM, first half; then CONTINUATION.
    let prio = [0x80, 0, 0, 0x01, 200];
    head(
        &mut input,
        1 + 5 + a.len() + 3,
        HEADERS,
        PADDED | PRIORITY | END_STREAM,
        9,
    );
    input.put_u8(3);
    input.extend_from_slice(&prio);
    input.extend_from_slice(a);
    input.extend_from_slice(&[0, 0, 0]);
    head(&mut input, b.len(), CONTINUATION, END_HEADERS, 9);
    input.extend_from_slice(b);
    let (out, _) = run(&input).unwrap();
    let (reqs, _) = Server::new().read(&out);
    assert_eq!(
        reqs,
        vec![Request {
            stream: 9,
            end_stream: true,
            priority: Some(prio),
            headers: without_authority(&sent),
        }]
    );
}

#[test]
fn a_rewritten_block_larger_than_a_frame_is_split_into_continuations() {
    let mut sent = grpc_headers(Some("run%2Fmeshid%2Fagent.sock"));
    sent.push((b"x-big".to_vec(), vec![b'v'; 40_000]));
    let mut client = loona_hpack::Encoder::new();
    let block = encode(&mut client, &sent);
    let mut input = preface();
    let mut chunks = block.chunks(EMIT_FRAME).peekable();
    let first = chunks.next().unwrap();
    head(&mut input, first.len(), HEADERS, 0, 1);
    input.extend_from_slice(first);
    while let Some(c) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_HEADERS
        } else {
            0
        };
        head(&mut input, c.len(), CONTINUATION, flags, 1);
        input.extend_from_slice(c);
    }
    let (out, _) = run(&input).unwrap();
    let (reqs, _) = Server::new().read(&out);
    assert_eq!(reqs[0].headers, without_authority(&sent));
}

#[test]
fn anything_that_is_not_http2_with_prior_knowledge_passes_untouched() {
    let input = b"GET / HTTP/1.1\r\nHost: run%2Fx.sock\r\n\r\n";
    let (out, r) = run(input).unwrap();
    assert_eq!(&out[..], &input[..]);
    assert_eq!(r.passthrough_budget(), Some(usize::MAX));
    // A client that stops half-way through the preface is left to the server.
    let (out, _) = run(&PREFACE[..10]).unwrap();
    assert_eq!(&out[..], &PREFACE[..10]);
}

proptest! {
    /// However the transport cuts the bytes, the server reads the same thing.
    #[test]
    fn output_does_not_depend_on_how_reads_are_cut(cuts in proptest::collection::vec(1usize..200, 1..40)) {
        let mut client = loona_hpack::Encoder::new();
        let mut input = preface();
        for stream in [1u32, 3] {
            let sent = grpc_headers(Some("run%2Fmeshid%2Fagent.sock"));
            headers_frame(&mut input, stream, &encode(&mut client, &sent));
            head(&mut input, 300, 0x0, END_STREAM, stream);
            input.extend_from_slice(&[7u8; 300]);
        }
        let (whole, _) = run(&input).unwrap();

        let mut r = Rewriter::new();
        let mut pending = BytesMut::new();
        let mut out = BytesMut::new();
        let mut rest = &input[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            i += 1;
            let chunk = &rest[..n];
            rest = &rest[n..];
            // Sometimes the caller reads straight through, as AuthorityRepair does.
            match r.passthrough_budget() {
                Some(budget) if pending.is_empty() => {
                    let direct = budget.min(chunk.len());
                    out.extend_from_slice(&chunk[..direct]);
                    r.passed_through(direct);
                    pending.extend_from_slice(&chunk[direct..]);
                }
                _ => pending.extend_from_slice(chunk),
            }
            r.process(&mut pending, &mut out).unwrap();
        }
        prop_assert_eq!(&out[..], &whole[..]);
    }

    /// Garbage after the preface is refused or passed, never a panic.
    #[test]
    fn arbitrary_frames_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut input = BytesMut::from(PREFACE);
        input.extend_from_slice(&tail);
        let mut r = Rewriter::new();
        let mut out = BytesMut::new();
        let _ = r.process(&mut input, &mut out);
    }
}

#[test]
fn a_frame_inside_a_header_block_is_refused() {
    let mut input = preface();
    head(&mut input, 1, HEADERS, 0, 1);
    input.put_u8(0x82);
    head(&mut input, 0, 0x4, 0, 0); // SETTINGS inside the block
    assert_eq!(
        run(&input).unwrap_err(),
        RewriteError::InsideHeaderBlock { frame_type: 0x4 }
    );
    // A CONTINUATION of another stream is refused too.
    let mut input = preface();
    head(&mut input, 1, HEADERS, 0, 1);
    input.put_u8(0x82);
    head(&mut input, 1, CONTINUATION, END_HEADERS, 3);
    input.put_u8(0x84);
    assert_eq!(
        run(&input).unwrap_err(),
        RewriteError::InsideHeaderBlock {
            frame_type: CONTINUATION
        }
    );
}

#[test]
fn a_continuation_without_headers_and_a_client_push_promise_are_refused() {
    let mut input = preface();
    head(&mut input, 1, CONTINUATION, END_HEADERS, 1);
    input.put_u8(0x82);
    assert_eq!(run(&input).unwrap_err(), RewriteError::StrayContinuation);
    let mut input = preface();
    head(&mut input, 4, PUSH_PROMISE, END_HEADERS, 1);
    input.extend_from_slice(&[0, 0, 0, 2]);
    assert_eq!(run(&input).unwrap_err(), RewriteError::PushPromise);
}

#[test]
fn padding_longer_than_the_frame_is_refused() {
    let mut input = preface();
    head(&mut input, 2, HEADERS, PADDED | END_HEADERS, 1);
    input.extend_from_slice(&[5, 0x82]);
    assert_eq!(run(&input).unwrap_err(), RewriteError::Padding);
    let mut input = preface();
    head(&mut input, 3, HEADERS, PRIORITY | END_HEADERS, 1);
    input.extend_from_slice(&[0, 0, 0]);
    assert_eq!(run(&input).unwrap_err(), RewriteError::Padding);
}

#[test]
fn an_oversized_header_block_is_refused_before_it_is_buffered() {
    let mut r = Rewriter::new();
    let mut input = preface();
    // A HEADERS frame announcing more than MAX_BLOCK: refused on its 9-byte
    // header, without waiting for (or holding) its payload.
    head(&mut input, MAX_BLOCK, HEADERS, 0, 1);
    let mut out = BytesMut::new();
    assert_eq!(
        r.process(&mut input, &mut out).unwrap_err(),
        RewriteError::BlockTooLarge
    );
    // Many CONTINUATIONs that add up past it are refused too.
    let mut input = preface();
    head(&mut input, 10_000, HEADERS, 0, 1);
    input.extend_from_slice(&[0x82; 10_000]);
    for _ in 0..7 {
        head(&mut input, 10_000, CONTINUATION, 0, 1);
        input.extend_from_slice(&[0x82; 10_000]);
    }
    assert_eq!(run(&input).unwrap_err(), RewriteError::BlockTooLarge);
}

#[test]
fn indexed_fields_that_expand_past_the_decoded_bound_are_refused() {
    // One 4,000-byte entry in the dynamic table, then indexed 20 times:
    // a 21-byte block would decode to 80 KB.
    let mut block = BytesMut::new();
    block.put_u8(0x40);
    encode_string(b"x-bomb", &mut block);
    encode_string(&[b'a'; 4_000], &mut block);
    for _ in 0..20 {
        block.put_u8(0x80 | 62);
    }
    let mut input = preface();
    headers_frame(&mut input, 1, &block);
    assert_eq!(run(&input).unwrap_err(), RewriteError::DecodedTooLarge);
}

#[test]
fn a_table_size_above_what_the_server_advertises_is_refused() {
    let mut block = BytesMut::new();
    encode_integer(65_536, 5, 0x20, &mut block);
    block.put_u8(0x82);
    let mut input = preface();
    headers_frame(&mut input, 1, &block);
    assert!(matches!(run(&input).unwrap_err(), RewriteError::Hpack(_)));
}

#[test]
fn integers_encode_as_rfc_7541_shows() {
    // RFC 7541 C.1.1 and C.1.2.
    let mut b = BytesMut::new();
    encode_integer(10, 5, 0, &mut b);
    assert_eq!(&b[..], &[0x0a]);
    let mut b = BytesMut::new();
    encode_integer(1337, 5, 0, &mut b);
    assert_eq!(&b[..], &[31, 154, 10]);
}
