//! Narinfos already verified, so that the NAR request Nix sends right after a narinfo does not
//! ask the mesh again, and starts with the peer that answered.
//!
//! An entry says only "this narinfo verified, and this peer had it": whether the path can be
//! served now is still decided by who holds it now.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use nixmesh_protocol::content_address::NarCheck;
use nixmesh_protocol::{NarInfo, StorePathHash};
use parking_lot::Mutex;

/// A narinfo that passed verification, as the peer that served it sent it, and the text
/// Nix is served (rendered once: repeated requests only copy it).
#[derive(Debug)]
pub struct Verified<P> {
    pub narinfo: NarInfo,
    pub peer: P,
    pub for_nix: Bytes,
    /// What its NAR is checked against besides `NarHash` (see [`crate::substituter::Accepted`]).
    pub check: Option<NarCheck>,
}

/// At most `capacity` verified narinfos; the oldest insertion is forgotten first.
pub struct NarInfoCache<P> {
    capacity: usize,
    entries: Mutex<Entries<P>>,
}

struct Entries<P> {
    by_hash: HashMap<StorePathHash, Arc<Verified<P>>>,
    /// Insertion order, oldest first; holds each key of `by_hash` exactly once.
    order: VecDeque<StorePathHash>,
}

impl<P> NarInfoCache<P> {
    pub fn new(capacity: usize) -> Self {
        NarInfoCache {
            capacity,
            entries: Mutex::new(Entries { by_hash: HashMap::new(), order: VecDeque::new() }),
        }
    }

    pub fn get(&self, hash: &StorePathHash) -> Option<Arc<Verified<P>>> {
        self.lock().by_hash.get(hash).cloned()
    }

    /// Remembers `verified` under `hash`, replacing an older entry for it.
    pub fn insert(&self, hash: StorePathHash, verified: Arc<Verified<P>>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.lock();
        if entries.by_hash.insert(hash, verified).is_none() {
            entries.order.push_back(hash);
        }
        while entries.order.len() > self.capacity {
            if let Some(oldest) = entries.order.pop_front() {
                entries.by_hash.remove(&oldest);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_hash.len()
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Entries<P>> {
        // Every update leaves the maps consistent before it can panic, so what the lock
        // (which does not poison) guards after a panic is still valid.
        self.entries.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixmesh_protocol::{Sha256, StorePath};

    fn entry(n: u8) -> (StorePathHash, Arc<Verified<u8>>) {
        let hash = StorePathHash([n; 20]);
        let narinfo = NarInfo {
            store_path: StorePath::from_base_name(&format!("{hash}-x")).unwrap(),
            url: String::new(),
            compression: None,
            file_hash: None,
            file_size: None,
            nar_hash: Sha256([n; 32]),
            nar_size: 1,
            references: vec![],
            deriver: None,
            system: None,
            signatures: vec![],
            ca: None,
            extra: vec![],
        };
        (hash, Arc::new(Verified { narinfo, peer: n, for_nix: Bytes::new(), check: None }))
    }

    #[test]
    fn forgets_the_oldest_beyond_capacity() {
        let cache = NarInfoCache::new(2);
        for n in 1..=3 {
            let (hash, v) = entry(n);
            cache.insert(hash, v);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&entry(1).0).is_none());
        assert_eq!(cache.get(&entry(3).0).unwrap().peer, 3);
    }

    #[test]
    fn replacing_an_entry_does_not_grow_it() {
        let cache = NarInfoCache::new(2);
        let (hash, v) = entry(1);
        cache.insert(hash, v.clone());
        cache.insert(hash, v);
        cache.insert(entry(2).0, entry(2).1);
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&hash).is_some());
    }

    #[test]
    fn capacity_zero_remembers_nothing() {
        let cache = NarInfoCache::new(0);
        cache.insert(entry(1).0, entry(1).1);
        assert_eq!(cache.len(), 0);
    }
}
