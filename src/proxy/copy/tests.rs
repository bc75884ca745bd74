use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::proxy::buffers::held_here;

/// Both directions arrive intact, each end sees the other's end of stream,
/// and the counts are the bytes moved each way.
#[tokio::test(flavor = "current_thread")]
async fn copies_both_ways_and_passes_each_end_of_stream_on() {
    let (mut client, mut proxy_client) = tokio::io::duplex(4096);
    let (mut proxy_server, mut server) = tokio::io::duplex(4096);
    let copying =
        tokio::spawn(async move { copy_bidirectional(&mut proxy_client, &mut proxy_server).await });
    let up: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let down: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let (up2, down2) = (up.clone(), down.clone());
    let client_side = tokio::spawn(async move {
        client.write_all(&up2).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, up);
    server.write_all(&down2).await.unwrap();
    server.shutdown().await.unwrap();
    assert_eq!(client_side.await.unwrap(), down);
    let (there, back) = copying.await.unwrap().unwrap();
    assert_eq!((there, back), (up.len() as u64, down.len() as u64));
}

/// An idle proxied connection holds no buffer: one is borrowed only while
/// bytes are in flight.
#[tokio::test(flavor = "current_thread")]
async fn an_idle_connection_holds_no_buffer() {
    let (mut client, mut proxy_client) = tokio::io::duplex(64);
    let (mut proxy_server, mut server) = tokio::io::duplex(64);
    let before = held_here();
    let copying =
        tokio::spawn(async move { copy_bidirectional(&mut proxy_client, &mut proxy_server).await });
    client.write_all(b"ping").await.unwrap();
    let mut got = [0; 4];
    server.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");
    // Let the copy task run until it waits on both reads again.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        held_here(),
        before,
        "an idle connection still holds a buffer"
    );
    drop(client);
    drop(server);
    let _ = copying.await.unwrap();
}

/// A write the peer cannot take keeps its buffer (the bytes are in flight),
/// and nothing is lost when it drains.
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_writer_keeps_its_bytes() {
    let (mut client, mut proxy_client) = tokio::io::duplex(1 << 20);
    let (mut proxy_server, mut server) = tokio::io::duplex(16);
    let before = held_here();
    let copying =
        tokio::spawn(async move { copy_bidirectional(&mut proxy_client, &mut proxy_server).await });
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    client.write_all(&data).await.unwrap();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        held_here() > before,
        "bytes in flight must keep their buffer"
    );
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, data);
    drop(server);
    drop(client);
    let _ = copying.await.unwrap();
}
