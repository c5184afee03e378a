//! Two hosts on this machine, each with its store, and the time limit the tests wait within.

use std::time::Duration;

use crate::support::loopback_config as config;
use nixmesh_node::node::RunningNode;
use nixmesh_tests::{CacheKey, Host, HostStore};

/// How long a test waits for a node to index, serve or notice something.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Two hosts on this machine, each with its store, a signing key, and a runtime for their
/// nodes: host 1 holds, host 2 asks.
pub struct Pair {
    pub dir: tempfile::TempDir,
    pub key: CacheKey,
    pub s1: HostStore,
    pub s2: HostStore,
    pub runtime: tokio::runtime::Runtime,
}

impl Pair {
    pub fn new() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::generate(dir.path(), "loopback-1");
        let s1 = HostStore::start(&Host::local_in(dir.path(), "h1"));
        let s2 = HostStore::start(&Host::local_in(dir.path(), "h2"));
        Pair { dir, key, s1, s2, runtime: tokio::runtime::Runtime::new().unwrap() }
    }

    /// A node named `name` (its state dir) on `store`, with `peers`.
    pub fn start(
        &self,
        name: &str,
        store: &HostStore,
        peers: Vec<libp2p::Multiaddr>,
    ) -> RunningNode {
        let config = config(&self.dir.path().join(name), store, &self.key.public, peers);
        self.runtime.block_on(RunningNode::start(config)).unwrap()
    }

    /// Node 1 on host 1, and node 2 on host 2 with node 1 as its peer.
    pub fn start_both(&self) -> (RunningNode, RunningNode) {
        let n1 = self.start("n1", &self.s1, vec![]);
        let n2 = self.start("n2", &self.s2, self.runtime.block_on(n1.p2p_addresses()));
        (n1, n2)
    }

    pub fn stop(&self, node: RunningNode) {
        self.runtime.block_on(node.stop()).unwrap();
    }
}
