//! Who holds what: the index of the store paths peers advertise. Lookups are answered from a
//! table in memory; each peer's paths are also kept on disk, compactly, in redb.
//!
//! Each peer's advertisements arrive as a snapshot ([`Index::replace_peer`]) and then deltas
//! ([`Index::apply_delta`]), each stamped with the peer's (epoch, generation). The index
//! answers [`Index::holders`] locally, without the network or the disk, and keeps every peer's
//! position so a restarted node resumes each stream where it stopped
//! ([`Index::peer_position`]) and serves from what it stored at once.
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
//!   blob every [`MAX_CHANGES`] deltas), keyed by peer in redb ([`schema`]). The file is
//!   read only at open (to build the table) and by writers (a snapshot is diffed against
//!   the stored set, so the table changes only where the peer's paths did).
//!
//! Why this layout (measured with `node/benches/index.rs` on the 2-core machine of
//! `docs/benchmarks.md`, shared with other builds): the first index kept every pair twice as
//! redb keys, (hash, peer) and (peer, hash). That is 48 bytes of key a pair before redb's
//! B-tree overhead, and random-order insertions split pages everywhere: at 100 peers x
//! 50,000 disjoint paths a 1,028 MiB file (794 MiB of it free pages), 44-230 s to absorb the
//! snapshots, lookups of 5-8 us (p99 167 us) through a read transaction; at 1,000 peers,
//! 10 GB on every laptop. Interning full hashes to ids does not help the worst case (50
//! million distinct hashes are 1 GB by themselves), and per-peer filters make a lookup ask
//! 1,000 filters. A fingerprint is enough because a false positive costs one round trip to
//! the peer named (which answers "not found"); at 41 bits it happens for about 1 lookup in
//! 44,000 at 50 million entries (measured: 11-35 in 1,000,000 disjoint misses). At 100
//! peers x 50,000 disjoint paths: a 33 MiB file, 0.7 s of CPU to absorb every snapshot,
//! lookups p50 0.3 us, p99 0.7 us. At 1,000 peers x 50,000 paths, disjoint or 80% shared:
//! 11-13 s of CPU to absorb every snapshot; a miss or a path with few holders looked up in
//! p50 0.6 us, p99 1.1-1.4 us (a path 800 peers hold in about 9 us: each `PeerId` is copied
//! out); a 258 MiB file (160 MiB of sets; redb doubles its file while under 4 GiB); peak RSS
//! 250-276 MiB, of which the table 210 MiB and most of the rest free pieces in glibc's heap
//! between 65,536 shard vectors; rebuilding the table at open, 3 s of CPU. With 1,024 shards
//! each in a mapping of its own, merged in place: peak RSS 224-228 MiB (the table 205 MiB),
//! 10 s of CPU to absorb every snapshot.
//! Insertions wait in room at the end of each shard before they are merged (see [`table`]):
//! inserting straight into the shards moved half of each per path and cost 40 s of CPU.

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
//! 50 million entries; see above).

mod bound;
mod error;
mod fingerprint;
mod schema;
mod stored_set;
mod table;
#[cfg(test)]
mod tests;
mod words;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use nixmesh_protocol::StorePathHash;
use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};

pub use bound::DEFAULT_MAX_PATHS;
use bound::{REPORT_EVERY, Room};
pub use error::IndexError;
use error::{RedbError, StorageContext};
use fingerprint::{Fingerprint, FingerprintKey, multiset_difference};
use nixmesh_localhttp::RateLimitedLog;
use schema::{
    BASE_PIECE, BASES, CHANGES, META, META_KEY, META_NEXT_PEER, META_SCHEMA, PEERS, PeerRecord,
    SCHEMA_VERSION,
};
use stored_set::Damage;
use table::{HolderTable, SLOTS, Slot};

/// redb's page cache. The file is read only at open and by writers, so a small cache does.
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Deltas kept as change records before they are folded into the peer's base.
const MAX_CHANGES: u32 = 64;
/// Fingerprints in change records, beyond which they are folded into the base even before
/// [`MAX_CHANGES`]: this many, or a quarter of the peer's paths if more.
const MAX_CHANGED: u64 = 4096;

/// Free pages in the file beyond which opening compacts it: this much, and half the file.
const COMPACT_ABOVE: u64 = 64 * 1024 * 1024;

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

/// The index's trouble: after an I/O error (a full disk) redb refuses every later operation
/// until the database is opened again, so the index reopens it, at most once a
/// [`REOPEN_PAUSE`].
#[derive(Default)]
struct Health {
    trouble: Option<String>,
    last_reopen: Option<std::time::Instant>,
}

const REOPEN_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

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
    /// Opens the index at `path` like [`Index::open`]. A file that turns out damaged
    /// (truncated, garbage, a newer layout, or one that makes redb panic) is renamed to
    /// `<path>.damaged-<unix time>`, and a file of the older layout (version 1, a nixmesh
    /// before this one) is removed; either way a new, empty index is made in its place, to be
    /// filled again from the peers' snapshots. Returns the index and where a damaged file
    /// went. Errors that are not damage (no permission, a full disk) are returned as they are.
    pub fn open_or_set_aside(path: &Path) -> Result<(Index, Option<PathBuf>), IndexError> {
        let why = match std::panic::catch_unwind(|| Index::open(path)) {
            Ok(Ok(index)) => return Ok((index, None)),
            Ok(Err(IndexError::Schema { found, .. })) if found < SCHEMA_VERSION => {
                std::fs::remove_file(path).map_err(|e| IndexError::SetAside {
                    path: path.to_path_buf(),
                    why: format!("it has the layout of an older nixmesh (version {found})"),
                    source: e,
                })?;
                tracing::info!(
                    index = %path.display(),
                    "the index had the layout of an older nixmesh (version {found}); it is \
                     replaced by a new one, filled again from the peers"
                );
                return Ok((Index::open(path)?, None));
            }
            Ok(Err(e)) if e.is_damage() => e.to_string(),
            Ok(Err(e)) => return Err(e),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                format!("opening it panicked in redb: {message}")
            }
        };
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".damaged-{unix}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside).map_err(|e| IndexError::SetAside {
            path: path.to_path_buf(),
            why: why.clone(),
            source: e,
        })?;
        tracing::warn!(
            index = %path.display(),
            set_aside = %aside.display(),
            "the index was damaged ({why}); starting a new one, filled again from the peers"
        );
        Ok((Index::open(path)?, Some(aside)))
    }

    /// Opens the index at `path`, creating the file if it is missing, and builds the holder
    /// table from it. The bound is [`DEFAULT_MAX_PATHS`] until [`Index::set_max_paths`].
    ///
    /// Fails with a message naming the file if it is not a redb database, was written with
    /// another layout version, holds a blob that fails its checks, or is damaged beyond what
    /// redb repairs itself (after an unclean shutdown redb checks and repairs the file here,
    /// which can take a while for large ones).
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let corrupt = |what: String| IndexError::Corrupt { path: path.to_path_buf(), what };
        let mut db = open_database(path)?;
        let txn = db.begin_write().context(path, "opening")?;
        let (key, mut peers, slots, fragmented) = {
            let mut meta = txn.open_table(META).context(path, "opening the meta table")?;
            let read_meta = |name: &str| -> Result<Option<u64>, IndexError> {
                Ok(meta.get(name).context(path, "reading the meta table")?.map(|v| v.value()))
            };
            let found = read_meta(META_SCHEMA)?;
            let stored_key = (read_meta(META_KEY[0])?, read_meta(META_KEY[1])?);
            let next_number = read_meta(META_NEXT_PEER)?.unwrap_or(0);
            let key = match (found, stored_key) {
                (Some(SCHEMA_VERSION), (Some(k0), Some(k1))) => FingerprintKey(k0, k1),
                (Some(SCHEMA_VERSION), _) => return Err(corrupt("no fingerprint key".into())),
                (Some(found), _) => {
                    return Err(IndexError::Schema {
                        path: path.to_path_buf(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                (None, _) => {
                    // A new file (or one that never got past this point).
                    let key = FingerprintKey::random();
                    let init =
                        [(META_SCHEMA, SCHEMA_VERSION), (META_KEY[0], key.0), (META_KEY[1], key.1)];
                    for (name, value) in init {
                        meta.insert(name, value).context(path, "writing the meta table")?;
                    }
                    key
                }
            };
            let next_number = u32::try_from(next_number)
                .map_err(|_| corrupt(format!("next peer number {next_number} is out of range")))?;
            let mut peers = Peers { next_number, ..Peers::default() };
            let mut slots = Vec::new();
            // Create the other tables, so that every later transaction finds them.
            let bases = txn.open_table(BASES).context(path, "opening the bases table")?;
            let changes = txn.open_table(CHANGES).context(path, "opening the changes table")?;
            let stored = txn.open_table(PEERS).context(path, "opening the peers table")?;
            for entry in stored.iter().context(path, "reading the peers table")? {
                let (key, value) = entry.context(path, "reading the peers table")?;
                let id = PeerId::from_bytes(key.value()).map_err(|e| {
                    corrupt(format!("a peer id in the peers table does not parse ({e})"))
                })?;
                let record = PeerRecord::from_tuple(value.value());
                if record.number >= next_number {
                    return Err(corrupt(format!(
                        "peer {id} has number {} beyond the counter",
                        record.number
                    )));
                }
                if slots.len() == SLOTS {
                    return Err(corrupt(format!("more than {SLOTS} peers")));
                }
                let slot = slots.len() as Slot;
                slots.push(Some(id));
                peers.by_id.insert(id, Known { record, slot, changes: 0, changed: 0 });
                peers.total_entries += record.paths;
            }
            let by_number: HashMap<u32, PeerId> =
                peers.by_id.iter().map(|(id, known)| (known.record.number, *id)).collect();
            for entry in changes.iter().context(path, "reading the changes table")? {
                let (key, value) = entry.context(path, "reading the changes table")?;
                let (number, sequence) = key.value();
                let known = by_number.get(&number).and_then(|id| peers.by_id.get_mut(id));
                let Some(known) = known.filter(|k| k.changes == sequence) else {
                    return Err(corrupt(format!(
                        "change {sequence} of peer number {number} belongs to no peer's sequence"
                    )));
                };
                let (removed, added) = stored_set::decode_change(value.value()).map_err(corrupt)?;
                known.changes += 1;
                known.changed += (removed.len() + added.len()) as u64;
            }
            let mut without_base = by_number.clone();
            for piece in bases.iter().context(path, "reading the bases table")? {
                let (number, _) = piece.context(path, "reading the bases table")?.0.value();
                if !by_number.contains_key(&number) {
                    return Err(corrupt(format!("a stored set for no peer (number {number})")));
                }
                without_base.remove(&number);
            }
            if let Some((number, id)) = without_base.into_iter().next() {
                return Err(corrupt(format!("peer {id} (number {number}) has no stored set")));
            }
            let fragmented =
                txn.stats().context(path, "reading the file's statistics")?.fragmented_bytes();
            (key, peers, slots, fragmented)
        };
        txn.commit().context(path, "opening")?;

        let table = build_table(&db, path, &peers)?;
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        if fragmented > COMPACT_ABOVE && fragmented > size / 2 {
            // Old free pages from peers that left or shrank: given back to the filesystem.
            match db.compact() {
                Ok(_) => {
                    let after = std::fs::metadata(path).map_or(0, |m| m.len());
                    tracing::info!(index = %path.display(), before = size, after, "compacted the index");
                }
                Err(e) => tracing::warn!(index = %path.display(), "cannot compact the index: {e}"),
            }
        }
        let max_paths = AtomicU64::new(DEFAULT_MAX_PATHS);
        peers.by_id.shrink_to_fit();
        Ok(Index {
            db: RwLock::new(Some(db)),
            health: Mutex::new(Health::default()),
            path: path.to_path_buf(),
            writer: Mutex::new(()),
            key,
            table,
            slots: RwLock::new(slots),
            peers: RwLock::new(peers),
            max_paths,
            rotation: AtomicUsize::new(0),
            refused: RateLimitedLog::every(REPORT_EVERY),
            dropped: RateLimitedLog::every(REPORT_EVERY),
        })
    }

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

    /// The peers that hold `hash`, whether connected or not (the caller filters by
    /// connectivity), in no particular order and without duplicates. Rarely (about one
    /// lookup in 44,000 at 50 million entries) a peer that does not hold `hash` is named
    /// too: see the module docs.
    ///
    /// From memory, never from the disk: under a microsecond for a path with a few holders,
    /// more for one held by hundreds of peers (each `PeerId` is copied). Never fails; the
    /// `Result` is kept for the callers that handle an index that could.
    pub fn holders(&self, hash: &StorePathHash) -> Result<Vec<PeerId>, IndexError> {
        let fingerprint = self.key.of(hash);
        Ok(self.table.with_holders(fingerprint, |found| {
            let mut found: Vec<Slot> = found.collect();
            if found.is_empty() {
                return Vec::new();
            }
            // A slot twice is a peer holding two paths with this fingerprint.
            found.sort_unstable();
            found.dedup();
            let slots = self.slots();
            found
                .iter()
                .filter_map(|&slot| slots.get(usize::from(slot)).copied().flatten())
                .collect()
        }))
    }

    /// At most `max` distinct peers that hold `hash` and that `accept` takes (the connected
    /// ones, say), for a request to ask: the substituter's lookup. Stops at `max`, so a path
    /// held by hundreds of peers costs about what one held by a few does (the bench's "lookup
    /// of a held path"). Each call starts at another place among the holders, so requests
    /// for a widely held path spread over all of them rather than always finding the same
    /// `max`. False positives as for [`Index::holders`].
    pub fn holders_among(
        &self,
        hash: &StorePathHash,
        max: usize,
        mut accept: impl FnMut(&PeerId) -> bool,
    ) -> Vec<PeerId> {
        let fingerprint = self.key.of(hash);
        let start = self.rotation.fetch_add(1, Ordering::Relaxed);
        self.table.with_holders_from(fingerprint, start, |found| {
            if max == 0 {
                return Vec::new();
            }
            let mut picked: Vec<PeerId> = Vec::with_capacity(max.min(SLOTS));
            // The slots seen, one bit each: a slot twice is a peer holding two paths with
            // this fingerprint.
            let mut seen = [0u64; SLOTS.div_ceil(64)];
            let slots = self.slots();
            for slot in found {
                let (word, bit) = (usize::from(slot) / 64, 1u64 << (slot % 64));
                if seen[word] & bit != 0 {
                    continue;
                }
                seen[word] |= bit;
                let Some(peer) = slots.get(usize::from(slot)).and_then(Option::as_ref) else {
                    continue;
                };
                if accept(peer) {
                    picked.push(*peer);
                    if picked.len() == max {
                        break;
                    }
                }
            }
            picked
        })
    }

    /// Replaces everything known of `peer` with `paths` (a full snapshot; duplicates are
    /// ignored) and records (`epoch`, `generation`) as its position, atomically.
    ///
    /// The new set is diffed against the stored one, so a peer re-sending a nearly identical
    /// snapshot (as it does after every restart) changes the table only where it differs.
    /// Refused with [`IndexError::Full`] or [`IndexError::TooManyPeers`] at the bound,
    /// changing nothing.
    pub fn replace_peer(
        &self,
        peer: &PeerId,
        epoch: u64,
        generation: u64,
        paths: &[StorePathHash],
    ) -> Result<(), IndexError> {
        let new = self.key.of_distinct(paths);
        let _writer = self.lock_writer();
        let known = self.known().by_id.get(peer).copied();
        let (slot, number) = match known {
            Some(k) => (k.slot, k.record.number),
            None => {
                let number = self.known().next_number;
                if number == u32::MAX {
                    return Err(IndexError::Corrupt {
                        path: self.path.clone(),
                        what: "all 2^32 peer numbers are used".into(),
                    });
                }
                (self.take_slot(peer)?, number)
            }
        };
        // A new peer's slot is taken first, so no one is dropped for a peer refused anyway.
        if let Err(refused) =
            self.make_room(peer, known.map_or(0, |k| k.record.paths), new.len() as u64)
        {
            if known.is_none() {
                self.give_back_slot(slot);
            }
            return Err(refused);
        }
        let record = PeerRecord {
            number,
            epoch,
            generation,
            paths: new.len() as u64,
            last_update_unix: now_unix(),
        };
        let base = stored_set::encode_base(&new);
        let written = self.write("replacing a peer's snapshot", |txn| {
            let mut bases = txn.open_table(BASES)?;
            let mut changes = txn.open_table(CHANGES)?;
            let old = match known {
                Some(_) => Some(stored_set_of(&bases, &changes, number)?),
                None => None,
            };
            put_base(&mut bases, number, &base)?;
            forget_changes(&mut changes, number)?;
            txn.open_table(PEERS)?.insert(peer.to_bytes().as_slice(), record.to_tuple())?;
            if known.is_none() {
                txn.open_table(META)?.insert(META_NEXT_PEER, u64::from(number) + 1)?;
            }
            Ok(old)
        });
        let old = match written {
            Ok(old) => old,
            Err(e) => {
                if known.is_none() {
                    self.give_back_slot(slot);
                }
                return Err(e);
            }
        };
        match old {
            None => self.table.insert(slot, &new),
            Some(Ok(old)) => {
                self.table.remove(slot, &multiset_difference(&old, &new));
                self.table.insert(slot, &multiset_difference(&new, &old));
            }
            Some(Err(damage)) => {
                tracing::warn!(
                    index = %self.path.display(),
                    %peer,
                    "the stored set of this peer was damaged ({damage}); replaced by its snapshot"
                );
                self.table.remove_slot(slot);
                self.table.insert(slot, &new);
            }
        }
        let mut peers = self.known_mut();
        peers.total_entries -= known.map_or(0, |k| k.record.paths);
        peers.total_entries += record.paths;
        peers.by_id.insert(*peer, Known { record, slot, changes: 0, changed: 0 });
        if known.is_none() {
            peers.next_number = number + 1;
        }
        Ok(())
    }

    /// Applies a delta: removes `removed`, then adds `added`, and moves the peer's position to
    /// (`epoch`, `to_generation`), atomically.
    ///
    /// Refuses with [`IndexError::OutOfStep`], changing nothing, unless the peer is indexed at
    /// exactly (`epoch`, `from_generation`) and `to_generation >= from_generation`; the caller
    /// then asks the peer for a snapshot. Removing a path not held, or adding one already held,
    /// is not an error and does not change the counts. Refused with [`IndexError::Full`] if it
    /// would take the peer over its share at the bound.
    pub fn apply_delta(
        &self,
        peer: &PeerId,
        epoch: u64,
        from_generation: u64,
        to_generation: u64,
        added: &[StorePathHash],
        removed: &[StorePathHash],
    ) -> Result<(), IndexError> {
        let _writer = self.lock_writer();
        let known = self.known().by_id.get(peer).copied();
        let Some(known) = known.filter(|k| {
            k.record.epoch == epoch
                && k.record.generation == from_generation
                && to_generation >= from_generation
        }) else {
            return Err(IndexError::OutOfStep {
                peer: Box::new(*peer),
                epoch,
                from_generation,
                to_generation,
                stored: known.map(|k| (k.record.epoch, k.record.generation)),
            });
        };
        let (slot, number) = (known.slot, known.record.number);
        // What the delta changes: copies held go, then fingerprints not held (after that)
        // come. The table holds exactly the peer's stored set, so it is asked.
        let mut gone = Vec::new();
        for run in self.key.of_distinct(removed).chunk_by(|a, b| a == b) {
            let held = self.table.count(slot, run[0]);
            gone.extend(std::iter::repeat_n(run[0], run.len().min(held)));
        }
        let mut new = Vec::new();
        for run in self.key.of_distinct(added).chunk_by(|a, b| a == b) {
            let going =
                gone.partition_point(|&f| f <= run[0]) - gone.partition_point(|&f| f < run[0]);
            if self.table.count(slot, run[0]) == going {
                new.extend_from_slice(run);
            }
        }
        let paths = known.record.paths - gone.len() as u64 + new.len() as u64;
        self.make_room(peer, known.record.paths, paths)?;
        let record = PeerRecord {
            generation: to_generation,
            paths,
            last_update_unix: now_unix(),
            ..known.record
        };
        let changed = (gone.len() + new.len()) as u64;
        let fold = known.changes + 1 >= MAX_CHANGES
            || known.changed + changed > MAX_CHANGED.max(paths / 4);
        let folded = self.write("applying a peer's delta", |txn| {
            let mut folded = false;
            if changed > 0 {
                let mut changes = txn.open_table(CHANGES)?;
                let mut bases = txn.open_table(BASES)?;
                match stored_set_of(&bases, &changes, number)? {
                    Ok(set) if fold => {
                        let set = with_change(&set, &gone, &new);
                        put_base(&mut bases, number, &stored_set::encode_base(&set))?;
                        forget_changes(&mut changes, number)?;
                        folded = true;
                    }
                    // A damaged set stays as it is, to be found at the next open.
                    _ => {
                        let change = stored_set::encode_change(&gone, &new);
                        changes.insert((number, known.changes), change.as_slice())?;
                    }
                }
            }
            txn.open_table(PEERS)?.insert(peer.to_bytes().as_slice(), record.to_tuple())?;
            Ok(folded)
        })?;
        self.table.remove(slot, &gone);
        self.table.insert(slot, &new);
        let mut peers = self.known_mut();
        peers.total_entries = peers.total_entries - known.record.paths + paths;
        let (changes, changed) = match (folded, changed) {
            (true, _) => (0, 0),
            (false, 0) => (known.changes, known.changed),
            (false, n) => (known.changes + 1, known.changed + n),
        };
        peers.by_id.insert(*peer, Known { record, slot, changes, changed });
        Ok(())
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

    /// Removes `peer` and everything it holds from the index. Forgetting an unknown peer does
    /// nothing.
    pub fn forget_peer(&self, peer: &PeerId) -> Result<(), IndexError> {
        let _writer = self.lock_writer();
        self.forget_locked(peer)
    }

    /// The number of (path, peer) pairs indexed, over all peers. From memory.
    pub fn total_entries(&self) -> u64 {
        self.known().total_entries
    }

    /// The holder table's memory (its entries with their slack, and its fixed part).
    pub fn memory_bytes(&self) -> usize {
        self.table.memory_bytes()
    }

    /// [`Index::forget_peer`] with the write lock held.
    fn forget_locked(&self, peer: &PeerId) -> Result<(), IndexError> {
        let Some(known) = self.known().by_id.get(peer).copied() else { return Ok(()) };
        let number = known.record.number;
        let stored = self.write("forgetting a peer", |txn| {
            let mut bases = txn.open_table(BASES)?;
            let mut changes = txn.open_table(CHANGES)?;
            let stored = stored_set_of(&bases, &changes, number)?;
            bases.retain_in((number, 0)..=(number, u32::MAX), |_, _| false)?;
            forget_changes(&mut changes, number)?;
            txn.open_table(PEERS)?.remove(peer.to_bytes().as_slice())?;
            Ok(stored)
        })?;
        match stored {
            Ok(set) if self.table.remove(known.slot, &set) == set.len() => {}
            // Whatever the stored set said, no entry of the slot may outlive it.
            _ => {
                self.table.remove_slot(known.slot);
            }
        }
        self.give_back_slot(known.slot);
        let mut peers = self.known_mut();
        peers.total_entries -= known.record.paths;
        peers.by_id.remove(peer);
        Ok(())
    }

    /// Applies the bound (see [`bound`]) to `peer` going from `now` to `after` entries:
    /// drops the peers it says to, or refuses. Called with the write lock held.
    fn make_room(&self, peer: &PeerId, now: u64, after: u64) -> Result<(), IndexError> {
        let max = self.max_paths.load(Ordering::Relaxed);
        let room = {
            let peers = self.known();
            if after <= now || peers.total_entries - now + after <= max {
                return Ok(());
            }
            let others: Vec<(PeerId, u64)> = peers
                .by_id
                .iter()
                .filter(|(id, _)| *id != peer)
                .map(|(id, k)| (*id, k.record.paths))
                .collect();
            bound::room(max, peers.total_entries, now, after, &others)
        };
        match room {
            Room::Fits => Ok(()),
            Room::Refuse { share } => {
                let refusal = IndexError::Full { peer: Box::new(*peer), paths: after, max, share };
                self.refused.warn(|| format!("index full: {refusal}"));
                Err(refusal)
            }
            Room::Evict(over) => {
                for other in over {
                    let paths = self.path_count(&other);
                    self.forget_locked(&other)?;
                    self.dropped.warn(|| {
                        format!(
                            "index full (bound of {max} paths, index_max_paths): dropped peer \
                             {other}'s {paths} paths, more than its share, to make room for \
                             peer {peer}"
                        )
                    });
                }
                Ok(())
            }
        }
    }

    /// A free slot of the table, now standing for `peer`.
    fn take_slot(&self, peer: &PeerId) -> Result<Slot, IndexError> {
        let mut slots = self.slots_mut();
        let slot = match slots.iter().position(Option::is_none) {
            Some(free) => free,
            None if slots.len() < SLOTS => {
                slots.push(None);
                slots.len() - 1
            }
            None => {
                let refusal = IndexError::TooManyPeers { peer: Box::new(*peer), max: SLOTS };
                self.refused.warn(|| format!("index full: {refusal}"));
                return Err(refusal);
            }
        };
        slots[slot] = Some(*peer);
        Ok(slot as Slot)
    }

    fn give_back_slot(&self, slot: Slot) {
        self.slots_mut()[usize::from(slot)] = None;
    }

    /// Runs `f` in one write transaction and commits it (see the module docs on durability).
    /// If `f` fails, nothing it did is kept.
    fn write<T>(
        &self,
        operation: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<T, RedbError>,
    ) -> Result<T, IndexError> {
        let result = self.with_db(|db| {
            let mut txn = db.begin_write().context(&self.path, operation)?;
            txn.set_durability(Durability::Eventual);
            let out = f(&txn).context(&self.path, operation)?;
            txn.commit().context(&self.path, operation)?;
            Ok(out)
        });
        match &result {
            Err(e) if e.needs_reopen() => {
                // Nothing of this write was kept; the next one finds the database usable
                // again once there is room.
                self.reopen();
            }
            Ok(_) => {
                if let Some(trouble) = self.health().trouble.take() {
                    let index = self.path.display();
                    tracing::info!(%index, "the index works again after: {trouble}");
                }
            }
            Err(_) => {}
        }
        result
    }

    /// Runs `f` on the database, recording trouble the way [`Index::trouble`] reports it.
    fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        // The database lock is let go before the health lock is taken: `reopen` takes them
        // the other way round.
        let ran = self.db.read().unwrap_or_else(PoisonError::into_inner).as_ref().map(f);
        let result = ran.unwrap_or_else(|| {
            let why = self.trouble().unwrap_or_else(|| "being reopened".to_owned());
            Err(IndexError::Unavailable { path: self.path.clone(), why })
        });
        if let Err(e) = &result
            && e.needs_reopen()
        {
            self.health().trouble = Some(e.to_string());
        }
        result
    }

    /// Drops the database and opens it again (at most once a [`REOPEN_PAUSE`]): after an I/O
    /// error redb refuses every later operation until then. True if it is open again.
    fn reopen(&self) -> bool {
        let mut health = self.health();
        if health.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_PAUSE) {
            return false;
        }
        health.last_reopen = Some(std::time::Instant::now());
        let mut db = self.db.write().unwrap_or_else(PoisonError::into_inner);
        // The old one first: it holds the file's lock.
        *db = None;
        match open_database(&self.path) {
            // Still in trouble until a write succeeds again (a full disk stays full).
            Ok(reopened) => {
                *db = Some(reopened);
                true
            }
            Err(e) => {
                tracing::warn!(index = %self.path.display(), "cannot reopen the index: {e}");
                health.trouble = Some(e.to_string());
                false
            }
        }
    }

    /// Why the index does not work now, if it does not (the status page shows it).
    pub fn trouble(&self) -> Option<String> {
        self.health().trouble.clone()
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // The locks guard plain data that every writer leaves consistent before it can panic
    // (memory is only changed after a commit), so a poisoned lock is still usable.
    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn known(&self) -> RwLockReadGuard<'_, Peers> {
        self.peers.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn known_mut(&self) -> RwLockWriteGuard<'_, Peers> {
        self.peers.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn slots(&self) -> RwLockReadGuard<'_, Vec<Option<PeerId>>> {
        self.slots.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn slots_mut(&self) -> RwLockWriteGuard<'_, Vec<Option<PeerId>>> {
        self.slots.write().unwrap_or_else(PoisonError::into_inner)
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

/// The holder table of everything stored: each peer's set read twice (see
/// [`HolderTable::build`]), each checked against the count its record holds.
fn build_table(db: &Database, path: &Path, peers: &Peers) -> Result<HolderTable, IndexError> {
    let txn = db.begin_read().context(path, "building the holder table")?;
    let bases = txn.open_table(BASES).context(path, "reading the bases table")?;
    let changes = txn.open_table(CHANGES).context(path, "reading the changes table")?;
    let built = HolderTable::build(|emit| {
        for (id, known) in &peers.by_id {
            let set = stored_set_of(&bases, &changes, known.record.number)
                .context(path, "reading a peer's stored set")?
                .map_err(|damage| IndexError::Corrupt {
                    path: path.to_path_buf(),
                    what: format!("peer {id}: {damage}"),
                })?;
            if set.len() as u64 != known.record.paths {
                return Err(IndexError::Corrupt {
                    path: path.to_path_buf(),
                    what: format!(
                        "peer {id}: {} paths stored, {} recorded",
                        set.len(),
                        known.record.paths
                    ),
                });
            }
            for fingerprint in set {
                emit(known.slot, fingerprint);
            }
        }
        Ok(())
    });
    built.map_err(|e| {
        e.unwrap_or_else(|| IndexError::Corrupt {
            path: path.to_path_buf(),
            what: "the stored sets changed while the holder table was built".into(),
        })
    })
}

/// The peer numbered `number`'s set: its base with its changes applied in order. The outer
/// error is redb's; the inner says what is damaged.
fn stored_set_of(
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

/// `set` without `removed` and with `added` (all sorted multisets), sorted.
fn with_change(
    set: &[Fingerprint],
    removed: &[Fingerprint],
    added: &[Fingerprint],
) -> Vec<Fingerprint> {
    let kept = multiset_difference(set, removed);
    let mut out = Vec::with_capacity(kept.len() + added.len());
    let (mut i, mut j) = (0, 0);
    while i < kept.len() || j < added.len() {
        if j == added.len() || (i < kept.len() && kept[i] <= added[j]) {
            out.push(kept[i]);
            i += 1;
        } else {
            out.push(added[j]);
            j += 1;
        }
    }
    out
}

/// Stores `base` as peer `number`'s, in pieces of [`BASE_PIECE`], replacing what was there.
fn put_base(
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
fn forget_changes(
    changes: &mut Table<'_, (u32, u32), &'static [u8]>,
    number: u32,
) -> Result<(), RedbError> {
    changes.retain_in((number, 0)..=(number, u32::MAX), |_, _| false)?;
    Ok(())
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The redb database at `path`, with damage named as such.
fn open_database(path: &Path) -> Result<Database, IndexError> {
    match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
        Ok(db) => Ok(db),
        // What redb says of a file that is not one of its databases, or is damaged.
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(what))) => {
            Err(IndexError::Corrupt { path: path.to_path_buf(), what })
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(IndexError::Corrupt {
                path: path.to_path_buf(),
                what: format!("not a redb database, or a damaged one ({e})"),
            })
        }
        Err(e) => Err(e).context(path, "opening"),
    }
}
