//! What the `:authority` repair in front of the CA and agent servers costs
//! per request: a connection of 1,000 CA requests (token, CSR-sized DATA)
//! through a `Rewriter`, once with a valid authority (passed byte for byte:
//! grpc-go, ztunnel, our agent) and once with gRPC C-core's percent-encoded
//! socket path (every block re-encoded).
//!
//! `cargo bench --bench h2_authority`

// A load generator measures the real clock.
#![allow(clippy::disallowed_methods)]

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshid::h2_authority::Rewriter;

const REQUESTS: u32 = 1_000;

fn frame(out: &mut BytesMut, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.put_uint(payload.len() as u64, 3);
    out.put_u8(kind);
    out.put_u8(flags);
    out.put_u32(stream);
    out.extend_from_slice(payload);
}

/// The client side of one connection: preface, SETTINGS, then `REQUESTS`
/// CreateCertificate calls, each HEADERS + one DATA frame.
fn connection(authority: &str) -> BytesMut {
    let mut enc = loona_hpack::Encoder::new();
    let token = format!("Bearer {}", "e".repeat(900));
    let mut out = BytesMut::from(&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]);
    frame(&mut out, 0x4, 0, 0, &[]);
    for i in 0..REQUESTS {
        let stream = 2 * i + 1;
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (
                b":path",
                b"/istio.v1.auth.IstioCertificateService/CreateCertificate",
            ),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"authorization", token.as_bytes()),
            (b"clusterid", b"Kubernetes"),
        ];
        frame(&mut out, 0x1, 0x4, stream, &enc.encode(headers));
        frame(&mut out, 0x0, 0x1, stream, &[0x30; 600]);
    }
    out
}

fn per_request(c: &mut Criterion) {
    let mut group = c.benchmark_group("h2_authority");
    group.throughput(Throughput::Elements(u64::from(REQUESTS)));
    for (name, authority) in [
        ("passthrough", "meshid-ca.meshid-system.svc:15012"),
        ("c_core_rewrite", "tmp%2Fmeshid%2Fagent.sock"),
    ] {
        let input = connection(authority);
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut r = Rewriter::new();
                let mut inp = input.clone();
                let mut out = BytesMut::with_capacity(input.len() * 2);
                r.process(&mut inp, &mut out).expect("valid HTTP/2");
                black_box(out.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_request);
criterion_main!(benches);
