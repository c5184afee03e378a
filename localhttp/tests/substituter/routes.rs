//! `/nix-cache-info`, the `/_nixmesh/*` JSON, malformed requests, limits and shutdown.

use std::time::Duration;

use nixmesh_localhttp::{NodeStatus, NodeView, PeerSummary, router, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::*;

#[tokio::test]
async fn nix_cache_info() {
    let fixture = Fixture::new();
    let config = nixmesh_localhttp::Config { priority: 30, ..test_config(&fixture) };
    let addr = start(TestSource::honest(&fixture), config).await;
    let reply = get(addr, "/nix-cache-info").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("text/x-nix-cache-info"));
    assert_eq!(reply.text(), "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n");
}

#[tokio::test]
async fn peers_and_status_as_json() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let reply = get(addr, "/_nixmesh/peers").await;
    assert_eq!((reply.status, reply.header("content-type")), (200, Some("application/json")));
    let peers: Vec<PeerSummary> = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(peers, source.peers());
    let reply = get(addr, "/_nixmesh/status").await;
    assert_eq!(reply.status, 200);
    let status: NodeStatus = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(status, source.status());
}

#[tokio::test]
async fn malformed_requests_are_4xx_and_the_server_carries_on() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let hash = fixture.hash().to_string();
    let nar_hash = fixture.narinfo.nar_hash.to_nixbase32();
    let long = format!("/{}.narinfo", "a".repeat(9000));
    let targets = [
        "/x.narinfo".to_owned(),
        format!("/{}.narinfo", &hash[..31]),
        format!("/{hash}a.narinfo"),
        format!("/{}.narinfo", hash.to_uppercase()),
        format!("/%30{}.narinfo", &hash[1..]),
        format!("//{hash}.narinfo"),
        format!("/{hash}.narinfo/"),
        format!("/{hash}"),
        "/nar/../x".to_owned(),
        "/nar/%2e%2e/x".to_owned(),
        "/nar/%2e%2e%2fnix-cache-info".to_owned(),
        format!("/nar/../{hash}-{nar_hash}.nar"),
        format!("/nar//{hash}-{nar_hash}.nar"),
        format!("/nar/{hash}-{nar_hash}.nar.xz"),
        format!("/nar/{hash}-{nar_hash}"),
        format!("/nar/{hash}.nar"),
        "/nar/".to_owned(),
        "/nar".to_owned(),
        "/_nixmesh".to_owned(),
        "/_nixmesh/".to_owned(),
        "/_nixmesh/peers/x".to_owned(),
        "/".to_owned(),
        long,
    ];
    for target in &targets {
        let reply = get(addr, target).await;
        assert!((400..500).contains(&reply.status), "{target}: {}", reply.status);
    }
    for raw in [
        b"GET /\xff\xfe.narinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".as_slice(),
        b"GET nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"BREW /nix-cache-info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        b"\x00\x01\x02\r\n\r\n",
    ] {
        if let Some(reply) = send_raw(addr, raw).await {
            assert!((400..500).contains(&reply.status), "{raw:?}: {}", reply.status);
        }
    }
    assert_eq!(request(addr, "POST", &fixture.narinfo_url()).await.status, 405);
    assert_eq!(get(addr, &format!("/{}.narinfo", "a".repeat(9000))).await.status, 414);
    assert_eq!(source.narinfo_calls(), 0);
    assert_eq!(get(addr, "/nix-cache-info").await.status, 200);
    assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 200);
}

#[tokio::test]
async fn a_nar_body_holds_its_nar_permit_and_nothing_else_waits_for_it() {
    let fixture = Fixture::new();
    let stalls = TestPeer {
        name: "peer",
        narinfo: NarInfoReply::Text(fixture.narinfo.to_string()),
        nar: NarReply::ChunksThenStall(chunked(&fixture.nar[..10_000])),
    };
    let config = nixmesh_localhttp::Config {
        max_concurrent_requests: 1,
        max_concurrent_nars: 1,
        nar_idle_timeout: Duration::from_millis(500),
        ..test_config(&fixture)
    };
    let source = TestSource::new(&fixture, vec![stalls]);
    let addr = start(source.clone(), config).await;
    let nar = tokio::spawn(async move { get(addr, &Fixture::new().nar_url()).await });
    // Wait (polling, bounded) until the download has started and so holds the only permit.
    for _ in 0..500 {
        if !source.nar_calls().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!source.nar_calls().is_empty(), "the NAR download never started");
    // Other requests do not wait for NARs...
    let info = get(addr, "/nix-cache-info").await;
    assert_eq!(info.status, 200);
    assert!(info.elapsed < Duration::from_millis(200), "{:?}", info.elapsed);
    // ...a second NAR does, until the first ends (its peer stalled past the idle timeout).
    let second = get(addr, &fixture.nar_url()).await;
    assert!(!nar.await.unwrap().complete());
    assert!(second.elapsed >= Duration::from_millis(200), "{:?}", second.elapsed);
}

#[tokio::test]
async fn serve_stops_on_the_shutdown_signal() {
    let fixture = Fixture::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        router(
            TestSource::honest(&fixture),
            TestSource::honest(&fixture),
            Default::default(),
            test_config(&fixture),
            Default::default(),
        ),
        test_config(&fixture).client_stall_timeout,
        async move {
            let _ = stopped.await;
        },
    ));
    assert_eq!(get(addr, "/nix-cache-info").await.status, 200);
    stop.send(()).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), server).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_its_permit_comes_back() {
    let fixture = Fixture::new();
    // Far more than the sockets buffer, so the server's writes stall.
    let big: Vec<u8> =
        (0..32u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let narinfo = narinfo_for(PATH, &big, &fixture.key);
    let peer = TestPeer {
        name: "peer",
        narinfo: NarInfoReply::Text(narinfo.to_string()),
        nar: NarReply::Chunks(chunked(&big)),
    };
    let stall = Duration::from_millis(500);
    let config = nixmesh_localhttp::Config {
        max_concurrent_nars: 1,
        client_stall_timeout: stall,
        ..test_config(&fixture)
    };
    let source = TestSource::new(&fixture, vec![peer]);
    let addr = start(source.clone(), config).await;

    // A connection that says nothing is closed once the limit has passed.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut byte)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the idle connection was closed: {closed:?}");

    // A download whose client never reads is cut off once the limit has passed.
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let url = format!("/nar/{}-{}.nar", fixture.hash(), narinfo.nar_hash.to_nixbase32());
    let head = format!("GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stalled.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..500 {
        if !source.nar_calls().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!source.nar_calls().is_empty(), "the NAR download never started");
    // The client reads nothing for three stall limits (the stimulus, not a wait for a
    // condition); then what it can still read ends short of the NAR: its connection is gone.
    tokio::time::sleep(stall * 3).await;
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stalled.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the stalled connection was closed");
    assert!(received < big.len(), "{received} bytes: the download did not complete");
    // Its permit, the only one, came back: another download gets it.
    let again = get(addr, &url).await;
    assert_eq!(again.status, 200);
}

/// A NAR of 32 MiB (far more than the sockets buffer) and the path serving it.
fn big_nar(fixture: &Fixture) -> (Vec<u8>, nixmesh_protocol::NarInfo) {
    let big: Vec<u8> =
        (0..32u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let narinfo = narinfo_for(PATH, &big, &fixture.key);
    (big, narinfo)
}

/// Sends a NAR request and reads only up to the end of the response's headers (and whatever
/// came with them): the stream, and the body bytes already read.
async fn start_and_stall(addr: std::net::SocketAddr, url: &str) -> (tokio::net::TcpStream, usize) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the headers");
        got.extend_from_slice(&buf[..n]);
        if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
            return (stream, got.len() - at - 4);
        }
    }
}

/// Reads `stream` to its end or to `whole` body bytes (within 30 s): the body bytes,
/// counting `already` read.
async fn drain(stream: &mut tokio::net::TcpStream, already: usize, whole: usize) -> usize {
    let mut received = already;
    let mut buf = vec![0u8; 1 << 20];
    let drained = tokio::time::timeout(Duration::from_secs(30), async {
        while received < whole {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n,
            }
        }
    })
    .await;
    assert!(drained.is_ok(), "the download neither ended nor was cut off");
    received
}

#[tokio::test]
async fn a_download_whose_client_stops_reading_lets_go_of_the_peer_and_resumes_where_it_was() {
    let fixture = Fixture::new();
    let (big, narinfo) = big_nar(&fixture);
    let peer = TestPeer {
        name: "peer",
        narinfo: NarInfoReply::Text(narinfo.to_string()),
        nar: NarReply::Chunks(chunked(&big)),
    };
    let source = TestSource::new(&fixture, vec![peer]);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let url = format!("/nar/{}-{}.nar", fixture.hash(), narinfo.nar_hash.to_nixbase32());
    let (mut stalled, already) = start_and_stall(addr, &url).await;
    // The client takes nothing for three seconds (the stimulus; parking comes after one).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(source.nar_calls().len(), 1, "one transfer so far");
    // It reads again, and gets the whole NAR: the rest was asked for from where it stopped.
    let received = drain(&mut stalled, already, big.len()).await;
    assert_eq!(received, big.len(), "the whole NAR, once");
    let calls = source.nar_calls();
    assert!(calls.len() >= 2, "the transfer was parked and resumed: {calls:?}");
    assert!(calls[1].1 > 0, "resumed from an offset: {calls:?}");
}

#[tokio::test]
async fn a_download_waiting_for_a_slot_takes_that_of_a_client_that_stopped_reading() {
    let fixture = Fixture::new();
    let (big, narinfo) = big_nar(&fixture);
    let peer = TestPeer {
        name: "peer",
        narinfo: NarInfoReply::Text(narinfo.to_string()),
        nar: NarReply::Chunks(chunked(&big)),
    };
    let config = nixmesh_localhttp::Config { max_concurrent_nars: 1, ..test_config(&fixture) };
    let source = TestSource::new(&fixture, vec![peer]);
    let addr = start(source.clone(), config).await;
    let url = format!("/nar/{}-{}.nar", fixture.hash(), narinfo.nar_hash.to_nixbase32());
    let (mut stalled, already) = start_and_stall(addr, &url).await;
    // The client takes nothing for two seconds; then a second download wants the one slot.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = std::time::Instant::now();
    let second = get(addr, &url).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body.len(), big.len());
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(
        drain(&mut stalled, already, big.len()).await < big.len(),
        "the stalled one was cut off"
    );
}

#[tokio::test]
async fn a_download_whose_client_takes_nothing_past_the_nar_write_limit_is_cut_off() {
    let fixture = Fixture::new();
    let (big, narinfo) = big_nar(&fixture);
    let peer = TestPeer {
        name: "peer",
        narinfo: NarInfoReply::Text(narinfo.to_string()),
        nar: NarReply::Chunks(chunked(&big)),
    };
    let config = nixmesh_localhttp::Config {
        nar_client_stall_timeout: Duration::from_millis(1500),
        ..test_config(&fixture)
    };
    let source = TestSource::new(&fixture, vec![peer]);
    let addr = start(source.clone(), config).await;
    let url = format!("/nar/{}-{}.nar", fixture.hash(), narinfo.nar_hash.to_nixbase32());
    let (mut stalled, already) = start_and_stall(addr, &url).await;
    // Well past the write limit, and far short of the 60 s stall limit.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        drain(&mut stalled, already, big.len()).await < big.len(),
        "cut off at the write limit"
    );
}
