//! Nix's wire format (Nix's `serialise.cc`), shared by the NAR format and the daemon protocol:
//! integers are little-endian `u64`s, and a byte string is its length as a `u64`, the bytes,
//! and zero bytes up to a multiple of 8.
//!
//! Writing is to any [`std::io::Write`] (a `Vec<u8>` for a request being built, the NAR
//! writer's sink). Reading is the caller's I/O: it reads a length, asks [`check_len`] or
//! [`check_count`] whether to go on *before* it allocates anything, reads the body and the
//! padding, and asks [`check_padding`]; so a hostile peer or daemon cannot make it allocate
//! more than the limit it chose. [`worker_protocol`] holds the worker protocol's constants and requests.

pub mod worker_protocol;

use std::io::{self, Write};

use thiserror::Error;

/// Why a value read off the wire is not acceptable. Each names what was being read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NixWireError {
    #[error("{what} of {len} bytes exceeds the limit of {max} bytes")]
    TooLong { what: &'static str, len: u64, max: usize },
    #[error("list of {count} {what} exceeds the limit of {max}")]
    TooMany { what: &'static str, count: u64, max: usize },
    #[error("{what} has non-zero padding bytes")]
    BadPadding { what: &'static str },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("{what} is {value}, not a boolean (0 or 1)")]
    NotBool { what: &'static str, value: u64 },
}

/// The number of zero bytes that follow a string of `len` bytes.
pub fn padding_len(len: u64) -> usize {
    (len.wrapping_neg() % 8) as usize
}

/// Writes a little-endian `u64`.
pub fn write_u64<W: Write + ?Sized>(w: &mut W, n: u64) -> io::Result<()> {
    w.write_all(&n.to_le_bytes())
}

/// Writes a byte string: its length, the bytes, the padding.
pub fn write_bytes<W: Write + ?Sized>(w: &mut W, bytes: &[u8]) -> io::Result<()> {
    write_u64(w, bytes.len() as u64)?;
    w.write_all(bytes)?;
    write_padding(w, bytes.len() as u64)
}

/// Writes the padding that follows a string of `len` bytes.
pub fn write_padding<W: Write + ?Sized>(w: &mut W, len: u64) -> io::Result<()> {
    w.write_all(&[0; 8][..padding_len(len)])
}

/// Appends a `u64` to a message being built.
pub fn put_u64(buf: &mut Vec<u8>, n: u64) {
    write_u64(buf, n).expect("writing to a Vec cannot fail")
}

/// Appends a byte string to a message being built.
pub fn put_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    write_bytes(buf, bytes).expect("writing to a Vec cannot fail")
}

/// The length of a string of `what` about to be read, if it is at most `max`.
pub fn check_len(len: u64, what: &'static str, max: usize) -> Result<usize, NixWireError> {
    usize::try_from(len).ok().filter(|&len| len <= max).ok_or(NixWireError::TooLong {
        what,
        len,
        max,
    })
}

/// The length of a list of `what` about to be read, if it has at most `max` entries.
pub fn check_count(count: u64, what: &'static str, max: usize) -> Result<usize, NixWireError> {
    usize::try_from(count).ok().filter(|&n| n <= max).ok_or(NixWireError::TooMany {
        what,
        count,
        max,
    })
}

/// Checks the padding read after a string of `what`: all zero.
pub fn check_padding(padding: &[u8], what: &'static str) -> Result<(), NixWireError> {
    match padding.iter().all(|&b| b == 0) {
        true => Ok(()),
        false => Err(NixWireError::BadPadding { what }),
    }
}

/// A boolean, which Nix sends as a `u64` 0 or 1; anything else means the reader lost sync.
pub fn to_bool(value: u64, what: &'static str) -> Result<bool, NixWireError> {
    match value {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(NixWireError::NotBool { what, value }),
    }
}

/// A string that must be UTF-8 (paths, hashes); text meant for people is taken lossily.
pub fn to_string(bytes: Vec<u8>, what: &'static str) -> Result<String, NixWireError> {
    String::from_utf8(bytes).map_err(|_| NixWireError::NotUtf8 { what })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(bytes: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        put_bytes(&mut buf, bytes);
        buf
    }

    #[test]
    fn padding() {
        assert_eq!(padding_len(0), 0);
        assert_eq!(padding_len(1), 7);
        assert_eq!(padding_len(8), 0);
        assert_eq!(padding_len(13), 3);
        assert_eq!(padding_len(u64::MAX), 1);
    }

    #[test]
    fn strings_are_padded_to_eight_bytes() {
        assert_eq!(encoded(b""), [0u8; 8]);
        assert_eq!(encoded(b"abc"), [3, 0, 0, 0, 0, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]);
        assert_eq!(encoded(b"12345678").len(), 16);
        assert_eq!(encoded(b"123456789").len(), 24);
    }

    #[test]
    fn limits_are_checked_from_the_length_alone() {
        assert_eq!(
            check_len(u64::MAX, "log line", 1 << 20).unwrap_err().to_string(),
            format!("log line of {} bytes exceeds the limit of 1048576 bytes", u64::MAX)
        );
        assert_eq!(check_len(9, "s", 9), Ok(9));
        assert_eq!(
            check_count(11, "paths", 10).unwrap_err().to_string(),
            "list of 11 paths exceeds the limit of 10"
        );
        assert_eq!(
            check_padding(&[0, 0, 1], "path"),
            Err(NixWireError::BadPadding { what: "path" })
        );
        assert_eq!(to_bool(2, "valid"), Err(NixWireError::NotBool { what: "valid", value: 2 }));
        assert_eq!(
            to_string(b"caf\xe9".to_vec(), "path"),
            Err(NixWireError::NotUtf8 { what: "path" })
        );
    }
}
