//! Recovery: a damaged file, or one of another layout, set aside or replaced at start.

use libp2p::PeerId;
use redb::{Database, ReadableTable};

use super::{hash, hashes};
use crate::index::Index;
use crate::index::schema::{BASES, CHANGES, META, META_SCHEMA, SCHEMA_VERSION};

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
