//! Byte ranges of `/nar/...` and `HEAD`: a part is exactly its bytes, read from the holder
//! from byte 0 and verified like the whole; a wrong NAR never hands out its last bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use nixmesh_localhttp::nar_range::MAX_HELD_PART;

use crate::support::*;

/// `GET path` with `headers` (each `Name: value`), as the client receives it.
async fn get_with(addr: SocketAddr, path: &str, headers: &[&str]) -> Option<Reply> {
    let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    let head =
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{extra}Connection: close\r\n\r\n");
    send_raw(addr, head.as_bytes()).await
}

async fn range(addr: SocketAddr, fixture: &Fixture, range: &str) -> Reply {
    let header = format!("Range: {range}");
    get_with(addr, &fixture.nar_url(), &[&header]).await.expect("a response")
}

/// A source whose one holder sends `nar` for the fixture's narinfo.
fn serving(fixture: &Fixture, nar: &[u8]) -> Arc<TestSource> {
    let peer = TestPeer {
        name: "holder",
        narinfo: NarInfoReply::Text(fixture.narinfo.to_string()),
        nar: NarReply::Chunks(chunked(nar)),
    };
    TestSource::new(fixture, vec![peer])
}

#[tokio::test]
async fn a_single_range_is_206_with_exactly_its_bytes() {
    let fixture = Fixture::new();
    let size = fixture.nar.len();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let cases = [
        ("bytes=0-99", 0..100),
        ("bytes=5000-70000", 5000..70_001),
        ("bytes=99999-", 99_999..size),
        ("bytes=0-", 0..size),
        ("bytes=-10", size - 10..size),
        ("bytes=100000-999999999", 100_000..size),
    ];
    for (asked, want) in cases {
        let reply = range(addr, &fixture, asked).await;
        assert_eq!(reply.status, 206, "{asked}: {}", reply.text());
        let content_range = format!("bytes {}-{}/{size}", want.start, want.end - 1);
        assert_eq!(reply.header("content-range"), Some(content_range.as_str()), "{asked}");
        assert_eq!(reply.header("accept-ranges"), Some("bytes"), "{asked}");
        assert_eq!(reply.header("content-type"), Some("application/x-nix-nar"), "{asked}");
        assert!(reply.complete(), "{asked}: {} bytes", reply.body.len());
        assert!(reply.body == fixture.nar[want.clone()], "{asked}: other bytes than asked");
    }
    // Every part was read from byte 0: the hash needs the prefix.
    assert!(source.nar_calls().iter().all(|(_, offset)| *offset == 0), "{:?}", source.nar_calls());
}

#[tokio::test]
async fn a_range_past_the_end_is_416_without_a_transfer() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    for asked in ["bytes=100003-", "bytes=200000-300000", "bytes=-0"] {
        let reply = range(addr, &fixture, asked).await;
        assert_eq!(reply.status, 416, "{asked}");
        assert_eq!(reply.header("content-range"), Some("bytes */100003"), "{asked}");
    }
    assert!(source.nar_calls().is_empty());
}

#[tokio::test]
async fn what_is_not_a_single_range_gets_the_whole_nar() {
    let fixture = Fixture::new();
    let addr = start(TestSource::honest(&fixture), test_config(&fixture)).await;
    let cases: [&[&str]; 4] = [
        &["Range: bytes=0-1,5-6"],
        &["Range: bytes=9-1"],
        &["Range: lines=1-2"],
        &["Range: bytes=0-1", "If-Range: \"anything\""],
    ];
    for headers in cases {
        let reply = get_with(addr, &fixture.nar_url(), headers).await.unwrap();
        assert_eq!(reply.status, 200, "{headers:?}");
        assert_eq!(reply.header("content-range"), None, "{headers:?}");
        assert!(reply.complete() && reply.body == fixture.nar, "{headers:?}");
    }
}

#[tokio::test]
async fn a_wrong_nar_never_hands_out_the_last_bytes_of_a_range() {
    let fixture = Fixture::new();
    let size = fixture.nar.len();
    let mut wrong = fixture.nar.clone();
    wrong[size / 2] ^= 1;
    let mut wrong_last = fixture.nar.clone();
    wrong_last[size - 1] ^= 1;
    for (what, nar) in [("a byte midway", &wrong), ("the last byte", &wrong_last)] {
        let addr = start(serving(&fixture, nar), test_config(&fixture)).await;
        for asked in ["bytes=1000-", "bytes=-5000", "bytes=0-"] {
            let header = format!("Range: {asked}");
            let reply = get_with(addr, &fixture.nar_url(), &[&header]).await;
            let Some(reply) = reply else { continue };
            assert_eq!(reply.status, 206, "{what}, {asked}");
            assert!(!reply.complete(), "{what}, {asked}: the whole part arrived");
        }
        // A part ending before the NAR's end would be whole: none of it goes out.
        let reply = get_with(addr, &fixture.nar_url(), &["Range: bytes=0-999"]).await;
        if let Some(reply) = reply {
            assert!(reply.body.is_empty(), "{what}: {} bytes of a bounded part", reply.body.len());
        }
    }
}

#[tokio::test]
async fn a_range_goes_on_at_the_next_holder_from_the_offset_reached() {
    let fixture = Fixture::new();
    let breaks = TestPeer {
        name: "breaks",
        narinfo: NarInfoReply::Text(fixture.narinfo.to_string()),
        nar: NarReply::ChunksThenFails(chunked(&fixture.nar[..60_000])),
    };
    let source = TestSource::new(&fixture, vec![breaks, honest_peer("second", &fixture)]);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let reply = range(addr, &fixture, "bytes=50000-").await;
    assert_eq!(reply.status, 206);
    assert!(reply.complete() && reply.body == fixture.nar[50_000..]);
    assert_eq!(source.nar_calls(), [("breaks".to_owned(), 0), ("second".to_owned(), 60_000)]);
}

#[tokio::test]
async fn a_long_part_before_the_end_gets_the_whole_nar_instead_of_being_held() {
    let nar: Vec<u8> = (0..MAX_HELD_PART as u32 + 50_000).map(|i| (i % 251) as u8).collect();
    let small = Fixture::new();
    let narinfo = narinfo_for(PATH, &nar, &small.key);
    let fixture = Fixture { nar, narinfo, key: small.key };
    let addr = start(TestSource::honest(&fixture), test_config(&fixture)).await;
    let held = format!("bytes=10-{}", MAX_HELD_PART + 9);
    let reply = range(addr, &fixture, &held).await;
    assert_eq!(reply.status, 206);
    assert!(reply.complete() && reply.body == fixture.nar[10..MAX_HELD_PART as usize + 10]);
    let too_long = format!("bytes=10-{}", MAX_HELD_PART + 10);
    let reply = range(addr, &fixture, &too_long).await;
    assert_eq!(reply.status, 200);
    assert!(reply.complete() && reply.body == fixture.nar);
}

#[tokio::test]
async fn the_whole_nar_says_it_takes_ranges() {
    let fixture = Fixture::new();
    let addr = start(TestSource::honest(&fixture), test_config(&fixture)).await;
    let reply = get(addr, &fixture.nar_url()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("accept-ranges"), Some("bytes"));
    assert_eq!(reply.header("content-encoding"), None, "Nix resumes only without one");
}

#[tokio::test]
async fn head_of_a_nar_answers_from_the_narinfo_without_a_transfer() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let full = get(addr, &fixture.nar_url()).await;
    let calls = source.nar_calls().len();
    for headers in [&[][..], &["Range: bytes=0-9"][..]] {
        let extra: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
        let head = format!(
            "HEAD {} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n",
            fixture.nar_url()
        );
        let reply = send_raw(addr, head.as_bytes()).await.unwrap();
        // A range is for GET alone (RFC 9110 §14.2): HEAD says what GET of the whole would.
        assert_eq!(reply.status, 200, "{headers:?}");
        assert!(reply.body.is_empty());
        for name in ["content-length", "content-type", "accept-ranges"] {
            assert_eq!(reply.header(name), full.header(name), "{name}, {headers:?}");
        }
    }
    assert_eq!(source.nar_calls().len(), calls, "HEAD asked a holder for the NAR");
    let other = nixmesh_protocol::Sha256::digest(b"other").to_nixbase32();
    let miss = request(addr, "HEAD", &format!("/nar/{}-{other}.nar", fixture.hash())).await;
    assert_eq!(miss.status, 404);
    let status = get(addr, "/_nixmesh/status").await;
    let status: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    // The GET's NAR was sent; the HEADs are not counted as aborted downloads.
    assert_eq!(status["requests"]["nars_aborted"], 0, "{status}");
}

#[tokio::test]
async fn every_route_answers_head_as_get_without_a_body() {
    let fixture = Fixture::new();
    let addr = start(TestSource::honest(&fixture), test_config(&fixture)).await;
    for path in [
        "/nix-cache-info".to_owned(),
        fixture.narinfo_url(),
        "/1b9p07z77phvv2hf6gm9f28syp39f1ag.narinfo".to_owned(),
        "/nope".to_owned(),
        "/_nixmesh/status".to_owned(),
        "/_nixmesh/peers".to_owned(),
        "/metrics".to_owned(),
        format!("/_nixmesh/why/{}", fixture.hash()),
    ] {
        let full = get(addr, &path).await;
        let head = request(addr, "HEAD", &path).await;
        assert_eq!(head.status, full.status, "{path}");
        assert!(head.body.is_empty(), "{path}");
        assert_eq!(head.header("content-type"), full.header("content-type"), "{path}");
        // The status pages' lengths change from one request to the next; the others' do not.
        if !path.contains("_nixmesh") && path != "/metrics" {
            assert_eq!(head.content_length(), Some(full.body.len()), "{path}");
        }
    }
}
