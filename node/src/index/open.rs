//! Opening: the redb file read and checked, and the holder table built from it.
//!
//! Everything the file says is checked before it is believed: the layout version and the
//! fingerprint key in `meta`, every peer's record against the peer counter and the table's
//! [`SLOTS`], every change record against its peer's sequence, a base for every peer and
//! none for anyone else, and every stored set against the count its record holds. A file
//! that fails a check is [`IndexError::Corrupt`] (or [`IndexError::Schema`]), which
//! [`Index::open_or_set_aside`] answers by setting it aside.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize};

use libp2p::PeerId;
use nixmesh_telemetry::RateLimitedLog;
use parking_lot::{Mutex, RwLock};
use redb::{Database, ReadableTable, Table, WriteTransaction};

use super::bound::{DEFAULT_MAX_PATHS, REPORT_EVERY};
use super::error::{IndexError, StorageContext};
use super::fingerprint::FingerprintKey;
use super::schema::{
    BASES, CHANGES, META, META_KEY, META_NEXT_PEER, META_SCHEMA, PEERS, PeerRecord, RecordTuple,
    SCHEMA_VERSION, stored_set_of,
};
use super::stored_set;
use super::table::{HolderTable, SLOTS, Slot};
use super::{Index, Known, Peers};

/// redb's page cache. The file is read only at open and by writers, so a small cache does.
pub const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// Free pages in the file beyond which opening compacts it: this much, and half the file.
const COMPACT_ABOVE: u64 = 64 * 1024 * 1024;

/// What the file holds besides the sets themselves, read and checked.
struct Loaded {
    key: FingerprintKey,
    peers: Peers,
    slots: Vec<Option<PeerId>>,
    /// Bytes of free pages in the file.
    fragmented: u64,
}

impl Index {
    /// Opens the index at `path`, creating the file if it is missing, and builds the holder
    /// table from it. The bound is [`DEFAULT_MAX_PATHS`] until [`Index::set_max_paths`].
    ///
    /// Fails with a message naming the file if it is not a redb database, was written with
    /// another layout version, holds a blob that fails its checks, or is damaged beyond what
    /// redb repairs itself (after an unclean shutdown redb checks and repairs the file here,
    /// which can take a while for large ones).
    pub fn open(path: &Path) -> Result<Index, IndexError> {
        let mut db = open_database(path)?;
        let txn = db.begin_write().context(path, "opening")?;
        let Loaded { key, mut peers, slots, fragmented } = load(&txn, path)?;
        txn.commit().context(path, "opening")?;
        let table = build_table(&db, path, &peers)?;
        compact_if_fragmented(&mut db, path, fragmented);
        peers.by_id.shrink_to_fit();
        Ok(Index {
            db: RwLock::new(Some(db)),
            health: Mutex::default(),
            path: path.to_path_buf(),
            writer: Mutex::new(()),
            key,
            table,
            slots: RwLock::new(slots),
            peers: RwLock::new(peers),
            max_paths: AtomicU64::new(DEFAULT_MAX_PATHS),
            rotation: AtomicUsize::new(0),
            refused: RateLimitedLog::every(REPORT_EVERY),
            dropped: RateLimitedLog::every(REPORT_EVERY),
        })
    }
}

/// The redb database at `path`, with damage named as such.
pub(super) fn open_database(path: &Path) -> Result<Database, IndexError> {
    match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
        Ok(db) => Ok(db),
        // What redb says of a file that is not one of its databases, or is damaged.
        Err(redb::DatabaseError::Storage(redb::StorageError::Corrupted(what))) => {
            Err(corrupt(path, what))
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            Err(corrupt(path, format!("not a redb database, or a damaged one ({e})")))
        }
        Err(e) => Err(e).context(path, "opening"),
    }
}

fn corrupt(path: &Path, what: String) -> IndexError {
    IndexError::Corrupt { path: path.to_path_buf(), what }
}

/// Reads and checks the meta table, the peers and the change records, and creates the
/// tables of a new file, so that every later transaction finds them.
fn load(txn: &WriteTransaction, path: &Path) -> Result<Loaded, IndexError> {
    let (key, next_number) = read_meta(txn, path)?;
    let bases = txn.open_table(BASES).context(path, "opening the bases table")?;
    let changes = txn.open_table(CHANGES).context(path, "opening the changes table")?;
    let stored = txn.open_table(PEERS).context(path, "opening the peers table")?;
    let (mut peers, slots) = load_peers(&stored, path, next_number)?;
    let by_number: HashMap<u32, PeerId> =
        peers.by_id.iter().map(|(id, known)| (known.record.number, *id)).collect();
    count_changes(&changes, path, &by_number, &mut peers)?;
    check_bases(&bases, path, &by_number)?;
    let fragmented = txn.stats().context(path, "reading the file's statistics")?.fragmented_bytes();
    Ok(Loaded { key, peers, slots, fragmented })
}

/// The fingerprint key and the next peer number, from the meta table; a new file gets a
/// new key and the current layout version.
fn read_meta(txn: &WriteTransaction, path: &Path) -> Result<(FingerprintKey, u32), IndexError> {
    let mut meta = txn.open_table(META).context(path, "opening the meta table")?;
    let read_meta = |name: &str| -> Result<Option<u64>, IndexError> {
        Ok(meta.get(name).context(path, "reading the meta table")?.map(|v| v.value()))
    };
    let found = read_meta(META_SCHEMA)?;
    let stored_key = (read_meta(META_KEY[0])?, read_meta(META_KEY[1])?);
    let next_number = read_meta(META_NEXT_PEER)?.unwrap_or(0);
    let key = match (found, stored_key) {
        (Some(SCHEMA_VERSION), (Some(k0), Some(k1))) => FingerprintKey(k0, k1),
        (Some(SCHEMA_VERSION), _) => return Err(corrupt(path, "no fingerprint key".into())),
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
            let init = [(META_SCHEMA, SCHEMA_VERSION), (META_KEY[0], key.0), (META_KEY[1], key.1)];
            for (name, value) in init {
                meta.insert(name, value).context(path, "writing the meta table")?;
            }
            key
        }
    };
    let next_number = u32::try_from(next_number)
        .map_err(|_| corrupt(path, format!("next peer number {next_number} is out of range")))?;
    Ok((key, next_number))
}

/// Every peer's record, each given the next slot of the table.
fn load_peers(
    stored: &Table<'_, &'static [u8], RecordTuple>,
    path: &Path,
    next_number: u32,
) -> Result<(Peers, Vec<Option<PeerId>>), IndexError> {
    let mut peers = Peers { next_number, ..Peers::default() };
    let mut slots = Vec::new();
    for entry in stored.iter().context(path, "reading the peers table")? {
        let (key, value) = entry.context(path, "reading the peers table")?;
        let id = PeerId::from_bytes(key.value()).map_err(|e| {
            corrupt(path, format!("a peer id in the peers table does not parse ({e})"))
        })?;
        let record = PeerRecord::from_tuple(value.value());
        if record.number >= next_number {
            return Err(corrupt(
                path,
                format!("peer {id} has number {} beyond the counter", record.number),
            ));
        }
        if slots.len() == SLOTS {
            return Err(corrupt(path, format!("more than {SLOTS} peers")));
        }
        let slot = slots.len() as Slot;
        slots.push(Some(id));
        peers.by_id.insert(id, Known { record, slot, changes: 0, changed: 0 });
        peers.total_entries += record.paths;
    }
    Ok((peers, slots))
}

/// Counts each peer's change records (and the fingerprints in them), checking that they
/// number 0, 1, 2, ... for a known peer and decode.
fn count_changes(
    changes: &Table<'_, (u32, u32), &'static [u8]>,
    path: &Path,
    by_number: &HashMap<u32, PeerId>,
    peers: &mut Peers,
) -> Result<(), IndexError> {
    for entry in changes.iter().context(path, "reading the changes table")? {
        let (key, value) = entry.context(path, "reading the changes table")?;
        let (number, sequence) = key.value();
        let known = by_number.get(&number).and_then(|id| peers.by_id.get_mut(id));
        let Some(known) = known.filter(|k| k.changes == sequence) else {
            return Err(corrupt(
                path,
                format!("change {sequence} of peer number {number} belongs to no peer's sequence"),
            ));
        };
        let (removed, added) =
            stored_set::decode_change(value.value()).map_err(|what| corrupt(path, what))?;
        known.changes += 1;
        known.changed += (removed.len() + added.len()) as u64;
    }
    Ok(())
}

/// Checks that every peer has a base and that no base belongs to no peer.
fn check_bases(
    bases: &Table<'_, (u32, u32), &'static [u8]>,
    path: &Path,
    by_number: &HashMap<u32, PeerId>,
) -> Result<(), IndexError> {
    let mut without_base = by_number.clone();
    for piece in bases.iter().context(path, "reading the bases table")? {
        let (number, _) = piece.context(path, "reading the bases table")?.0.value();
        if !by_number.contains_key(&number) {
            return Err(corrupt(path, format!("a stored set for no peer (number {number})")));
        }
        without_base.remove(&number);
    }
    if let Some((number, id)) = without_base.into_iter().next() {
        return Err(corrupt(path, format!("peer {id} (number {number}) has no stored set")));
    }
    Ok(())
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
                .map_err(|damage| corrupt(path, format!("peer {id}: {damage}")))?;
            if set.len() as u64 != known.record.paths {
                return Err(corrupt(
                    path,
                    format!(
                        "peer {id}: {} paths stored, {} recorded",
                        set.len(),
                        known.record.paths
                    ),
                ));
            }
            for fingerprint in set {
                emit(known.slot, fingerprint);
            }
        }
        Ok(())
    });
    built.map_err(|e| {
        e.unwrap_or_else(|| {
            corrupt(path, "the stored sets changed while the holder table was built".into())
        })
    })
}

/// Gives the free pages of peers that left or shrank back to the filesystem, when they are
/// more than [`COMPACT_ABOVE`] and half the file. A failure only costs disk space: logged.
fn compact_if_fragmented(db: &mut Database, path: &Path, fragmented: u64) {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    if fragmented <= COMPACT_ABOVE || fragmented <= size / 2 {
        return;
    }
    match db.compact() {
        Ok(_) => {
            let after = std::fs::metadata(path).map_or(0, |m| m.len());
            tracing::info!(index = %path.display(), before = size, after, "compacted the index");
        }
        Err(e) => tracing::warn!(index = %path.display(), "cannot compact the index: {e}"),
    }
}
