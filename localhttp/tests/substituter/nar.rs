//! `/nar/<hash>-<narhash>.nar`: the verified NAR arrives whole; a wrong one never does.

use std::time::Duration;

use bytes::Bytes;
use nixmesh_localhttp::Config;

use crate::support::*;

/// A source with one honest narinfo and the NAR `nar` from the same peer.
fn serving(fixture: &Fixture, nar: NarReply) -> std::sync::Arc<TestSource> {
    let peer =
        TestPeer { name: "peer", narinfo: NarInfoReply::Text(fixture.narinfo.to_string()), nar };
    TestSource::new(fixture, vec![peer])
}

#[tokio::test]
async fn streams_the_verified_nar() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let reply = get(addr, &fixture.nar_url()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/x-nix-nar"));
    assert_eq!(reply.content_length(), Some(fixture.nar.len()));
    assert!(reply.body == fixture.nar, "the NAR arrived changed");
    assert_eq!(source.nar_calls(), [("honest".to_owned(), 0)]);
}

#[tokio::test]
async fn a_nar_in_one_chunk_or_in_bytes_arrives_whole() {
    let fixture = Fixture::new();
    let whole = vec![Bytes::from(fixture.nar.clone())];
    let mut bytewise: Vec<Bytes> =
        fixture.nar[..1000].iter().map(|&b| Bytes::from(vec![b])).collect();
    bytewise.push(Bytes::new());
    bytewise.push(Bytes::copy_from_slice(&fixture.nar[1000..]));
    for chunks in [whole, bytewise] {
        let addr = start(serving(&fixture, NarReply::Chunks(chunks)), test_config(&fixture)).await;
        let reply = get(addr, &fixture.nar_url()).await;
        assert_eq!(reply.status, 200);
        assert!(reply.body == fixture.nar);
    }
}

/// What a client may get for a NAR that must not reach it: a 404 before any byte, a body cut
/// short of `Content-Length`, or a connection closed before even the status line (hyper drops
/// what it buffered when a body fails before its first flush).
fn assert_refused(reply: Option<Reply>, nar_len: usize, what: &str) {
    let Some(reply) = reply else { return };
    match reply.status {
        404 => {}
        200 => {
            assert!(!reply.complete(), "{what}: the whole body arrived");
            assert!(reply.body.len() < nar_len, "{what}: got {} bytes", reply.body.len());
        }
        other => panic!("{what}: status {other}"),
    }
}

#[tokio::test]
async fn wrong_nars_never_arrive_whole() {
    let fixture = Fixture::new();
    let mut flipped = fixture.nar.clone();
    flipped[50_000] ^= 1;
    let mut flipped_last = fixture.nar.clone();
    *flipped_last.last_mut().unwrap() ^= 1;
    let mut too_long = fixture.nar.clone();
    too_long.extend_from_slice(b"more");
    let too_short = fixture.nar[..fixture.nar.len() - 10].to_vec();
    let cases = [
        ("right size, wrong hash", NarReply::Chunks(chunked(&flipped))),
        ("right size, wrong last byte", NarReply::Chunks(chunked(&flipped_last))),
        ("right size, wrong hash, one chunk", NarReply::Chunks(vec![Bytes::from(flipped)])),
        ("too long", NarReply::Chunks(chunked(&too_long))),
        ("too long, one chunk", NarReply::Chunks(vec![Bytes::from(too_long)])),
        ("too short", NarReply::Chunks(chunked(&too_short))),
        ("empty", NarReply::Chunks(vec![])),
        ("peer error midway", NarReply::ChunksThenFails(chunked(&fixture.nar[..60_000]))),
    ];
    for (what, nar) in cases {
        let addr = start(serving(&fixture, nar), test_config(&fixture)).await;
        let head =
            format!("GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", fixture.nar_url());
        assert_refused(send_raw(addr, head.as_bytes()).await, fixture.nar.len(), what);
        // The server still serves.
        assert_eq!(get(addr, "/nix-cache-info").await.status, 200, "{what}");
    }
}

#[tokio::test]
async fn a_stall_midway_aborts_within_the_idle_timeout() {
    let fixture = Fixture::new();
    let config = test_config(&fixture);
    let nar = NarReply::ChunksThenStall(chunked(&fixture.nar[..50_000]));
    let addr = start(serving(&fixture, nar), config.clone()).await;
    let reply = get(addr, &fixture.nar_url()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.len(), 50_000);
    assert!(!reply.complete());
    assert!(reply.elapsed >= config.nar_idle_timeout);
    assert!(reply.elapsed < config.nar_idle_timeout + Duration::from_secs(2));
}

/// A holder with an honest narinfo whose NAR is `nar`.
fn holder(name: &'static str, fixture: &Fixture, nar: NarReply) -> TestPeer {
    TestPeer { name, narinfo: NarInfoReply::Text(fixture.narinfo.to_string()), nar }
}

#[tokio::test]
async fn a_holder_failing_midway_is_replaced_by_the_next_from_the_same_offset() {
    let fixture = Fixture::new();
    let config = test_config(&fixture);
    let half = &fixture.nar[..60_000];
    let breaks_off = [
        ("fails", NarReply::ChunksThenFails(chunked(half))),
        ("stalls", NarReply::ChunksThenStall(chunked(half))),
        ("ends early", NarReply::Chunks(chunked(half))),
    ];
    for (what, nar) in breaks_off {
        let peers = vec![holder("first", &fixture, nar), honest_peer("second", &fixture)];
        let source = TestSource::new(&fixture, peers);
        let addr = start(source.clone(), config.clone()).await;
        let reply = get(addr, &fixture.nar_url()).await;
        assert_eq!(reply.status, 200, "{what}");
        assert!(reply.complete() && reply.body == fixture.nar, "{what}: one whole, right NAR");
        let calls = source.nar_calls();
        assert_eq!(calls, [("first".to_owned(), 0), ("second".to_owned(), 60_000)], "{what}");
    }
}

#[tokio::test]
async fn a_holder_under_the_minimum_rate_is_replaced_by_the_next() {
    let fixture = Fixture::new();
    // 1 KiB every 20 ms: 50 KiB/s, under a minimum of 100 KiB/s measured over 200 ms.
    let slow: Vec<Bytes> = fixture.nar.chunks(1024).map(Bytes::copy_from_slice).collect();
    let peers = vec![
        holder("slow", &fixture, NarReply::Trickle(slow, Duration::from_millis(20))),
        honest_peer("fast", &fixture),
    ];
    let source = TestSource::new(&fixture, peers);
    let config = Config {
        nar_min_rate: 100 << 10,
        nar_rate_window: Duration::from_millis(200),
        ..test_config(&fixture)
    };
    let addr = start(source.clone(), config).await;
    let reply = get(addr, &fixture.nar_url()).await;
    assert!(reply.complete() && reply.body == fixture.nar, "one whole, right NAR");
    let calls = source.nar_calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].0, "fast");
    assert!(calls[1].1 > 0 && calls[1].1 < fixture.nar.len() as u64, "{calls:?}");
}

#[tokio::test]
async fn failover_ends_when_no_holder_is_left() {
    let fixture = Fixture::new();
    let half = |n: usize| NarReply::ChunksThenFails(chunked(&fixture.nar[..n]));
    let peers = vec![holder("a", &fixture, half(30_000)), holder("b", &fixture, half(70_000))];
    let source = TestSource::new(&fixture, peers);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let head =
        format!("GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", fixture.nar_url());
    assert_refused(send_raw(addr, head.as_bytes()).await, fixture.nar.len(), "both fail");
    // The second went on from where the first stopped and failed too: nobody is left.
    assert_eq!(source.nar_calls(), [("a".to_owned(), 0), ("b".to_owned(), 30_000)]);
}

#[tokio::test]
async fn a_damaged_small_nar_is_passed_over_and_its_holder_asked_last_next_time() {
    let fixture = Fixture::new();
    let mut damaged = fixture.nar.clone();
    damaged[40_000] ^= 1;
    let peers = vec![
        holder("damaged", &fixture, NarReply::Chunks(chunked(&damaged))),
        honest_peer("good", &fixture),
    ];
    let source = TestSource::new(&fixture, peers);
    let config = Config { nar_verified_whole_up_to: 1 << 20, ..test_config(&fixture) };
    let addr = start(source.clone(), config).await;
    // Verified whole before the response starts: the damaged copy never reaches the client.
    let reply = get(addr, &fixture.nar_url()).await;
    assert_eq!(reply.status, 200);
    assert!(reply.complete() && reply.body == fixture.nar);
    assert_eq!(source.nar_calls(), [("damaged".to_owned(), 0), ("good".to_owned(), 0)]);
    // Its holder is demoted: the next download goes to the good one first.
    let reply = get(addr, &fixture.nar_url()).await;
    assert!(reply.complete() && reply.body == fixture.nar);
    assert_eq!(source.nar_calls()[2..], [("good".to_owned(), 0)]);
}

/// A holder with an honest narinfo that never sends its NAR.
fn silent_holder(name: &'static str, fixture: &Fixture) -> TestPeer {
    TestPeer {
        name,
        narinfo: NarInfoReply::Text(fixture.narinfo.to_string()),
        nar: NarReply::NeverAnswers,
    }
}

#[tokio::test]
async fn silent_holders_cost_no_more_than_the_start_deadline() {
    let fixture = Fixture::new();
    let silent = |name| silent_holder(name, &fixture);
    let source = TestSource::new(&fixture, vec![silent("s1"), silent("s2"), silent("s3")]);
    let config = Config { nar_start_deadline: Duration::from_millis(450), ..test_config(&fixture) };
    let addr = start(source.clone(), config).await;
    let reply = get(addr, &fixture.nar_url()).await;
    assert_eq!(reply.status, 404);
    // The first gets its whole 300 ms, the second what is left; the third is never asked.
    let asked: Vec<String> = source.nar_calls().into_iter().map(|(peer, _)| peer).collect();
    assert_eq!(asked, ["s1", "s2"]);
}

#[tokio::test]
async fn holders_that_send_nothing_are_passed_over_before_the_response_starts() {
    let fixture = Fixture::new();
    let silent = |name| silent_holder(name, &fixture);
    let stalls_at_once = TestPeer {
        name: "stalls",
        narinfo: NarInfoReply::NotHeld,
        nar: NarReply::ChunksThenStall(vec![]),
    };
    let wrong_at_once = TestPeer {
        name: "wrong",
        narinfo: NarInfoReply::NotHeld,
        nar: NarReply::Chunks(vec![Bytes::from(vec![0; fixture.nar.len()])]),
    };
    let peers =
        vec![silent("silent"), stalls_at_once, wrong_at_once, honest_peer("honest", &fixture)];
    let source = TestSource::new(&fixture, peers);
    let config = test_config(&fixture);
    let addr = start(source.clone(), config.clone()).await;
    let reply = get(addr, &fixture.nar_url()).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body == fixture.nar);
    let asked: Vec<String> = source.nar_calls().into_iter().map(|(peer, _)| peer).collect();
    assert_eq!(asked, ["silent", "stalls", "wrong", "honest"]);
    assert!(reply.elapsed >= 2 * config.nar_first_byte_timeout);
}

#[tokio::test]
async fn no_holder_sending_is_404() {
    let fixture = Fixture::new();
    let addr = start(serving(&fixture, NarReply::NeverAnswers), test_config(&fixture)).await;
    assert_eq!(get(addr, &fixture.nar_url()).await.status, 404);
}

#[tokio::test]
async fn a_nar_hash_other_than_the_signed_one_is_404() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let other = nixmesh_protocol::Sha256::digest(b"other").to_nixbase32();
    let reply = get(addr, &format!("/nar/{}-{other}.nar", fixture.hash())).await;
    assert_eq!(reply.status, 404);
    assert!(source.nar_calls().is_empty());
}

#[tokio::test]
async fn head_nar_gives_its_length() {
    let fixture = Fixture::new();
    let addr = start(TestSource::honest(&fixture), test_config(&fixture)).await;
    let reply = request(addr, "HEAD", &fixture.nar_url()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_length(), Some(fixture.nar.len()));
    assert!(reply.body.is_empty());
}
