//! SHA-256 digests in the forms Nix writes them: `sha256:<nixbase32>` (narinfo), base-16 (the
//! daemon's path info), and SRI `sha256-<base64>` (`nix path-info --json`).

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
        match digest.len() {
            52 => nixbase32::decode_fixed::<32>(digest.as_bytes()).ok().map(Sha256),
            64 => {
                let mut out = [0u8; 32];
                for (i, byte) in out.iter_mut().enumerate() {
                    *byte = u8::from_str_radix(digest.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(Sha256(out))
            }
            44 => Self::from_base64(digest),
            _ => None,
        }
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
        self.0.iter().map(|b| format!("{b:02x}")).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
