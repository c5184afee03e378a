//! The real `nix copy` substituting a closure from one chroot store to another through two
//! nodes: signed paths served, unsigned ones and unknown hashes a miss, the peers listed.

use crate::pair::DEADLINE;
use crate::support::{loopback_config as config, nix_available};
use nixmesh_node::node::RunningNode;
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::signed_lan::lists_connected;
use nixmesh_tests::{
    CacheKey, Closure, Host, HostStore, narinfo_url_path, test_closure_expr, unique_marker,
    wait_until,
};

#[test]
fn nix_copy_substitutes_a_closure_through_two_nodes() {
    if !nix_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::generate(dir.path(), "loopback-1");
    let hosts = [Host::local_in(dir.path(), "h1"), Host::local_in(dir.path(), "h2")];
    let stores: Vec<HostStore> = hosts.iter().map(HostStore::start).collect();
    let (s1, s2) = (&stores[0], &stores[1]);
    let closure: Closure = s1.build_closure(&test_closure_expr(&unique_marker()));
    s1.sign_closure(&key.secret_file, &closure.top);
    let unsigned = s1.build_closure(&test_closure_expr(&unique_marker()));

    // The nodes run on a runtime of their own; this thread does the blocking work of a
    // client (HTTP, Nix commands) freely.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let start = |name: &str, store, peers| {
        let config = config(&dir.path().join(name), store, &key.public, peers);
        runtime.block_on(RunningNode::start(config)).unwrap()
    };
    let n1 = start("n1", s1, vec![]);
    let n2 = start("n2", s2, runtime.block_on(n1.p2p_addresses()));
    let http = n2.http_address();

    // Node 2 learns what node 1 holds; then every narinfo of the closure is served.
    let narinfos: Vec<String> = closure.paths.iter().map(|p| narinfo_url_path(p)).collect();
    wait_until(DEADLINE, "node 2 to serve the closure's narinfos", || {
        narinfos.iter().all(|n| get(http, n).0 == 200)
    });
    let (_, text) = get(http, &narinfos[0]);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("Compression: none") && text.contains("Sig: loopback-1:"), "{text}");

    // The real client substitutes the whole closure from node 2, byte for byte.
    let url = format!("http://{http}");
    let copy = s2.copy_from(&url, &[&key.public], &closure.top);
    assert!(copy.status.success(), "nix copy failed: {}", String::from_utf8_lossy(&copy.stderr));
    for path in &closure.paths {
        assert!(s2.is_valid(path), "{path} did not arrive");
        assert_eq!(s2.dump(path), s1.dump(path), "{path} differs");
    }

    // Unsigned paths are held by node 1 but never served; a path nobody holds is a miss.
    let status = |address| -> serde_json::Value {
        serde_json::from_slice(&get(address, "/_nixmesh/status").1).unwrap()
    };
    wait_until(DEADLINE, "node 2 to index everything node 1 holds", || {
        status(http)["indexed_paths"] == status(n1.http_address())["local_paths"]
    });
    assert_eq!(get(http, &narinfo_url_path(&unsigned.top)).0, 404);
    assert_eq!(get(http, "/00000000000000000000000000000000.narinfo").0, 404);

    // Node 2's peer list names node 1, connected.
    let (status, peers) = get(http, "/_nixmesh/peers");
    assert_eq!(status, 200);
    let peers: serde_json::Value = serde_json::from_slice(&peers).unwrap();
    let n1_id = n1.peer_id().to_string();
    assert!(lists_connected(&peers, &n1_id), "{peers}");

    runtime.block_on(n2.stop()).unwrap();
    runtime.block_on(n1.stop()).unwrap();
}
