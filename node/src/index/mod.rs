//! Who holds what: the index of the store paths peers advertise. Lookups are answered from a
//! table in memory; each peer's paths are also kept on disk, compactly, in redb.
//!
//! Each peer's advertisements arrive as a snapshot ([`Index::replace_peer`]) and then deltas
//! ([`Index::apply_delta`]), each stamped with the peer's (epoch, generation). The index
//! answers [`Index::holders`] locally, without the network or the disk, and keeps every peer's
//! position so a restarted node resumes each stream where it stopped
//! ([`Index::peer_position`]) and serves from what it stored at once.
//!
//! Where each job lives: opening the file, its checks and building the table from it in
//! [`open`]; setting a damaged file aside and reopening after an I/O error in [`recover`];
//! the write path (snapshots, deltas, forgetting, the bound, table slots) in [`persist`];
//! the lookups readers make in [`lookup`]. Below them: the holder table ([`table`], [`words`]),
//! fingerprints ([`fingerprint`]), the stored sets' format ([`stored_set`]) and the redb
//! tables ([`schema`]).
//!
//! Scale: built for 1,000 peers of 50,000 paths each, most of them shared (as on a LAN that
//! runs one nixpkgs) or all distinct (the worst case): 50 million entries, a path counted once
//! per peer that holds it. A store path hash becomes a 41-bit fingerprint under a key of the
//! index's own ([`fingerprint`]), and:
//! - in memory, the holder table ([`table`]) keeps each (fingerprint, peer) pair in four
//!   bytes, sharded so that a lookup reads one bucket of about two dozen entries, each shard
//!   in a mapping of its own ([`words`]): about 4.3 bytes an entry with the room for
//!   insertions and the bucket bounds, 205 MiB at 50 million;
//! - on disk, each peer's set is one blob of Rice-coded fingerprints ([`stored_set`], about
//!   3.4 bytes a path at 50,000 paths) plus a small record per delta since (folded into the
//!   blob every [`persist::MAX_CHANGES`] deltas), keyed by peer in redb ([`schema`]). The file
//!   is read only at open (to build the table) and by writers (a snapshot is diffed against
//!   the stored set, so the table changes only where the peer's paths did).
//!
//! Why this layout: at this scale every byte an entry costs is 50 MB, on every laptop of the
//! LAN. Keeping each (path, peer) pair as redb keys costs 48 bytes of key a pair before the
//! B-tree's overhead (gigabytes, and slow random-order insertions); interning full hashes to
//! ids does not help the worst case (50 million distinct hashes are 1 GB by themselves); and
//! per-peer filters would make a lookup ask 1,000 filters. A fingerprint is enough because a
//! false positive costs one round trip to the peer named (which answers "not found"); at 41
//! bits it happens for about 1 lookup in 44,000 at 50 million entries. How the layout was
//! measured against the ones before it: `docs/benchmarks.md`, "Index: how the current layout
//! was chosen".
//!
//! Bound: at most `max_paths` entries ([`Index::set_max_paths`], the config key
//! `index_max_paths`, default [`DEFAULT_MAX_PATHS`]); at the bound, peers over their fair
//! share are refused or dropped, never the others ([`bound`]), with a rate-limited log line.
//! The table tells apart at most [`table::SLOTS`] peers; a peer beyond that is refused
//! ([`IndexError::TooManyPeers`]) until departed ones are forgotten.
//!
//! Consistency: each snapshot, delta or forget is one redb write transaction, so a peer's
//! paths and its (epoch, generation) always change together on disk; the table follows right
//! after the commit, under the same write lock, and always holds exactly the stored sets.
//! Commits use [`redb::Durability::Eventual`]: they are written before the call returns but
//! not fsynced, so a power loss may roll the index back to an earlier, still consistent state
//! (older paths *and* the older generation), and the peer's stream then resumes from there. A
//! crash of the process alone loses nothing.
//!
//! Failure: after an I/O error (a full disk) redb refuses every later operation until the
//! database is opened again; the index reopens it (at most once a second) and reports the
//! trouble ([`Index::trouble`]) until a write succeeds again. Lookups are unaffected: they
//! never touch the file. A damaged file (truncated, garbage, a blob failing its checksum, a
//! newer layout, or one that makes redb panic) is set aside at start, and a file of the older
//! layout replaced ([`Index::open_or_set_aside`]); the new index is filled again from the
//! peers' snapshots.
//!
//! Threading: [`Index`] is `Send + Sync` and every method takes `&self`. Writes are serialised
//! by a lock and may block for milliseconds (a snapshot is diffed, encoded and committed):
//! call them from `tokio::task::spawn_blocking`. [`Index::holders`] is called straight from
//! the HTTP path, so that a narinfo miss costs no thread hop: it hashes the path, read-locks
//! one of 1,024 shards (a writer holds one for tens of microseconds at most, a merge of its
//! 50,000 entries) and reads one bucket.
//! [`Index::path_count`], [`Index::total_entries`], [`Index::peer_position`] and
//! [`Index::peers`] are in memory too. Opening builds the table from the file (3 s of CPU at
//! 50 million entries).

mod bound;
mod error;
mod fingerprint;
mod lookup;
mod open;
mod persist;
mod recover;
mod schema;
mod stored_set;
mod table;
#[cfg(test)]
mod tests;
mod words;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use libp2p::PeerId;
use parking_lot::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use redb::Database;

pub use bound::DEFAULT_MAX_PATHS;
pub use error::IndexError;
use fingerprint::FingerprintKey;
use nixmesh_telemetry::RateLimitedLog;
pub use open::CACHE_BYTES;
use recover::Health;
use schema::PeerRecord;
use table::{HolderTable, Slot};

/// What the index knows of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexedPeer {
    pub id: PeerId,
    /// The epoch of the last snapshot or delta applied.
    pub epoch: u64,
    /// The generation of the last snapshot or delta applied.
    pub generation: u64,
    /// How many distinct store paths the peer holds, as far as the index knows.
    pub paths: u64,
    /// When the last snapshot or delta was applied (seconds since the Unix epoch).
    pub last_update_unix: u64,
}

/// The index of who holds which store path. See the module docs for its guarantees.
pub struct Index {
    /// `None` only between dropping a failed database and opening it again.
    db: RwLock<Option<Database>>,
    /// Why the index does not work now, if it does not, and when it was last reopened.
    health: Mutex<Health>,
    path: PathBuf,
    /// Held for the whole of every write, so the table and `peers` change in commit order.
    writer: Mutex<()>,
    key: FingerprintKey,
    table: HolderTable,
    /// The peer each slot of the table stands for. A slot is taken before its peer's first
    /// entries go in and given back after its last are out.
    slots: RwLock<Vec<Option<PeerId>>>,
    peers: RwLock<Peers>,
    max_paths: AtomicU64,
    /// Where [`Index::holders_among`] starts among a path's holders, turning call by call.
    rotation: AtomicUsize,
    refused: RateLimitedLog,
    dropped: RateLimitedLog,
}

/// What is known of one peer, in memory: its stored record, its slot in the table, and the
/// change records since its base.
#[derive(Debug, Clone, Copy)]
struct Known {
    record: PeerRecord,
    slot: Slot,
    changes: u32,
    changed: u64,
}

/// The in-memory copy of the `peers` table, with slots and change counts.
#[derive(Default)]
struct Peers {
    by_id: HashMap<PeerId, Known>,
    next_number: u32,
    total_entries: u64,
}

impl Index {
    /// Sets the size bound: at most `max` entries (a path counted once per peer holding it).
    /// What the index holds already stays; the bound applies to what comes next.
    pub fn set_max_paths(&self, max: u64) {
        self.max_paths.store(max, Ordering::Relaxed);
        let total = self.total_entries();
        if total > max {
            tracing::warn!(
                index = %self.path.display(),
                "the index holds {total} paths, over its bound of {max} (index_max_paths): \
                 peers over their share get no more"
            );
        }
    }

    /// The (epoch, generation) last applied for `peer`, to resume its stream; `None` if the
    /// peer is not indexed. This is always the position of the paths the index holds for it.
    pub fn peer_position(&self, peer: &PeerId) -> Result<Option<(u64, u64)>, IndexError> {
        Ok(self.known().by_id.get(peer).map(|k| (k.record.epoch, k.record.generation)))
    }

    /// How many distinct paths `peer` holds as far as the index knows (0 if unknown). From
    /// memory; never blocks on the disk.
    pub fn path_count(&self, peer: &PeerId) -> u64 {
        self.known().by_id.get(peer).map_or(0, |k| k.record.paths)
    }

    /// Every indexed peer, sorted by id. From memory; never blocks on the disk.
    pub fn peers(&self) -> Result<Vec<IndexedPeer>, IndexError> {
        let peers = self.known();
        let mut list: Vec<IndexedPeer> = peers
            .by_id
            .iter()
            .map(|(id, k)| IndexedPeer {
                id: *id,
                epoch: k.record.epoch,
                generation: k.record.generation,
                paths: k.record.paths,
                last_update_unix: k.record.last_update_unix,
            })
            .collect();
        list.sort_unstable_by_key(|p| p.id);
        Ok(list)
    }

    /// The number of (path, peer) pairs indexed, over all peers. From memory.
    pub fn total_entries(&self) -> u64 {
        self.known().total_entries
    }

    /// The holder table's memory (its entries with their slack, and its fixed part).
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }

    // The locks guard plain data that every writer leaves consistent before it can panic
    // (memory is only changed after a commit): they do not poison (ARCHITECTURE.md, "Locks"),
    // and what a reader finds after a panic is still valid.
    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock()
    }

    fn known(&self) -> RwLockReadGuard<'_, Peers> {
        self.peers.read()
    }

    fn known_mut(&self) -> RwLockWriteGuard<'_, Peers> {
        self.peers.write()
    }

    fn slots(&self) -> RwLockReadGuard<'_, Vec<Option<PeerId>>> {
        self.slots.read()
    }

    fn slots_mut(&self) -> RwLockWriteGuard<'_, Vec<Option<PeerId>>> {
        self.slots.write()
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.path)
            .field("peers", &self.known().by_id.len())
            .field("total_entries", &self.total_entries())
            .finish()
    }
}
