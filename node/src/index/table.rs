//! The holder table: every (fingerprint, peer slot) pair the index holds, in memory, four
//! bytes each, laid out so that "who holds this fingerprint" reads one short run of entries.
//!
//! A fingerprint's top [`SHARD_BITS`] pick one of 1,024 shards, each behind its own lock;
//! the next [`BUCKET_BITS`] pick one of 2,048 buckets in the shard, whose bounds the shard
//! keeps; the remaining [`REMAINDER_BITS`] are stored in the entry beside the peer's slot
//! (`remainder << SLOT_BITS | slot`). The shard and bucket bits cost no space, which is how a
//! 41-bit fingerprint and a 12-bit slot fit in a `u32`. Within a bucket, entries are sorted
//! by remainder (the slots of one remainder in any order); at 50 million entries a bucket
//! holds about 24 (two cache lines).
//!
//! Entries form a multiset: a peer holding two paths with one fingerprint has the entry
//! twice, and removing one path removes one copy.
//!
//! Memory: each shard's entries live in a mapping of their own ([`Words`]), grown and shrunk
//! by the kernel, because shards that grow in step leave free pieces between them in any
//! heap; a mapping wastes at most a page. With 1,024 shards of about 49,000 entries each,
//! that is at most 4 MiB.
//!
//! Insertions wait, sorted, in room kept at the end of each shard's mapping (eight bytes an
//! entry, up to a 64th of the shard, at least 16) and are merged in, in place from the end,
//! when that room is full: absorbing a snapshot touches every shard, and inserting straight
//! into the merged entries would move half of a shard per insertion. A snapshot's insertions
//! into one shard go in together, one pass over the room. Lookups search both.
//!
//! Removals mark the entry dead where it is (its slot becomes [`DEAD`], its remainder stays,
//! so the bucket stays sorted) instead of moving the rest of the shard; a shard drops its dead
//! entries in one pass once they are a 64th of it, and at its next merge.
//!
//! Bounds: four bytes an entry, plus the room for pending entries (under 3 %, and only what
//! has been written of it is resident), the bucket bounds (8 MiB) and at most a page a shard
//! (4 MiB); dead entries until they are dropped, under 2 %.

use std::ops::Range;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::fingerprint::{FINGERPRINT_BITS, Fingerprint};
use super::words::Words;

pub(super) const SHARD_BITS: u32 = 10;
pub(super) const BUCKET_BITS: u32 = 11;
pub(super) const REMAINDER_BITS: u32 = 20;
pub(super) const SLOT_BITS: u32 = 12;
/// The slot of a dead entry: removed, not dropped yet.
const DEAD: Slot = (1 << SLOT_BITS) - 1;
/// How many peers the table can tell apart: a peer's slot is its number in the table, any
/// slot but [`DEAD`].
pub(super) const SLOTS: usize = DEAD as usize;

const SHARDS: usize = 1 << SHARD_BITS;
const BUCKETS: usize = 1 << BUCKET_BITS;
const _: () = assert!(SHARD_BITS + BUCKET_BITS + REMAINDER_BITS == FINGERPRINT_BITS);
const _: () = assert!(REMAINDER_BITS + SLOT_BITS == 32);

/// A peer's number in the table, below [`SLOTS`]. Slots are reused once a peer's entries
/// are all gone.
pub(super) type Slot = u16;

/// Where a fingerprint lives: shard, bucket, and the entry's high bits.
fn split(fingerprint: Fingerprint) -> (usize, usize, u32) {
    let shard = (fingerprint >> (BUCKET_BITS + REMAINDER_BITS)) as usize & (SHARDS - 1);
    let bucket = (fingerprint >> REMAINDER_BITS) as usize & (BUCKETS - 1);
    let remainder = (fingerprint as u32) & ((1 << REMAINDER_BITS) - 1);
    (shard, bucket, remainder)
}

fn entry(remainder: u32, slot: Slot) -> u32 {
    remainder << SLOT_BITS | u32::from(slot)
}

fn remainder_of(entry: u32) -> u32 {
    entry >> SLOT_BITS
}

fn slot_of(entry: u32) -> Slot {
    (entry & ((1 << SLOT_BITS) - 1)) as Slot
}

/// Where the first entry of `bucket` whose remainder is not below `remainder` is, searched
/// from the front in doubling steps (0, 2, 6, 14, 30, ...) and then by halves between the last
/// two steps. A bucket is sorted by remainder, and its remainders are spread evenly except
/// for a path many peers hold, whose run of equal entries fills most of its bucket: there a
/// binary search from the middle waits on some ten cache lines one after another, while the
/// run starts among the bucket's few other entries, in its first cache line or two, where
/// these steps go. Never more steps than twice a binary search's.
fn first_not_below(bucket: &[u32], remainder: u32) -> usize {
    let below = |e: &u32| remainder_of(*e) < remainder;
    // Every entry before `low` is below; none at `high` or after it is.
    let (mut low, mut step) = (0, 1);
    let high = loop {
        let probe = low + step - 1;
        match bucket.get(probe) {
            Some(e) if below(e) => {
                low = probe + 1;
                step *= 2;
            }
            Some(_) => break probe,
            None => break bucket.len(),
        }
    };
    low + bucket[low..high].partition_point(below)
}

/// The slots of pending (bucket, entry) pairs.
fn pending_slots(pairs: &[u32]) -> impl Iterator<Item = Slot> + '_ {
    pairs.chunks_exact(2).map(|pair| slot_of(pair[1]))
}

/// The room kept for pending entries (1 / this of the merged ones): an insertion costs a
/// merge of the shard every `len / PENDING_SHARE` insertions, that is about
/// `PENDING_SHARE` entries moved, instead of half the shard. Dead entries are dropped once
/// they are as many.
const PENDING_SHARE: usize = 64;
/// Pending entries a shard has room for whatever its size.
const PENDING_MIN: usize = 16;

struct Shard {
    /// Where each bucket ends in `entries`; bucket `b` is `ends[b - 1]..ends[b]` (from 0 for
    /// the first), so `ends[BUCKETS - 1]` is where the merged entries end.
    ends: Box<[u32]>,
    /// The merged entries, sorted by remainder within each bucket; then the pending ones, not
    /// merged yet, as (bucket, entry) pairs of words, sorted. The pending entries live in
    /// room kept at the end, so an insertion moves only them (see [`Shard::room`]).
    entries: Words,
    /// Dead entries among the merged ones.
    dead: usize,
    /// The buckets that may have pending entries, a bit each: a lookup in any other skips
    /// the search among the pending ones (pages away from the bucket). Set as entries wait,
    /// cleared when they are merged.
    pending_buckets: [u64; BUCKETS / 64],
}

impl Default for Shard {
    fn default() -> Self {
        Shard {
            ends: vec![0; BUCKETS].into_boxed_slice(),
            entries: Words::new(),
            dead: 0,
            pending_buckets: [0; BUCKETS / 64],
        }
    }
}

impl Shard {
    fn bucket(&self, bucket: usize) -> Range<usize> {
        let start = if bucket == 0 { 0 } else { self.ends[bucket - 1] as usize };
        start..self.ends[bucket] as usize
    }

    fn merged(&self) -> usize {
        self.ends[BUCKETS - 1] as usize
    }

    fn may_have_pending(&self, bucket: usize) -> bool {
        self.pending_buckets[bucket / 64] & (1 << (bucket % 64)) != 0
    }

    fn pending_count(&self) -> usize {
        (self.entries.len() - self.merged()) / 2
    }

    /// Words of room for pending entries beside `merged` merged ones.
    fn room(merged: usize) -> usize {
        2 * (merged / PENDING_SHARE).max(PENDING_MIN)
    }

    /// The pending entries, as (bucket, entry) pairs.
    fn pending(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.entries[self.merged()..].chunks_exact(2).map(|pair| (pair[0], pair[1]))
    }

    /// Where the first pending pair not below `key` is (as a word index).
    fn pending_position(&self, key: (u32, u32)) -> usize {
        let merged = self.merged();
        let pairs = &self.entries[merged..];
        let (mut low, mut high) = (0, pairs.len() / 2);
        while low < high {
            let middle = (low + high) / 2;
            if (pairs[2 * middle], pairs[2 * middle + 1]) < key {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        merged + 2 * low
    }

    /// Adds `pairs` ((bucket, entry), sorted) to the pending ones, or merges them in with the
    /// pending ones when the room would overflow.
    fn insert(&mut self, pairs: &[(u32, u32)]) {
        if self.pending_count() + pairs.len() > Shard::room(self.merged()) / 2 {
            self.merge(pairs);
            return;
        }
        // Merged in among the pending pairs from the end, each pair moved once.
        let (merged, old_len) = (self.merged(), self.entries.len());
        let len = old_len + 2 * pairs.len();
        self.entries.reserve_total(len);
        self.entries.set_len(len);
        for &(bucket, _) in pairs {
            self.pending_buckets[bucket as usize / 64] |= 1 << (bucket % 64);
        }
        let entries = &mut *self.entries;
        let (mut read, mut write) = (old_len, len);
        for &(bucket, entry) in pairs.iter().rev() {
            while read > merged && (entries[read - 2], entries[read - 1]) > (bucket, entry) {
                entries.copy_within(read - 2..read, write - 2);
                (read, write) = (read - 2, write - 2);
            }
            entries[write - 2] = bucket;
            entries[write - 1] = entry;
            write -= 2;
        }
    }

    /// Merges the pending entries and `extra` ((bucket, entry) pairs, sorted) among the
    /// merged ones, dropping the dead, and keeps [`Shard::room`] to spare.
    fn merge(&mut self, extra: &[(u32, u32)]) {
        let mut adding: Vec<(u32, u32)> = Vec::with_capacity(self.pending_count() + extra.len());
        let mut pending = self.pending().peekable();
        for &pair in extra {
            while let Some(p) = pending.next_if(|&p| p <= pair) {
                adding.push(p);
            }
            adding.push(pair);
        }
        adding.extend(pending);
        self.entries.set_len(self.merged());
        self.pending_buckets = [0; BUCKETS / 64];
        if self.dead > 0 {
            self.drop_dead(|_| true);
        }
        let merged = self.merged();
        let total = merged + adding.len();
        self.entries.reserve_total(total + Shard::room(total));
        self.entries.set_len(total);
        // From the last bucket down, each bucket's merged entries move up by the number of
        // additions at or below it, with that bucket's additions placed among them: every
        // word is written at or above where it is read, so nothing is overwritten unread.
        let entries = &mut *self.entries;
        let (mut write, mut next) = (total, adding.len());
        for bucket in (0..BUCKETS).rev() {
            if next == 0 {
                break;
            }
            let start = if bucket == 0 { 0 } else { self.ends[bucket - 1] as usize };
            let mut read = self.ends[bucket] as usize;
            self.ends[bucket] = write as u32;
            while next > 0 && adding[next - 1].0 as usize == bucket {
                let add = adding[next - 1].1;
                let above = entries[start..read]
                    .iter()
                    .rev()
                    .take_while(|&&e| remainder_of(e) > remainder_of(add))
                    .count();
                entries.copy_within(read - above..read, write - above);
                (read, write) = (read - above, write - above);
                entries[write - 1] = add;
                (write, next) = (write - 1, next - 1);
            }
            entries.copy_within(start..read, write - (read - start));
            write -= read - start;
        }
        self.shrink();
    }

    /// Keeps the merged entries `keep` accepts and that are not dead, moving the kept ones
    /// down and the pending pairs after them; returns how many live entries were dropped.
    fn drop_dead(&mut self, keep: impl Fn(Slot) -> bool) -> usize {
        let (mut kept, mut read, mut dropped) = (0usize, 0usize, 0usize);
        for bucket in 0..BUCKETS {
            let end = self.ends[bucket] as usize;
            while read < end {
                let e = self.entries[read];
                let slot = slot_of(e);
                if slot != DEAD && keep(slot) {
                    self.entries[kept] = e;
                    kept += 1;
                } else if slot != DEAD {
                    dropped += 1;
                }
                read += 1;
            }
            self.ends[bucket] = kept as u32;
        }
        let len = self.entries.len();
        self.entries.copy_within(read..len, kept);
        self.entries.set_len(kept + len - read);
        self.dead = 0;
        dropped
    }

    /// Removes one copy of each of `pairs` ((bucket, entry), sorted): from the pending ones
    /// if there, else marked dead among the merged ones. Returns how many were there.
    fn remove(&mut self, pairs: &[(u32, u32)]) -> usize {
        let mut removed = 0;
        for &(bucket, entry) in pairs {
            let at = if self.may_have_pending(bucket as usize) {
                self.pending_position((bucket, entry))
            } else {
                self.entries.len()
            };
            if at < self.entries.len()
                && (self.entries[at], self.entries[at + 1]) == (bucket, entry)
            {
                let len = self.entries.len();
                self.entries.copy_within(at + 2..len, at);
                self.entries.set_len(len - 2);
                removed += 1;
                continue;
            }
            let range = self.bucket(bucket as usize);
            let run = &self.entries[range.clone()];
            let first = first_not_below(run, remainder_of(entry));
            let found = run[first..]
                .iter()
                .take_while(|&&e| remainder_of(e) == remainder_of(entry))
                .position(|&e| e == entry);
            if let Some(i) = found {
                self.entries[range.start + first + i] = entry | u32::from(DEAD);
                self.dead += 1;
                removed += 1;
            }
        }
        if self.dead * PENDING_SHARE > self.merged().max(PENDING_SHARE) {
            self.drop_dead(|_| true);
        }
        self.shrink();
        removed
    }

    /// Gives back what is mapped beyond twice the room the shard keeps.
    fn shrink(&mut self) {
        let (len, room) = (self.entries.len(), Shard::room(self.merged()));
        if self.entries.capacity() > len + 2 * room {
            self.entries.shrink_to(len + room);
        }
    }
}

/// See the module docs. Every method takes `&self`; each locks one shard at a time.
pub(super) struct HolderTable {
    shards: Box<[RwLock<Shard>]>,
}

impl HolderTable {
    #[cfg(test)]
    pub fn new() -> Self {
        HolderTable { shards: (0..SHARDS).map(|_| RwLock::default()).collect() }
    }

    /// Builds the table from everything `fill` gives (a slot and a fingerprint at a time).
    /// `fill` is called twice and must give the same pairs both times: once to count the
    /// entries of each bucket, then to place them, so that every shard has its exact size
    /// and nothing is moved twice. Returns `fill`'s error, or `Err(None)` if the second call
    /// gave more to some bucket than the first.
    pub fn build<E>(
        mut fill: impl FnMut(&mut dyn FnMut(Slot, Fingerprint)) -> Result<(), E>,
    ) -> Result<Self, Option<E>> {
        let mut counts = vec![0u32; SHARDS * BUCKETS];
        fill(&mut |_, fingerprint| {
            let (shard, bucket, _) = split(fingerprint);
            counts[shard * BUCKETS + bucket] += 1;
        })
        .map_err(Some)?;
        let mut shards: Vec<Shard> = Vec::with_capacity(SHARDS);
        for shard in 0..SHARDS {
            let mut ends = vec![0u32; BUCKETS].into_boxed_slice();
            let mut total = 0u32;
            for bucket in 0..BUCKETS {
                // Each bucket's count becomes its next free position.
                let count = std::mem::replace(&mut counts[shard * BUCKETS + bucket], total);
                total += count;
                ends[bucket] = total;
            }
            let entries = Words::zeroed(total as usize);
            shards.push(Shard { ends, entries, ..Shard::default() });
        }
        let mut overflow = false;
        fill(&mut |slot, fingerprint| {
            let (shard, bucket, remainder) = split(fingerprint);
            let next = &mut counts[shard * BUCKETS + bucket];
            let shard = &mut shards[shard];
            if *next < shard.ends[bucket] {
                shard.entries[*next as usize] = entry(remainder, slot);
                *next += 1;
            } else {
                overflow = true;
            }
        })
        .map_err(Some)?;
        if overflow {
            return Err(None);
        }
        for shard in &mut shards {
            for bucket in 0..BUCKETS {
                let range = shard.bucket(bucket);
                shard.entries[range].sort_unstable();
            }
        }
        Ok(HolderTable { shards: shards.into_iter().map(RwLock::new).collect() })
    }

    /// Calls `f` with the slots holding `fingerprint` (a slot twice if it holds it twice),
    /// while the shard stays locked for reading: a slot seen here still names the peer it
    /// named when it was stored, for as long as `f` runs.
    pub fn with_holders<R>(
        &self,
        fingerprint: Fingerprint,
        f: impl FnOnce(&mut dyn Iterator<Item = Slot>) -> R,
    ) -> R {
        self.with_holders_from(fingerprint, 0, f)
    }

    /// [`HolderTable::with_holders`] turned by `start`: the merged holders from a place that
    /// `start` picks (wrapping round), the pending ones among them, so that calls with
    /// changing `start`s find a widely held path's holders in changing order. The searches
    /// are a miss's (one among the merged entries, one among the pending ones): where the
    /// holders end is found only by walking to it. The pick is a place in the whole bucket
    /// (then among the pending holders), read before the search so that the two reads wait
    /// for memory together; one that falls outside the holders starts at the first.
    pub fn with_holders_from<R>(
        &self,
        fingerprint: Fingerprint,
        start: usize,
        f: impl FnOnce(&mut dyn Iterator<Item = Slot>) -> R,
    ) -> R {
        let (shard, bucket, remainder) = split(fingerprint);
        let shard = self.read(shard);
        let entries = &shard.entries[shard.bucket(bucket)];
        let ours = |e: &&u32| remainder_of(**e) == remainder;
        let live = |&slot: &Slot| slot != DEAD;
        let (from, pending_count) = if shard.may_have_pending(bucket) {
            let from = shard.pending_position((bucket as u32, entry(remainder, 0)));
            let count = shard.entries[from..]
                .chunks_exact(2)
                .take_while(|pair| pair[0] as usize == bucket && remainder_of(pair[1]) == remainder)
                .count();
            (from, count)
        } else {
            (shard.entries.len(), 0)
        };
        let pending = &shard.entries[from..from + 2 * pending_count];
        let pick = start % (entries.len() + pending_count).max(1);
        let picked = entries.get(pick).copied();
        let first = first_not_below(entries, remainder);
        // The holders are the start of `rest`; so if the pick is one, all before it are.
        let rest = &entries[first..];
        let (turn, pending_turn) = match picked {
            Some(e) if pick >= first && ours(&&e) => (pick - first, 0),
            Some(_) => (0, 0),
            None => (0, pick - entries.len()),
        };
        let (pending_first, pending_then) = if pending_turn > 0 {
            let (before, after) = pending.split_at(2 * pending_turn);
            (after, before)
        } else {
            (&pending[..0], pending)
        };
        let mut slots = pending_slots(pending_first)
            .chain(rest[turn..].iter().take_while(ours).map(|&e| slot_of(e)).filter(live))
            .chain(pending_slots(pending_then))
            .chain(rest[..turn].iter().map(|&e| slot_of(e)).filter(live));
        f(&mut slots)
    }

    /// How many copies of `fingerprint` `slot` holds.
    pub fn count(&self, slot: Slot, fingerprint: Fingerprint) -> usize {
        self.with_holders(fingerprint, |slots| slots.filter(|&s| s == slot).count())
    }

    /// Calls `f` with each shard that `fingerprints` (sorted) fall in, locked for writing,
    /// and their (bucket, entry) pairs for `slot` there, sorted.
    fn for_each_run(
        &self,
        slot: Slot,
        fingerprints: &[Fingerprint],
        mut f: impl FnMut(&mut Shard, &[(u32, u32)]),
    ) {
        let mut pairs = Vec::new();
        for run in fingerprints.chunk_by(|a, b| split(*a).0 == split(*b).0) {
            pairs.clear();
            pairs.extend(run.iter().map(|&fingerprint| {
                let (_, bucket, remainder) = split(fingerprint);
                (bucket as u32, entry(remainder, slot))
            }));
            f(&mut self.write(split(run[0]).0), &pairs);
        }
    }

    /// Adds one entry per element of `fingerprints` (sorted) for `slot`.
    pub fn insert(&self, slot: Slot, fingerprints: &[Fingerprint]) {
        self.for_each_run(slot, fingerprints, |shard, pairs| shard.insert(pairs));
    }

    /// Removes one entry of `slot` per element of `fingerprints` (sorted); returns how many
    /// were there to remove.
    pub fn remove(&self, slot: Slot, fingerprints: &[Fingerprint]) -> usize {
        let mut removed = 0;
        self.for_each_run(slot, fingerprints, |shard, pairs| removed += shard.remove(pairs));
        removed
    }

    /// Removes every entry of `slot`, looking through the whole table (tens of milliseconds
    /// at 50 million entries); returns how many there were.
    pub fn remove_slot(&self, slot: Slot) -> u64 {
        let mut removed = 0;
        for shard in 0..SHARDS {
            let mut shard = self.write(shard);
            removed += shard.drop_dead(|s| s != slot) as u64;
            // Then the pending pairs, kept in order.
            let merged = shard.merged();
            let (mut kept, len) = (merged, shard.entries.len());
            for read in (merged..len).step_by(2) {
                let (b, e) = (shard.entries[read], shard.entries[read + 1]);
                if slot_of(e) != slot {
                    shard.entries[kept] = b;
                    shard.entries[kept + 1] = e;
                    kept += 2;
                } else {
                    removed += 1;
                }
            }
            shard.entries.set_len(kept);
            shard.shrink();
        }
        removed
    }

    /// The table's memory: the shards with their bucket bounds, and what their entries map.
    pub fn memory_bytes(&self) -> usize {
        let fixed = self.shards.len() * (std::mem::size_of::<RwLock<Shard>>() + BUCKETS * 4);
        let entries: usize = (0..SHARDS).map(|s| self.read(s).entries.capacity() * 4).sum();
        fixed + entries
    }

    // A panic cannot leave a shard half-changed in a way that matters to readers (every
    // change keeps `ends` and `entries` in step before anything can panic), so the shard a
    // panic leaves behind is still valid: the locks do not poison (ARCHITECTURE.md, "Locks").
    fn read(&self, shard: usize) -> RwLockReadGuard<'_, Shard> {
        self.shards[shard].read()
    }

    fn write(&self, shard: usize) -> RwLockWriteGuard<'_, Shard> {
        self.shards[shard].write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holders(table: &HolderTable, fingerprint: Fingerprint) -> Vec<Slot> {
        let mut slots: Vec<Slot> = table.with_holders(fingerprint, |s| s.collect());
        slots.sort_unstable();
        slots
    }

    /// Fingerprints spread over shards and buckets, with some sharing a shard and bucket.
    fn fingerprints() -> Vec<Fingerprint> {
        let mut out: Vec<Fingerprint> = (0..2000u64)
            .map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 23) & ((1 << FINGERPRINT_BITS) - 1))
            .collect();
        out.extend([5, 6, 7, 1 << 20, (1 << 20) + 1]);
        out.sort_unstable();
        out
    }

    #[test]
    fn the_search_from_the_front_finds_what_a_binary_search_does() {
        // Buckets of every length up to 70, with runs of equal remainders of every length,
        // searched for every remainder in and around them.
        for len in 0..70u32 {
            for run in [1, 3, len.max(1)] {
                let bucket: Vec<u32> = (0..len).map(|i| entry(i / run * 2 + 1, 7)).collect();
                for remainder in 0..=len * 2 + 2 {
                    assert_eq!(
                        first_not_below(&bucket, remainder),
                        bucket.partition_point(|&e| remainder_of(e) < remainder),
                        "len {len}, run {run}, remainder {remainder}"
                    );
                }
            }
        }
    }

    #[test]
    fn insert_find_remove() {
        let table = HolderTable::new();
        let all = fingerprints();
        table.insert(3, &all);
        table.insert(9, &all[..100]);
        table.insert(9, &[all[0]]);
        assert_eq!(holders(&table, all[0]), vec![3, 9, 9]);
        assert_eq!(holders(&table, all[500]), vec![3]);
        assert_eq!(table.count(9, all[0]), 2);
        let missing = (1u64..).map(|i| all[500] ^ i).find(|f| !all.contains(f)).unwrap();
        assert!(holders(&table, missing).is_empty());
        assert_eq!(table.remove(9, &[all[0], all[1], all[1]]), 2);
        assert_eq!(holders(&table, all[0]), vec![3, 9]);
        assert_eq!(holders(&table, all[1]), vec![3]);
        assert_eq!(table.remove_slot(3), all.len() as u64);
        assert_eq!(holders(&table, all[500]), Vec::<Slot>::new());
        assert_eq!(holders(&table, all[0]), vec![9]);
        assert_eq!(table.remove_slot(9), 99);
        assert!(all.iter().all(|&f| holders(&table, f).is_empty()));
    }

    /// Many entries in one shard: most are merged, some wait; lookups and removals see both.
    #[test]
    fn one_shard_merges_and_pending_agree() {
        let table = HolderTable::new();
        let mut all: Vec<Fingerprint> =
            (0..3000u64).map(|i| (i * 7 % 32) << REMAINDER_BITS | (i * 7919 % 4096)).collect();
        all.sort_unstable();
        for chunk in all.chunks(7) {
            table.insert(1, chunk);
        }
        table.insert(2, &all[..50]);
        let shard = table.read(0);
        let pending = (shard.entries.len() - shard.merged()) / 2;
        assert!(shard.merged() > 2000 && pending <= Shard::room(shard.merged()) / 2, "{pending}");
        drop(shard);
        for (i, &f) in all.iter().enumerate() {
            let copies = all.iter().filter(|&&g| g == f).count();
            let expected = if i < 50 || all[..50].contains(&f) { copies * 2 } else { copies };
            assert_eq!(holders(&table, f).len(), expected, "fingerprint {f}");
        }
        assert_eq!(table.remove(1, &all[..1000]), 1000);
        assert_eq!(table.remove_slot(1), 2000);
        assert_eq!(table.remove_slot(2), 50);
        assert!(all.iter().all(|&f| holders(&table, f).is_empty()));
    }

    /// Random insertions, removals (of entries held or not) and whole slots going, in two
    /// shards dense enough to merge, mark dead and drop the dead many times, against a
    /// multiset kept beside; every start of a turned lookup sees the same holders.
    #[test]
    fn random_operations_match_a_multiset() {
        use std::collections::BTreeMap;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below
        };
        // 600 fingerprints in two shards, a few buckets, some remainders shared.
        let universe: Vec<Fingerprint> = (0..600u64)
            .map(|i| {
                let shard = (i % 2) << (BUCKET_BITS + REMAINDER_BITS);
                shard | (i % 5) << REMAINDER_BITS | (i * 37 % 97)
            })
            .collect();
        let table = HolderTable::new();
        let mut model: BTreeMap<(Fingerprint, Slot), usize> = BTreeMap::new();
        for round in 0..400 {
            let slot = next(40) as Slot;
            let mut some: Vec<Fingerprint> =
                (0..next(200)).map(|_| universe[next(600) as usize]).collect();
            some.sort_unstable();
            match next(10) {
                0..=4 => {
                    table.insert(slot, &some);
                    for &f in &some {
                        *model.entry((f, slot)).or_default() += 1;
                    }
                }
                5..=8 => {
                    let mut expected = 0;
                    for &f in &some {
                        if let Some(n) = model.get_mut(&(f, slot)).filter(|n| **n > 0) {
                            *n -= 1;
                            expected += 1;
                        }
                    }
                    assert_eq!(table.remove(slot, &some), expected, "round {round}");
                }
                _ => {
                    let expected: usize =
                        model.iter().filter(|((_, s), _)| *s == slot).map(|(_, n)| n).sum();
                    model.retain(|(_, s), _| *s != slot);
                    assert_eq!(table.remove_slot(slot), expected as u64, "round {round}");
                }
            }
            if round % 20 == 19 {
                for &f in &universe {
                    let mut expected: Vec<Slot> = model
                        .range((f, 0)..=(f, Slot::MAX))
                        .flat_map(|((_, s), n)| std::iter::repeat_n(*s, *n))
                        .collect();
                    expected.sort_unstable();
                    for start in [0, 1, 7, 1000] {
                        let mut got: Vec<Slot> = table.with_holders_from(f, start, |s| s.collect());
                        got.sort_unstable();
                        assert_eq!(got, expected, "round {round}, fingerprint {f}, start {start}");
                    }
                }
            }
        }
        let shard = table.read(0);
        assert!(shard.dead * PENDING_SHARE <= shard.merged().max(PENDING_SHARE));
    }

    #[test]
    fn build_equals_inserts() {
        let all = fingerprints();
        let built = HolderTable::build::<()>(|f| {
            for &fingerprint in &all {
                f(1, fingerprint);
            }
            for &fingerprint in &all[..300] {
                f(2, fingerprint);
            }
            Ok(())
        })
        .unwrap();
        let inserted = HolderTable::new();
        inserted.insert(2, &all[..300]);
        inserted.insert(1, &all);
        for &fingerprint in &all {
            assert_eq!(holders(&built, fingerprint), holders(&inserted, fingerprint));
        }
        // The second pass giving more than the first is refused, not written out of bounds.
        let mut calls = 0;
        let refused = HolderTable::build::<()>(|f| {
            calls += 1;
            for _ in 0..calls {
                f(1, 42);
            }
            Ok(())
        });
        assert!(matches!(refused, Err(None)));
    }
}
