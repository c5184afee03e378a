//! What a listing may be (its shape, and every file within the signed `NarSize`), and the
//! listings remembered for their path's `NarHash`.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use nixmesh_protocol::{Sha256, StorePathHash};
use parking_lot::Mutex;
use serde_json::Value;
use thiserror::Error;

/// The most listing bytes remembered, in all.
const CACHE_BYTES: usize = 64 << 20;
/// How deep a listing's directories may nest for the check (serde_json's own limit is 128).
const MAX_DEPTH: usize = 120;

/// What is wrong with a listing's shape, with what was read.
#[derive(Debug, Error)]
pub enum BadListing {
    #[error("not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("not version 1")]
    OtherVersion,
    #[error("directories nested over {MAX_DEPTH} deep")]
    TooDeep,
    #[error("a regular file without a size or narOffset")]
    NoSizeOrOffset,
    #[error("a file at {offset}+{size}, past the NAR's {nar_size} bytes")]
    PastTheNar { offset: u64, size: u64, nar_size: u64 },
    #[error("a directory without entries")]
    NoEntries,
    #[error("an entry of no known type")]
    UnknownType,
}

/// Whether `body` is a listing (`{"version":1,"root":…}`, each object of its type) whose files
/// all lie within a NAR of `nar_size` bytes. Names that are not UTF-8, which Nix writes as
/// their bytes, are read with replacement characters: only the shape is checked.
pub fn check(body: &[u8], nar_size: u64) -> Result<(), BadListing> {
    let text = String::from_utf8_lossy(body);
    let value: Value = serde_json::from_str(&text)?;
    if value["version"] != 1 {
        return Err(BadListing::OtherVersion);
    }
    check_entry(&value["root"], nar_size, 0)
}

fn check_entry(entry: &Value, nar_size: u64, depth: usize) -> Result<(), BadListing> {
    if depth > MAX_DEPTH {
        return Err(BadListing::TooDeep);
    }
    match entry["type"].as_str() {
        Some("regular") => {
            let (Some(size), Some(offset)) = (entry["size"].as_u64(), entry["narOffset"].as_u64())
            else {
                return Err(BadListing::NoSizeOrOffset);
            };
            match offset.checked_add(size) {
                Some(end) if end <= nar_size => Ok(()),
                _ => Err(BadListing::PastTheNar { offset, size, nar_size }),
            }
        }
        Some("symlink") if entry["target"].is_string() => Ok(()),
        Some("directory") => {
            let entries = entry["entries"].as_object().ok_or(BadListing::NoEntries)?;
            entries.values().try_for_each(|e| check_entry(e, nar_size, depth + 1))
        }
        _ => Err(BadListing::UnknownType),
    }
}

/// Listings remembered for their path's `NarHash`, at most [`CACHE_BYTES`] of them and
/// `capacity` entries; the oldest is forgotten first.
pub struct ListingCache {
    capacity: usize,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_hash: HashMap<StorePathHash, (Sha256, Bytes)>,
    /// Insertion order, oldest first; holds each key of `by_hash` exactly once.
    order: VecDeque<StorePathHash>,
    bytes: usize,
}

impl ListingCache {
    pub fn new(capacity: usize) -> Self {
        ListingCache { capacity, entries: Mutex::default() }
    }

    /// The listing of `hash` remembered for the NAR with `nar_hash`, if any.
    pub fn get(&self, hash: &StorePathHash, nar_hash: &Sha256) -> Option<Bytes> {
        let entries = self.entries.lock();
        let (remembered, body) = entries.by_hash.get(hash)?;
        (remembered == nar_hash).then(|| body.clone())
    }

    /// Remembers `body` as the listing of `hash`'s NAR with `nar_hash`.
    pub fn insert(&self, hash: StorePathHash, nar_hash: Sha256, body: Bytes) {
        if self.capacity == 0 || body.len() > CACHE_BYTES {
            return;
        }
        let mut entries = self.entries.lock();
        let len = body.len();
        if let Some((_, old)) = entries.by_hash.insert(hash, (nar_hash, body)) {
            // Replaced (another build of the path): it becomes the newest. Rare, so the
            // search of the order is no cost worth a second index.
            entries.bytes -= old.len();
            entries.order.retain(|h| *h != hash);
        }
        entries.order.push_back(hash);
        entries.bytes += len;
        while entries.order.len() > self.capacity || entries.bytes > CACHE_BYTES {
            let Some(oldest) = entries.order.pop_front() else { break };
            if let Some((_, old)) = entries.by_hash.remove(&oldest) {
                entries.bytes -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NIX_S: &[u8] = include_bytes!("../../../protocol/tests/data/ls/complex.ls");

    #[test]
    fn nix_s_own_listings_pass_the_check() {
        check(NIX_S, 7216).unwrap();
        for name in ["file", "executable", "symlink", "empty-file", "empty-dir"] {
            let path =
                format!("{}/../protocol/tests/data/ls/{name}.ls", env!("CARGO_MANIFEST_DIR"));
            check(&std::fs::read(path).unwrap(), 1000).unwrap();
        }
    }

    #[test]
    fn listings_that_cannot_be_right_fail_it() {
        // complex.nar is 7,216 bytes, its last file ending at 7,136: not within 7,000.
        let past = check(NIX_S, 7000).unwrap_err();
        assert!(past.to_string().contains("past the NAR"), "{past}");
        assert!(matches!(past, BadListing::PastTheNar { nar_size: 7000, .. }), "{past}");
        let bad: [&[u8]; 5] = [
            b"not json",
            br#"{"version":2,"root":{"type":"directory","entries":{}}}"#,
            br#"{"version":1,"root":{"type":"regular","size":1}}"#,
            br#"{"version":1,"root":{"type":"fifo"}}"#,
            br#"{"version":1,"root":{"type":"regular","size":18446744073709551615,"narOffset":96}}"#,
        ];
        for body in bad {
            assert!(check(body, 1000).is_err(), "{}", body.escape_ascii());
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = |n: usize| {
            let dir = r#"{"type":"directory","entries":{"d":"#;
            let mut text = format!(r#"{{"version":1,"root":{}"#, dir.repeat(n));
            text.push_str(r#"{"type":"symlink","target":"x"}"#);
            text.push_str(&"}}".repeat(n));
            text.push('}');
            text
        };
        check(deep(40).as_bytes(), 0).unwrap();
        assert!(check(deep(100_000).as_bytes(), 0).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_checked_without_a_panic(
            body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512),
        ) {
            let _ = check(&body, 1000);
        }
    }

    #[test]
    fn the_cache_keeps_a_listing_for_its_nar_hash_only_and_within_its_bounds() {
        let cache = ListingCache::new(2);
        let (a, b, c) = (StorePathHash([1; 20]), StorePathHash([2; 20]), StorePathHash([3; 20]));
        cache.insert(a, Sha256([1; 32]), Bytes::from_static(b"a"));
        assert_eq!(cache.get(&a, &Sha256([1; 32])).as_deref(), Some(&b"a"[..]));
        assert_eq!(cache.get(&a, &Sha256([9; 32])), None, "another build of the path");
        cache.insert(b, Sha256([2; 32]), Bytes::from_static(b"b"));
        cache.insert(c, Sha256([3; 32]), Bytes::from_static(b"c"));
        assert_eq!(cache.get(&a, &Sha256([1; 32])), None, "the oldest is forgotten");
        cache.insert(b, Sha256([2; 32]), Bytes::from(vec![0; CACHE_BYTES]));
        assert_eq!(cache.get(&c, &Sha256([3; 32])), None, "over the bytes, the oldest goes");
        assert!(cache.get(&b, &Sha256([2; 32])).is_some());
    }
}
