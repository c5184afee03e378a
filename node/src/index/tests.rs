use std::collections::BTreeSet;

use super::*;

fn hash(n: u32) -> StorePathHash {
    let mut bytes = [0u8; 20];
    bytes[..4].copy_from_slice(&n.to_be_bytes());
    bytes[19] = 0x5a;
    StorePathHash(bytes)
}

fn hashes(range: std::ops::Range<u32>) -> Vec<StorePathHash> {
    range.map(hash).collect()
}

fn open_temp() -> (tempfile::TempDir, Index) {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Index::open(&dir.path().join("index.redb")).expect("open");
    (dir, index)
}

fn holders_set(index: &Index, h: &StorePathHash) -> BTreeSet<PeerId> {
    index.holders(h).expect("holders").into_iter().collect()
}

#[test]
fn index_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Index>();
}

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

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
    {
        let index = Index::open(&path).unwrap();
        index.replace_peer(&a, 1, 1, &hashes(0..1000)).unwrap();
        index.apply_delta(&a, 1, 1, 2, &hashes(1000..1010), &hashes(0..10)).unwrap();
        index.replace_peer(&b, 3, 8, &hashes(500..600)).unwrap();
        index.replace_peer(&c, 1, 1, &hashes(0..5)).unwrap();
        index.forget_peer(&c).unwrap();
    }
    let index = Index::open(&path).unwrap();
    assert_eq!(index.peer_position(&a).unwrap(), Some((1, 2)));
    assert_eq!(index.peer_position(&b).unwrap(), Some((3, 8)));
    assert_eq!(index.peer_position(&c).unwrap(), None);
    assert_eq!(index.path_count(&a), 1000);
    assert_eq!(index.path_count(&b), 100);
    assert_eq!(index.total_entries(), 1100);
    assert_eq!(holders_set(&index, &hash(550)), BTreeSet::from([a, b]));
    assert!(index.holders(&hash(5)).unwrap().is_empty());
    // The stream resumes from the stored position; a new peer gets a fresh number.
    index.apply_delta(&a, 1, 2, 3, &hashes(0..1), &[]).unwrap();
    index.replace_peer(&c, 1, 1, &hashes(2000..2001)).unwrap();
    assert_eq!(index.holders(&hash(0)).unwrap(), vec![a]);
    assert_eq!(index.holders(&hash(2000)).unwrap(), vec![c]);
    assert_eq!(index.holders(&hash(1)).unwrap(), Vec::<PeerId>::new());
}

#[test]
fn garbage_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    let e = Index::open(&path).expect_err("garbage is not an index");
    let message = e.to_string();
    assert!(matches!(e, IndexError::Corrupt { .. }), "{message}");
    assert!(message.contains(&path.display().to_string()), "{message}");
    assert!(message.contains("move the file away"), "{message}");
}

#[test]
fn other_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(META_SCHEMA, SCHEMA_VERSION + 1).unwrap();
        txn.commit().unwrap();
    }
    let e = Index::open(&path).unwrap_err();
    assert!(matches!(e, IndexError::Schema { .. }), "{e}");
    assert!(e.to_string().contains("rebuilt from peers"), "{e}");
}

#[test]
fn sorted_difference_is_set_difference() {
    let a = [[1u8; 20], [3; 20], [5; 20], [7; 20]];
    let b = [[0u8; 20], [3; 20], [4; 20], [7; 20], [9; 20]];
    assert_eq!(sorted_difference(&a, &b), vec![&[1u8; 20], &[5; 20]]);
    assert_eq!(sorted_difference(&b, &a), vec![&[0u8; 20], &[4; 20], &[9; 20]]);
    assert!(sorted_difference(&a, &a).is_empty());
    assert_eq!(sorted_difference(&a, &[]).len(), 4);
}

/// Random snapshots, deltas and forgets over a few peers and a small universe of paths,
/// checked against a plain in-memory model after every step and after a reopen.
#[test]
fn random_operations_match_a_model() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let mut index = Index::open(&path).unwrap();
    let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
    // peer -> (epoch, generation, paths)
    let mut model: HashMap<PeerId, (u64, u64, BTreeSet<u32>)> = HashMap::new();
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
        for n in 0..40 {
            let expected: BTreeSet<PeerId> =
                model.iter().filter(|(_, m)| m.2.contains(&n)).map(|(p, _)| *p).collect();
            assert_eq!(holders_set(&index, &hash(n)), expected, "step {step}, path {n}");
        }
        for peer in &peers {
            let m = model.get(peer);
            assert_eq!(index.peer_position(peer).unwrap(), m.map(|m| (m.0, m.1)));
            assert_eq!(index.path_count(peer), m.map_or(0, |m| m.2.len() as u64));
        }
        let total: usize = model.values().map(|m| m.2.len()).sum();
        assert_eq!(index.total_entries(), total as u64, "step {step}");
    }
}

#[test]
fn out_of_step_names_the_peer() {
    let (_dir, index) = open_temp();
    let peer = PeerId::random();
    let e = index.apply_delta(&peer, 1, 2, 3, &[], &[]).unwrap_err();
    assert!(e.to_string().contains(&peer.to_string()), "{e}");
}

#[test]
fn a_damaged_file_is_set_aside_and_a_new_index_made() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("index.redb");
    {
        let index = Index::open(&path).unwrap();
        index.replace_peer(&PeerId::random(), 1, 1, &hashes(0..20_000)).unwrap();
    }
    let whole = std::fs::read(&path).unwrap();
    let damages: [(&str, Vec<u8>); 3] = [
        ("the last 4 KiB cut off", whole[..whole.len() - 4096].to_vec()),
        ("cut in half", whole[..whole.len() / 2].to_vec()),
        ("garbage", (0..whole.len()).map(|i| (i * 131 % 251) as u8).collect()),
    ];
    for (what, bytes) in damages {
        std::fs::write(&path, &bytes).unwrap();
        let (index, aside) = Index::open_or_set_aside(&path)
            .unwrap_or_else(|e| panic!("{what}: opening failed: {e}"));
        let aside = aside.unwrap_or_else(|| panic!("{what}: nothing was set aside"));
        assert_eq!(std::fs::read(&aside).unwrap(), bytes, "{what}: the damaged file is kept");
        assert!(index.peers().unwrap().is_empty(), "{what}: a new, empty index");
        drop(index);
        std::fs::remove_file(aside).unwrap();
    }
    // A sound index is opened as it is.
    let (_, aside) = Index::open_or_set_aside(&path).unwrap();
    assert!(aside.is_none());
}
