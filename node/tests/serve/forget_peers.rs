//! Peers that left: their paths forgotten after `--forget-peers-after`, not before.

use std::time::Duration;

use crate::pair::{DEADLINE, Pair};
use crate::support::{loopback_config as config, nix_available};
use nixmesh_node::node::RunningNode;
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::wait_until;

#[test]
fn a_peer_that_left_is_forgotten_after_the_configured_time() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    pair.s1.add_file("held", b"a path held by node 1");
    let n1 = pair.start("n1", &pair.s1, vec![]);
    let forget_after = Duration::from_secs(3);
    let peers = pair.runtime.block_on(n1.p2p_addresses());
    let n2_config = nixmesh_node::config::ServeConfig {
        forget_peers_after: forget_after,
        ..config(&pair.dir.path().join("n2"), &pair.s2, &pair.key.public, peers)
    };
    let n2 = pair.runtime.block_on(RunningNode::start(n2_config)).unwrap();
    let status = |node: &RunningNode| -> serde_json::Value {
        serde_json::from_slice(&get(node.http_address(), "/_nixmesh/status").1).unwrap()
    };
    let held = nixmesh_tests::wait_for(DEADLINE, "node 1 to list its store", || {
        status(&n1)["local_paths"].as_u64().filter(|&n| n > 0)
    });
    wait_until(DEADLINE, "node 2 to index node 1's paths", || status(&n2)["indexed_paths"] == held);

    pair.stop(n1);
    let left = std::time::Instant::now();
    wait_until(DEADLINE, "node 2 to see node 1 gone", || status(&n2)["peers_connected"] == 0);
    // Kept while away, then forgotten once the time has passed.
    assert_eq!(status(&n2)["indexed_paths"], held, "kept at first, for a return");
    wait_until(DEADLINE, "node 2 to forget node 1", || status(&n2)["indexed_paths"] == 0);
    // Forgotten the configured time after it was last heard from: at most one ping interval
    // (a second) before it stopped.
    let heard_last = Duration::from_secs(1);
    assert!(left.elapsed() + heard_last >= forget_after, "forgotten after {:?}", left.elapsed());
    pair.stop(n2);
}
