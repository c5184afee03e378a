//! Nix's ed25519 keys and signatures: `name:base64`, as `nix-store --generate-binary-cache-key`
//! writes keys and narinfo `Sig:` lines carry signatures. (STUB: API fixed, body to be written.)

use std::fmt;

use thiserror::Error;

/// A key or signature text that is not in Nix's format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("{what} {text:?} is not of the form NAME:BASE64")]
    Malformed { what: &'static str, text: String },
    #[error("{what} named {name:?} decodes to {got} bytes, expected {expected}")]
    WrongLength { what: &'static str, name: String, got: usize, expected: usize },
    #[error("public key {name:?} is not a valid ed25519 point")]
    InvalidPoint { name: String },
}

/// A secret key: `name:base64(64 bytes: seed ++ public key)`.
pub struct SigningKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

/// A public key: `name:base64(32 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

/// A detached signature: `name:base64(64 bytes)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Signature {
    name: String,
    bytes: [u8; 64],
}

/// The keys whose signatures this node accepts.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl SigningKey {
    pub fn parse(_text: &str) -> Result<Self, KeyError> {
        todo!()
    }
    /// The key for a 32-byte secret seed; the caller brings the randomness (this crate has no
    /// entropy source: it does no I/O).
    pub fn from_seed(_name: &str, _seed: [u8; 32]) -> Self {
        todo!()
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The secret file's text, `name:base64(64 bytes)`, no newline.
    pub fn to_secret_string(&self) -> String {
        todo!()
    }
    pub fn verifying_key(&self) -> VerifyingKey {
        todo!()
    }
    pub fn sign(&self, _fingerprint: &[u8]) -> Signature {
        let _ = &self.key;
        todo!()
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}:<secret>)", self.name)
    }
}

impl VerifyingKey {
    pub fn parse(_text: &str) -> Result<Self, KeyError> {
        todo!()
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// True when `sig` is by a key of this name and verifies over `fingerprint`.
    pub fn verify(&self, _fingerprint: &[u8], _sig: &Signature) -> bool {
        let _ = &self.key;
        todo!()
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

impl Signature {
    pub fn parse(_text: &str) -> Result<Self, KeyError> {
        todo!()
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!()
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl TrustedKeys {
    pub fn new(keys: Vec<VerifyingKey>) -> Self {
        TrustedKeys { keys }
    }
    pub fn keys(&self) -> &[VerifyingKey] {
        &self.keys
    }
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// The trusted key that made one of `sigs` over `fingerprint`, if any.
    pub fn verify_any(&self, _fingerprint: &[u8], _sigs: &[Signature]) -> Option<&VerifyingKey> {
        todo!()
    }
}
