//! Digests in the forms Nix writes them.
//!
//! [`Sha256`] is the NAR and file hash: `sha256:<nixbase32>` (narinfo), base-16 (the daemon's
//! path info), and SRI `sha256-<base64>` (`nix path-info --json`). [`NixHash`] is any of the
//! four algorithms Nix knows, as a content address names them (`fixed:sha1:...`).

use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use thiserror::Error;

use crate::excerpt;
use crate::nixbase32;

/// A hash Nix wrote that this crate cannot read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HashError {
    #[error("hash {0:?} is not sha256 (only sha256 NAR hashes are supported)")]
    UnsupportedAlgorithm(String),
    #[error("hash {0:?} is not a sha256 digest in base-16, nixbase32 or base-64")]
    InvalidDigest(String),
    #[error(
        "{text:?} is not a {algo} digest: expected {} base-16, {} nixbase32 or {} base-64 \
         characters",
        algo.base16_len(), algo.nixbase32_len(), algo.base64_len()
    )]
    InvalidEncoding { algo: HashAlgo, text: String },
}

/// A SHA-256 digest, as NarHash and FileHash carry it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sha256(pub [u8; 32]);

impl Sha256 {
    /// The digest of `bytes`.
    pub fn digest(bytes: &[u8]) -> Self {
        Sha256(sha2::Sha256::digest(bytes).into())
    }

    /// Parses `sha256:<digest>` or `sha256-<base64>`; with `sha256:`, the digest may be
    /// nixbase32 (52 characters), base-16 (64) or base-64 (44), as Nix accepts.
    pub fn parse(text: &str) -> Result<Self, HashError> {
        if let Some(sri) = text.strip_prefix("sha256-") {
            return Self::from_base64(sri).ok_or_else(|| HashError::InvalidDigest(excerpt(text)));
        }
        let Some(digest) = text.strip_prefix("sha256:") else {
            return Err(HashError::UnsupportedAlgorithm(excerpt(text)));
        };
        Self::parse_digest(digest).ok_or_else(|| HashError::InvalidDigest(excerpt(text)))
    }

    /// Parses a bare digest, without the `sha256:` prefix, in any of Nix's three encodings.
    pub fn parse_digest(digest: &str) -> Option<Self> {
        decode_digest(HashAlgo::Sha256, digest)?.try_into().ok().map(Sha256)
    }

    fn from_base64(text: &str) -> Option<Self> {
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
        bytes.try_into().ok().map(Sha256)
    }

    /// The nixbase32 digest alone, as in NAR file names.
    pub fn to_nixbase32(&self) -> String {
        nixbase32::encode(&self.0)
    }

    /// The base-16 digest alone, as the daemon sends it.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

/// `sha256:<nixbase32>`, the form narinfo files and fingerprints use.
impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.to_nixbase32())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({self})")
    }
}

/// A running SHA-256 over a stream, for hashing NARs as they pass through.
#[derive(Clone, Default)]
pub struct Sha256Hasher(sha2::Sha256);

impl Sha256Hasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(self) -> Sha256 {
        Sha256(self.0.finalize().into())
    }
}

/// A running hash of any of Nix's algorithms, for checking content against a [`NixHash`].
#[derive(Clone)]
pub enum NixHasher {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl NixHasher {
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => NixHasher::Md5(Default::default()),
            HashAlgo::Sha1 => NixHasher::Sha1(Default::default()),
            HashAlgo::Sha256 => NixHasher::Sha256(Default::default()),
            HashAlgo::Sha512 => NixHasher::Sha512(Default::default()),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            NixHasher::Md5(h) => h.update(bytes),
            NixHasher::Sha1(h) => h.update(bytes),
            NixHasher::Sha256(h) => h.update(bytes),
            NixHasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> NixHash {
        let (algo, digest) = match self {
            NixHasher::Md5(h) => (HashAlgo::Md5, h.finalize().to_vec()),
            NixHasher::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            NixHasher::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            NixHasher::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        NixHash { algo, digest: digest.into() }
    }
}

/// The hash algorithms Nix knows (`parseHashType` in Nix's `hash.cc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    Md5,
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlgo {
    /// Every algorithm, shortest digest first.
    pub const ALL: [HashAlgo; 4] =
        [HashAlgo::Md5, HashAlgo::Sha1, HashAlgo::Sha256, HashAlgo::Sha512];

    /// The algorithm Nix names `name` (`md5`, `sha1`, `sha256`, `sha512`; lower case only, as
    /// Nix reads them).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|algo| algo.name() == name)
    }

    /// The name Nix writes.
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Md5 => "md5",
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Bytes in a digest.
    pub fn digest_len(self) -> usize {
        match self {
            HashAlgo::Md5 => 16,
            HashAlgo::Sha1 => 20,
            HashAlgo::Sha256 => 32,
            HashAlgo::Sha512 => 64,
        }
    }

    /// Characters of a digest in base-16.
    pub fn base16_len(self) -> usize {
        2 * self.digest_len()
    }

    /// Characters of a digest in nixbase32.
    pub fn nixbase32_len(self) -> usize {
        nixbase32::encoded_len(self.digest_len())
    }

    /// Characters of a digest in padded base-64 (Nix's `base64Len`).
    pub fn base64_len(self) -> usize {
        (4 * self.digest_len() / 3 + 3) & !3
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A digest and its algorithm, as Nix's `Hash`. The digest always has the algorithm's length.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NixHash {
    algo: HashAlgo,
    digest: Box<[u8]>,
}

impl NixHash {
    /// The hash with this digest, or `None` when the digest is not `algo`'s length.
    pub fn new(algo: HashAlgo, digest: &[u8]) -> Option<Self> {
        (digest.len() == algo.digest_len()).then(|| NixHash { algo, digest: digest.into() })
    }

    /// Parses a digest without an `<algo>:` prefix, as Nix's `Hash::parseNonSRIUnprefixed`:
    /// base-16 (either case), nixbase32 or padded base-64, told apart by length. Stricter than
    /// Nix in one way only: base-64 must be canonical (Nix ignores bits past the digest and
    /// anything after a `=`).
    pub fn parse_unprefixed(algo: HashAlgo, text: &str) -> Result<Self, HashError> {
        decode_digest(algo, text)
            .map(|digest| NixHash { algo, digest: digest.into() })
            .ok_or_else(|| HashError::InvalidEncoding { algo, text: excerpt(text) })
    }

    /// The algorithm the digest is of.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The raw digest, [`HashAlgo::digest_len`] bytes.
    pub fn digest(&self) -> &[u8] {
        &self.digest
    }

    /// The digest as a [`Sha256`], when it is one.
    pub fn as_sha256(&self) -> Option<Sha256> {
        match self.algo {
            HashAlgo::Sha256 => self.digest.as_ref().try_into().ok().map(Sha256),
            _ => None,
        }
    }

    /// The nixbase32 digest alone.
    pub fn to_nixbase32(&self) -> String {
        nixbase32::encode(&self.digest)
    }

    /// The base-16 digest alone.
    pub fn to_hex(&self) -> String {
        hex(&self.digest)
    }
}

impl From<Sha256> for NixHash {
    fn from(hash: Sha256) -> Self {
        NixHash { algo: HashAlgo::Sha256, digest: hash.0.into() }
    }
}

/// `<algo>:<nixbase32>`, as Nix's `Hash::to_string(Base32, true)`.
impl fmt::Display for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_nixbase32())
    }
}

impl fmt::Debug for NixHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NixHash({self})")
    }
}

/// A digest of `algo` in base-16, nixbase32 or base-64, told apart by length as Nix does (the
/// three lengths differ for every algorithm).
fn decode_digest(algo: HashAlgo, text: &str) -> Option<Vec<u8>> {
    let digest = if text.len() == algo.base16_len() {
        // Not `u8::from_str_radix`, which would take a `+` sign.
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let bytes = text.as_bytes();
        (0..algo.digest_len())
            .map(|i| Some(nibble(bytes[2 * i])? << 4 | nibble(bytes[2 * i + 1])?))
            .collect::<Option<Vec<u8>>>()?
    } else if text.len() == algo.nixbase32_len() {
        nixbase32::decode(text.as_bytes()).ok()?
    } else if text.len() == algo.base64_len() {
        base64::engine::general_purpose::STANDARD.decode(text).ok()?
    } else {
        return None;
    };
    (digest.len() == algo.digest_len()).then_some(digest)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_hashes_as_its_reference_does() {
        let cases = [
            (HashAlgo::Md5, "900150983cd24fb0d6963f7d28e17f72"),
            (HashAlgo::Sha1, "a9993e364706816aba3e25717850c26c9cd0d89d"),
            (HashAlgo::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (
                HashAlgo::Sha512,
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
                 2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
        ];
        for (algo, hex) in cases {
            let mut hasher = NixHasher::new(algo);
            hasher.update(b"a");
            hasher.update(b"bc");
            assert_eq!(hasher.finish(), NixHash::parse_unprefixed(algo, hex).unwrap(), "{algo}");
        }
    }

    // From `nix path-info --json` and `nix-hash --to-base32` for one path built here.
    const SRI: &str = "sha256-EOnzpBsxg8XJoMSMBWI+LnX//fMnKLViZSF+0FiE+4M=";

    #[test]
    fn the_three_encodings_agree() {
        let h = Sha256::parse(SRI).unwrap();
        let via_nix32 = Sha256::parse(&h.to_string()).unwrap();
        let via_hex = Sha256::parse(&format!("sha256:{}", h.to_hex())).unwrap();
        assert_eq!(h, via_nix32);
        assert_eq!(h, via_hex);
        assert!(h.to_string().starts_with("sha256:") && h.to_string().len() == 7 + 52);
    }

    #[test]
    fn empty_input_digest() {
        assert_eq!(
            Sha256::digest(b"").to_string(),
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
        );
    }

    #[test]
    fn rejects_other_algorithms_and_garbage() {
        assert!(matches!(Sha256::parse("md5:abc"), Err(HashError::UnsupportedAlgorithm(_))));
        assert!(matches!(Sha256::parse("sha256:xyz"), Err(HashError::InvalidDigest(_))));
        assert!(matches!(Sha256::parse("sha256-!!"), Err(HashError::InvalidDigest(_))));
        // `u8::from_str_radix` would read "+e" as 0x0e.
        let signed = format!("sha256:+e{}", &Sha256::digest(b"").to_hex()[2..]);
        assert!(matches!(Sha256::parse(&signed), Err(HashError::InvalidDigest(_))));
    }

    /// `printf 'nixmesh\n' > f; h=$(nix-hash --type <algo> --flat f)`, then
    /// `nix-hash --type <algo> --to-base32 $h` and `nix hash to-sri --type <algo> $h`.
    const NIXMESH: [(HashAlgo, &str, &str, &str); 4] = [
        (
            HashAlgo::Md5,
            "e6cb5b07e24edf4d46cc3b7ad2e9bdc3",
            "63pplx4yivri34vpsfw83mpjz6",
            "md5-5stbB+JO301GzDt60um9ww==",
        ),
        (
            HashAlgo::Sha1,
            "cd1d584a9556996e39dcb69d98d58eb0ef7671df",
            "vxqpdvxhivari7dnvhwnx6anjm55h7fd",
            "sha1-zR1YSpVWmW453LadmNWOsO92cd8=",
        ),
        (
            HashAlgo::Sha256,
            "eb964864b6568d415b7b93da44b7287b0c5593baeb08b96f93b863ec80a32a8f",
            "13ralf0fqqxqjdpvj27bpa9ma33v52vl9nlkgddl33annrj4i5pb",
            "sha256-65ZIZLZWjUFbe5PaRLcoewxVk7rrCLlvk7hj7ICjKo8=",
        ),
        (
            HashAlgo::Sha512,
            "8a325a4f6d05d99e4f47c4b918da620e4151def513c4b34403f2552264b61b2f\
             22e82a77595aa9188c3483b6ee15c16d8b8b4ebf8a75435f5dc2e181707daaff",
            "3zslzbhh7hw4paz8dsqmgsfif5nvh8mxsv86d4c32lmlnbp5bl24bqvnrj24mgj0\
             d2b7i0kypg52h8fcbd1iff48x7rxn85dm7mlcla",
            "sha512-ijJaT20F2Z5PR8S5GNpiDkFR3vUTxLNEA/JVImS2Gy8i6Cp3WVqpGIw0g7buFcF\
             ti4tOv4p1Q19dwuGBcH2q/w==",
        ),
    ];

    #[test]
    fn nix_hashes_in_every_encoding_nix_reads() {
        for (algo, hex, nix32, sri) in NIXMESH {
            let base64 = sri.split_once('-').unwrap().1;
            let hash = NixHash::parse_unprefixed(algo, hex).unwrap();
            assert_eq!(hash.algo(), algo);
            assert_eq!(hash.to_hex(), hex);
            assert_eq!(hash.to_nixbase32(), nix32);
            assert_eq!(hash.to_string(), format!("{algo}:{nix32}"));
            assert_eq!(
                (hex.len(), nix32.len(), base64.len()),
                (algo.base16_len(), algo.nixbase32_len(), algo.base64_len())
            );
            for text in [nix32, base64, &hex.to_uppercase()] {
                assert_eq!(NixHash::parse_unprefixed(algo, text).unwrap(), hash, "{text}");
            }
            assert_eq!(hash.as_sha256().is_some(), algo == HashAlgo::Sha256);
            assert_eq!(NixHash::new(algo, hash.digest()), Some(hash.clone()));
            assert_eq!(HashAlgo::parse(algo.name()), Some(algo));
            // Not SRI, and not another algorithm's length.
            assert!(NixHash::parse_unprefixed(algo, sri).is_err());
            for other in HashAlgo::ALL.into_iter().filter(|&a| a != algo) {
                let err = NixHash::parse_unprefixed(other, nix32).unwrap_err();
                assert!(err.to_string().contains(other.name()), "{err}");
            }
        }
        assert_eq!(NixHash::from(Sha256::digest(b"")).as_sha256(), Some(Sha256::digest(b"")),);
        assert_eq!(HashAlgo::parse("SHA256"), None);
        assert_eq!(NixHash::new(HashAlgo::Md5, &[0; 20]), None);
    }
}
