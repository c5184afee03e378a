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

#[test]
fn a_newer_layout_is_set_aside_and_an_older_one_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    // A file as the first layout wrote it: every pair twice as keys.
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(META_SCHEMA, 1).unwrap();
        let holders: redb::TableDefinition<(&[u8; 20], u32), ()> =
            redb::TableDefinition::new("holders");
        let mut table = txn.open_table(holders).unwrap();
        for n in 0..100 {
            table.insert((hash(n).as_bytes(), 0), ()).unwrap();
        }
        drop(table);
        txn.commit().unwrap();
    }
    let (index, aside) = Index::open_or_set_aside(&path).unwrap();
    assert_eq!(aside, None, "an older layout is replaced, not kept");
    assert!(index.peers().unwrap().is_empty());
    let peer = PeerId::random();
    index.replace_peer(&peer, 1, 1, &hashes(0..10)).unwrap();
    assert_eq!(index.holders(&hash(3)).unwrap(), vec![peer]);
    drop(index);
    let names: Vec<_> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("index.redb")]);
    assert_eq!(Index::open(&path).unwrap().path_count(&peer), 10, "the new one is kept");

    // A newer layout is not ours to delete: set aside, as damage is.
    {
        let db = Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert(META_SCHEMA, SCHEMA_VERSION + 1).unwrap();
        txn.commit().unwrap();
    }
    let (_, aside) = Index::open_or_set_aside(&path).unwrap();
    assert!(aside.expect("set aside").exists());
}

/// Every stored blob is checked when read: a damaged one is found at open, and the file set
/// aside, instead of serving wrong holders.
#[test]
fn a_damaged_stored_set_is_found_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("index.redb");
    let peer = PeerId::random();
    {
        let index = Index::open(&path).unwrap();
        index.replace_peer(&peer, 1, 1, &hashes(0..1000)).unwrap();
        index.apply_delta(&peer, 1, 1, 2, &hashes(1000..1010), &[]).unwrap();
    }
    for table in [BASES_NAME, CHANGES_NAME] {
        let copy = dir.path().join(format!("{table}.redb"));
        std::fs::copy(&path, &copy).unwrap();
        {
            let db = Database::create(&copy).unwrap();
            let txn = db.begin_write().unwrap();
            if table == BASES_NAME {
                let mut bases = txn.open_table(BASES).unwrap();
                let mut blob = bases.get((0, 0)).unwrap().unwrap().value().to_vec();
                blob[100] ^= 0x04;
                bases.insert((0, 0), blob.as_slice()).unwrap();
            } else {
                let mut changes = txn.open_table(CHANGES).unwrap();
                let mut blob = changes.get((0, 0)).unwrap().unwrap().value().to_vec();
                blob[20] ^= 0x04;
                changes.insert((0, 0), blob.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let e = Index::open(&copy).unwrap_err();
        assert!(e.is_damage(), "{table}: {e}");
        assert!(e.to_string().contains("checksum"), "{table}: {e}");
        let (index, aside) = Index::open_or_set_aside(&copy).unwrap();
        assert!(aside.is_some(), "{table}");
        assert!(index.holders(&hash(5)).unwrap().is_empty());
    }
}

const BASES_NAME: &str = "bases";
const CHANGES_NAME: &str = "changes";

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
