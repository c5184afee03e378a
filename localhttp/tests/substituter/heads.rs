//! Request heads (the request line and headers): one trickled in is closed at the stall limit
//! however its bytes keep coming; one that grows past the bound is closed at once, and a
//! large one within it is served.

use std::time::{Duration, Instant};

use nixmesh_localhttp::http1::MAX_HEAD_BYTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

/// Waits for the server to close `reader`'s connection (its end, or an error): when, or
/// `None` within `limit`.
async fn closed_within(reader: &mut (impl AsyncReadExt + Unpin), limit: Duration) -> Option<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let closed = async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, closed).await.ok()
}

#[tokio::test]
async fn a_head_trickled_in_is_closed_at_the_stall_limit() {
    let fixture = Fixture::new();
    let stall = Duration::from_secs(1);
    let config = nixmesh_localhttp::Config { client_stall_timeout: stall, ..test_config(&fixture) };
    let addr = start(TestSource::honest(&fixture), config).await;
    let socket = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let (mut reader, mut writer) = socket.into_split();
    // A header line every 200 ms, each well within the stall limit of the one before, for at
    // most five stall limits.
    let trickle = tokio::spawn(async move {
        writer.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\n").await?;
        for i in 0..25 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.write_all(format!("X-Line-{i}: still coming\r\n").as_bytes()).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let closed = closed_within(&mut reader, stall * 5).await;
    let took = started.elapsed();
    trickle.abort();
    assert!(closed.is_some(), "a trickled head still open after {took:?}");
    assert!(took >= stall - Duration::from_millis(100), "closed before the stall limit: {took:?}");
    assert!(took < stall + Duration::from_secs(2), "closed {took:?} after it began");
    // The server goes on serving.
    assert_eq!(get(addr, "/nix-cache-info").await.status, 200);
}

#[tokio::test]
async fn a_head_past_the_bound_is_closed_at_once_and_one_within_it_is_served() {
    let fixture = Fixture::new();
    let stall = Duration::from_secs(10);
    let config = nixmesh_localhttp::Config { client_stall_timeout: stall, ..test_config(&fixture) };
    let addr = start(TestSource::honest(&fixture), config).await;

    // 400 kB of a header that never ends: closed long before the stall limit.
    let socket = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = socket.into_split();
    let started = Instant::now();
    let endless = tokio::spawn(async move {
        writer.write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\nX-Big: ").await?;
        writer.write_all(&vec![b'a'; 400_000]).await
    });
    let closed = closed_within(&mut reader, Duration::from_secs(5)).await;
    endless.abort();
    assert!(closed.is_some(), "a head of 400 kB still open after {:?}", started.elapsed());

    // A head just within the bound is a request like any other.
    let filler = "a".repeat(MAX_HEAD_BYTES - 1024);
    let head = format!(
        "GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\nX-Big: {filler}\r\n\
         Connection: close\r\n\r\n"
    );
    let reply = send_raw(addr, head.as_bytes()).await.expect("a response");
    assert_eq!(reply.status, 200);
}

#[tokio::test]
async fn heads_on_a_kept_alive_connection_are_each_counted_on_their_own() {
    let fixture = Fixture::new();
    let addr = start(TestSource::honest(&fixture), test_config(&fixture)).await;
    let mut socket = TcpStream::connect(addr).await.unwrap();
    // Three times the bound in all, each head a twentieth of it.
    let filler = "a".repeat(MAX_HEAD_BYTES / 20);
    let head =
        format!("GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\nX-Some: {filler}\r\n\r\n");
    let mut received = Vec::new();
    for i in 0..60 {
        socket.write_all(head.as_bytes()).await.unwrap();
        let mut buf = [0u8; 4096];
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                assert!(n > 0, "request {i}: the connection was closed");
                received.extend_from_slice(&buf[..n]);
                // Each answer's body ends with the cache's priority line.
                if received.ends_with(b"Priority: 10\n") {
                    break;
                }
            }
        });
        answered.await.expect("an answer within 5 s");
        assert!(received.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&received));
        received.clear();
    }
}
