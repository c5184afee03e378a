//! The mesh key: 32 random bytes shared by every node of a private mesh, in the file format
//! libp2p's pnet reads (and go-libp2p and IPFS write as `swarm.key`):
//!
//! ```text
//! /key/swarm/psk/1.0.0/
//! /base16/
//! <64 hex digits>
//! ```
//!
//! The key never leaves the node: peers prove they hold it by the pnet handshake
//! ([`super::private`]), and people compare keys by their [`MeshKey::fingerprint`].

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::pnet::PreSharedKey;
use rand::RngCore;
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The key file's first line: the key type.
const KEY_TYPE: &str = "/key/swarm/psk/1.0.0/";
/// The key file's second line: the encoding of the third.
const ENCODING: &str = "/base16/";
/// The most a key file may be (the format needs 95 bytes).
const MAX_FILE_LEN: u64 = 4096;

/// A mesh key file that cannot be read, or is not one.
#[derive(Debug, Error)]
pub enum MeshKeyError {
    #[error("mesh key file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "mesh key file {path}: {reason}; a mesh key file is three lines, \
         `{KEY_TYPE}`, `{ENCODING}` and 64 hex digits (`nixmesh mesh-key --out FILE` makes one)"
    )]
    Malformed { path: PathBuf, reason: String },
}

/// A pre-shared mesh key. Its `Debug` shows the fingerprint only.
#[derive(Clone, PartialEq, Eq)]
pub struct MeshKey([u8; 32]);

impl MeshKey {
    /// A new random key.
    pub fn generate() -> MeshKey {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        MeshKey(bytes)
    }

    /// The key in libp2p's key file format (three lines, each ending in a newline).
    pub fn to_file_text(&self) -> String {
        let mut text = format!("{KEY_TYPE}\n{ENCODING}\n");
        for b in self.0 {
            let _ = write!(text, "{b:02x}");
        }
        text.push('\n');
        text
    }

    /// Parses a key file's text; the error says what is wrong with it. Trailing whitespace
    /// (a newline, `\r\n` line ends) is allowed, nothing else.
    pub fn parse(text: &str) -> Result<MeshKey, String> {
        let mut lines = text.trim_end().lines().map(str::trim_end);
        let mut line = |what: &str| lines.next().ok_or_else(|| format!("no {what} line"));
        let key_type = line("key type")?;
        if key_type != KEY_TYPE {
            return Err(format!("the first line is {key_type:?}, not {KEY_TYPE:?}"));
        }
        let encoding = line("encoding")?;
        if encoding != ENCODING {
            return Err(format!("the encoding is {encoding:?}; only {ENCODING:?} is read"));
        }
        let hex = line("key")?;
        if lines.next().is_some() {
            return Err("there is more after the key line".to_owned());
        }
        if hex.len() != 64 {
            return Err(format!("the key line has {} characters, not 64 hex digits", hex.len()));
        }
        let mut bytes = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            // Digits only: `from_str_radix` alone would take a sign.
            if !pair.iter().all(u8::is_ascii_hexdigit) {
                return Err(format!(
                    "the key line has a character that is not hex at byte {}",
                    2 * i
                ));
            }
            let digits = std::str::from_utf8(pair).expect("hex digits are ASCII");
            bytes[i] = u8::from_str_radix(digits, 16).expect("two hex digits");
        }
        Ok(MeshKey(bytes))
    }

    /// Reads the key file at `path`. A file others may read is allowed, with a warning:
    /// whoever reads it can join the mesh.
    pub fn load(path: &Path) -> Result<MeshKey, MeshKeyError> {
        let io = |source| MeshKeyError::Io { path: path.to_owned(), source };
        let metadata = std::fs::metadata(path).map_err(io)?;
        let malformed = |reason: String| MeshKeyError::Malformed { path: path.to_owned(), reason };
        if metadata.len() > MAX_FILE_LEN {
            return Err(malformed(format!("{} bytes is too long for a key", metadata.len())));
        }
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the mesh key file can be read by other users; anyone who reads it can join the mesh"
            );
        }
        let bytes = std::fs::read(path).map_err(io)?;
        let text = String::from_utf8(bytes).map_err(|_| malformed("it is not text".to_owned()))?;
        MeshKey::parse(&text).map_err(malformed)
    }

    /// Writes the key to a new file at `path` (mode 0600); an existing file is an error,
    /// never overwritten.
    pub fn write_new(&self, path: &Path) -> Result<(), MeshKeyError> {
        let io = |source| MeshKeyError::Io { path: path.to_owned(), source };
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(self.to_file_text().as_bytes()).and_then(|()| file.sync_all()).map_err(io)
    }

    /// What the pnet transport upgrade takes.
    pub fn pre_shared_key(&self) -> PreSharedKey {
        PreSharedKey::new(self.0)
    }

    /// libp2p's fingerprint of the key (the same as go-libp2p's): safe to show, and equal on
    /// two hosts exactly when their keys are.
    pub fn fingerprint(&self) -> String {
        self.pre_shared_key().fingerprint().to_string()
    }

    /// A key for one use other than pnet (`label` names the use), so that what is derived
    /// for, say, mDNS records tells nothing about the key pnet uses.
    pub fn derive(&self, label: &str) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(b"nixmesh mesh key derivation\0");
        hash.update(label.as_bytes());
        hash.update([0]);
        hash.update(self.0);
        hash.finalize().into()
    }
}

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshKey(fingerprint {})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn the_file_format_round_trips_and_is_what_libp2p_reads() {
        let key = MeshKey::generate();
        let text = key.to_file_text();
        assert_eq!(MeshKey::parse(&text).unwrap(), key);
        // libp2p reads what we write, and we read what libp2p writes.
        assert_eq!(PreSharedKey::from_str(&text).unwrap(), key.pre_shared_key());
        assert_eq!(MeshKey::parse(&key.pre_shared_key().to_string()).unwrap(), key);
        // A file written on another system, or by hand.
        assert_eq!(MeshKey::parse(&text.replace('\n', "\r\n")).unwrap(), key);
        assert_eq!(MeshKey::parse(text.trim_end()).unwrap(), key);
        let upper = text.lines().nth(2).unwrap().to_uppercase();
        assert_eq!(MeshKey::parse(&format!("{KEY_TYPE}\n{ENCODING}\n{upper}")).unwrap(), key);
    }

    #[test]
    fn a_known_key_has_libp2ps_fingerprint() {
        let text = format!("{KEY_TYPE}\n{ENCODING}\n{}\n", "6f".repeat(32));
        let key = MeshKey::parse(&text).unwrap();
        assert_eq!(
            key.fingerprint(),
            PreSharedKey::from_str(&text).unwrap().fingerprint().to_string()
        );
        assert_eq!(format!("{key:?}"), format!("MeshKey(fingerprint {})", key.fingerprint()));
        assert!(!format!("{key:?}").contains(&"6f".repeat(4)), "Debug does not show the key");
    }

    #[test]
    fn malformed_key_files_are_refused_saying_why() {
        let good_hex = "ab".repeat(32);
        let cases = [
            ("", "no key type line"),
            ("/key/swarm/psk/2.0.0/\n/base16/\nab\n", "the first line is"),
            (&format!("{KEY_TYPE}\n/base64/\n{good_hex}\n"), "only \"/base16/\" is read"),
            (&format!("{KEY_TYPE}\n{ENCODING}\n"), "no key line"),
            (&format!("{KEY_TYPE}\n{ENCODING}\n{}\n", "ab".repeat(31)), "62 characters"),
            (&format!("{KEY_TYPE}\n{ENCODING}\n{}zz\n", "ab".repeat(31)), "not hex"),
            (&format!("{KEY_TYPE}\n{ENCODING}\n+f{}\n", "ab".repeat(31)), "not hex at byte 0"),
            (&format!("{KEY_TYPE}\n{ENCODING}\n{}é\n", "a".repeat(62)), "not hex at byte 62"),
            (&format!("{KEY_TYPE}\n{ENCODING}\n{good_hex}\nmore\n"), "more after the key"),
        ];
        for (text, expected) in cases {
            let e = MeshKey::parse(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e:?} does not say {expected:?}");
        }
    }

    #[test]
    fn the_key_file_is_new_private_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.key");
        let key = MeshKey::generate();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(MeshKey::load(&path).unwrap(), key);
        // Never over an existing file.
        let other = MeshKey::generate();
        assert!(matches!(other.write_new(&path), Err(MeshKeyError::Io { .. })));
        assert_eq!(MeshKey::load(&path).unwrap(), key);

        std::fs::write(&path, "not a key\n").unwrap();
        let e = MeshKey::load(&path).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("mesh key file {}: the first line is", path.display())),
            "{e}"
        );
        assert!(e.contains("nixmesh mesh-key --out FILE"), "{e}");
        let e = MeshKey::load(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("No such file"), "{e}");
    }

    #[test]
    fn derived_keys_differ_by_label_and_by_key() {
        let (a, b) = (MeshKey::generate(), MeshKey::generate());
        assert_eq!(a.derive("x"), a.derive("x"));
        assert_ne!(a.derive("x"), a.derive("y"));
        assert_ne!(a.derive("x"), b.derive("x"));
    }
}
