//! Nix's ed25519 keys and signatures: `name:base64`, as `nix-store --generate-binary-cache-key`
//! writes keys and narinfo `Sig:` lines carry signatures.
//!
//! - secret key: `name:base64(64 bytes)`, the 32-byte seed followed by the 32-byte public key
//!   (libsodium's layout); Nix writes the file with no trailing newline;
//! - public key: `name:base64(32 bytes)`;
//! - signature: `name:base64(64 bytes)`, where `name` is the name of the key that made it.
//!
//! A signature is checked only against a key of the same name, as Nix does: the name is how a
//! signature says which key made it. Verification is strict (canonical `S`, no small-order
//! points), matching libsodium's `crypto_sign_verify_detached`, which Nix uses.
//!
//! Errors name the key and say what is wrong; they never contain secret key material.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use thiserror::Error;

/// Bytes of an ed25519 seed, and of a public key.
const KEY_BYTES: usize = 32;
/// Bytes of a signature, and of a secret key in Nix's layout (seed ++ public key).
const SIGNATURE_BYTES: usize = 64;
/// The longest text [`Signature::parse`] and the key parsers look at; anything longer is
/// malformed (names of real keys are short, and the base64 is at most 88 characters).
const MAX_TEXT_LEN: usize = 512;

/// A key or signature text that is not in Nix's format.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// No `:`, or text too long to be a key. For secret keys `text` holds only the part
    /// before the `:` (or a length), never the secret.
    #[error("{what} {text:?} is not of the form NAME:BASE64")]
    Malformed { what: &'static str, text: String },
    #[error("{what} named {name:?} decodes to {got} bytes, expected {expected}")]
    WrongLength { what: &'static str, name: String, got: usize, expected: usize },
    #[error("public key {name:?} is not a valid ed25519 point")]
    InvalidPoint { name: String },
    #[error("{what} named {name:?} is not valid base64 after the ':'")]
    InvalidBase64 { what: &'static str, name: String },
    #[error("{what} name {name:?} is empty or has a ':' or whitespace in it")]
    InvalidName { what: &'static str, name: String },
    #[error(
        "secret key {name:?} holds a public key that does not match its seed (a corrupt or \
         hand-edited key file)"
    )]
    MismatchedPublicKey { name: String },
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

/// Whether `name` can name a key: non-empty, no `:` (it would end the name), no whitespace
/// (it would not survive `trusted-public-keys`, a whitespace-separated list).
pub fn is_valid_key_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(':') && !name.chars().any(char::is_whitespace)
}

/// Splits `name:base64` and decodes the base64 into exactly `N` bytes. `secret` keeps the
/// text after the name out of error messages.
fn split_decode<const N: usize>(
    what: &'static str,
    text: &str,
    secret: bool,
) -> Result<(String, [u8; N]), KeyError> {
    let text = text.trim();
    let shown = |text: &str| {
        if secret { format!("<{} characters>", text.chars().count()) } else { crate::excerpt(text) }
    };
    if text.len() > MAX_TEXT_LEN {
        return Err(KeyError::Malformed { what, text: shown(text) });
    }
    let Some((name, encoded)) = text.split_once(':') else {
        return Err(KeyError::Malformed { what, text: shown(text) });
    };
    if !is_valid_key_name(name) {
        return Err(KeyError::InvalidName { what, name: name.to_owned() });
    }
    let bytes = BASE64
        .decode(encoded)
        .map_err(|_| KeyError::InvalidBase64 { what, name: name.to_owned() })?;
    let got = bytes.len();
    let bytes = <[u8; N]>::try_from(bytes).map_err(|_| KeyError::WrongLength {
        what,
        name: name.to_owned(),
        got,
        expected: N,
    })?;
    Ok((name.to_owned(), bytes))
}

impl SigningKey {
    /// Parses a secret key file's text (surrounding whitespace allowed), and checks that the
    /// public half it carries is the one its seed gives.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode::<SIGNATURE_BYTES>("secret key", text, true)?;
        let seed: [u8; KEY_BYTES] = bytes[..KEY_BYTES].try_into().expect("64 = 32 + 32");
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        if key.verifying_key().as_bytes()[..] != bytes[KEY_BYTES..] {
            return Err(KeyError::MismatchedPublicKey { name });
        }
        Ok(SigningKey { name, key })
    }

    /// The key for a 32-byte secret seed; the caller brings the randomness (this crate has no
    /// entropy source: it does no I/O).
    ///
    /// # Panics
    /// If `name` is not a valid key name (see [`is_valid_key_name`]); use
    /// [`SigningKey::try_from_seed`] for names from outside the program.
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        match Self::try_from_seed(name, seed) {
            Ok(key) => key,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`SigningKey::from_seed`], with an error for an invalid name.
    pub fn try_from_seed(name: &str, seed: [u8; 32]) -> Result<Self, KeyError> {
        if !is_valid_key_name(name) {
            return Err(KeyError::InvalidName { what: "secret key", name: name.to_owned() });
        }
        Ok(SigningKey { name: name.to_owned(), key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The secret file's text, `name:base64(64 bytes)`, no newline: what
    /// `nix-store --generate-binary-cache-key` writes.
    pub fn to_secret_string(&self) -> String {
        format!("{}:{}", self.name, BASE64.encode(self.key.to_keypair_bytes()))
    }

    /// The public half, under the same name.
    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// Signs `fingerprint` (for store paths, [`crate::narinfo::fingerprint`]). Deterministic:
    /// the same key and text give the same signature, the one Nix would make.
    pub fn sign(&self, fingerprint: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature { name: self.name.clone(), bytes: self.key.sign(fingerprint).to_bytes() }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}:<secret>)", self.name)
    }
}

impl VerifyingKey {
    /// Parses `name:base64(32 bytes)` (surrounding whitespace allowed), as in
    /// `trusted-public-keys`. Rejects bytes that are not a point of the curve, and the
    /// small-order points no real key is.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode::<KEY_BYTES>("public key", text, false)?;
        match ed25519_dalek::VerifyingKey::from_bytes(&bytes) {
            Ok(key) if !key.is_weak() => Ok(VerifyingKey { name, key }),
            _ => Err(KeyError::InvalidPoint { name }),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when `sig` is by a key of this name and verifies over `fingerprint`.
    pub fn verify(&self, fingerprint: &[u8], sig: &Signature) -> bool {
        sig.name == self.name
            && self
                .key
                .verify_strict(fingerprint, &ed25519_dalek::Signature::from_bytes(&sig.bytes))
                .is_ok()
    }
}

impl fmt::Display for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VerifyingKey({self})")
    }
}

impl Signature {
    /// Parses `name:base64(64 bytes)`, as a narinfo `Sig:` line carries it.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_decode::<SIGNATURE_BYTES>("signature", text, false)?;
        Ok(Signature { name, bytes })
    }

    /// The name of the key that made it.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn bytes(&self) -> &[u8; 64] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.bytes))
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

    /// The trusted key that made one of `sigs` over `fingerprint`, if any. Each signature is
    /// tried only against the keys of its name.
    pub fn verify_any(&self, fingerprint: &[u8], sigs: &[Signature]) -> Option<&VerifyingKey> {
        sigs.iter().find_map(|sig| self.keys.iter().find(|key| key.verify(fingerprint, sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Made by `nix-store --generate-binary-cache-key nixmesh-golden-1 sec pub` (see
    // protocol/tests/data/keys/README.md); test-only keys.
    const SECRET: &str = include_str!("../tests/data/keys/nixmesh-golden-1.secret");
    const PUBLIC: &str = include_str!("../tests/data/keys/nixmesh-golden-1.public");

    #[test]
    fn nix_keys_round_trip() {
        let secret = SigningKey::parse(SECRET).unwrap();
        assert_eq!(secret.name(), "nixmesh-golden-1");
        assert_eq!(secret.to_secret_string(), SECRET);
        let public = VerifyingKey::parse(PUBLIC).unwrap();
        assert_eq!(public.to_string(), PUBLIC);
        assert_eq!(secret.verifying_key(), public);
    }

    #[test]
    fn surrounding_whitespace_is_fine() {
        assert!(SigningKey::parse(&format!("\n {SECRET}\n")).is_ok());
        assert!(VerifyingKey::parse(&format!("{PUBLIC}\n")).is_ok());
    }

    #[test]
    fn sign_and_verify() {
        let key = SigningKey::from_seed("k-1", [7; 32]);
        let sig = key.sign(b"hello");
        assert_eq!(Signature::parse(&sig.to_string()).unwrap(), sig);
        assert!(key.verifying_key().verify(b"hello", &sig));
        assert!(!key.verifying_key().verify(b"hellO", &sig));
        // The same key under another name does not verify: the name says which key signed.
        let renamed = VerifyingKey::parse(&key.verifying_key().to_string().replace("k-1", "k-2"));
        assert!(!renamed.unwrap().verify(b"hello", &sig));
        // A round trip through the secret text keeps the key.
        let again = SigningKey::parse(&key.to_secret_string()).unwrap();
        assert_eq!(again.sign(b"hello"), sig);
    }

    #[test]
    fn verify_any_finds_the_trusted_signer() {
        let a = SigningKey::from_seed("a", [1; 32]);
        let b = SigningKey::from_seed("b", [2; 32]);
        let c = SigningKey::from_seed("c", [3; 32]);
        let trusted = TrustedKeys::new(vec![a.verifying_key(), b.verifying_key()]);
        let sigs = [c.sign(b"fp"), b.sign(b"fp")];
        assert_eq!(trusted.verify_any(b"fp", &sigs).map(VerifyingKey::name), Some("b"));
        assert_eq!(trusted.verify_any(b"fp", &sigs[..1]), None);
        assert_eq!(trusted.verify_any(b"other", &sigs), None);
        assert_eq!(TrustedKeys::default().verify_any(b"fp", &sigs), None);
    }

    #[test]
    fn rejects_bad_keys_without_echoing_secrets() {
        let (name, b64) = SECRET.split_once(':').unwrap();
        let mut bytes = BASE64.decode(b64).unwrap();
        bytes[40] ^= 1;
        let tampered = format!("{name}:{}", BASE64.encode(&bytes));
        let err = SigningKey::parse(&tampered).unwrap_err();
        assert_eq!(err, KeyError::MismatchedPublicKey { name: name.to_owned() });

        for bad in [
            b64.to_owned(),                               // no name
            format!(":{b64}"),                            // empty name
            format!("a b:{b64}"),                         // whitespace in the name
            format!("{name}:{}", &b64[..20]),             // too short
            format!("{name}:{}!", &b64[..b64.len() - 1]), // not base64
        ] {
            let err = SigningKey::parse(&bad).unwrap_err().to_string();
            assert!(!err.contains(&b64[4..20]), "{err} shows the secret");
        }
        assert!(matches!(
            VerifyingKey::parse(&format!("x:{}", BASE64.encode([0u8; 31]))),
            Err(KeyError::WrongLength { got: 31, expected: 32, .. })
        ));
        // The identity point, of small order.
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(matches!(
            VerifyingKey::parse(&format!("x:{}", BASE64.encode(identity))),
            Err(KeyError::InvalidPoint { .. })
        ));
        assert!(matches!(Signature::parse("x"), Err(KeyError::Malformed { .. })));
        assert!(SigningKey::try_from_seed("a:b", [0; 32]).is_err());
    }

    #[test]
    #[should_panic(expected = "name")]
    fn from_seed_panics_on_a_bad_name() {
        SigningKey::from_seed("", [0; 32]);
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,200}") {
            let _ = SigningKey::parse(&s);
            let _ = VerifyingKey::parse(&s);
            let _ = Signature::parse(&s);
        }

        #[test]
        fn secret_keys_round_trip(seed in any::<[u8; 32]>(), name in "[a-z0-9.-]{1,20}") {
            let key = SigningKey::from_seed(&name, seed);
            let again = SigningKey::parse(&key.to_secret_string()).unwrap();
            prop_assert_eq!(again.verifying_key(), key.verifying_key());
            let public = VerifyingKey::parse(&key.verifying_key().to_string()).unwrap();
            prop_assert!(public.verify(b"x", &key.sign(b"x")));
        }
    }
}
