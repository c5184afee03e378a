//! The worker-protocol client against the real nix-daemon: a daemon per test on its own socket
//! and chroot store, filled with `nix-build` and `nix-store --add`, and every answer checked
//! against what Nix's own tools say about the same store.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use nixmesh_node::local::store::{CHUNK_SIZE, PathInfo, Store, StoreAddress, StoreError};
use nixmesh_protocol::{Sha256, StorePath, StorePathHash};
use nixmesh_tests::{CacheKey, Host, HostStore};
use serde_json::Value;
use support::nix_available;
use tempfile::TempDir;

/// A nix-daemon on a chroot store of its own under a temporary directory (the harness's
/// [`HostStore`], on this machine's network), as our client reaches it.
struct Daemon {
    store: HostStore,
    dir: TempDir,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let store = HostStore::start(&Host::local(dir.path()));
        Daemon { store, dir }
    }

    fn address(&self) -> StoreAddress {
        StoreAddress::parse(&self.store.daemon_url()).unwrap()
    }

    fn add_file(&self, name: &str, contents: &[u8]) -> StorePath {
        StorePath::parse(&self.store.add_file(name, contents)).unwrap()
    }
}

/// A daemon holding a built closure (`top` refers to `dep`, both with derivers; `top` signed),
/// a content-addressed file and a file big enough to take several NAR chunks.
struct Fixture {
    daemon: Daemon,
    top: StorePath,
    dep: StorePath,
    small: StorePath,
    big: StorePath,
}

const CLOSURE: &str = r#"
let
  dep = derivation {
    name = "nixmesh-dep";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo dependency > $out" ];
    PATH = "/usr/bin:/bin";
  };
in derivation {
  name = "nixmesh-top";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "mkdir -p $out/sub; echo hello > $out/hello; ln -s ${dep} $out/dep; printf '#!/bin/sh\\n' > $out/sub/run; chmod +x $out/sub/run" ];
  PATH = "/usr/bin:/bin";
}
"#;

fn big_contents() -> Vec<u8> {
    (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

impl Fixture {
    fn build() -> Fixture {
        let daemon = Daemon::start();
        let closure = daemon.store.build_closure(CLOSURE);
        let top = StorePath::parse(&closure.top).unwrap();
        let [dep, _] = &closure.paths[..] else { panic!("not two paths: {closure:?}") };
        let dep = StorePath::parse(dep).unwrap();
        let key = CacheKey::generate(daemon.dir.path(), "test-1");
        let key_file = key.secret_file.to_str().unwrap();
        daemon.store.nix(&["store", "sign", "--key-file", key_file, &closure.top]);

        let small = daemon.add_file("small.txt", b"hi\n");
        let big = daemon.add_file("big.bin", &big_contents());
        Fixture { daemon, top, dep, small, big }
    }

    /// `nix path-info --json --all`, keyed by path.
    fn nix_path_infos(&self) -> BTreeMap<StorePath, Value> {
        let json = self.daemon.store.nix(&["path-info", "--json", "--all"]);
        let infos: Vec<Value> = serde_json::from_str(&json).unwrap();
        infos
            .into_iter()
            .map(|info| (StorePath::parse(info["path"].as_str().unwrap()).unwrap(), info))
            .collect()
    }
}

/// Asserts that our path info says what `nix path-info --json` says.
fn assert_matches_nix(ours: &PathInfo, nix: &Value) {
    let path = &ours.path;
    assert_eq!(ours.path.to_string(), nix["path"].as_str().unwrap());
    assert_eq!(ours.nar_hash, Sha256::parse(nix["narHash"].as_str().unwrap()).unwrap(), "{path}");
    assert_eq!(ours.nar_size, nix["narSize"].as_u64().unwrap(), "{path}");
    let references: Vec<String> = ours.references.iter().map(|p| p.to_string()).collect();
    let nix_references: Vec<&str> =
        nix["references"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
    assert_eq!(references, nix_references, "{path}");
    assert_eq!(ours.deriver.as_ref().map(|d| d.to_string()).as_deref(), nix["deriver"].as_str());
    assert_eq!(ours.registration_time, nix["registrationTime"].as_u64().unwrap(), "{path}");
    assert_eq!(ours.ultimate, nix["ultimate"].as_bool().unwrap_or(false), "{path}");
    let nix_sigs: Vec<&str> = nix["signatures"]
        .as_array()
        .map(|sigs| sigs.iter().map(|s| s.as_str().unwrap()).collect())
        .unwrap_or_default();
    assert_eq!(ours.signatures, nix_sigs, "{path}");
    assert_eq!(ours.ca.as_deref(), nix["ca"].as_str(), "{path}");
}

/// The whole NAR of `path` through our client.
async fn read_nar(store: &Store, path: &StorePath, nar_size: u64) -> Vec<Vec<u8>> {
    let stream = store.nar_from_path(path, nar_size).await.unwrap();
    let mut stream = std::pin::pin!(stream);
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk.unwrap().to_vec());
    }
    chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_match_what_nix_says() {
    if !nix_available() {
        return;
    }
    let fixture = Fixture::build();
    let store = Store::connect(fixture.daemon.address()).await.unwrap();
    let nix_infos = fixture.nix_path_infos();

    let ours: BTreeSet<StorePathHash> =
        store.query_all_valid_paths().await.unwrap().into_iter().collect();
    let nix: BTreeSet<StorePathHash> = nix_infos.keys().map(StorePath::hash).collect();
    assert_eq!(ours, nix);
    for path in [&fixture.top, &fixture.dep, &fixture.small, &fixture.big] {
        assert!(ours.contains(&path.hash()), "{path} is not listed");
    }

    for (path, nix_info) in &nix_infos {
        let info = store.query_path_info(path).await.unwrap().expect("a listed path is valid");
        assert_matches_nix(&info, nix_info);
    }

    // The fixture has what the comparison above must have covered.
    let top = store.query_path_info(&fixture.top).await.unwrap().unwrap();
    assert_eq!(top.references, std::slice::from_ref(&fixture.dep));
    assert!(top.deriver.as_ref().is_some_and(|d| d.name() == "nixmesh-top.drv"));
    assert!(top.ultimate);
    assert!(top.signatures.iter().any(|s| s.starts_with("test-1:")), "{:?}", top.signatures);
    let small = store.query_path_info(&fixture.small).await.unwrap().unwrap();
    assert!(small.ca.as_deref().is_some_and(|ca| ca.starts_with("fixed:r:sha256:")), "{small:?}");
    assert_eq!(small.deriver, None);

    for path in nix_infos.keys() {
        let found = store.query_path_from_hash_part(&path.hash()).await.unwrap();
        assert_eq!(found.as_ref(), Some(path));
    }
    let unknown = StorePathHash::parse("00000000000000000000000000000000").unwrap();
    assert_eq!(store.query_path_from_hash_part(&unknown).await.unwrap(), None);
    let invalid = StorePath::parse("/nix/store/00000000000000000000000000000000-nope").unwrap();
    assert_eq!(store.query_path_info(&invalid).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nars_match_nix_store_dump() {
    if !nix_available() {
        return;
    }
    let fixture = Fixture::build();
    let store = Store::connect(fixture.daemon.address()).await.unwrap();
    for hash in store.query_all_valid_paths().await.unwrap() {
        let path = store.query_path_from_hash_part(&hash).await.unwrap().expect("listed");
        let info = store.query_path_info(&path).await.unwrap().unwrap();
        let chunks = read_nar(&store, &path, info.nar_size).await;
        assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK_SIZE));
        let nar = chunks.concat();
        let dump = fixture.daemon.store.dump(&path.to_string());
        assert!(nar == dump, "the NAR of {path} differs from nix-store --dump");
        assert_eq!(nar.len() as u64, info.nar_size);
        assert_eq!(Sha256::digest(&nar), info.nar_hash, "{path}");
        if path == fixture.big {
            assert!(chunks.len() > 2, "{} chunks", chunks.len());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_survives_concurrency_and_abandoned_streams() {
    if !nix_available() {
        return;
    }
    let daemon = Daemon::start();
    let big = daemon.add_file("big.bin", &big_contents());
    let small = daemon.add_file("small.txt", b"hi\n");
    let store = Store::connect(daemon.address()).await.unwrap();
    let big_info = store.query_path_info(&big).await.unwrap().unwrap();
    let small_info = store.query_path_info(&small).await.unwrap().unwrap();

    // Streams dropped after one chunk, or before any, more times than the pool has
    // connections: each must close its connection and give back its slot.
    for round in 0..40 {
        let stream = store.nar_from_path(&big, big_info.nar_size).await.unwrap();
        if round % 2 == 0 {
            let mut stream = Box::pin(stream);
            let first = stream.next().await.unwrap().unwrap();
            assert_eq!(first.len(), CHUNK_SIZE);
        }
    }

    // A size that is too small is caught at the end, and costs only that connection.
    let short = big_info.nar_size - 8;
    let mut stream = Box::pin(store.nar_from_path(&big, short).await.unwrap());
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    let err = last.unwrap().unwrap_err();
    assert!(err.to_string().contains("does not end after"), "{err}");
    let err = store.nar_from_path(&big, 0).await.err().unwrap();
    assert!(matches!(err, StoreError::InvalidNarSize { nar_size: 0, .. }), "{err}");

    // Many tasks at once, each mixing metadata queries and full NARs.
    let tasks: Vec<_> = (0..48)
        .map(|i| {
            let store = store.clone();
            let (path, info) = if i % 3 == 0 {
                (big.clone(), big_info.clone())
            } else {
                (small.clone(), small_info.clone())
            };
            tokio::spawn(async move {
                for _ in 0..3 {
                    let again = store.query_path_info(&path).await.unwrap().unwrap();
                    assert_eq!(again, info);
                    let found = store.query_path_from_hash_part(&path.hash()).await.unwrap();
                    assert_eq!(found.as_ref(), Some(&path));
                    let nar = read_nar(&store, &path, info.nar_size).await.concat();
                    assert_eq!(Sha256::digest(&nar), info.nar_hash);
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(120), task).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_is_reconnected_to() {
    if !nix_available() {
        return;
    }
    let mut daemon = Daemon::start();
    let small = daemon.add_file("small.txt", b"hi\n");
    let store = Store::connect(daemon.address()).await.unwrap();
    assert!(store.query_path_info(&small).await.unwrap().is_some());
    // The pooled connection now leads to a dead daemon; the next query must not fail for it.
    daemon.store.restart();
    assert!(store.query_path_info(&small).await.unwrap().is_some());
    assert!(store.query_all_valid_paths().await.unwrap().contains(&small.hash()));
}

#[tokio::test]
async fn a_missing_socket_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-daemon-here.sock");
    let address = StoreAddress::parse(&format!("unix://{}", socket.display())).unwrap();
    let err = Store::connect(address).await.unwrap_err();
    let message = err.to_string();
    let expected = format!("cannot connect to the nix-daemon at {}: ", socket.display());
    assert!(message.starts_with(&expected), "{message}");
    assert!(message.contains("No such file or directory"), "{message}");
}
