//! `/<hash>.ls` and `/log/<drv>`: a listing only for a path whose narinfo verifies, of its
//! NarHash, from the first holder whose listing can be right; build logs from any peer.

use bytes::Bytes;
use nixmesh_protocol::signature::SigningKey;

use crate::support::*;

/// A listing of a lone file of `size` bytes, as Nix writes it.
fn listing(size: u64) -> Bytes {
    let text =
        format!(r#"{{"version":1,"root":{{"type":"regular","size":{size},"narOffset":96}}}}"#);
    Bytes::from(text)
}

#[tokio::test]
async fn a_listing_is_asked_for_the_verified_nar_hash_and_remembered() {
    let fixture = Fixture::new();
    let source = TestSource::honest(&fixture);
    let listed = listing(fixture.nar.len() as u64 - 96 - 16);
    source.documents.lock().unwrap().listings.insert("honest".into(), listed.clone());
    let addr = start(source.clone(), test_config(&fixture)).await;
    let url = format!("/{}.ls", fixture.hash());
    for _ in 0..2 {
        let reply = get(addr, &url).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.body, listed);
    }
    let calls = source.documents.lock().unwrap().listing_calls.clone();
    assert_eq!(calls, [("honest".to_owned(), fixture.narinfo.nar_hash)], "asked once");
    assert_eq!(source.nar_calls(), [], "no NAR for a listing");
    let reply = get(addr, "/1b9p07z77phvv2hf6gm9f28syp39f1ag.ls").await;
    assert_eq!(reply.status, 404, "a path nobody holds");
}

#[tokio::test]
async fn no_listing_without_a_verified_narinfo() {
    let fixture = Fixture::new();
    let stranger = SigningKey::from_seed("stranger-1", [3; 32]);
    let untrusted = narinfo_for(PATH, &fixture.nar, &stranger).to_string();
    let peer = TestPeer {
        name: "untrusted",
        narinfo: NarInfoReply::Text(untrusted),
        nar: NarReply::Chunks(fixture.chunks()),
    };
    let source = TestSource::new(&fixture, vec![peer]);
    source.documents.lock().unwrap().listings.insert("untrusted".into(), listing(10));
    let addr = start(source.clone(), test_config(&fixture)).await;
    let reply = get(addr, &format!("/{}.ls", fixture.hash())).await;
    assert_eq!(reply.status, 404);
    assert!(source.documents.lock().unwrap().listing_calls.is_empty(), "asked for a listing");
}

#[tokio::test]
async fn a_listing_that_cannot_be_right_is_passed_over_for_the_next_holder() {
    let fixture = Fixture::new();
    let peers = vec![honest_peer("first", &fixture), honest_peer("second", &fixture)];
    let source = TestSource::new(&fixture, peers);
    let good = listing(1000);
    {
        let mut documents = source.documents.lock().unwrap();
        // A file that ends past the signed NarSize.
        documents.listings.insert("first".into(), listing(fixture.nar.len() as u64));
        documents.listings.insert("second".into(), good.clone());
    }
    let addr = start(source.clone(), test_config(&fixture)).await;
    let reply = get(addr, &format!("/{}.ls", fixture.hash())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.body, good);
}

#[tokio::test]
async fn a_build_log_comes_from_whichever_peer_has_it() {
    let fixture = Fixture::new();
    let peers = vec![honest_peer("without", &fixture), honest_peer("with", &fixture)];
    let source = TestSource::new(&fixture, peers);
    let drv = "0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-hello-2.12.drv";
    let log = Bytes::from_static(b"building hello\nfailed\n");
    source.documents.lock().unwrap().logs.insert(("with".into(), drv.into()), log.clone());
    let addr = start(source.clone(), test_config(&fixture)).await;
    let reply = get(addr, &format!("/log/{drv}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("content-type"), Some("text/plain; charset=utf-8"));
    assert_eq!(reply.body, log);
    let other = get(addr, "/log/1b9p07z77phvv2hf6gm9f28syp39f1ag-bash-5.1.drv").await;
    assert_eq!(other.status, 404, "nobody has that one");
    assert_eq!(get(addr, "/log/1b9p07z77phvv2hf6gm9f28syp39f1ag-bash-5.1").await.status, 400);
}
