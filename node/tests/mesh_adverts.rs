//! Two meshes in one process on loopback, with static peers and no mDNS: one advertises store
//! paths, the other follows them into its index, through a snapshot, deltas, a disconnect and
//! a restart of the follower that resumes from its index.

use std::sync::Arc;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use nixmesh_node::adverts::{self, AdvertLog};
use nixmesh_node::index::Index;
use nixmesh_node::mesh::{DialTarget, Mesh};
use nixmesh_node::node::shutdown::Shutdown;
use nixmesh_protocol::StorePathHash;
use tokio::sync::mpsc;
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(20);

/// A node with only the parts this test needs: mesh, advert log and subscriptions.
struct TestNode {
    mesh: Mesh,
    log: Arc<AdvertLog>,
    index: Arc<Index>,
    shutdown: Shutdown,
}

impl TestNode {
    async fn start(state: &std::path::Path) -> TestNode {
        let shutdown = Shutdown::new();
        let (events_tx, events) = mpsc::channel(64);
        let keypair = nixmesh_node::local::identity::load_or_create(state).unwrap();
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let mesh = Mesh::start(keypair, &[listen], events_tx, shutdown.clone()).unwrap();
        let index = Arc::new(Index::open(&state.join("index.redb")).unwrap());
        let log = adverts::start(&mesh, index.clone(), events, &shutdown);
        TestNode { mesh, log, index, shutdown }
    }

    async fn address(&self) -> Multiaddr {
        let mut addresses = self.mesh.listen_addresses();
        let address = addresses.wait_for(|a| !a.is_empty()).await.unwrap()[0].clone();
        address.with(libp2p::multiaddr::Protocol::P2p(self.mesh.local_peer_id()))
    }

    /// Stops the node and checks that its index is closed, so the state dir can be reused.
    async fn stop(self) {
        assert!(self.shutdown.stop(Duration::from_secs(10)).await, "every task ended");
        let TestNode { index, .. } = self;
        assert_eq!(Arc::strong_count(&index), 1, "nothing else holds the index");
    }

    fn holders(&self, hash: &StorePathHash) -> Vec<PeerId> {
        self.index.holders(hash).unwrap()
    }
}

fn hashes(range: std::ops::Range<u32>) -> Vec<StorePathHash> {
    range
        .map(|n| {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&n.to_be_bytes());
            StorePathHash(h)
        })
        .collect()
}

async fn until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertisements_reach_the_follower_and_survive_its_restart() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let holder = TestNode::start(dirs.0.path()).await;
    let holder_id = holder.mesh.local_peer_id();
    // 70k paths: more than one snapshot frame.
    let first = hashes(0..70_000);
    holder.log.update(first.clone());

    let follower = TestNode::start(dirs.1.path()).await;
    follower.mesh.want(DialTarget::from_multiaddr(holder.address().await)).await;
    let probe = first[0];
    until("the snapshot is indexed", || follower.index.path_count(&holder_id) == 70_000).await;
    assert_eq!(follower.holders(&probe), vec![holder_id]);
    assert!(follower.mesh.peers().is_connected(&holder_id));

    // A change travels as a delta.
    let second = hashes(1..70_001);
    holder.log.update(second);
    let added = hashes(70_000..70_001)[0];
    let removed = hashes(0..1)[0];
    until("the delta is indexed", || follower.holders(&added) == vec![holder_id]).await;
    assert!(follower.holders(&removed).is_empty());
    assert_eq!(follower.index.path_count(&holder_id), 70_000);
    let position = follower.index.peer_position(&holder_id).unwrap().unwrap();
    assert_eq!(position, (holder.log.position().epoch, 2));

    // The follower restarts with the same state dir; it knows the holder's paths at once and
    // resumes from its position, receiving only the change made while it was away.
    follower.stop().await;
    holder.log.update(hashes(1..70_002));
    let follower = TestNode::start(dirs.1.path()).await;
    assert_eq!(follower.index.path_count(&holder_id), 70_000, "the index survived the restart");
    follower.mesh.want(DialTarget::from_multiaddr(holder.address().await)).await;
    let newest = hashes(70_001..70_002)[0];
    until("the change made while away is indexed", || follower.holders(&newest) == vec![holder_id])
        .await;
    assert_eq!(follower.index.peer_position(&holder_id).unwrap().unwrap().1, 3);

    // The holder goes away: the follower sees the connection close.
    holder.stop().await;
    until("the holder is seen as gone", || !follower.mesh.peers().is_connected(&holder_id)).await;
}
