//! The index's tables in redb and the record kept per peer.
//!
//! Peers are stored under a small number (`u32`, never reused) so that each (path, peer) pair
//! costs 24 bytes of key, whatever the length of the `PeerId`. Every pair is stored twice, once
//! per direction, with fixed-width keys and no values:
//! - `holders` is keyed by (hash, peer number): "who holds <hash>" is one short range scan;
//! - `held` is keyed by (peer number, hash): a peer's whole set is one contiguous range, read to
//!   diff a new snapshot against and deleted when the peer is forgotten.
//!
//! Store path hashes are stored as `&[u8; 20]`, which redb compares with one `memcmp`.

use redb::TableDefinition;

/// The layout version in `meta`; bump it when a table changes meaning or type.
pub(super) const SCHEMA_VERSION: u64 = 1;

/// `PeerId` bytes -> the peer's [`PeerRecord`].
pub(super) const PEERS: TableDefinition<&[u8], RecordTuple> = TableDefinition::new("peers");
/// (store path hash, peer number) -> nothing.
pub(super) const HOLDERS: TableDefinition<(&[u8; 20], u32), ()> = TableDefinition::new("holders");
/// (peer number, store path hash) -> nothing.
pub(super) const HELD: TableDefinition<(u32, &[u8; 20]), ()> = TableDefinition::new("held");
/// Small named counters: [`META_SCHEMA`] and [`META_NEXT_PEER`].
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(super) const META_SCHEMA: &str = "schema_version";
/// The number the next new peer gets. Numbers are never reused, so a lookup racing with
/// `forget_peer` can never attribute a path to the wrong peer.
pub(super) const META_NEXT_PEER: &str = "next_peer_number";

/// The lowest and highest hash, to bound a peer's range in `held`.
pub(super) const HASH_MIN: [u8; 20] = [0x00; 20];
pub(super) const HASH_MAX: [u8; 20] = [0xff; 20];

/// (number, epoch, generation, paths, last_update_unix) as stored.
pub(super) type RecordTuple = (u32, u64, u64, u64, u64);

/// What the index keeps per peer, both in the `peers` table and mirrored in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerRecord {
    pub number: u32,
    pub epoch: u64,
    pub generation: u64,
    /// How many entries `held` has for this peer.
    pub paths: u64,
    pub last_update_unix: u64,
}

impl PeerRecord {
    pub fn to_tuple(self) -> RecordTuple {
        (self.number, self.epoch, self.generation, self.paths, self.last_update_unix)
    }

    pub fn from_tuple((number, epoch, generation, paths, last_update_unix): RecordTuple) -> Self {
        PeerRecord { number, epoch, generation, paths, last_update_unix }
    }
}

/// The elements of sorted, deduplicated `a` that are not in sorted, deduplicated `b`, in order.
pub(super) fn sorted_difference<'a>(a: &'a [[u8; 20]], b: &[[u8; 20]]) -> Vec<&'a [u8; 20]> {
    let mut out = Vec::new();
    let mut rest = b;
    for item in a {
        // Both are sorted: `rest` only ever moves forward past what is below `item`.
        let skip = rest.partition_point(|x| x < item);
        rest = &rest[skip..];
        if rest.first() != Some(item) {
            out.push(item);
        }
    }
    out
}

/// `hashes` as sorted, deduplicated byte arrays.
pub(super) fn sorted_unique(hashes: &[nixmesh_protocol::StorePathHash]) -> Vec<[u8; 20]> {
    let mut out: Vec<[u8; 20]> = hashes.iter().map(|h| *h.as_bytes()).collect();
    out.sort_unstable();
    out.dedup();
    out
}
