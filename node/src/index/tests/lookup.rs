//! Lookups: who holds a path, at most some of them in turn, and the peers' positions.

use std::collections::BTreeSet;

use libp2p::PeerId;

use super::{hash, hashes, holders_set, open_temp};

#[test]
fn snapshot_then_lookup() {
    let (_dir, index) = open_temp();
    let peer = PeerId::random();
    index.replace_peer(&peer, 7, 3, &hashes(0..100)).unwrap();
    assert_eq!(index.holders(&hash(42)).unwrap(), vec![peer]);
    assert!(index.holders(&hash(100)).unwrap().is_empty());
    assert_eq!(index.peer_position(&peer).unwrap(), Some((7, 3)));
    assert_eq!(index.path_count(&peer), 100);
    assert_eq!(index.total_entries(), 100);
}

#[test]
fn two_peers_hold_one_path() {
    let (_dir, index) = open_temp();
    let (a, b) = (PeerId::random(), PeerId::random());
    index.replace_peer(&a, 1, 1, &hashes(0..10)).unwrap();
    index.replace_peer(&b, 1, 1, &hashes(5..15)).unwrap();
    assert_eq!(holders_set(&index, &hash(7)), BTreeSet::from([a, b]));
    assert_eq!(index.holders(&hash(2)).unwrap(), vec![a]);
    assert_eq!(index.holders(&hash(12)).unwrap(), vec![b]);
    assert_eq!(index.total_entries(), 20);
    index.apply_delta(&a, 1, 1, 2, &[], &hashes(7..8)).unwrap();
    assert_eq!(index.holders(&hash(7)).unwrap(), vec![b]);
}

#[test]
fn holders_among_stops_at_max_takes_only_accepted_and_turns() {
    let (_dir, index) = open_temp();
    let peers: Vec<PeerId> = (0..40).map(|_| PeerId::random()).collect();
    for peer in &peers {
        index.replace_peer(peer, 1, 1, &hashes(0..5)).unwrap();
    }
    let all: BTreeSet<PeerId> = peers.iter().copied().collect();
    let picked = index.holders_among(&hash(3), 8, |_| true);
    assert_eq!(picked.len(), 8);
    assert!(picked.iter().all(|p| all.contains(p)));
    assert_eq!(picked.iter().collect::<BTreeSet<_>>().len(), 8, "no peer twice");
    let odd: BTreeSet<PeerId> = peers.iter().skip(1).step_by(2).copied().collect();
    let among_odd = index.holders_among(&hash(3), 100, |p| odd.contains(p));
    assert_eq!(among_odd.iter().copied().collect::<BTreeSet<_>>(), odd);
    assert!(index.holders_among(&hash(9), 8, |_| true).is_empty());
    assert!(index.holders_among(&hash(3), 0, |_| true).is_empty());
    // Call after call, the 8 asked change until every holder has been among them.
    let mut seen = BTreeSet::new();
    for _ in 0..4 * peers.len() {
        seen.extend(index.holders_among(&hash(3), 8, |_| true));
    }
    assert_eq!(seen, all);
}

#[test]
fn peers_lists_positions_and_counts() {
    let (_dir, index) = open_temp();
    let (a, b) = (PeerId::random(), PeerId::random());
    index.replace_peer(&a, 1, 4, &hashes(0..3)).unwrap();
    index.replace_peer(&b, 9, 2, &hashes(0..5)).unwrap();
    let peers = index.peers().unwrap();
    assert_eq!(peers.len(), 2);
    let pa = peers.iter().find(|p| p.id == a).unwrap();
    let pb = peers.iter().find(|p| p.id == b).unwrap();
    assert_eq!((pa.epoch, pa.generation, pa.paths), (1, 4, 3));
    assert_eq!((pb.epoch, pb.generation, pb.paths), (9, 2, 5));
    assert!(pa.last_update_unix > 1_600_000_000);
    assert!(peers.windows(2).all(|w| w[0].id < w[1].id));
}

/// Lookups run beside snapshots, deltas and forgets of other peers and never miss a path of
/// a peer that is not changing.
#[test]
fn lookups_beside_writes_see_steady_peers_whole() {
    let (_dir, index) = open_temp();
    let steady = PeerId::random();
    index.replace_peer(&steady, 1, 1, &hashes(0..5000)).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for round in 0..20u32 {
                let other = PeerId::random();
                let base = 10_000 + round * 3000;
                index.replace_peer(&other, 1, 1, &hashes(base..base + 3000)).unwrap();
                index
                    .apply_delta(&other, 1, 1, 2, &hashes(0..100), &hashes(base..base + 100))
                    .unwrap();
                index.forget_peer(&other).unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let holders = index.holders(&hash(n % 5000)).unwrap();
            assert!(holders.contains(&steady), "path {} lost its steady holder", n % 5000);
            n += 1;
        }
    });
    assert_eq!(index.total_entries(), 5000);
}
