//! The acceptance tests: hosts on a LAN of network namespaces, each with its own Nix store
//! and its own `nixmesh serve` finding the others by mDNS, and the real `nix copy` as the
//! client. Each test makes its own LAN, so they can run in parallel.
//!
//! What a client gets when a holder is killed, frozen or leaves is in `e2e_holder_faults.rs`.
//!
//! The first two tests check the harness itself (multicast on the LAN; Nix copying a signed
//! closure between hosts through a `file://` cache), so that a failure of the others points
//! at nixmesh.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use nixmesh_tests::multicast;
use nixmesh_tests::signed_lan::{
    DISCOVERY_LIMIT, SignedLan, advertised_paths, lists_connected, start_nodes, start_stores,
    wait_for_closure,
};

use nixmesh_tests::{
    CacheKey, Closure, CommandExt, HostStore, Lan, NODE_URL, Node, NodeOptions, TEST_CLOSURE_LEN,
    keygen, narinfo_url_path, nixmesh_bin, random_hash, require_lan, require_root, require_tool,
    test_closure_expr, unique_marker, wait_until,
};

/// How soon a path that appears in a host's store must be known to the other nodes.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);
/// Checks that `copy` (a `nix copy` run) worked and that every path of `closure` is now in
/// `to`, byte for byte as in `from`.
fn assert_copied(copy: &Output, closure: &Closure, to: &HostStore, from: &HostStore) {
    assert!(
        copy.status.success(),
        "nix copy to {} failed: {}",
        to.host().name(),
        String::from_utf8_lossy(&copy.stderr)
    );
    for path in &closure.paths {
        assert!(to.is_valid(path), "{path} is not valid on {}", to.host().name());
        let (got, want) = (to.dump(path), from.dump(path));
        assert!(got == want, "{path} differs: NAR of {} bytes, not {}", got.len(), want.len());
    }
}

#[test]
fn lan_multicast_reaches_other_hosts() {
    if !require_root() || !require_tool("ip") {
        return;
    }
    let lan = Lan::new(3);
    let [h1, others @ ..] = lan.hosts() else { unreachable!() };
    let probe = Path::new(env!("CARGO_BIN_EXE_nixmesh-mcast-probe"));
    let message = format!("hello-{}", unique_marker());
    let receivers: Vec<_> =
        others.iter().map(|host| (host, multicast::Receiver::start(probe, host, 5000))).collect();
    multicast::send(probe, h1, &message);
    for (host, receiver) in receivers {
        assert_eq!(
            receiver.next(Duration::from_secs(10)),
            Ok(format!("{} {message}", h1.address())),
            "{} did not get host 1's multicast datagram",
            host.name()
        );
    }
}

#[test]
fn harness_copies_a_signed_closure_between_hosts_through_a_file_cache() {
    if !require_lan(&[]) {
        return;
    }
    let lan = Lan::new(2);
    let stores = start_stores(&lan);
    let (s1, s2) = (&stores[0], &stores[1]);
    let key = CacheKey::generate(lan.dir(), "test-1");
    let other_key = CacheKey::generate(lan.dir(), "other");
    let closure = s1.build_closure(&test_closure_expr(&unique_marker()));
    assert_eq!(closure.paths.len(), TEST_CLOSURE_LEN, "{closure:?}");
    s1.sign_closure(&key.secret_file, &closure.top);
    assert!(s1.signatures(&closure.top).iter().any(|s| s.starts_with("test-1:")));

    let cache = format!("file://{}?compression=none", lan.dir().join("cache").display());
    s1.copy_to(&cache, &[&closure.top]);

    let untrusted = s2.copy_from(&cache, &[&other_key.public], &closure.top);
    assert!(!untrusted.status.success(), "Nix took paths signed by a key it does not trust");
    assert!(closure.paths.iter().all(|p| !s2.is_valid(p)), "a path arrived unverified");

    let copy = s2.copy_from(&cache, &[&key.public], &closure.top);
    assert_copied(&copy, &closure, s2, s1);
}

#[test]
fn nix_copy_gets_a_signed_closure_from_a_peer_and_then_from_a_copy_once_its_origin_leaves() {
    if !require_lan(&[]) {
        return;
    }
    // Bound in this order so that they drop in the reverse: nodes, stores, then the LAN.
    let SignedLan { lan: _lan, closure, key, stores, mut nodes } =
        SignedLan::new(3, &test_closure_expr(&unique_marker()));
    let copy = stores[1].copy_from(NODE_URL, &[&key.public], &closure.top);
    assert_copied(&copy, &closure, &stores[1], &stores[0]);

    // Host 2's store had nothing; now its copy must reach host 3's index within a few
    // seconds (the node's default store rescan, then one advertisement).
    let copied = Instant::now();
    let host2 = nodes[1].peer_id();
    wait_until(PROPAGATION_LIMIT, "host 3's node to learn of host 2's copy", || {
        advertised_paths(&nodes[2].peers(), &host2) == Some(TEST_CLOSURE_LEN as u64)
    });
    eprintln!("host 3 learnt of host 2's copy {:?} after it was made", copied.elapsed());

    let origin = nodes[0].peer_id();
    nodes[0].stop();
    wait_until(DISCOVERY_LIMIT, "host 3's node to see host 1's leave", || {
        !lists_connected(&nodes[2].peers(), &origin)
    });
    wait_for_closure(&nodes[2], &closure, "host 3's node to offer host 2's copy");
    let copy = stores[2].copy_from(NODE_URL, &[&key.public], &closure.top);
    assert_copied(&copy, &closure, &stores[2], &stores[0]);
}

#[test]
fn a_node_signs_its_own_unsigned_paths_and_unsigned_paths_of_a_keyless_node_are_refused() {
    if !require_lan(&[]) {
        return;
    }
    let lan = Lan::new(3);
    let stores = start_stores(&lan);
    let h1 = &lan.hosts()[0];
    let node_key_file = h1.dir().join("node-1.secret");
    let node_key = keygen("node-1", &node_key_file);
    // Host 1's node signs with its key; host 3's has none. Both closures are unsigned.
    let signed_by_node = stores[0].build_closure(&test_closure_expr(&unique_marker()));
    let unsigned = stores[2].build_closure(&test_closure_expr(&unique_marker()));
    assert!(stores[0].signatures(&signed_by_node.top).is_empty());
    assert!(stores[2].signatures(&unsigned.top).is_empty());
    // Host 3 also holds one path signed with the trusted key, added after the unsigned
    // closure: once host 2 serves it, host 2 knows of the unsigned closure too, so a 404 for
    // that means refused, not unknown.
    let signed_on_3 = stores[2].add_file("signed-on-3", unique_marker().as_bytes());
    let node_key_path = node_key_file.to_str().expect("a UTF-8 path");
    stores[2].nix(&["store", "sign", "--key-file", node_key_path, &signed_on_3]);
    let nodes = start_nodes(&stores, |host| NodeOptions {
        trusted_keys: vec![node_key.clone()],
        sign_key_file: (host.number() == 1).then(|| node_key_file.clone()),
        ..Default::default()
    });

    wait_for_closure(&nodes[1], &signed_by_node, "host 2's node to offer host 1's closure");
    let copy = stores[1].copy_from(NODE_URL, &[&node_key], &signed_by_node.top);
    assert_copied(&copy, &signed_by_node, &stores[1], &stores[0]);

    wait_until(DISCOVERY_LIMIT, "host 2's node to offer host 3's signed path", || {
        nodes[1].narinfo_statuses(std::slice::from_ref(&signed_on_3)) == [200]
    });
    let copy = stores[1].copy_from(NODE_URL, &[&node_key], &unsigned.top);
    assert!(!copy.status.success(), "nix copy of an unsigned closure from host 3 succeeded");
    for path in &unsigned.paths {
        assert!(!stores[1].is_valid(path), "unsigned {path} was installed on host 2");
    }
    let statuses = nodes[1].narinfo_statuses(&unsigned.paths);
    assert!(statuses.iter().all(|&s| s == 404), "narinfos of unsigned paths: {statuses:?}");
    // Host 3's node, with no signing key, does not serve its unsigned builds to peers at all
    // (the default serving policy), and says so.
    let refusal = "not served: it has no signature from a key this node trusts";
    assert!(
        std::fs::read_to_string(nodes[2].log_path()).unwrap_or_default().contains(refusal),
        "host 3's node did not log that it would not serve its unsigned paths ({refusal:?})"
    );
}

#[test]
fn malformed_requests_get_4xx_and_the_node_keeps_serving() {
    if !require_lan(&[]) {
        return;
    }
    let lan = Lan::new(1);
    let store = HostStore::start(&lan.hosts()[0]);
    let node = Node::start(store.host(), &store, &NodeOptions::default());
    let valid_hash = narinfo_url_path(&format!("/nix/store/{}-x", random_hash()));

    let malformed = [
        "/abc.narinfo".to_owned(),
        format!("/{}x.narinfo", &valid_hash[1..33]),
        "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".to_owned(),
        "/nar/../../etc/passwd".to_owned(),
        "/nar/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/nar/..%2f..%2fetc%2fpasswd".to_owned(),
        format!("/{}.narinfo", "a".repeat(100_000)),
    ];
    for path in &malformed {
        let (status, body) = node.http_get(path);
        let shown: String = path.chars().take(60).collect();
        assert!((400..500).contains(&status), "GET {shown} answered {status}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "GET {shown} leaked a file");
        assert_eq!(node.http_get("/nix-cache-info").0, 200, "the node stopped serving");
    }
}

#[test]
fn nixmesh_peers_lists_the_other_hosts_found_by_mdns() {
    if !require_lan(&[]) {
        return;
    }
    let lan = Lan::new(3);
    let stores = start_stores(&lan);
    // Hosts 1 and 3 hold a closure each (with its derivations); host 2 holds nothing.
    for store in [&stores[0], &stores[2]] {
        store.build_closure(&test_closure_expr(&unique_marker()));
    }
    let nodes = start_nodes(&stores, |_| NodeOptions::default());
    let others = [(&nodes[0], &stores[0]), (&nodes[2], &stores[2])]
        .map(|(node, store)| (node, node.peer_id(), store.path_count() as u64));

    wait_until(DISCOVERY_LIMIT, "host 2's `nixmesh peers` to list hosts 1 and 3 in full", || {
        let peers = nodes[1].peers();
        others.iter().all(|(_, id, held)| {
            lists_connected(&peers, id)
                && advertised_paths(&peers, id) == Some(*held)
                && entry(&peers, id)["rtt_ms"].is_number()
        })
    });
    let peers = nodes[1].peers();
    for (node, id, _) in &others {
        let entry = entry(&peers, id);
        let on_lan = format!("/ip4/{}/", node.host().address());
        let addresses = entry["addresses"].as_array().expect("addresses is a list");
        assert!(
            addresses.iter().any(|a| a.as_str().is_some_and(|a| a.starts_with(&on_lan))),
            "{}'s entry has no address on the LAN: {entry}",
            node.host().name()
        );
        let seen = entry["last_seen_secs_ago"].as_u64();
        assert!(seen.is_some_and(|s| s < 60), "{}'s entry: {entry}", node.host().name());
    }
    let own = nodes[1].peer_id();
    assert!(!peers.as_array().unwrap().iter().any(|p| p["id"] == own.as_str()), "lists itself");

    // The table a person reads: a header, then a line a peer (named by the hostname it
    // announced, ending in the tail of its id), with its state and path count.
    let mut cli = nodes[1].host().command(nixmesh_bin());
    cli.args(["peers", "--node", NODE_URL]);
    let table = String::from_utf8(cli.stdout_within(DISCOVERY_LIMIT)).expect("UTF-8 output");
    let columns = |line: &str| -> Vec<String> {
        line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect()
    };
    let header = table.lines().next().map(columns).unwrap_or_default();
    assert_eq!(
        header,
        ["NAME", "STATE", "PATHS", "RTT", "RECEIVED", "SERVED", "LAST SEEN", "PEER"]
    );
    for (node, id, held) in &others {
        let tail = &id[id.len() - 8..];
        let line = table.lines().find(|l| l.ends_with(tail));
        let line = line.unwrap_or_else(|| panic!("no line for {id} in:\n{table}"));
        let row = columns(line);
        let name = entry(&peers, id)["name"].as_str().map(str::to_owned);
        assert_eq!(Some(&row[0]), name.as_ref(), "{}'s line: {line}", node.host().name());
        assert_eq!((row[1].as_str(), row[2].as_str()), ("connected", held.to_string().as_str()));
    }
}

/// The entry for `id` in `nixmesh peers --json` output; panics if there is none.
fn entry<'a>(peers: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    let all = peers.as_array().expect("a list of peers");
    all.iter().find(|p| p["id"] == id).unwrap_or_else(|| panic!("{id} not in {peers}"))
}
