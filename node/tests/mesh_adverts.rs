//! Two meshes in one process on loopback, with static peers and no mDNS: one advertises store
//! paths, the other follows them into its index, through a snapshot, deltas, a disconnect and
//! a restart of the follower that resumes from its index.

mod support;

use std::time::Duration;

use nixmesh_node::mesh::Access;
use support::{AdvertNode, hashes, until};

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertisements_reach_the_follower_and_survive_its_restart() {
    let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let holder = AdvertNode::start(dirs.0.path(), Access::default()).await;
    let holder_id = holder.mesh.local_peer_id();
    // 70k paths: more than one snapshot frame.
    let first = hashes(0..70_000);
    holder.log.update(first.clone());

    let follower = AdvertNode::start(dirs.1.path(), Access::default()).await;
    follower.dial(&holder).await;
    let probe = first[0];
    until("the snapshot is indexed", DEADLINE, || follower.index.path_count(&holder_id) == 70_000)
        .await;
    assert_eq!(follower.holders(&probe), vec![holder_id]);
    assert!(follower.mesh.peers().is_connected(&holder_id));

    // A change travels as a delta.
    let second = hashes(1..70_001);
    holder.log.update(second);
    let added = hashes(70_000..70_001)[0];
    let removed = hashes(0..1)[0];
    until("the delta is indexed", DEADLINE, || follower.holders(&added) == vec![holder_id]).await;
    assert!(follower.holders(&removed).is_empty());
    assert_eq!(follower.index.path_count(&holder_id), 70_000);
    let position = follower.index.peer_position(&holder_id).unwrap().unwrap();
    assert_eq!(position, (holder.log.position().epoch, 2));

    // The follower restarts with the same state dir; it knows the holder's paths at once and
    // resumes from its position, receiving only the change made while it was away.
    follower.stop().await;
    holder.log.update(hashes(1..70_002));
    let follower = AdvertNode::start(dirs.1.path(), Access::default()).await;
    assert_eq!(follower.index.path_count(&holder_id), 70_000, "the index survived the restart");
    follower.dial(&holder).await;
    let newest = hashes(70_001..70_002)[0];
    until("the change made while away is indexed", DEADLINE, || {
        follower.holders(&newest) == vec![holder_id]
    })
    .await;
    assert_eq!(follower.index.peer_position(&holder_id).unwrap().unwrap().1, 3);

    // The holder goes away: the follower sees the connection close.
    holder.stop().await;
    until("the holder is seen as gone", DEADLINE, || {
        !follower.mesh.peers().is_connected(&holder_id)
    })
    .await;
}
