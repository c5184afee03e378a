//! How a peer's set of fingerprints is stored: one compact blob for its last snapshot (a
//! "base"), and one small record per delta applied since (a "change").
//!
//! A base is the sorted multiset of fingerprints, each stored as its distance from the one
//! before in Rice code (the distance's low `k` bits as they are, the rest in unary), with
//! `k` chosen from the count so that distances between random fingerprints cost about
//! `k + 2` bits: 27 bits a path for a peer of 50,000 paths, 3.4 bytes, a sixth of the 20-byte
//! hash. A change holds the fingerprints removed and added, 6 bytes each.
//!
//! Both carry a version byte and a SipHash checksum of what follows it, so a damaged or
//! foreign blob is refused when read (and the index set aside at open) instead of read as
//! wrong paths. Decoding bounds everything it reads by the blob's length and the
//! fingerprint width.
//!
//! ```text
//! base:   [1] [k: u8] [count: u32 LE] [checksum: u64 LE] [Rice-coded distances, LSB first]
//! change: [2] [removed: u32 LE] [added: u32 LE] [checksum: u64 LE] [removed, added: 6 bytes LE each]
//! ```

use siphasher::sip::SipHasher13;

use super::fingerprint::{FINGERPRINT_BITS, Fingerprint};

const BASE_VERSION: u8 = 1;
const CHANGE_VERSION: u8 = 2;
const BASE_HEADER: usize = 1 + 1 + 4 + 8;
const CHANGE_HEADER: usize = 1 + 4 + 4 + 8;
const FINGERPRINT_BYTES: usize = 6;
const _: () = assert!(FINGERPRINT_BITS as usize <= FINGERPRINT_BYTES * 8);

/// Why a stored blob cannot be read.
pub(super) type Damage = String;

fn checksum(parts: &[&[u8]]) -> u64 {
    let mut hasher = SipHasher13::new_with_keys(0x6e69_786d_6573_6821, 0x696e_6465_7821);
    for part in parts {
        std::hash::Hasher::write(&mut hasher, part);
    }
    std::hash::Hasher::finish(&hasher)
}

/// The Rice parameter for `count` distances over the fingerprint space: about the log2 of
/// their mean.
fn rice_parameter(count: usize) -> u32 {
    let mean = (1u64 << FINGERPRINT_BITS) / (count as u64 + 1);
    mean.max(1).ilog2().min(FINGERPRINT_BITS - 1)
}

/// Encodes a sorted multiset of fingerprints as a base.
pub(super) fn encode_base(fingerprints: &[Fingerprint]) -> Vec<u8> {
    debug_assert!(fingerprints.is_sorted());
    let k = rice_parameter(fingerprints.len());
    let mut bits = BitWriter::with_capacity(fingerprints.len() * (k as usize + 3) / 8 + 8);
    let mut previous = 0;
    for &fingerprint in fingerprints {
        let distance = fingerprint - previous;
        previous = fingerprint;
        bits.unary(distance >> k);
        bits.push(distance & ((1 << k) - 1), k);
    }
    let payload = bits.finish();
    let count = (fingerprints.len() as u32).to_le_bytes();
    let sum = checksum(&[&[BASE_VERSION, k as u8], &count, &payload]);
    let mut out = Vec::with_capacity(BASE_HEADER + payload.len());
    out.extend_from_slice(&[BASE_VERSION, k as u8]);
    out.extend_from_slice(&count);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Decodes a base into its sorted multiset of fingerprints.
pub(super) fn decode_base(blob: &[u8]) -> Result<Vec<Fingerprint>, Damage> {
    let Some((header, payload)) = blob.split_at_checked(BASE_HEADER) else {
        return Err(format!("a stored set of {} bytes is too short", blob.len()));
    };
    if header[0] != BASE_VERSION {
        return Err(format!("a stored set has version {}, not {BASE_VERSION}", header[0]));
    }
    let k = u32::from(header[1]);
    let count = u32::from_le_bytes(header[2..6].try_into().expect("4 bytes")) as usize;
    let sum = u64::from_le_bytes(header[6..14].try_into().expect("8 bytes"));
    if checksum(&[&header[..6], payload]) != sum {
        return Err("a stored set fails its checksum".into());
    }
    // Each fingerprint takes at least k + 1 bits: a count beyond that is a lie.
    if k >= FINGERPRINT_BITS || count > payload.len() * 8 / (k as usize + 1) {
        return Err(format!("a stored set claims {count} paths in {} bytes", payload.len()));
    }
    let mut bits = BitReader::new(payload);
    let mut out = Vec::with_capacity(count);
    let mut previous: u64 = 0;
    for _ in 0..count {
        let high = bits.unary().ok_or("a stored set ends early")?;
        let low = bits.read(k).ok_or("a stored set ends early")?;
        let fingerprint = high
            .checked_mul(1 << k)
            .and_then(|h| previous.checked_add(h | low))
            .filter(|&f| f < 1 << FINGERPRINT_BITS)
            .ok_or("a stored set holds a fingerprint out of range")?;
        out.push(fingerprint);
        previous = fingerprint;
    }
    Ok(out)
}

/// Encodes a change: the fingerprints a delta removed and added (each sorted).
pub(super) fn encode_change(removed: &[Fingerprint], added: &[Fingerprint]) -> Vec<u8> {
    let mut body = Vec::with_capacity((removed.len() + added.len()) * FINGERPRINT_BYTES);
    for fingerprint in removed.iter().chain(added) {
        body.extend_from_slice(&fingerprint.to_le_bytes()[..FINGERPRINT_BYTES]);
    }
    let counts = [(removed.len() as u32).to_le_bytes(), (added.len() as u32).to_le_bytes()];
    let sum = checksum(&[&[CHANGE_VERSION], &counts[0], &counts[1], &body]);
    let mut out = Vec::with_capacity(CHANGE_HEADER + body.len());
    out.push(CHANGE_VERSION);
    out.extend_from_slice(&counts[0]);
    out.extend_from_slice(&counts[1]);
    out.extend_from_slice(&sum.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// Decodes a change into (removed, added).
pub(super) fn decode_change(blob: &[u8]) -> Result<(Vec<Fingerprint>, Vec<Fingerprint>), Damage> {
    let Some((header, body)) = blob.split_at_checked(CHANGE_HEADER) else {
        return Err(format!("a stored change of {} bytes is too short", blob.len()));
    };
    if header[0] != CHANGE_VERSION {
        return Err(format!("a stored change has version {}, not {CHANGE_VERSION}", header[0]));
    }
    let removed = u32::from_le_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
    let added = u32::from_le_bytes(header[5..9].try_into().expect("4 bytes")) as usize;
    let sum = u64::from_le_bytes(header[9..17].try_into().expect("8 bytes"));
    if checksum(&[&header[..9], body]) != sum {
        return Err("a stored change fails its checksum".into());
    }
    if (removed as u64 + added as u64) * FINGERPRINT_BYTES as u64 != body.len() as u64 {
        return Err(format!("a stored change of {} bytes claims {removed} + {added}", body.len()));
    }
    let mut fingerprints = body.chunks_exact(FINGERPRINT_BYTES).map(|bytes| {
        let mut wide = [0u8; 8];
        wide[..FINGERPRINT_BYTES].copy_from_slice(bytes);
        u64::from_le_bytes(wide)
    });
    let removed_list: Vec<Fingerprint> = fingerprints.by_ref().take(removed).collect();
    let added_list: Vec<Fingerprint> = fingerprints.collect();
    let in_range = |list: &[Fingerprint]| list.iter().all(|&f| f < 1 << FINGERPRINT_BITS);
    if !in_range(&removed_list) || !in_range(&added_list) {
        return Err("a stored change holds a fingerprint out of range".into());
    }
    Ok((removed_list, added_list))
}

/// Bits appended least significant first.
struct BitWriter {
    out: Vec<u8>,
    pending: u64,
    /// How many bits of `pending` are used (under 8 between calls).
    used: u32,
}

impl BitWriter {
    fn with_capacity(bytes: usize) -> Self {
        BitWriter { out: Vec::with_capacity(bytes), pending: 0, used: 0 }
    }

    /// Appends the low `n` bits of `value` (`n` at most 56).
    fn push(&mut self, value: u64, n: u32) {
        debug_assert!(n <= 56 && (n == 64 || value < 1 << n));
        self.pending |= value << self.used;
        self.used += n;
        while self.used >= 8 {
            self.out.push(self.pending as u8);
            self.pending >>= 8;
            self.used -= 8;
        }
    }

    /// Appends `q` one bits and a zero.
    fn unary(&mut self, mut q: u64) {
        while q >= 32 {
            self.push(u64::from(u32::MAX), 32);
            q -= 32;
        }
        self.push((1 << q) - 1, q as u32 + 1);
    }

    fn finish(mut self) -> Vec<u8> {
        if self.used > 0 {
            self.out.push(self.pending as u8);
        }
        self.out
    }
}

/// Reads what [`BitWriter`] wrote.
struct BitReader<'a> {
    data: &'a [u8],
    next: usize,
    pending: u64,
    available: u32,
}

impl<'a> BitReader<'a> {
    fn new(data: &'a [u8]) -> Self {
        BitReader { data, next: 0, pending: 0, available: 0 }
    }

    fn refill(&mut self) {
        while self.available <= 56 && self.next < self.data.len() {
            self.pending |= u64::from(self.data[self.next]) << self.available;
            self.next += 1;
            self.available += 8;
        }
    }

    fn consume(&mut self, n: u32) {
        self.pending = if n == 64 { 0 } else { self.pending >> n };
        self.available -= n;
    }

    /// The next `n` bits (`n` under 57), or `None` past the end.
    fn read(&mut self, n: u32) -> Option<u64> {
        if self.available < n {
            self.refill();
            if self.available < n {
                return None;
            }
        }
        let value = self.pending & ((1u64 << n) - 1);
        self.consume(n);
        Some(value)
    }

    /// The number of one bits before the next zero, or `None` past the end.
    fn unary(&mut self) -> Option<u64> {
        let mut q = 0;
        loop {
            self.refill();
            if self.available == 0 {
                return None;
            }
            let ones = (!self.pending).trailing_zeros().min(self.available);
            if ones < self.available {
                self.consume(ones + 1);
                return Some(q + u64::from(ones));
            }
            q += u64::from(ones);
            self.consume(ones);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn random_set(n: usize, seed: u64) -> Vec<Fingerprint> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut set: Vec<Fingerprint> =
            (0..n).map(|_| rng.gen_range(0..1 << FINGERPRINT_BITS)).collect();
        set.sort_unstable();
        set
    }

    #[test]
    fn bases_round_trip() {
        let max = (1 << FINGERPRINT_BITS) - 1;
        for set in [
            vec![],
            vec![0],
            vec![max],
            vec![0, 0, 0, max, max],
            random_set(1, 1),
            random_set(1000, 2),
            random_set(50_000, 3),
            // Dense: distances of 0 and 1, where k is 0.
            (0..5000).map(|i| i / 2).collect(),
        ] {
            let blob = encode_base(&set);
            assert_eq!(decode_base(&blob).unwrap(), set, "{} fingerprints", set.len());
        }
    }

    #[test]
    fn a_base_of_50000_costs_under_3_5_bytes_a_path() {
        let blob = encode_base(&random_set(50_000, 4));
        assert!(blob.len() < 50_000 * 35 / 10, "{} bytes", blob.len());
    }

    #[test]
    fn damaged_bases_are_refused() {
        let blob = encode_base(&random_set(300, 5));
        assert!(decode_base(&blob[..blob.len() - 1]).is_err());
        assert!(decode_base(&blob[..10]).is_err());
        for at in [0, 1, 3, 8, 20, blob.len() - 1] {
            let mut bad = blob.clone();
            bad[at] ^= 0x10;
            assert!(decode_base(&bad).is_err(), "flipped a bit at {at}");
        }
    }

    #[test]
    fn changes_round_trip_and_damage_is_refused() {
        let (removed, added) = (random_set(3, 6), random_set(100, 7));
        let blob = encode_change(&removed, &added);
        assert_eq!(decode_change(&blob).unwrap(), (removed, added));
        assert_eq!(decode_change(&encode_change(&[], &[])).unwrap(), (vec![], vec![]));
        let mut bad = blob.clone();
        bad[30] ^= 1;
        assert!(decode_change(&bad).is_err());
        assert!(decode_change(&blob[..blob.len() - 6]).is_err());
        assert!(decode_base(&blob).is_err(), "a change is not a base");
    }
}
