//! The write path: snapshots, deltas and forgetting a peer, each one redb write transaction,
//! with the holder table and the peers in memory changed after the commit, under the write
//! lock (see the module docs of `index` on consistency); the size bound applied before
//! anything is written; and the table's slots, taken by a peer's first snapshot and given
//! back when it is forgotten.
//!
//! A peer's set is stored as a base (its last snapshot) and a change record per delta since,
//! so a delta costs one small insertion; the changes are folded into the base after
//! [`MAX_CHANGES`] deltas, or sooner once they hold many fingerprints ([`MAX_CHANGED`]), so
//! that reading a set back (at open, and by each writer) applies only a few.

use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use nixmesh_protocol::StorePathHash;
use redb::{Durability, WriteTransaction};

use super::bound::{self, Room};
use super::error::{IndexError, RedbError, StorageContext};
use super::fingerprint::{Fingerprint, multiset_difference, with_change};
use super::schema::{
    BASES, CHANGES, META, META_NEXT_PEER, PEERS, PeerRecord, forget_changes, put_base,
    stored_set_of,
};
use super::stored_set::{self, Damage};
use super::table::{SLOTS, Slot};
use super::{Index, Known};

/// Deltas kept as change records before they are folded into the peer's base.
pub(super) const MAX_CHANGES: u32 = 64;
/// Fingerprints in change records, beyond which they are folded into the base even before
/// [`MAX_CHANGES`]: this many, or a quarter of the peer's paths if more.
const MAX_CHANGED: u64 = 4096;

impl Index {
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
            None => self.admit(peer)?,
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
        let old = written.inspect_err(|_| {
            if known.is_none() {
                self.give_back_slot(slot);
            }
        })?;
        self.table_follows_snapshot(peer, slot, &new, old);
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
        let (gone, new) = self.delta_effect(known.slot, added, removed);
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
            let folded = changed > 0 && store_change(txn, &known, &gone, &new, fold)?;
            txn.open_table(PEERS)?.insert(peer.to_bytes().as_slice(), record.to_tuple())?;
            Ok(folded)
        })?;
        self.table.remove(known.slot, &gone);
        self.table.insert(known.slot, &new);
        let mut peers = self.known_mut();
        peers.total_entries = peers.total_entries - known.record.paths + paths;
        let (changes, changed) = match (folded, changed) {
            (true, _) => (0, 0),
            (false, 0) => (known.changes, known.changed),
            (false, n) => (known.changes + 1, known.changed + n),
        };
        peers.by_id.insert(*peer, Known { record, slot: known.slot, changes, changed });
        Ok(())
    }

    /// Removes `peer` and everything it holds from the index. Forgetting an unknown peer does
    /// nothing.
    pub fn forget_peer(&self, peer: &PeerId) -> Result<(), IndexError> {
        let _writer = self.lock_writer();
        self.forget_locked(peer)
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

    /// The slot and number of a peer not indexed yet: a free slot of the table, now standing
    /// for `peer`, and the next peer number. Called with the write lock held.
    fn admit(&self, peer: &PeerId) -> Result<(Slot, u32), IndexError> {
        let number = self.known().next_number;
        if number == u32::MAX {
            return Err(IndexError::Corrupt {
                path: self.path.clone(),
                what: "all 2^32 peer numbers are used".into(),
            });
        }
        Ok((self.take_slot(peer)?, number))
    }

    /// Makes the table hold `new` for `slot` after a snapshot was committed: only the
    /// difference from the `old` stored set, or everything again if that was damaged.
    fn table_follows_snapshot(
        &self,
        peer: &PeerId,
        slot: Slot,
        new: &[Fingerprint],
        old: Option<Result<Vec<Fingerprint>, Damage>>,
    ) {
        match old {
            None => self.table.insert(slot, new),
            Some(Ok(old)) => {
                self.table.remove(slot, &multiset_difference(&old, new));
                self.table.insert(slot, &multiset_difference(new, &old));
            }
            Some(Err(damage)) => {
                tracing::warn!(
                    index = %self.path.display(),
                    %peer,
                    "the stored set of this peer was damaged ({damage}); replaced by its snapshot"
                );
                self.table.remove_slot(slot);
                self.table.insert(slot, new);
            }
        }
    }

    /// What a delta changes in `slot`'s set, as (gone, new) fingerprints, sorted: copies held
    /// go, then fingerprints not held (after that) come. The table holds exactly the peer's
    /// stored set, so it is asked rather than the file.
    fn delta_effect(
        &self,
        slot: Slot,
        added: &[StorePathHash],
        removed: &[StorePathHash],
    ) -> (Vec<Fingerprint>, Vec<Fingerprint>) {
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
        (gone, new)
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

    /// Runs `f` in one write transaction and commits it (see the module docs of `index` on
    /// durability). If `f` fails, nothing it did is kept.
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
            // Nothing of this write was kept; the next one finds the database usable again
            // once there is room.
            Err(e) if e.needs_reopen() => {
                self.reopen();
            }
            Ok(_) => self.recovered(),
            Err(_) => {}
        }
        result
    }
}

/// Stores a delta's change to `known`'s set: folded into its base (returns true) if `fold`,
/// else as one more change record. A damaged set stays as it is, to be found at the next
/// open.
fn store_change(
    txn: &WriteTransaction,
    known: &Known,
    gone: &[Fingerprint],
    new: &[Fingerprint],
    fold: bool,
) -> Result<bool, RedbError> {
    let number = known.record.number;
    let mut changes = txn.open_table(CHANGES)?;
    let mut bases = txn.open_table(BASES)?;
    match stored_set_of(&bases, &changes, number)? {
        Ok(set) if fold => {
            let set = with_change(&set, gone, new);
            put_base(&mut bases, number, &stored_set::encode_base(&set))?;
            forget_changes(&mut changes, number)?;
            Ok(true)
        }
        _ => {
            let change = stored_set::encode_change(gone, new);
            changes.insert((number, known.changes), change.as_slice())?;
            Ok(false)
        }
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
