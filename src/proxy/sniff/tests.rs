use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use rustls::crypto::ring::default_provider;
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

/// The first flight of a real rustls client, captured at test time.
fn client_hello(versions: &[&'static rustls::SupportedProtocolVersion]) -> Vec<u8> {
    let config = ClientConfig::builder_with_provider(Arc::new(default_provider()))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let name = "backend.example".try_into().unwrap();
    let mut conn = ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

fn hellos() -> Vec<Vec<u8>> {
    vec![
        client_hello(rustls::DEFAULT_VERSIONS),
        client_hello(&[&rustls::version::TLS13]),
        client_hello(&[&rustls::version::TLS12]),
    ]
}

#[test]
fn rustls_client_hello_is_tls() {
    for hello in hellos() {
        assert_eq!(sniff(&hello), Sniffed::Tls);
        assert_eq!(sniff(&hello[..SNIFF_BYTES]), Sniffed::Tls);
    }
}

#[test]
fn every_split_point_of_a_client_hello_needs_more_then_is_tls() {
    for hello in hellos() {
        for split in 0..hello.len() {
            let expected = if split < SNIFF_BYTES {
                Sniffed::NeedMore
            } else {
                Sniffed::Tls
            };
            assert_eq!(sniff(&hello[..split]), expected, "prefix of {split} bytes");
        }
    }
}

#[test]
fn empty_input_needs_more() {
    assert_eq!(sniff(&[]), Sniffed::NeedMore);
}

#[test]
fn http1_request_is_plaintext() {
    assert_eq!(
        sniff(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
        Sniffed::Plaintext
    );
    assert_eq!(sniff(b"G"), Sniffed::Plaintext);
}

#[test]
fn http2_preface_and_ssh_banner_are_plaintext() {
    assert_eq!(
        sniff(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        Sniffed::Plaintext
    );
    assert_eq!(sniff(b"SSH-2.0-OpenSSH_9.6\r\n"), Sniffed::Plaintext);
}

#[test]
fn garbage_that_looks_a_little_like_tls_is_plaintext() {
    let hello = client_hello(rustls::DEFAULT_VERSIONS);
    let with = |index: usize, byte: u8| {
        let mut bytes = hello.clone();
        bytes[index] = byte;
        bytes
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("record version 3.9", vec![0x16, 0x03, 0x09, 0x00, 0x40]),
        ("record major 2", vec![0x16, 0x02, 0x01]),
        ("record major 0x16", vec![0x16, 0x16, 0x16, 0x16]),
        ("handshake type ServerHello", with(5, 0x02)),
        ("handshake type 0", vec![0x16, 0x03, 0x01, 0x00, 0x40, 0x00]),
        (
            "zero-length record",
            vec![0x16, 0x03, 0x01, 0x00, 0x00, 0x01],
        ),
        (
            "record shorter than a header",
            vec![0x16, 0x03, 0x01, 0x00, 0x03],
        ),
        (
            "record longer than 2^14 + 2048",
            vec![0x16, 0x03, 0x03, 0x48, 0x01],
        ),
        ("record 0xffff", vec![0x16, 0x03, 0x01, 0xff, 0xff]),
        (
            "hello too short to be one",
            vec![0x16, 0x03, 0x01, 0x00, 0x2c, 0x01, 0x00, 0x00, 0x28],
        ),
        (
            "hello absurdly long",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0xff, 0xff, 0xff],
        ),
        (
            "record longer than the hello it holds",
            vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x00, 0x40],
        ),
    ];
    for (name, bytes) in cases {
        assert_eq!(sniff(&bytes), Sniffed::Plaintext, "{name}");
    }
}

#[test]
fn largest_record_and_fragmented_hello_are_tls() {
    // A 20 000-byte hello in a full first record: legal, fragmented.
    let full = [0x16, 0x03, 0x03, 0x48, 0x00, 0x01, 0x00, 0x4e, 0x20];
    assert_eq!(sniff(&full), Sniffed::Tls);
    // The smallest possible hello in its own record.
    let smallest = [0x16, 0x03, 0x00, 0x00, 0x2d, 0x01, 0x00, 0x00, 0x29];
    assert_eq!(sniff(&smallest), Sniffed::Tls);
}

proptest! {
    #[test]
    fn sniff_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = sniff(&bytes);
    }

    #[test]
    fn a_decision_never_changes_with_more_bytes(
        bytes in proptest::collection::vec(any::<u8>(), 0..16),
        more in proptest::collection::vec(any::<u8>(), 0..16),
    ) {
        let first = sniff(&bytes);
        let mut longer = bytes.clone();
        longer.extend_from_slice(&more);
        if first != Sniffed::NeedMore {
            prop_assert_eq!(sniff(&longer), first);
        }
        if bytes.len() >= SNIFF_BYTES {
            prop_assert_ne!(first, Sniffed::NeedMore);
        }
    }

    #[test]
    fn prefixes_of_tls_input_are_never_plaintext(
        header in (0u8..=4, 4usize..=18432, 41usize..=131_396),
        tail in proptest::collection::vec(any::<u8>(), 0..32),
    ) {
        let (minor, record_len, hello_len) = header;
        let mut bytes = vec![0x16, 0x03, minor];
        bytes.extend_from_slice(&u16::try_from(record_len).unwrap().to_be_bytes());
        bytes.push(0x01);
        bytes.extend_from_slice(&u32::try_from(hello_len).unwrap().to_be_bytes()[1..]);
        bytes.extend_from_slice(&tail);
        let verdict = sniff(&bytes);
        prop_assert_eq!(verdict, if hello_len + 4 >= record_len { Sniffed::Tls } else { Sniffed::Plaintext });
        if verdict == Sniffed::Tls {
            for end in 0..bytes.len() {
                prop_assert_ne!(sniff(&bytes[..end]), Sniffed::Plaintext);
            }
        }
    }
}

async fn accepted_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

#[tokio::test]
async fn peek_sees_a_client_hello_sent_one_byte_at_a_time_and_consumes_nothing() {
    let hello = client_hello(rustls::DEFAULT_VERSIONS);
    let (mut client, mut server) = accepted_pair().await;
    client.set_nodelay(true).unwrap();
    let sent = hello.clone();
    let writer = tokio::spawn(async move {
        for byte in &sent[..SNIFF_BYTES + 2] {
            client.write_all(&[*byte]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        client.write_all(&sent[SNIFF_BYTES + 2..]).await.unwrap();
        client
    });
    let verdict = peek_first_bytes(&server, Duration::from_secs(5)).await;
    assert_eq!(verdict.unwrap(), Sniffed::Tls);
    let _client = writer.await.unwrap();
    let mut received = vec![0u8; hello.len()];
    server.read_exact(&mut received).await.unwrap();
    assert_eq!(received, hello, "peeking must not consume the ClientHello");
}

#[tokio::test]
async fn peek_classifies_http_as_plaintext_at_once() {
    let (mut client, server) = accepted_pair().await;
    client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let verdict = peek_first_bytes(&server, Duration::from_secs(5)).await;
    assert_eq!(verdict.unwrap(), Sniffed::Plaintext);
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_plaintext_after_the_wait() {
    let (_client, server) = accepted_pair().await;
    let started = tokio::time::Instant::now();
    let verdict = peek_first_bytes(&server, Duration::from_millis(100)).await;
    assert_eq!(verdict.unwrap(), Sniffed::Plaintext);
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn a_partial_hello_then_silence_is_plaintext_after_the_wait() {
    let (mut client, server) = accepted_pair().await;
    client.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let verdict = peek_first_bytes(&server, Duration::from_millis(100)).await;
    assert_eq!(verdict.unwrap(), Sniffed::Plaintext);
}

#[tokio::test]
async fn a_client_that_closes_at_once_is_plaintext_without_waiting() {
    let (client, server) = accepted_pair().await;
    drop(client);
    let verdict = peek_first_bytes(&server, Duration::from_secs(30));
    let verdict = tokio::time::timeout(Duration::from_secs(5), verdict).await;
    assert_eq!(verdict.unwrap().unwrap(), Sniffed::Plaintext);
}
