//! A private mesh on a LAN of network namespaces (mDNS on a bridge of the test's own, never
//! on the machine's interfaces): two hosts with the mesh key find each other by mDNS and share
//! a path; a third host on the same bridge, without the key, finds nothing and gets nothing.

use std::time::Duration;

use nixmesh_tests::signed_lan::lists_connected;
use nixmesh_tests::{
    CacheKey, HostStore, Lan, Node, NodeOptions, mesh_key, narinfo_url_path, require_lan,
    wait_until,
};

/// How long keyed nodes may take to find each other and learn what the others hold.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How long the keyless node is watched for anything it should not see, once the keyed ones
/// have found each other (mDNS announces at once and repeats within a few seconds).
const KEYLESS_WATCH: Duration = Duration::from_secs(5);

#[test]
fn keyed_hosts_find_each_other_by_mdns_and_a_keyless_host_finds_nothing() {
    if !require_lan(&[]) {
        return;
    }
    let lan = Lan::new(3);
    let stores: Vec<HostStore> = lan.hosts().iter().map(HostStore::start).collect();
    let cache_key = CacheKey::generate(lan.dir(), "private-lan-1");
    let path = stores[0].add_file("private-lan-file", b"for the keyed hosts only\n");
    stores[0].sign_closure(&cache_key.secret_file, &path);
    let narinfo = narinfo_url_path(&path);

    // The key made as a user makes it.
    let key_file = lan.dir().join("mesh.key");
    let printed = mesh_key(&key_file);
    assert!(printed.contains("fingerprint "), "{printed}");
    let options = |keyed: bool| NodeOptions {
        trusted_keys: vec![cache_key.public.clone()],
        mesh_key_file: keyed.then(|| key_file.clone()),
        ..NodeOptions::default()
    };
    let nodes: Vec<Node> = stores
        .iter()
        .enumerate()
        .map(|(i, store)| Node::start(store.host(), store, &options(i < 2)))
        .collect();
    let (holder, member, keyless) = (&nodes[0], &nodes[1], &nodes[2]);
    assert_eq!(holder.status()["private_mesh"], true);
    assert_eq!(keyless.status()["private_mesh"], false);

    let holder_id = holder.peer_id();
    wait_until(DISCOVERY_LIMIT, "the keyed member to find the holder and serve its path", || {
        lists_connected(&member.peers(), &holder_id) && member.http_get(&narinfo).0 == 200
    });

    // The keyless host, on the same bridge, hears of no peer at all: the keyed hosts announce
    // another service, under names that are not their peer ids.
    let deadline = std::time::Instant::now() + KEYLESS_WATCH;
    while std::time::Instant::now() < deadline {
        let peers = keyless.peers();
        assert_eq!(peers, serde_json::json!([]), "the keyless host knows of peers");
        assert_eq!(keyless.http_get(&narinfo).0, 404);
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = keyless.status();
    assert_eq!(status["peers_known"], 0, "{status}");
    assert_eq!(status["indexed_paths"], 0, "{status}");
    // Nor did the keyed hosts hear of the keyless one.
    let member_peers = member.peers();
    let keyless_id = keyless.peer_id();
    let all = member_peers.as_array().expect("a list of peers");
    assert!(!all.iter().any(|p| p["id"] == keyless_id.as_str()), "{member_peers}");
}
