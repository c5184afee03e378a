//! The write path: snapshots, deltas, forgetting, folding change records, the bound and the
//! table's slots.

use std::collections::{BTreeSet, HashMap};

use libp2p::PeerId;

use super::{hash, hashes, holders_set, open_temp};
use crate::index::persist::MAX_CHANGES;
use crate::index::{Index, IndexError, table};

#[test]
fn snapshot_duplicates_count_once() {
    let (_dir, index) = open_temp();
    let peer = PeerId::random();
    let mut paths = hashes(0..10);
    paths.extend(hashes(0..10));
    index.replace_peer(&peer, 1, 1, &paths).unwrap();
    assert_eq!(index.path_count(&peer), 10);
    assert_eq!(index.total_entries(), 10);
}

#[test]
fn delta_applies_and_moves_position() {
    let (_dir, index) = open_temp();
    let peer = PeerId::random();
    index.replace_peer(&peer, 1, 5, &hashes(0..10)).unwrap();
    index.apply_delta(&peer, 1, 5, 6, &hashes(10..13), &hashes(0..2)).unwrap();
    assert!(index.holders(&hash(0)).unwrap().is_empty());
    assert!(index.holders(&hash(1)).unwrap().is_empty());
    assert_eq!(index.holders(&hash(2)).unwrap(), vec![peer]);
    assert_eq!(index.holders(&hash(12)).unwrap(), vec![peer]);
    assert_eq!(index.peer_position(&peer).unwrap(), Some((1, 6)));
    assert_eq!(index.path_count(&peer), 11);
    // Re-adding a held path and removing an unknown one leave the count alone.
    index.apply_delta(&peer, 1, 6, 7, &hashes(12..13), &hashes(500..501)).unwrap();
    assert_eq!(index.path_count(&peer), 11);
    assert_eq!(index.total_entries(), 11);
}

#[test]
fn delta_out_of_step_is_refused_and_changes_nothing() {
    let (_dir, index) = open_temp();
    let peer = PeerId::random();
    index.replace_peer(&peer, 1, 5, &hashes(0..10)).unwrap();
    for (epoch, from, to) in [(1, 4, 6), (1, 6, 7), (2, 5, 6), (1, 5, 4)] {
        let e = index.apply_delta(&peer, epoch, from, to, &hashes(20..30), &hashes(0..5));
        let e = e.expect_err("out of step");
        assert!(e.is_out_of_step(), "{e}");
        assert!(matches!(e, IndexError::OutOfStep { stored: Some((1, 5)), .. }), "{e}");
        assert!(e.to_string().contains("a snapshot is needed"), "{e}");
    }
    assert_eq!(index.peer_position(&peer).unwrap(), Some((1, 5)));
    assert_eq!(index.path_count(&peer), 10);
    assert!(index.holders(&hash(20)).unwrap().is_empty());
    assert_eq!(index.holders(&hash(0)).unwrap(), vec![peer]);

    let stranger = PeerId::random();
    let e = index.apply_delta(&stranger, 1, 0, 1, &hashes(0..1), &[]).unwrap_err();
    assert!(matches!(e, IndexError::OutOfStep { stored: None, .. }), "{e}");
    assert_eq!(index.peer_position(&stranger).unwrap(), None);
}

#[test]
fn replace_with_overlap_keeps_only_the_new_set() {
    let (_dir, index) = open_temp();
    let peer = PeerId::random();
    index.replace_peer(&peer, 1, 1, &hashes(0..100)).unwrap();
    index.replace_peer(&peer, 2, 1, &hashes(50..150)).unwrap();
    assert!(index.holders(&hash(49)).unwrap().is_empty());
    assert_eq!(index.holders(&hash(50)).unwrap(), vec![peer]);
    assert_eq!(index.holders(&hash(149)).unwrap(), vec![peer]);
    assert_eq!(index.path_count(&peer), 100);
    assert_eq!(index.total_entries(), 100);
    assert_eq!(index.peer_position(&peer).unwrap(), Some((2, 1)));
    index.replace_peer(&peer, 2, 2, &[]).unwrap();
    assert!(index.holders(&hash(50)).unwrap().is_empty());
    assert_eq!(index.path_count(&peer), 0);
    assert_eq!(index.peer_position(&peer).unwrap(), Some((2, 2)));
}

#[test]
fn forget_removes_only_that_peer() {
    let (_dir, index) = open_temp();
    let (a, b) = (PeerId::random(), PeerId::random());
    index.replace_peer(&a, 1, 1, &hashes(0..10)).unwrap();
    index.replace_peer(&b, 1, 1, &hashes(5..15)).unwrap();
    index.forget_peer(&a).unwrap();
    assert!(index.holders(&hash(2)).unwrap().is_empty());
    assert_eq!(index.holders(&hash(7)).unwrap(), vec![b]);
    assert_eq!(index.peer_position(&a).unwrap(), None);
    assert_eq!(index.path_count(&a), 0);
    assert_eq!(index.total_entries(), 10);
    assert_eq!(index.peers().unwrap().iter().map(|p| p.id).collect::<Vec<_>>(), vec![b]);
    index.forget_peer(&a).unwrap(); // unknown: nothing to do

    // Coming back after being forgotten starts afresh.
    index.replace_peer(&a, 2, 1, &hashes(100..103)).unwrap();
    assert_eq!(index.holders(&hash(100)).unwrap(), vec![a]);
    assert!(index.holders(&hash(2)).unwrap().is_empty());
    assert_eq!(index.total_entries(), 13);
}

#[test]
fn out_of_step_names_the_peer() {
    let (_dir, index) = open_temp();
    let peer = PeerId::random();
    let e = index.apply_delta(&peer, 1, 2, 3, &[], &[]).unwrap_err();
    assert!(e.to_string().contains(&peer.to_string()), "{e}");
}

/// Random snapshots, deltas and forgets over a few peers and a small universe of paths,
/// checked against a plain in-memory model after every step and after a reopen.
#[test]
fn random_operations_match_a_model() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let mut index = Index::open(&path).unwrap();
    let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
    let mut model = Model::new();
    let mut rng = StdRng::seed_from_u64(7);
    let some_paths = |rng: &mut StdRng| -> Vec<u32> {
        let n = rng.gen_range(0..12);
        (0..n).map(|_| rng.gen_range(0..40)).collect()
    };
    for step in 0..300 {
        let peer = peers[rng.gen_range(0..peers.len())];
        match rng.gen_range(0..10) {
            0..=2 => {
                let paths = some_paths(&mut rng);
                let (epoch, generation) = (rng.gen_range(0..3), rng.gen_range(0..5));
                index
                    .replace_peer(
                        &peer,
                        epoch,
                        generation,
                        &paths.iter().map(|&n| hash(n)).collect::<Vec<_>>(),
                    )
                    .unwrap();
                model.insert(peer, (epoch, generation, paths.into_iter().collect()));
            }
            3..=7 => {
                let (added, removed) = (some_paths(&mut rng), some_paths(&mut rng));
                let position = model.get(&peer).map(|m| (m.0, m.1));
                // Mostly in step, sometimes not.
                let (epoch, from) = match position {
                    Some(p) if rng.gen_bool(0.8) => p,
                    _ => (rng.gen_range(0..3), rng.gen_range(0..5)),
                };
                let to = from + rng.gen_range(0..3);
                let result = index.apply_delta(
                    &peer,
                    epoch,
                    from,
                    to,
                    &added.iter().map(|&n| hash(n)).collect::<Vec<_>>(),
                    &removed.iter().map(|&n| hash(n)).collect::<Vec<_>>(),
                );
                if position == Some((epoch, from)) {
                    result.unwrap();
                    let entry = model.get_mut(&peer).unwrap();
                    entry.1 = to;
                    entry.2.retain(|n| !removed.contains(n));
                    entry.2.extend(added);
                } else {
                    assert!(result.unwrap_err().is_out_of_step());
                }
            }
            8 => {
                index.forget_peer(&peer).unwrap();
                model.remove(&peer);
            }
            _ => {
                drop(index);
                index = Index::open(&path).unwrap();
            }
        }
        assert_matches_model(&index, &model, &peers, step);
    }
}

/// peer -> (epoch, generation, paths), as [`random_operations_match_a_model`] keeps it.
type Model = HashMap<PeerId, (u64, u64, BTreeSet<u32>)>;

/// The index holds what `model` says for each of the paths 0..40 and each of `peers`.
fn assert_matches_model(index: &Index, model: &Model, peers: &[PeerId], step: u32) {
    for n in 0..40 {
        let expected: BTreeSet<PeerId> =
            model.iter().filter(|(_, m)| m.2.contains(&n)).map(|(p, _)| *p).collect();
        assert_eq!(holders_set(index, &hash(n)), expected, "step {step}, path {n}");
    }
    for peer in peers {
        let m = model.get(peer);
        assert_eq!(index.peer_position(peer).unwrap(), m.map(|m| (m.0, m.1)));
        assert_eq!(index.path_count(peer), m.map_or(0, |m| m.2.len() as u64));
    }
    let total: usize = model.values().map(|m| m.2.len()).sum();
    assert_eq!(index.total_entries(), total as u64, "step {step}");
}

/// Many deltas: change records are folded into the base now and then, and what is stored
/// after a reopen is what was applied, at the position last applied.
#[test]
fn deltas_are_folded_and_resume_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let peer = PeerId::random();
    let mut held: BTreeSet<u32> = (0..500).collect();
    {
        let index = Index::open(&path).unwrap();
        index.replace_peer(&peer, 4, 10, &hashes(0..500)).unwrap();
        for step in 0..(2 * MAX_CHANGES + 5) {
            let (add, remove) = (1000 + step, step);
            let generation = 10 + u64::from(step);
            index
                .apply_delta(
                    &peer,
                    4,
                    generation,
                    generation + 1,
                    &hashes(add..add + 1),
                    &hashes(remove..remove + 1),
                )
                .unwrap();
            held.insert(add);
            held.remove(&remove);
            let known = index.known().by_id[&peer];
            assert!(known.changes < MAX_CHANGES, "step {step}: {} change records", known.changes);
        }
    }
    let index = Index::open(&path).unwrap();
    let last = 10 + u64::from(2 * MAX_CHANGES + 5);
    assert_eq!(index.peer_position(&peer).unwrap(), Some((4, last)));
    assert_eq!(index.path_count(&peer), held.len() as u64);
    for n in 0..1200 {
        assert_eq!(!index.holders(&hash(n)).unwrap().is_empty(), held.contains(&n), "path {n}");
    }
    // The stream goes on from there.
    index.apply_delta(&peer, 4, last, last + 1, &hashes(5000..5001), &[]).unwrap();
    assert_eq!(index.holders(&hash(5000)).unwrap(), vec![peer]);
}

#[test]
fn at_the_bound_the_peers_with_the_most_give_way() {
    let (_dir, index) = open_temp();
    index.set_max_paths(100);
    let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
    index.replace_peer(&a, 1, 1, &hashes(0..60)).unwrap();
    index.replace_peer(&b, 1, 1, &hashes(100..130)).unwrap();

    // Three peers share 100: 33 each. c asks for 40, over its share: refused, nothing changes.
    let e = index.replace_peer(&c, 1, 1, &hashes(200..240)).unwrap_err();
    assert!(e.is_full() && !e.is_damage(), "{e}");
    assert!(matches!(e, IndexError::Full { share: 33, .. }), "{e}");
    assert!(
        e.to_string().contains(&c.to_string()) && e.to_string().contains("index_max_paths"),
        "{e}"
    );
    assert_eq!(index.peer_position(&c).unwrap(), None);
    assert!(index.holders(&hash(200)).unwrap().is_empty());
    assert_eq!(index.total_entries(), 90);

    // Within its share, c gets room: a, the one over its share, is dropped.
    index.replace_peer(&c, 1, 1, &hashes(200..230)).unwrap();
    assert_eq!(index.holders(&hash(200)).unwrap(), vec![c]);
    assert_eq!(index.peer_position(&a).unwrap(), None, "a is dropped");
    assert!(index.holders(&hash(0)).unwrap().is_empty());
    assert_eq!(index.holders(&hash(100)).unwrap(), vec![b]);
    assert_eq!(index.total_entries(), 60);

    // Deltas: growing within the bound is fine; past it and over its share is refused.
    index.apply_delta(&b, 1, 1, 2, &hashes(130..140), &[]).unwrap();
    let e = index.apply_delta(&c, 1, 1, 2, &hashes(230..290), &[]).unwrap_err();
    assert!(matches!(e, IndexError::Full { share: 50, .. }), "{e}");
    assert_eq!(index.peer_position(&c).unwrap(), Some((1, 1)), "nothing changed");
    assert!(index.holders(&hash(250)).unwrap().is_empty());
    // a comes back small and fits beside them.
    index.replace_peer(&a, 2, 1, &hashes(0..20)).unwrap();
    assert_eq!(index.total_entries(), 90);
    assert!(index.total_entries() <= 100);
}

#[test]
fn the_table_tells_apart_a_bounded_number_of_peers() {
    let (_dir, index) = open_temp();
    let peers: Vec<PeerId> = (0..table::SLOTS).map(|_| PeerId::random()).collect();
    for (n, peer) in (0u32..).zip(&peers) {
        index.replace_peer(peer, 1, 1, &hashes(n..n + 1)).unwrap();
    }
    let one_more = PeerId::random();
    let e = index.replace_peer(&one_more, 1, 1, &hashes(0..1)).unwrap_err();
    assert!(matches!(e, IndexError::TooManyPeers { .. }) && e.is_full(), "{e}");
    // A forgotten peer's slot is reused, and its paths are not attributed to the newcomer.
    index.forget_peer(&peers[7]).unwrap();
    index.replace_peer(&one_more, 1, 1, &hashes(100_000..100_001)).unwrap();
    assert!(index.holders(&hash(7)).unwrap().is_empty());
    assert_eq!(index.holders(&hash(100_000)).unwrap(), vec![one_more]);
    assert_eq!(index.holders(&hash(8)).unwrap(), vec![peers[8]]);
}
