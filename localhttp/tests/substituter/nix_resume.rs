//! The real Nix resuming a NAR download through the substituter: a holder whose NAR is right
//! but for its last chunk makes the substituter withhold that chunk and cut the download off;
//! Nix, told `Accept-Ranges: bytes`, asks for the rest (`Range: bytes=N-`), the next holder
//! gives it (the NAR read from byte 0 and verified whole), and the path imports. Without
//! ranges Nix does not retry a download it has written bytes of, and the copy failed.

use bytes::Bytes;
use nixmesh_protocol::NarInfo;
use nixmesh_protocol::signature::SigningKey;
use nixmesh_tests::{Host, HostStore, require_nix, unique_marker};

use crate::support::*;

/// The bytes of the withheld last chunk.
const LAST_CHUNK: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nix_resumes_a_cut_nar_download_from_the_next_holder() {
    if !require_nix() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let (fixture, path, client) =
        tokio::task::spawn_blocking(move || real_path(&root)).await.unwrap();
    // Right but for one byte of the last chunk: everything before it reaches Nix.
    let nar = &fixture.nar;
    let mut last = nar[nar.len() - LAST_CHUNK..].to_vec();
    last[LAST_CHUNK / 2] ^= 1;
    let mut wrong_at_the_end = chunked(&nar[..nar.len() - LAST_CHUNK]);
    wrong_at_the_end.push(Bytes::from(last));
    let bad = TestPeer {
        name: "bad",
        narinfo: NarInfoReply::Text(fixture.narinfo.to_string()),
        nar: NarReply::Chunks(wrong_at_the_end),
    };
    let source = TestSource::new(&fixture, vec![bad, honest_peer("good", &fixture)]);
    let addr = start(source.clone(), test_config(&fixture)).await;

    let key = fixture.key.verifying_key().to_string();
    let (copy, client) = tokio::task::spawn_blocking(move || {
        let copy = client.copy_from(&format!("http://{addr}"), &[&key], &path);
        (copy, (client, path))
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&copy.stderr);
    assert!(copy.status.success(), "nix copy failed: {stderr}");
    let resumed_at = format!("retrying from offset {}", nar.len() - LAST_CHUNK);
    assert!(stderr.contains(&resumed_at), "Nix did not resume at the cut: {stderr}");
    let (client, path) = client;
    assert!(client.dump(&path) == fixture.nar, "the imported path differs");
    // The part came from the other holder, read from byte 0 to check the whole NAR.
    assert_eq!(source.nar_calls(), [("bad".to_owned(), 0), ("good".to_owned(), 0)]);
}

/// A path of 2 MiB (its NAR streamed, not verified whole first) made by the real Nix in a
/// store under `root`, with its NAR and its narinfo (signed with a key of the test's); and an
/// empty store to copy it to.
fn real_path(root: &std::path::Path) -> (Fixture, String, HostStore) {
    let origin = HostStore::start(&Host::local_in(root, "origin"));
    let client = HostStore::start(&Host::local_in(root, "client"));
    let marker = unique_marker();
    let data: Vec<u8> =
        (0..2u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let path = origin.add_file("resumed", &[marker.as_bytes(), &data].concat());
    let cache = root.join("cache");
    origin.copy_to(&format!("file://{}?compression=none", cache.display()), &[&path]);
    let hash = path.strip_prefix("/nix/store/").unwrap().split('-').next().unwrap();
    let text = std::fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
    let mut narinfo = NarInfo::parse(&text).unwrap();
    let key = SigningKey::from_seed("resume-test-1", [5; 32]);
    narinfo.signatures.clear();
    narinfo.sign(&key);
    let nar = origin.dump(&path);
    assert_eq!(narinfo.nar_size, nar.len() as u64);
    (Fixture { nar, narinfo, key }, path, client)
}
