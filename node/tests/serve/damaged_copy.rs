//! A holder with a damaged copy of a path: the client gets the good copy, and the damaged
//! holder is asked last.

use crate::pair::DEADLINE;
use crate::support::{loopback_config as config, nix_available};
use nixmesh_node::node::RunningNode;
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::{
    CacheKey, Closure, Host, HostStore, narinfo_url_path, test_closure_expr, unique_marker,
    wait_until,
};

/// Three hosts on this machine: `good` and `damaged` hold the same signed closure, the damaged
/// one with one byte of `c`'s 300 kB blob changed behind Nix's back (small enough to be checked
/// whole before it is sent); `client` holds nothing. No node runs until [`DamagedCopy::start`].
struct DamagedCopy {
    dir: tempfile::TempDir,
    key: CacheKey,
    stores: Vec<HostStore>,
    closure: Closure,
    runtime: tokio::runtime::Runtime,
}

impl DamagedCopy {
    fn new() -> DamagedCopy {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::generate(dir.path(), "loopback-1");
        let stores: Vec<HostStore> = ["good", "damaged", "client"]
            .map(|h| HostStore::start(&Host::local_in(dir.path(), h)))
            .into();
        let closure = stores[0].build_closure(&test_closure_expr(&unique_marker()));
        stores[0].sign_closure(&key.secret_file, &closure.top);
        let cache = format!("file://{}?compression=none", dir.path().join("cache").display());
        stores[0].copy_to(&cache, &[&closure.top]);
        let copied = stores[1].copy_from(&cache, &[&key.public], &closure.top);
        assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));
        let c = closure.paths.iter().find(|p| p.ends_with("-nixmesh-test-c")).unwrap();
        stores[1].damage(c, "blob");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        DamagedCopy { dir, key, stores, closure, runtime }
    }

    fn good(&self) -> &HostStore {
        &self.stores[0]
    }

    fn damaged(&self) -> &HostStore {
        &self.stores[1]
    }

    fn client(&self) -> &HostStore {
        &self.stores[2]
    }

    /// A node named `name` (its state dir) on `store`, with `peers`.
    fn start(&self, name: &str, store: &HostStore, peers: Vec<libp2p::Multiaddr>) -> RunningNode {
        let config = config(&self.dir.path().join(name), store, &self.key.public, peers);
        self.runtime.block_on(RunningNode::start(config)).unwrap()
    }

    /// The path whose copy on `damaged` is damaged.
    fn damaged_path(&self) -> String {
        self.closure.paths.iter().find(|p| p.ends_with("-nixmesh-test-c")).unwrap().clone()
    }
}

#[test]
fn with_a_damaged_and_a_good_copy_on_the_mesh_the_client_gets_the_good_one() {
    if !nix_available() {
        return;
    }
    let hosts = DamagedCopy::new();
    let (good, damaged, client, closure) =
        (hosts.good(), hosts.damaged(), hosts.client(), &hosts.closure);
    let (runtime, key) = (&hosts.runtime, &hosts.key);
    let start = |name: &str, store, peers| hosts.start(name, store, peers);
    let n_good = start("n-good", good, vec![]);
    let n_damaged = start("n-damaged", damaged, vec![]);
    let mut peers = runtime.block_on(n_good.p2p_addresses());
    peers.extend(runtime.block_on(n_damaged.p2p_addresses()));
    let n_client = start("n-client", client, peers);
    let http = n_client.http_address();
    wait_until(DEADLINE, "the client's node to index both holders", || {
        let peers: serde_json::Value =
            serde_json::from_slice(&get(http, "/_nixmesh/peers").1).unwrap();
        let indexed = |id: String| {
            peers.as_array().unwrap().iter().any(|p| p["id"] == id.as_str() && p["paths"] != 0)
        };
        indexed(n_good.peer_id().to_string()) && indexed(n_damaged.peer_id().to_string())
    });

    // Whichever holder is asked first, the damaged copy of `c` is checked whole before a
    // byte of it goes out, and the good holder gives the client the right one.
    let copy = client.copy_from(&format!("http://{http}"), &[&key.public], &closure.top);
    let stderr = String::from_utf8_lossy(&copy.stderr);
    assert!(copy.status.success(), "nix copy failed with a good holder present: {stderr}");
    for path in &closure.paths {
        assert_eq!(client.dump(path), good.dump(path), "{path} differs");
    }
    for node in [n_client, n_damaged, n_good] {
        runtime.block_on(node.stop()).unwrap();
    }
}

#[test]
fn a_holder_with_a_damaged_copy_is_demoted_and_asked_last() {
    if !nix_available() {
        return;
    }
    let hosts = DamagedCopy::new();
    let (good, damaged, client, closure) =
        (hosts.good(), hosts.damaged(), hosts.client(), &hosts.closure);
    let (runtime, key) = (&hosts.runtime, &hosts.key);
    let start = |name: &str, store, peers| hosts.start(name, store, peers);
    let n_damaged = start("n-damaged", damaged, vec![]);
    let n_client = start("n-client", client, runtime.block_on(n_damaged.p2p_addresses()));
    let http = n_client.http_address();
    let url = format!("http://{http}");
    let damaged_id = n_damaged.peer_id().to_string();
    let demotion = || -> Option<String> {
        let peers: serde_json::Value =
            serde_json::from_slice(&get(http, "/_nixmesh/peers").1).unwrap();
        let entry = peers.as_array().unwrap().iter().find(|p| p["id"] == damaged_id.as_str())?;
        entry["demoted"].as_str().map(String::from)
    };
    wait_until(DEADLINE, "the client's node to offer the closure", || {
        closure.paths.iter().all(|p| get(http, &narinfo_url_path(p)).0 == 200)
    });

    // The only copy is damaged: nothing wrong reaches the client, and its holder is demoted.
    let copy = client.copy_from(&url, &[&key.public], &closure.top);
    assert!(!copy.status.success(), "nix copy took a damaged path");
    assert!(!client.is_valid(&hosts.damaged_path()));
    let why = demotion().expect("the holder of the damaged copy is demoted");
    assert!(why.contains("asked last") && why.contains("hashes to"), "{why}");

    // A good copy appears on another host (its node starts): the client gets it, and the
    // damaged holder is not asked again (a second fault would have it skipped, not asked last).
    let n_good = start("n-good", good, vec![runtime.block_on(n_client.p2p_addresses())[0].clone()]);
    let good_id = n_good.peer_id().to_string();
    wait_until(DEADLINE, "the client's node to index the good holder", || {
        let peers: serde_json::Value =
            serde_json::from_slice(&get(http, "/_nixmesh/peers").1).unwrap();
        peers.as_array().unwrap().iter().any(|p| p["id"] == good_id.as_str() && p["paths"] != 0)
    });
    let copy = client.copy_from(&url, &[&key.public], &closure.top);
    let stderr = String::from_utf8_lossy(&copy.stderr);
    assert!(copy.status.success(), "nix copy failed with a good holder present: {stderr}");
    for path in &closure.paths {
        assert_eq!(client.dump(path), good.dump(path), "{path} differs");
    }
    let why = demotion().expect("still demoted");
    assert!(why.contains("asked last"), "the damaged holder was asked again: {why}");
    for node in [n_good, n_client, n_damaged] {
        runtime.block_on(node.stop()).unwrap();
    }
}
