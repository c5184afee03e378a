//! `/<hash>.narinfo`: misses, the served narinfo, and peers whose narinfo must not be used.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use nixmesh_localhttp::health::PeerHealth;
use nixmesh_protocol::signature::SigningKey;
use nixmesh_protocol::{NarInfo, Sha256};

use crate::support::*;

#[tokio::test]
async fn a_miss_is_404_without_asking_any_peer() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    // A path nobody advertises.
    let reply = get(addr, "/1b9p07z77phvv2hf6gm9f28syp39f1ag.narinfo").await;
    assert_eq!(reply.status, 404);
    // The fixture path, with its holders disconnected.
    source.connected.store(false, Ordering::SeqCst);
    let reply = get(addr, &fixture.narinfo_url()).await;
    assert_eq!(reply.status, 404);
    assert_eq!(source.narinfo_calls(), 0, "a miss must not wait on the network");
}

#[tokio::test]
async fn serves_the_verified_narinfo_rewritten_for_an_uncompressed_nar() {
    let fixture = Fixture::new();
    let addr = start(TestSource::honest(&fixture), test_config(&fixture)).await;
    let reply = get(addr, &fixture.narinfo_url()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/x-nix-narinfo"));
    let text = reply.text();
    let served = NarInfo::parse(&text).unwrap();
    let expected_url =
        format!("nar/{}-{}.nar", fixture.hash(), fixture.narinfo.nar_hash.to_nixbase32());
    assert_eq!(served.url, expected_url);
    assert!(text.contains(&format!("URL: {expected_url}\n")), "{text}");
    assert!(text.contains("Compression: none\n"), "{text}");
    assert!(!text.contains("FileHash") && !text.contains("FileSize"), "{text}");
    assert_eq!(served.store_path, fixture.narinfo.store_path);
    assert_eq!((served.nar_hash, served.nar_size), (fixture.narinfo.nar_hash, 100_003));
    assert_eq!(served.references, fixture.narinfo.references);
    assert_eq!(served.signatures, fixture.narinfo.signatures);
    assert!(served.verify(&fixture.trusted()).is_some());
}

#[tokio::test]
async fn head_gives_the_headers_of_get() {
    let fixture = Fixture::new();
    let addr = start(TestSource::honest(&fixture), test_config(&fixture)).await;
    let full = get(addr, &fixture.narinfo_url()).await;
    let head = request(addr, "HEAD", &fixture.narinfo_url()).await;
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.content_length(), Some(full.body.len()));
    let miss = request(addr, "HEAD", "/1b9p07z77phvv2hf6gm9f28syp39f1ag.narinfo").await;
    assert_eq!(miss.status, 404);
}

/// Narinfo texts a hostile or broken peer may send for the fixture path.
fn hostile_narinfos(fixture: &Fixture) -> Vec<(&'static str, String)> {
    let stranger = SigningKey::from_seed("stranger-1", [8; 32]);
    let impostor = SigningKey::from_seed("cache-a-1", [9; 32]);
    let mut tampered = fixture.narinfo.clone();
    tampered.nar_hash = Sha256::digest(b"something else");
    vec![
        ("a signature that does not match", tampered.to_string()),
        ("an untrusted key", narinfo_for(PATH, &fixture.nar, &stranger).to_string()),
        (
            "a trusted key name with other bits",
            narinfo_for(PATH, &fixture.nar, &impostor).to_string(),
        ),
        (
            "another path's signed narinfo",
            narinfo_for(OTHER_PATH, &fixture.nar, &fixture.key).to_string(),
        ),
        ("no signature", {
            let mut unsigned = fixture.narinfo.clone();
            unsigned.signatures.clear();
            unsigned.to_string()
        }),
        ("garbage", "StorePath: nonsense\n\u{0}".to_owned()),
    ]
}

#[tokio::test]
async fn hostile_narinfos_are_404() {
    let fixture = Fixture::new();
    for (what, text) in hostile_narinfos(&fixture) {
        let peer = TestPeer {
            name: "hostile",
            narinfo: NarInfoReply::Text(text),
            nar: NarReply::Chunks(fixture.chunks()),
        };
        let source = TestSource::new(&fixture, vec![peer]);
        let addr = start(source.clone(), test_config(&fixture)).await;
        assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 404, "{what}");
        assert_eq!(source.narinfo_calls(), 1, "{what}: the peer was not asked");
        // Nor does the NAR route serve anything on its strength.
        assert_eq!(get(addr, &fixture.nar_url()).await.status, 404, "{what}");
        assert!(source.nar_calls().is_empty(), "{what}: a NAR was asked for");
    }
}

#[tokio::test]
async fn hostile_and_failing_peers_are_skipped_for_an_honest_one() {
    let fixture = Fixture::new();
    let names = ["h0", "h1", "h2", "h3", "h4", "h5"];
    let mut peers: Vec<TestPeer> = names
        .into_iter()
        .zip(hostile_narinfos(&fixture))
        .map(|(name, (_, text))| TestPeer {
            name,
            narinfo: NarInfoReply::Text(text),
            nar: NarReply::NeverAnswers,
        })
        .collect();
    peers.push(TestPeer {
        name: "not-held",
        narinfo: NarInfoReply::NotHeld,
        nar: NarReply::NeverAnswers,
    });
    peers.push(TestPeer {
        name: "fails",
        narinfo: NarInfoReply::Fails,
        nar: NarReply::NeverAnswers,
    });
    peers.push(honest_peer("honest", &fixture));
    let source = TestSource::new(&fixture, peers);
    let addr = start(source.clone(), test_config(&fixture)).await;
    assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 200);
    assert_eq!(source.narinfo_calls(), 9);
    // The NAR comes from the peer whose narinfo verified, without asking for narinfos again.
    let reply = get(addr, &fixture.nar_url()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(source.nar_calls(), [("honest".to_owned(), 0)]);
    assert_eq!(source.narinfo_calls(), 9);
}

#[tokio::test]
async fn a_bad_narinfo_counts_against_its_peer_only_where_another_gave_a_good_one() {
    let fixture = Fixture::new();
    let stranger = SigningKey::from_seed("stranger-1", [8; 32]);
    let bad = || TestPeer {
        name: "bad",
        narinfo: NarInfoReply::Text(narinfo_for(PATH, &fixture.nar, &stranger).to_string()),
        nar: NarReply::NeverAnswers,
    };
    // Alone, it may be the one with the right key missing here: not held against it.
    let health = Arc::new(PeerHealth::default());
    let alone = TestSource::new(&fixture, vec![bad()]);
    let addr = start_with_health(alone, test_config(&fixture), health.clone()).await;
    assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 404);
    assert_eq!(health.demotion(&"bad".to_owned()), None);
    // Beside a peer whose narinfo is good, it is demoted, with the reason.
    let health = Arc::new(PeerHealth::default());
    let both = TestSource::new(&fixture, vec![bad(), honest_peer("good", &fixture)]);
    let addr = start_with_health(both, test_config(&fixture), health.clone()).await;
    assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 200);
    let demotion = health.demotion(&"bad".to_owned()).expect("the bad peer is demoted");
    assert!(demotion.reason.contains("gave a bad narinfo"), "{demotion:?}");
    assert_eq!(health.demotion(&"good".to_owned()), None);
}

#[tokio::test]
async fn a_peer_that_never_answers_costs_one_peer_timeout() {
    let fixture = Fixture::new();
    let silent = silent_peer("silent");
    let source = TestSource::new(&fixture, vec![silent, honest_peer("honest", &fixture)]);
    let config = test_config(&fixture);
    let addr = start(source, config.clone()).await;
    let reply = get(addr, &fixture.narinfo_url()).await;
    assert_eq!(reply.status, 200);
    assert!(reply.elapsed >= config.narinfo_peer_timeout);
    assert!(reply.elapsed < config.narinfo_peer_timeout + Duration::from_secs(2));
}

#[tokio::test]
async fn the_deadline_bounds_all_peers_together() {
    let fixture = Fixture::new();
    let names = ["s0", "s1", "s2", "s3", "s4", "s5", "s6", "s7"];
    let peers = names.iter().map(|&name| silent_peer(name)).collect();
    let source = TestSource::new(&fixture, peers);
    let config = test_config(&fixture);
    let addr = start(source.clone(), config.clone()).await;
    let reply = get(addr, &fixture.narinfo_url()).await;
    assert_eq!(reply.status, 404);
    assert!(reply.elapsed >= config.narinfo_deadline);
    assert!(reply.elapsed < config.narinfo_deadline + Duration::from_secs(2));
    // 800 ms over 300 ms per peer: three peers asked, the rest skipped.
    assert_eq!(source.narinfo_calls(), 3);
}

#[tokio::test]
async fn a_remembered_narinfo_does_not_make_a_path_available() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let addr = start(source.clone(), test_config(&fixture)).await;
    assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 200);
    source.connected.store(false, Ordering::SeqCst);
    assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 404);
    assert_eq!(get(addr, &fixture.nar_url()).await.status, 404);
    source.connected.store(true, Ordering::SeqCst);
    assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 200);
    assert_eq!(source.narinfo_calls(), 1, "the second hit comes from the cache");
}

#[tokio::test]
async fn a_narinfo_past_the_request_timeout_is_a_miss_never_a_server_error() {
    let fixture = Fixture::new();
    let silent = silent_peer("silent");
    let source = TestSource::new(&fixture, vec![silent]);
    let config = nixmesh_localhttp::Config {
        narinfo_peer_timeout: Duration::from_secs(30),
        narinfo_deadline: Duration::from_secs(30),
        request_timeout: Duration::from_millis(200),
        ..test_config(&fixture)
    };
    let addr = start(source, config).await;
    let reply = get(addr, &fixture.narinfo_url()).await;
    // Nix reads a 5xx as a broken cache; a path not found in time is not here.
    assert_eq!(reply.status, 404);
    assert!(reply.elapsed < Duration::from_secs(3));
}
