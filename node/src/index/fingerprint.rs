//! Store path hashes as the index keeps them: 41-bit fingerprints under a key of its own.
//!
//! A fingerprint is SipHash-1-3 of the 20 hash bytes under a random 128-bit key made with the
//! index (and kept in its `meta` table), cut to [`FINGERPRINT_BITS`]. The key is why peers
//! cannot choose what they advertise to land in one shard of the holder table (a peer that
//! could would turn every insertion into a long copy) or to collide with a path it does not
//! hold: without the key, fingerprints are as good as random.
//!
//! 41 bits are what a lookup needs: with N entries indexed, a path nobody holds matches one by
//! chance with probability N / 2^41, about 1 in 44,000 at the 50 million entries of 1,000 peers
//! with 50,000 paths each; such a false positive costs one round trip to the peer named, which
//! answers "not found". Within one peer, two of its paths share a fingerprint with probability
//! n^2 / 2^42 (6e-4 for 50,000 paths): sets are kept as multisets (see the module docs of
//! `index`), so that is harmless unless the peer later removes one of the two and keeps the
//! other, and a delta adds a path whose fingerprint it already holds (odds 1 in 2^41 / n per
//! path added).

use nixmesh_protocol::StorePathHash;
use siphasher::sip::SipHasher13;

/// The width of a fingerprint: the holder table's shard, bucket and remainder bits.
pub(super) const FINGERPRINT_BITS: u32 = 41;

/// A store path hash cut to [`FINGERPRINT_BITS`] under the index's key.
pub(super) type Fingerprint = u64;

/// The key fingerprints are made under, one per index file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FingerprintKey(pub(super) u64, pub(super) u64);

impl FingerprintKey {
    /// A new key, for a new index.
    pub fn random() -> Self {
        FingerprintKey(rand::random(), rand::random())
    }

    /// The fingerprint of `hash`.
    pub fn of(&self, hash: &StorePathHash) -> Fingerprint {
        SipHasher13::new_with_keys(self.0, self.1).hash(hash.as_bytes()) >> (64 - FINGERPRINT_BITS)
    }

    /// The fingerprints of `hashes`, sorted, one per distinct hash: two distinct hashes with
    /// one fingerprint give it twice (the multiset the index keeps), a hash given twice once.
    pub fn of_distinct(&self, hashes: &[StorePathHash]) -> Vec<Fingerprint> {
        let mut pairs: Vec<(Fingerprint, u32)> =
            hashes.iter().zip(0u32..).map(|(h, i)| (self.of(h), i)).collect();
        pairs.sort_unstable();
        let mut out = Vec::with_capacity(pairs.len());
        for run in pairs.chunk_by(|a, b| a.0 == b.0) {
            if let [(fingerprint, _)] = run {
                out.push(*fingerprint);
                continue;
            }
            let mut distinct: Vec<&[u8; 20]> =
                run.iter().map(|&(_, i)| hashes[i as usize].as_bytes()).collect();
            distinct.sort_unstable();
            distinct.dedup();
            out.extend(std::iter::repeat_n(run[0].0, distinct.len()));
        }
        out
    }
}

/// The elements of sorted multiset `a` not matched by one in sorted multiset `b`, in order
/// (`a - b` as multisets: an element twice in `a` and once in `b` is kept once).
pub(super) fn multiset_difference(a: &[Fingerprint], b: &[Fingerprint]) -> Vec<Fingerprint> {
    let mut out = Vec::new();
    let mut j = 0;
    for &x in a {
        while j < b.len() && b[j] < x {
            j += 1;
        }
        if j < b.len() && b[j] == x {
            j += 1;
        } else {
            out.push(x);
        }
    }
    out
}

/// `set` without `removed` and with `added` (all sorted multisets), sorted: a peer's set after
/// a change.
pub(super) fn with_change(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_keyed_and_in_range() {
        let hash = StorePathHash([7; 20]);
        let (a, b) = (FingerprintKey(1, 2), FingerprintKey(1, 3));
        assert_eq!(a.of(&hash), a.of(&hash));
        assert_ne!(a.of(&hash), b.of(&hash));
        assert!(a.of(&hash) < 1 << FINGERPRINT_BITS);
    }

    #[test]
    fn distinct_hashes_count_once_each() {
        let key = FingerprintKey(5, 6);
        let hashes = [StorePathHash([1; 20]), StorePathHash([2; 20]), StorePathHash([1; 20])];
        let mut expected = vec![key.of(&hashes[0]), key.of(&hashes[1])];
        expected.sort_unstable();
        assert_eq!(key.of_distinct(&hashes), expected);
    }

    #[test]
    fn multiset_difference_counts_copies() {
        assert_eq!(multiset_difference(&[1, 3, 3, 5, 7], &[3, 4, 7, 9]), vec![1, 3, 5]);
        assert_eq!(multiset_difference(&[3, 4, 7, 9], &[1, 3, 3, 5, 7]), vec![4, 9]);
        assert!(multiset_difference(&[2, 2], &[2, 2]).is_empty());
        assert_eq!(multiset_difference(&[2, 2], &[]), vec![2, 2]);
    }
}
