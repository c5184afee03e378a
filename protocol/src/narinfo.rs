//! The `.narinfo` format: parse, render, fingerprint, sign and verify. (STUB)

use std::fmt;

use thiserror::Error;

use crate::signature::{Signature, SigningKey, TrustedKeys, VerifyingKey};
use crate::{Sha256, StorePath};

/// A narinfo Nix would not accept.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarInfoError {
    #[error("narinfo line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("narinfo has no {0} field")]
    Missing(&'static str),
}

/// One narinfo. Fields in the order Nix writes them; unknown `Key: value` lines are kept in
/// `extra` and rendered after the known ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    pub url: String,
    pub compression: Option<String>,
    pub file_hash: Option<Sha256>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub signatures: Vec<Signature>,
    pub ca: Option<String>,
    pub extra: Vec<(String, String)>,
}

impl NarInfo {
    pub fn parse(_text: &str) -> Result<Self, NarInfoError> {
        todo!()
    }
    /// `1;<store path>;<nar hash>;<nar size>;<comma-separated full reference paths>`.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.store_path, &self.nar_hash, self.nar_size, &self.references)
    }
    /// Adds `key`'s signature (replacing an older one by the same key name).
    pub fn sign(&mut self, _key: &SigningKey) {
        todo!()
    }
    /// The trusted key one of its signatures verifies against, if any.
    pub fn verify(&self, _keys: &TrustedKeys) -> Option<&VerifyingKey> {
        todo!()
    }
}

/// Renders in Nix's layout, one `Key: value` per line, ending in a newline.
impl fmt::Display for NarInfo {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

/// The text Nix signs for a store path.
pub fn fingerprint(
    _store_path: &StorePath,
    _nar_hash: &Sha256,
    _nar_size: u64,
    _references: &[StorePath],
) -> String {
    todo!()
}
