//! Peer exchange in one process on loopback (no mDNS): nodes told of each other by a common
//! peer connect, and an allow-list holds against what is told. A hub with no allow-list dials
//! three nodes; two of them allow only each other and the hub, the third (the outsider) is
//! open. The two find each other through the hub; neither ever connects to the outsider,
//! though the open hub tells the outsider of them and the outsider dials them: they refuse
//! its connections as soon as noise names it (the outsider sees each open and close at once),
//! and never hear of it.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use nixmesh_node::discovery;
use nixmesh_node::mesh::{Access, DialTarget, Mesh};
use nixmesh_node::node::shutdown::Shutdown;
use support::{dial_address, mesh_without_events, until};
use tokio::time::Instant;

/// How long nodes told of each other may take to connect (asked within a second of
/// connecting to the hub).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long the outsider is watched for a connection it must not get.
const OUTSIDER_WATCH: Duration = Duration::from_secs(3);

struct ExchangeNode {
    mesh: Mesh,
    shutdown: Shutdown,
}

impl ExchangeNode {
    fn start(keypair: libp2p::identity::Keypair, access: Access) -> ExchangeNode {
        let shutdown = Shutdown::new();
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let mesh = mesh_without_events(keypair, &[listen], access, &shutdown);
        discovery::start(&mesh, false, &shutdown);
        ExchangeNode { mesh, shutdown }
    }

    fn id(&self) -> PeerId {
        self.mesh.local_peer_id()
    }

    async fn address(&self) -> Multiaddr {
        dial_address(&self.mesh).await
    }

    fn connected_to(&self, other: &ExchangeNode) -> bool {
        self.mesh.peers().is_connected(&other.id())
    }

    async fn stop(self) {
        assert!(self.shutdown.stop(Duration::from_secs(10)).await, "every task ended");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_told_of_connect_and_an_allow_list_keeps_the_outsider_out() {
    let keys: Vec<_> = (0..4).map(|_| libp2p::identity::Keypair::generate_ed25519()).collect();
    let ids: Vec<PeerId> = keys.iter().map(|k| k.public().to_peer_id()).collect();
    let fenced =
        Access { allow_peers: HashSet::from([ids[0], ids[1], ids[2]]), ..Access::default() };
    let hub = ExchangeNode::start(keys[0].clone(), Access::default());
    let a = ExchangeNode::start(keys[1].clone(), fenced.clone());
    let b = ExchangeNode::start(keys[2].clone(), fenced);
    let outsider = ExchangeNode::start(keys[3].clone(), Access::default());
    // The hub dials each (so it knows the addresses it reached them at: identify's loopback
    // addresses are not kept, but a dialled one is).
    for node in [&a, &b, &outsider] {
        hub.mesh.want(DialTarget::from_multiaddr(node.address().await)).await;
    }

    until("the two fenced nodes connect, told of each other by the hub", CONNECT_LIMIT, || {
        a.connected_to(&b) && b.connected_to(&a)
    })
    .await;
    until("the outsider connects to the hub", CONNECT_LIMIT, || outsider.connected_to(&hub)).await;
    let end = Instant::now() + OUTSIDER_WATCH;
    while Instant::now() < end {
        for fenced in [&a, &b] {
            assert!(!fenced.connected_to(&outsider), "a fenced node is connected to the outsider");
            let known = fenced.mesh.peers().snapshot();
            assert!(known.iter().all(|(p, _)| *p != outsider.id()), "it knows of the outsider");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for node in [hub, a, b, outsider] {
        node.stop().await;
    }
}
