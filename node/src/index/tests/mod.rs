//! The index's tests, one file per job as the index itself is split: opening and its checks
//! (`open`), damaged files and reopening (`recover`), the write path (`persist`) and lookups
//! (`lookup`). Each runs a real index on a temporary redb file.

use std::collections::BTreeSet;

use libp2p::PeerId;
use nixmesh_protocol::StorePathHash;

use super::Index;

mod lookup;
mod open;
mod persist;
mod recover;

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
