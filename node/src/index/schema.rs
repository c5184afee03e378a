//! The index's tables in redb, the record kept per peer, and reading and writing a peer's
//! stored set in them.
//!
//! One peer's paths are one blob (its last snapshot, see [`super::stored_set`], stored in
//! pieces of [`BASE_PIECE`]) and a few
//! small change records for the deltas applied since, so the file grows by about 3.4 bytes a
//! path a peer holds and a delta costs one small insertion, not a rewrite of the peer's set.
//! Peers are stored under a number (`u32`, never reused within a file) so that keys stay
//! small whatever the length of a `PeerId`.
//!
//! Layout version 1 (nixmesh before the holder table) kept every (path, peer) pair twice as
//! redb keys; a file of that version is replaced by a new one at open (see
//! [`super::Index::open_or_set_aside`]), filled again from the peers.

use redb::{ReadableTable, Table, TableDefinition};

use super::error::RedbError;
use super::fingerprint::{Fingerprint, with_change};
use super::stored_set::{self, Damage};

/// The layout version in `meta`; bump it when a table changes meaning or type.
pub(super) const SCHEMA_VERSION: u64 = 2;

/// `PeerId` bytes -> the peer's [`PeerRecord`].
pub(super) const PEERS: TableDefinition<&[u8], RecordTuple> = TableDefinition::new("peers");
/// (peer number, piece from 0) -> a piece of its base (the fingerprints of its last
/// snapshot), at most [`BASE_PIECE`] bytes.
pub(super) const BASES: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("bases");
/// The most bytes of a base stored under one key. redb gives a value larger than a page a
/// run of pages rounded up to a power of two, so a 170 kB base alone would waste 86 kB;
/// pieces that fill 16 KiB pages waste almost nothing.
pub(super) const BASE_PIECE: usize = 16 * 1024 - 256;
/// (peer number, sequence from 0) -> a change: what one delta removed and added since the base.
pub(super) const CHANGES: TableDefinition<(u32, u32), &[u8]> = TableDefinition::new("changes");
/// Small named numbers: [`META_SCHEMA`], [`META_NEXT_PEER`] and the fingerprint key.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(super) const META_SCHEMA: &str = "schema_version";
/// The number the next new peer gets.
pub(super) const META_NEXT_PEER: &str = "next_peer_number";
/// The two halves of the fingerprint key, made with the file.
pub(super) const META_KEY: [&str; 2] = ["fingerprint_key_0", "fingerprint_key_1"];

/// (number, epoch, generation, paths, last_update_unix) as stored.
pub(super) type RecordTuple = (u32, u64, u64, u64, u64);

/// What the index keeps per peer, both in the `peers` table and in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct PeerRecord {
    pub number: u32,
    pub epoch: u64,
    pub generation: u64,
    /// How many fingerprints the peer's base and changes come to.
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

/// The peer numbered `number`'s set: its base with its changes applied in order. The outer
/// error is redb's; the inner says what is damaged.
pub(super) fn stored_set_of(
    bases: &impl ReadableTable<(u32, u32), &'static [u8]>,
    changes: &impl ReadableTable<(u32, u32), &'static [u8]>,
    number: u32,
) -> Result<Result<Vec<Fingerprint>, Damage>, RedbError> {
    let mut base = Vec::new();
    for piece in bases.range((number, 0)..=(number, u32::MAX))? {
        base.extend_from_slice(piece?.1.value());
    }
    if base.is_empty() {
        return Ok(Err(format!("no stored set for peer number {number}")));
    }
    let mut set = match stored_set::decode_base(&base) {
        Ok(set) => set,
        Err(damage) => return Ok(Err(damage)),
    };
    for entry in changes.range((number, 0)..=(number, u32::MAX))? {
        match stored_set::decode_change(entry?.1.value()) {
            Ok((removed, added)) => set = with_change(&set, &removed, &added),
            Err(damage) => return Ok(Err(damage)),
        }
    }
    Ok(Ok(set))
}

/// Stores `base` as peer `number`'s, in pieces of [`BASE_PIECE`], replacing what was there.
pub(super) fn put_base(
    bases: &mut Table<'_, (u32, u32), &'static [u8]>,
    number: u32,
    base: &[u8],
) -> Result<(), RedbError> {
    bases.retain_in((number, 0)..=(number, u32::MAX), |_, _| false)?;
    for (piece, bytes) in (0u32..).zip(base.chunks(BASE_PIECE)) {
        bases.insert((number, piece), bytes)?;
    }
    Ok(())
}

/// Deletes the change records of peer `number`.
pub(super) fn forget_changes(
    changes: &mut Table<'_, (u32, u32), &'static [u8]>,
    number: u32,
) -> Result<(), RedbError> {
    changes.retain_in((number, 0)..=(number, u32::MAX), |_, _| false)?;
    Ok(())
}
