//! Store paths: `/nix/store/<32 nixbase32 characters>-<name>`.
//!
//! The 32 characters encode a 160-bit digest ([`StorePathHash`]); that digest alone names a
//! path in a binary cache (`/<hash>.narinfo`) and in nixmesh's index. Nix derives it from a
//! description of the path's contents ([`make_store_path_hash`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{Sha256, excerpt, nixbase32};

/// The store directory every path here lives in. nixmesh serves only the default store dir.
pub const STORE_DIR: &str = "/nix/store";

/// Characters of the hash part of a store path.
pub const HASH_CHARS: usize = 32;

/// The longest name Nix accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StorePathError {
    #[error("not in {STORE_DIR}: {0:?}")]
    NotInStore(String),
    #[error("store path hash {0:?} is not 32 nixbase32 characters")]
    InvalidHash(String),
    #[error("store path {0:?} has no '-' between hash and name")]
    MissingDash(String),
    #[error("store path name is empty")]
    EmptyName,
    #[error("store path name is longer than {MAX_NAME_LEN} characters")]
    NameTooLong,
    #[error("store path name has the character {0:?}, which Nix does not allow")]
    InvalidNameCharacter(char),
}

/// The 20-byte digest that names a store path.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct StorePathHash(pub [u8; 20]);

impl StorePathHash {
    /// Parses the 32-character nixbase32 form.
    pub fn parse(text: &str) -> Result<Self, StorePathError> {
        nixbase32::decode_fixed::<20>(text.as_bytes())
            .map(StorePathHash)
            .map_err(|_| StorePathError::InvalidHash(excerpt(text)))
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 20] {
        &self.0
    }
}

impl fmt::Display for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&nixbase32::encode(&self.0))
    }
}

impl fmt::Debug for StorePathHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePathHash({self})")
    }
}

impl FromStr for StorePathHash {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A validated store path in [`STORE_DIR`].
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorePath {
    hash: StorePathHash,
    name: String,
}

impl StorePath {
    /// Parses a full path, `/nix/store/<hash>-<name>`.
    pub fn parse(path: &str) -> Result<Self, StorePathError> {
        Self::from_base_name(base_name_of(path)?)
    }

    /// The path with this hash and name; the name is checked as [`StorePath::parse`] checks it.
    pub fn from_parts(hash: StorePathHash, name: &str) -> Result<Self, StorePathError> {
        validate_name(name)?;
        Ok(StorePath { hash, name: name.to_owned() })
    }

    /// Parses the last component alone, `<hash>-<name>`, as narinfo `References` list it.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let (hash, name) = split_base_name(base)?;
        Ok(StorePath { hash, name: name.to_owned() })
    }

    /// The hash of the full path `path`, checked as [`StorePath::parse`] checks it all, with
    /// no copy of its name: for reading a whole store's list of paths.
    pub fn hash_of(path: &str) -> Result<StorePathHash, StorePathError> {
        split_base_name(base_name_of(path)?).map(|(hash, _)| hash)
    }

    /// The digest part.
    pub fn hash(&self) -> StorePathHash {
        self.hash
    }

    /// The name part, after the dash.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `<hash>-<name>`.
    pub fn base_name(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
}

impl fmt::Display for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STORE_DIR}/{}-{}", self.hash, self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

impl FromStr for StorePath {
    type Err = StorePathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for StorePath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StorePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        StorePath::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The hash Nix's `makeStorePath` gives a path named `name` in `store_dir`, whose contents
/// `path_type` and the SHA-256 `inner` describe: the first 20 bytes, folded by XOR
/// (`compressHash`), of the SHA-256 of `<path_type>:sha256:<inner in base-16>:<store_dir>:<name>`.
///
/// `path_type` is, for example, `text` or `source` followed by `:<reference>` for each
/// reference, or `output:out`. The name is not checked here ([`StorePath::from_parts`] does).
pub fn make_store_path_hash(
    store_dir: &str,
    path_type: &str,
    inner: &Sha256,
    name: &str,
) -> StorePathHash {
    let description = format!("{path_type}:sha256:{}:{store_dir}:{name}", inner.to_hex());
    let digest = Sha256::digest(description.as_bytes());
    let mut folded = [0u8; 20];
    for (i, byte) in digest.0.iter().enumerate() {
        folded[i % 20] ^= byte;
    }
    StorePathHash(folded)
}

/// Nix's rule for names: 1 to 211 characters of `A-Za-z0-9+-._?=`.
/// `<hash>-<name>` of a full path in [`STORE_DIR`].
fn base_name_of(path: &str) -> Result<&str, StorePathError> {
    path.strip_prefix(STORE_DIR)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| StorePathError::NotInStore(excerpt(path)))
}

/// The hash and the checked name of `<hash>-<name>`.
fn split_base_name(base: &str) -> Result<(StorePathHash, &str), StorePathError> {
    let hash_text =
        base.get(..HASH_CHARS).ok_or_else(|| StorePathError::InvalidHash(excerpt(base)))?;
    let hash = StorePathHash::parse(hash_text)?;
    let name = base[HASH_CHARS..]
        .strip_prefix('-')
        .ok_or_else(|| StorePathError::MissingDash(excerpt(base)))?;
    validate_name(name)?;
    Ok((hash, name))
}

fn validate_name(name: &str) -> Result<(), StorePathError> {
    if name.is_empty() {
        return Err(StorePathError::EmptyName);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(StorePathError::NameTooLong);
    }
    match name.chars().find(|&c| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c))) {
        Some(c) => Err(StorePathError::InvalidNameCharacter(c)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PATH: &str = "/nix/store/j6mmqg25wifnxnwiiq7fcx65aa3ih36p-hello-2.12.1";

    #[test]
    fn parses_and_renders() {
        let p = StorePath::parse(PATH).unwrap();
        assert_eq!(p.name(), "hello-2.12.1");
        assert_eq!(p.hash().to_string(), "j6mmqg25wifnxnwiiq7fcx65aa3ih36p");
        assert_eq!(p.to_string(), PATH);
        assert_eq!(p.base_name(), "j6mmqg25wifnxnwiiq7fcx65aa3ih36p-hello-2.12.1");
        assert_eq!(StorePath::from_base_name(&p.base_name()).unwrap(), p);
    }

    #[test]
    fn rejects_invalid() {
        for bad in [
            "/nix/store/j6mmqg25wifnxnwiiq7fcx65aa3ih36p",
            "/nix/store/j6mmqg25wifnxnwiiq7fcx65aa3ih36p-",
            "/nix/store/j6mmqg25wifnxnwiiq7fcx65aa3ih36pxhello",
            "/nix/store/e6mmqg25wifnxnwiiq7fcx65aa3ih36p-hello",
            "/nix/store/j6mmqg25wifnxnwiiq7fcx65aa3ih36p-a/b",
            "/nix/store/j6mmqg25wifnxnwiiq7fcx65aa3ih36p-a b",
            "/usr/store/j6mmqg25wifnxnwiiq7fcx65aa3ih36p-hello",
            "/nix/store/short-hello",
            "",
        ] {
            assert!(StorePath::parse(bad).is_err(), "{bad} should not parse");
        }
        let long = format!("/nix/store/j6mmqg25wifnxnwiiq7fcx65aa3ih36p-{}", "a".repeat(212));
        assert_eq!(StorePath::parse(&long), Err(StorePathError::NameTooLong));
    }

    #[test]
    fn makes_the_hash_nix_makes() {
        // `builtins.toFile "nixmesh-ca-text-a" "first\n"` (tests/data/ca/text.nix), in
        // /nix/store and in the store dir /tmp/ca/odd/store (tests/data/ca/README.md).
        let inner = Sha256::digest(b"first\n");
        let name = "nixmesh-ca-text-a";
        let hash = make_store_path_hash(STORE_DIR, "text", &inner, name);
        assert_eq!(hash.to_string(), "142qnknaf8gi89r0lzcn01cvhyi2m4yw");
        let odd = make_store_path_hash("/tmp/ca/odd/store", "text", &inner, name);
        assert_eq!(odd.to_string(), "7i68c94hmgd73aijiw9ikna5mz10w9sk");
        let path = StorePath::from_parts(hash, name).unwrap();
        assert_eq!(
            path.to_string(),
            format!("{STORE_DIR}/142qnknaf8gi89r0lzcn01cvhyi2m4yw-{name}")
        );
        assert_eq!(
            StorePath::from_parts(hash, "a/b"),
            Err(StorePathError::InvalidNameCharacter('/'))
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,120}") {
            let _ = StorePath::parse(&s);
            let _ = StorePath::from_base_name(&s);
        }

        #[test]
        fn the_hash_of_a_path_is_what_parsing_it_gives(
            s in "(/nix/store/)?[0-9a-z]{30,33}(-[a-zA-Z0-9+._?=/ -]{0,12})?"
        ) {
            prop_assert_eq!(StorePath::hash_of(&s), StorePath::parse(&s).map(|p| p.hash()));
        }
    }
}
