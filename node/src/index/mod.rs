//! Who holds what: the index of the store paths peers advertise, in redb on disk.
//!
//! Each peer's advertisements arrive as a snapshot ([`Index::replace_peer`]) and then deltas
//! ([`Index::apply_delta`]), each stamped with the peer's (epoch, generation). The index
//! answers [`Index::holders`] locally, without the network, and keeps every peer's position so
//! a restarted node resumes each stream where it stopped ([`Index::peer_position`]).
//!
//! Why on disk: 100 peers with 50,000 disjoint paths each are 5 million entries, and a node
//! must stay well under 100 MB. The pairs live in redb (layout in [`schema`]) behind a bounded
//! page cache ([`CACHE_BYTES`]); only one small record per peer is mirrored in memory, for
//! [`Index::path_count`], [`Index::peers`] and turning peer numbers back into `PeerId`s.
//!
//! Consistency: each snapshot, delta or forget is one redb write transaction, so a peer's
//! paths and its (epoch, generation) always change together. Commits use
//! [`redb::Durability::Eventual`]: they are written before the call returns but not fsynced,
//! so a power loss may roll the index back to an earlier, still consistent state (older paths
//! *and* the older generation), and the peer's stream then resumes from there. A crash of the
//! process alone loses nothing.
//!
//! Failure: after an I/O error (a full disk) redb refuses every later operation, reads
//! included, until the database is opened again; the index reopens it (at most once a
//! second), retries a failed lookup once, and reports the trouble ([`Index::trouble`]) until
//! a write succeeds again. A damaged file is set aside at start ([`Index::open_or_set_aside`]).
//!
//! Threading: [`Index`] is `Send + Sync` and every method takes `&self`. Writes are serialised
//! by a lock; lookups run beside them and see the last committed state. Writes (and the
//! position reads of a subscription) may block for milliseconds on large snapshots: call them
//! from `tokio::task::spawn_blocking`. [`Index::holders`] is the exception, called straight
//! from the HTTP path so that a narinfo miss costs no thread hop: it is one read transaction
//! on a few pages the OS keeps cached (microseconds, see `node/benches/index.rs`), and takes
//! no write lock (only after an I/O failure does it reopen the file, at most once a second).
//! [`Index::path_count`], [`Index::total_entries`] and [`Index::peers`] are in memory.

mod error;
mod schema;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use nixmesh_protocol::StorePathHash;
use redb::{Database, Durability, ReadableTable, WriteTransaction};

pub use error::IndexError;
use error::{RedbError, StorageContext};
use schema::{
    HASH_MAX, HASH_MIN, HELD, HOLDERS, META, META_NEXT_PEER, META_SCHEMA, PEERS, PeerRecord,
    SCHEMA_VERSION, sorted_difference, sorted_unique,
};

/// The redb page cache: the bulk of the index's memory, whatever the number of entries.
pub const CACHE_BYTES: usize = 32 * 1024 * 1024;

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
    /// Held for the whole of every write, so the mirror changes in commit order.
    writer: Mutex<()>,
    mirror: RwLock<Mirror>,
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

/// The in-memory copy of the `peers` table (one small record per peer).
#[derive(Default)]
struct Mirror {
    by_id: HashMap<PeerId, PeerRecord>,
    /// Also holds the number of a peer whose first snapshot is being written, so a lookup
    /// between that commit and the mirror update still names it.
    by_number: HashMap<u32, PeerId>,
    next_number: u32,
    total_entries: u64,
}

impl Index {
    /// Opens the index at `path` like [`Index::open`]; a file that turns out damaged
    /// (truncated, garbage, another layout, or one that makes redb panic) is renamed to
    /// `<path>.damaged-<unix time>` and a new, empty index is made in its place, to be filled
    /// again from the peers' snapshots. Returns the index and where the damaged file went.
    /// Errors that are not damage (no permission, a full disk) are returned as they are.
    pub fn open_or_set_aside(path: &Path) -> Result<(Index, Option<PathBuf>), IndexError> {
        let why = match std::panic::catch_unwind(|| Index::open(path)) {
            Ok(Ok(index)) => return Ok((index, None)),
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

    /// Opens the index at `path`, creating the file if it is missing.
    ///
    /// Fails with a message naming the file if it is not a redb database, was written with
    /// another schema version, or is damaged beyond what redb repairs itself (after an unclean
    /// shutdown redb checks and repairs the file here, which can take a while for large ones).
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let db = open_database(path)?;
        let txn = db.begin_write().context(path, "opening")?;
        let mirror = {
            let mut meta = txn.open_table(META).context(path, "opening the meta table")?;
            let found =
                meta.get(META_SCHEMA).context(path, "reading the schema")?.map(|v| v.value());
            match found {
                Some(SCHEMA_VERSION) => {}
                Some(found) => {
                    return Err(IndexError::Schema {
                        path: path.to_path_buf(),
                        found,
                        expected: SCHEMA_VERSION,
                    });
                }
                None => {
                    meta.insert(META_SCHEMA, SCHEMA_VERSION).context(path, "writing the schema")?;
                }
            }
            let next = meta.get(META_NEXT_PEER).context(path, "reading the meta table")?;
            let next_number = next.map_or(0, |v| v.value());
            let mut mirror = Mirror {
                next_number: u32::try_from(next_number).map_err(|_| IndexError::Corrupt {
                    path: path.to_path_buf(),
                    what: format!("next peer number {next_number} is out of range"),
                })?,
                ..Mirror::default()
            };
            // Create the other tables so that lookups never meet a missing one.
            txn.open_table(HOLDERS).context(path, "opening the holders table")?;
            txn.open_table(HELD).context(path, "opening the held table")?;
            let peers = txn.open_table(PEERS).context(path, "opening the peers table")?;
            for entry in peers.iter().context(path, "reading the peers table")? {
                let (key, value) = entry.context(path, "reading the peers table")?;
                let id = PeerId::from_bytes(key.value()).map_err(|e| IndexError::Corrupt {
                    path: path.to_path_buf(),
                    what: format!("a peer id in the peers table does not parse ({e})"),
                })?;
                let record = PeerRecord::from_tuple(value.value());
                if record.number >= mirror.next_number {
                    return Err(IndexError::Corrupt {
                        path: path.to_path_buf(),
                        what: format!("peer {id} has number {} beyond the counter", record.number),
                    });
                }
                mirror.by_number.insert(record.number, id);
                mirror.by_id.insert(id, record);
                mirror.total_entries += record.paths;
            }
            mirror
        };
        txn.commit().context(path, "opening")?;
        Ok(Index {
            db: RwLock::new(Some(db)),
            health: Mutex::new(Health::default()),
            path: path.to_path_buf(),
            writer: Mutex::new(()),
            mirror: RwLock::new(mirror),
        })
    }

    /// The peers that hold `hash`, whether connected or not (the caller filters by
    /// connectivity), in no particular order and without duplicates.
    ///
    /// One read transaction and one range scan; microseconds when the pages are cached.
    pub fn holders(&self, hash: &StorePathHash) -> Result<Vec<PeerId>, IndexError> {
        const LOOKUP: &str = "looking up holders";
        let read = |db: &Database| {
            let txn = db.begin_read().context(&self.path, LOOKUP)?;
            let holders = txn.open_table(HOLDERS).context(&self.path, LOOKUP)?;
            let key = hash.as_bytes();
            let mut numbers = Vec::new();
            for entry in holders.range((key, 0u32)..=(key, u32::MAX)).context(&self.path, LOOKUP)? {
                numbers.push(entry.context(&self.path, LOOKUP)?.0.value().1);
            }
            Ok(numbers)
        };
        // A lookup that failed on the database's I/O is tried again once it is reopened.
        let numbers = match self.with_db(read) {
            Err(e) if e.needs_reopen() && self.reopen() => self.with_db(read)?,
            other => other?,
        };
        let mirror = self.mirror();
        Ok(numbers.iter().filter_map(|n| mirror.by_number.get(n).copied()).collect())
    }

    /// Replaces everything known of `peer` with `paths` (a full snapshot; duplicates are
    /// ignored) and records (`epoch`, `generation`) as its position, atomically.
    ///
    /// Only the difference to what was indexed is written, so a peer re-sending a nearly
    /// identical snapshot (as it does after every restart) costs little disk traffic.
    pub fn replace_peer(
        &self,
        peer: &PeerId,
        epoch: u64,
        generation: u64,
        paths: &[StorePathHash],
    ) -> Result<(), IndexError> {
        let new = sorted_unique(paths);
        let _writer = self.lock_writer();
        let (known, next_number) = {
            let mirror = self.mirror();
            (mirror.by_id.get(peer).copied(), mirror.next_number)
        };
        let number = match known {
            Some(record) => record.number,
            None => {
                if next_number == u32::MAX {
                    return Err(IndexError::Corrupt {
                        path: self.path.clone(),
                        what: "all 2^32 peer numbers are used".into(),
                    });
                }
                self.mirror_mut().by_number.insert(next_number, *peer);
                next_number
            }
        };
        let record = PeerRecord {
            number,
            epoch,
            generation,
            paths: new.len() as u64,
            last_update_unix: now_unix(),
        };
        let written = self.write("replacing a peer's snapshot", |txn| {
            let mut held = txn.open_table(HELD)?;
            let mut holders = txn.open_table(HOLDERS)?;
            let mut old = Vec::with_capacity(known.map_or(0, |r| r.paths as usize));
            for entry in held.range((number, &HASH_MIN)..=(number, &HASH_MAX))? {
                old.push(*entry?.0.value().1);
            }
            for hash in sorted_difference(&old, &new) {
                held.remove((number, hash))?;
                holders.remove((hash, number))?;
            }
            for hash in sorted_difference(&new, &old) {
                held.insert((number, hash), ())?;
                holders.insert((hash, number), ())?;
            }
            txn.open_table(PEERS)?.insert(peer.to_bytes().as_slice(), record.to_tuple())?;
            if known.is_none() {
                txn.open_table(META)?.insert(META_NEXT_PEER, u64::from(number) + 1)?;
            }
            Ok(())
        });
        let mut mirror = self.mirror_mut();
        match written {
            Ok(()) => {
                mirror.total_entries -= known.map_or(0, |r| r.paths);
                mirror.total_entries += record.paths;
                mirror.by_id.insert(*peer, record);
                if known.is_none() {
                    mirror.next_number = number + 1;
                }
                Ok(())
            }
            Err(e) => {
                if known.is_none() {
                    mirror.by_number.remove(&number);
                }
                Err(e)
            }
        }
    }

    /// Applies a delta: removes `removed`, then adds `added`, and moves the peer's position to
    /// (`epoch`, `to_generation`), atomically.
    ///
    /// Refuses with [`IndexError::OutOfStep`], changing nothing, unless the peer is indexed at
    /// exactly (`epoch`, `from_generation`) and `to_generation >= from_generation`; the caller
    /// then asks the peer for a snapshot. Removing a path not held, or adding one already held,
    /// is not an error and does not change the counts.
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
        let known = self.mirror().by_id.get(peer).copied();
        let Some(mut record) = known.filter(|r| {
            r.epoch == epoch && r.generation == from_generation && to_generation >= from_generation
        }) else {
            return Err(IndexError::OutOfStep {
                peer: Box::new(*peer),
                epoch,
                from_generation,
                to_generation,
                stored: known.map(|r| (r.epoch, r.generation)),
            });
        };
        let number = record.number;
        let (added, removed) = (sorted_unique(added), sorted_unique(removed));
        let paths = self.write("applying a peer's delta", |txn| {
            let mut held = txn.open_table(HELD)?;
            let mut holders = txn.open_table(HOLDERS)?;
            let mut paths = record.paths;
            for hash in &removed {
                if held.remove((number, hash))?.is_some() {
                    holders.remove((hash, number))?;
                    paths -= 1;
                }
            }
            for hash in &added {
                if held.insert((number, hash), ())?.is_none() {
                    holders.insert((hash, number), ())?;
                    paths += 1;
                }
            }
            record.generation = to_generation;
            record.paths = paths;
            record.last_update_unix = now_unix();
            txn.open_table(PEERS)?.insert(peer.to_bytes().as_slice(), record.to_tuple())?;
            Ok(paths)
        })?;
        let mut mirror = self.mirror_mut();
        mirror.total_entries = mirror.total_entries - known.map_or(0, |r| r.paths) + paths;
        mirror.by_id.insert(*peer, record);
        Ok(())
    }

    /// The (epoch, generation) last applied for `peer`, to resume its stream; `None` if the
    /// peer is not indexed. This is always the position of the paths the index holds for it.
    pub fn peer_position(&self, peer: &PeerId) -> Result<Option<(u64, u64)>, IndexError> {
        Ok(self.mirror().by_id.get(peer).map(|r| (r.epoch, r.generation)))
    }

    /// How many distinct paths `peer` holds as far as the index knows (0 if unknown). From
    /// memory; never blocks on the disk.
    pub fn path_count(&self, peer: &PeerId) -> u64 {
        self.mirror().by_id.get(peer).map_or(0, |r| r.paths)
    }

    /// Every indexed peer, sorted by id. From memory; never blocks on the disk.
    pub fn peers(&self) -> Result<Vec<IndexedPeer>, IndexError> {
        let mirror = self.mirror();
        let mut peers: Vec<IndexedPeer> = mirror
            .by_id
            .iter()
            .map(|(id, r)| IndexedPeer {
                id: *id,
                epoch: r.epoch,
                generation: r.generation,
                paths: r.paths,
                last_update_unix: r.last_update_unix,
            })
            .collect();
        peers.sort_unstable_by_key(|p| p.id);
        Ok(peers)
    }

    /// Removes `peer` and everything it holds from the index. Forgetting an unknown peer does
    /// nothing. Its number is not reused.
    pub fn forget_peer(&self, peer: &PeerId) -> Result<(), IndexError> {
        let _writer = self.lock_writer();
        let Some(record) = self.mirror().by_id.get(peer).copied() else { return Ok(()) };
        let number = record.number;
        self.write("forgetting a peer", |txn| {
            let mut held = txn.open_table(HELD)?;
            let mut holders = txn.open_table(HOLDERS)?;
            let range = (number, &HASH_MIN)..=(number, &HASH_MAX);
            for entry in held.extract_from_if(range, |_, _| true)? {
                holders.remove((entry?.0.value().1, number))?;
            }
            txn.open_table(PEERS)?.remove(peer.to_bytes().as_slice())?;
            Ok(())
        })?;
        let mut mirror = self.mirror_mut();
        mirror.total_entries -= record.paths;
        mirror.by_id.remove(peer);
        mirror.by_number.remove(&number);
        Ok(())
    }

    /// The number of (path, peer) pairs indexed, over all peers. From memory.
    pub fn total_entries(&self) -> u64 {
        self.mirror().total_entries
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
    // (the mirror is only changed after a commit), so a poisoned lock is still usable.
    fn lock_writer(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mirror(&self) -> RwLockReadGuard<'_, Mirror> {
        self.mirror.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn mirror_mut(&self) -> RwLockWriteGuard<'_, Mirror> {
        self.mirror.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.path)
            .field("peers", &self.mirror().by_id.len())
            .field("total_entries", &self.total_entries())
            .finish()
    }
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
