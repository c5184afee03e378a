//! A LAN of network namespaces whose host 1 holds signed paths and host 2's node offers them:
//! where the tests of peers that wedge, freeze or go away start from.

use std::time::Duration;

use nixmesh_tests::{CacheKey, Closure, HostStore, Lan, Node, NodeOptions, wait_until};

use super::fill_holder;

/// How long host 2's node may take to offer host 1's paths once both started.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(60);

/// How host 2's node comes to know host 1's.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum HolderKnown {
    /// As a static peer: it dials it as soon as it starts (and again after a restart).
    AsStaticPeer,
    /// By discovery on the LAN only.
    ByDiscovery,
}

/// A LAN whose host 1's node holds `probes` (signed) and a file of patterned bytes, every
/// node trusting the key, with nodes on hosts 1 and 2 (the others left to the test), and host
/// 2's node offering host 1's paths.
pub struct HolderLan {
    pub nodes: Vec<Node>,
    pub stores: Vec<HostStore>,
    pub probes: Closure,
    pub big_path: String,
    /// What the nodes were started with (host 2's static peer in it, if any).
    pub options: NodeOptions,
    /// Host 1's node's peer id (asked once: a frozen node answers nothing).
    pub holder_id: String,
    pub lan: Lan,
}

impl HolderLan {
    /// `hosts` hosts (at least 2); the holder's closure of `paths` paths and its file of
    /// `big_bytes` bytes; waits until host 2's node offers them.
    pub fn new(hosts: usize, paths: usize, big_bytes: u32, known: HolderKnown) -> HolderLan {
        let lan = Lan::new(hosts);
        let stores: Vec<HostStore> = lan.hosts()[..2].iter().map(HostStore::start).collect();
        let key = CacheKey::generate(lan.dir(), "holder-1");
        let (probes, big_path) = fill_holder(&stores[0], &key, paths, "big-file", big_bytes);
        let mut options = NodeOptions {
            trusted_keys: vec![key.public.clone()],
            log_filter: "info".to_owned(),
            ..Default::default()
        };
        let holder = Node::start(stores[0].host(), &stores[0], &options);
        let holder_id = holder.peer_id();
        if known == HolderKnown::AsStaticPeer {
            options.peers =
                vec![format!("/ip4/{}/tcp/7374/p2p/{}", lan.hosts()[0].address(), holder_id)];
        }
        let other = Node::start(stores[1].host(), &stores[1], &options);
        let nodes = vec![holder, other];
        wait_until(DISCOVERY_LIMIT, "host 2's node to offer host 1's paths", || {
            let wanted = [probes.top.clone(), big_path.clone()];
            nodes[1].narinfo_statuses(&wanted).iter().all(|&s| s == 200)
        });
        HolderLan { nodes, stores, probes, big_path, options, holder_id, lan }
    }
}
