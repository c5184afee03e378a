//! Opening: what was stored comes back, and a file that is not an index is named as such.

use std::collections::BTreeSet;

use libp2p::PeerId;
use redb::Database;

use super::{hash, hashes, holders_set};
use crate::index::schema::{META, META_SCHEMA, SCHEMA_VERSION};
use crate::index::{Index, IndexError};

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
