//! The pieces of the NAR grammar that the writer and the reader share: tokens and the rules
//! for entry names and symlink targets. (Strings are framed as [`crate::nix_daemon`] says.)
//!
//! Nix's own parser (`src/libutil/archive.cc`) checks names but caps nothing; what Nix can
//! actually dump or restore is bounded by the operating system: a name is at most `NAME_MAX`
//! (255) bytes, and a symlink target or a full path at most `PATH_MAX` (4096) bytes including
//! the terminating NUL. Both directions here enforce those bounds, so that the reader runs in
//! bounded memory and the writer never produces an archive the reader refuses.

use thiserror::Error;

/// The first string of every NAR.
pub(crate) const MAGIC: &[u8] = b"nix-archive-1";
/// The first bytes of every NAR: [`MAGIC`] as a string on the wire.
pub const NAR_HEADER: [u8; 24] = *b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0";
pub(crate) const OPEN: &[u8] = b"(";
pub(crate) const CLOSE: &[u8] = b")";
pub(crate) const TYPE: &[u8] = b"type";
pub(crate) const REGULAR: &[u8] = b"regular";
pub(crate) const SYMLINK: &[u8] = b"symlink";
pub(crate) const DIRECTORY: &[u8] = b"directory";
pub(crate) const EXECUTABLE: &[u8] = b"executable";
pub(crate) const CONTENTS: &[u8] = b"contents";
pub(crate) const TARGET: &[u8] = b"target";
pub(crate) const ENTRY: &[u8] = b"entry";
pub(crate) const NAME: &[u8] = b"name";
pub(crate) const NODE: &[u8] = b"node";

/// The longest directory entry name, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// The longest symlink target, in bytes (Linux's `PATH_MAX` less the NUL).
pub const MAX_TARGET_LEN: usize = 4095;

/// The longest path of a node inside a NAR (`a/b/c`, without the store path in front), in
/// bytes. Nix cannot dump or restore a node whose full path exceeds `PATH_MAX`, so no NAR Nix
/// made exceeds this. It also bounds nesting: at most 2048 directories deep.
pub const MAX_PATH_LEN: usize = 4095;

pub(crate) use crate::nix_daemon::padding_len;

/// Why a directory entry name is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum NameError {
    #[error("it is empty")]
    Empty,
    #[error("\".\" and \"..\" are not allowed")]
    Dot,
    #[error("it contains '/'")]
    Slash,
    #[error("it contains a NUL byte")]
    Nul,
    #[error("it is {0} bytes long, more than {MAX_NAME_LEN}")]
    TooLong(u64),
}

/// Why a symlink target is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("it is empty")]
    Empty,
    #[error("it contains a NUL byte")]
    Nul,
    #[error("it is {0} bytes long, more than {MAX_TARGET_LEN}")]
    TooLong(u64),
}

/// Checks `name` against Nix's rules for entry names (and the length bound above).
pub(crate) fn check_name(name: &[u8]) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        Err(NameError::TooLong(name.len() as u64))
    } else if name.is_empty() {
        Err(NameError::Empty)
    } else if name == b"." || name == b".." {
        Err(NameError::Dot)
    } else if name.contains(&b'/') {
        Err(NameError::Slash)
    } else if name.contains(&0) {
        Err(NameError::Nul)
    } else {
        Ok(())
    }
}

/// Checks a symlink target: something Linux could store as one.
pub(crate) fn check_target(target: &[u8]) -> Result<(), TargetError> {
    if target.len() > MAX_TARGET_LEN {
        Err(TargetError::TooLong(target.len() as u64))
    } else if target.is_empty() {
        Err(TargetError::Empty)
    } else if target.contains(&0) {
        Err(TargetError::Nul)
    } else {
        Ok(())
    }
}

/// The length of the path of an entry called `name` (of `name_len` bytes) in a directory whose
/// path is `parent_len` bytes long; the root's path is empty.
pub(crate) fn child_path_len(parent_len: usize, name_len: usize) -> usize {
    if parent_len == 0 { name_len } else { parent_len + 1 + name_len }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_the_magic_as_a_string() {
        let mut header = Vec::new();
        crate::nix_daemon::put_bytes(&mut header, MAGIC);
        assert_eq!(header, NAR_HEADER);
    }

    #[test]
    fn names() {
        assert_eq!(check_name(b"a"), Ok(()));
        assert_eq!(check_name("ä".as_bytes()), Ok(()));
        assert_eq!(check_name(b"..."), Ok(()));
        assert_eq!(check_name(b""), Err(NameError::Empty));
        assert_eq!(check_name(b"."), Err(NameError::Dot));
        assert_eq!(check_name(b".."), Err(NameError::Dot));
        assert_eq!(check_name(b"a/b"), Err(NameError::Slash));
        assert_eq!(check_name(b"a\0"), Err(NameError::Nul));
        assert_eq!(check_name(&[b'x'; 255]), Ok(()));
        assert_eq!(check_name(&[b'x'; 256]), Err(NameError::TooLong(256)));
    }

    #[test]
    fn targets() {
        assert_eq!(check_target(b"/nix/store/x"), Ok(()));
        assert_eq!(check_target(b""), Err(TargetError::Empty));
        assert_eq!(check_target(b"a\0b"), Err(TargetError::Nul));
        assert_eq!(check_target(&[b'x'; 4096]), Err(TargetError::TooLong(4096)));
    }
}
