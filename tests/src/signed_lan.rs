//! What the LAN tests start from: a store and a node on each host of a [`Lan`], and a LAN
//! whose host 1 built and signed a closure that host 2's node already offers.

use std::time::Duration;

use crate::{CacheKey, Closure, Host, HostStore, Lan, Node, NodeOptions, wait_until};

/// How long nodes may take to find each other and learn what the others hold.
pub const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);

/// A nix-daemon on each host of `lan`, in the order of its hosts.
pub fn start_stores(lan: &Lan) -> Vec<HostStore> {
    lan.hosts().iter().map(HostStore::start).collect()
}

/// A node on each of `stores`, started with the options `options` gives for its host.
pub fn start_nodes(stores: &[HostStore], options: impl Fn(&Host) -> NodeOptions) -> Vec<Node> {
    stores.iter().map(|s| Node::start(s.host(), s, &options(s.host()))).collect()
}

/// A LAN whose host 1 built `closure` and signed it with `key`, every node trusting that key,
/// and host 2's node already offering the closure. (Taken apart, bind `lan` first and
/// `nodes` last: they drop in the reverse order.)
pub struct SignedLan {
    pub nodes: Vec<Node>,
    pub stores: Vec<HostStore>,
    pub key: CacheKey,
    pub closure: Closure,
    pub lan: Lan,
}

impl SignedLan {
    /// `hosts` hosts, host 1 holding the closure `expr` builds.
    pub fn new(hosts: usize, expr: &str) -> SignedLan {
        let lan = Lan::new(hosts);
        let stores = start_stores(&lan);
        let key = CacheKey::generate(lan.dir(), "test-1");
        let closure = stores[0].build_closure(expr);
        stores[0].sign_closure(&key.secret_file, &closure.top);
        let trusted = NodeOptions { trusted_keys: vec![key.public.clone()], ..Default::default() };
        let nodes = start_nodes(&stores, |_| trusted.clone());
        wait_for_closure(&nodes[1], &closure, "host 2's node to offer host 1's closure");
        SignedLan { nodes, stores, key, closure, lan }
    }
}

/// Waits until `node` answers 200 for the narinfo of every path of `closure`.
pub fn wait_for_closure(node: &Node, closure: &Closure, what: &str) {
    wait_until(DISCOVERY_LIMIT, what, || {
        node.narinfo_statuses(&closure.paths).iter().all(|&s| s == 200)
    });
}

/// Whether `nixmesh peers --json` output lists `id` as connected.
pub fn lists_connected(peers: &serde_json::Value, id: &str) -> bool {
    peers.as_array().is_some_and(|all| all.iter().any(|p| p["id"] == id && p["connected"] == true))
}

/// How many paths `nixmesh peers --json` output says `id` advertises, if it lists `id`.
pub fn advertised_paths(peers: &serde_json::Value, id: &str) -> Option<u64> {
    peers.as_array()?.iter().find(|p| p["id"] == id)?["paths"].as_u64()
}
