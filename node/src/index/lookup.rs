//! The lookups readers make: who holds a store path, answered from the holder table in
//! memory, never from the disk or the network. The substituter calls these straight from
//! the HTTP path (see the module docs of `index` on threading).

use std::sync::atomic::Ordering;

use libp2p::PeerId;
use nixmesh_protocol::StorePathHash;

use super::table::{SLOTS, Slot};
use super::{Index, IndexError};

impl Index {
    /// The peers that hold `hash`, whether connected or not (the caller filters by
    /// connectivity), in no particular order and without duplicates. Rarely (about one
    /// lookup in 44,000 at 50 million entries) a peer that does not hold `hash` is named
    /// too: see the module docs of `index`.
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
}
