//! The NAR writer: a tree handed in node by node, written out as it comes.
//!
//! [`open`] writes the magic and returns the root [`Node`]; each node is written exactly once,
//! as a file, a symlink or a [`Directory`], whose entries are nodes again. The borrow checker
//! keeps a parent from being written to while a child is open; what it cannot see (a child
//! node dropped unwritten, a subdirectory never closed) is caught at the parent's next call.
//!
//! Nothing is buffered: hand in a `BufWriter` when the sink is a file or a socket.

use std::io::{self, ErrorKind, Read, Write};
use std::ops::{Deref, DerefMut};

use thiserror::Error;

use super::format::{self, MAX_PATH_LEN, NameError, TargetError};
use crate::nix_daemon;

/// Why the writer refused to go on. After any error but the validation ones
/// ([`InvalidName`](Self::InvalidName), [`NotSorted`](Self::NotSorted),
/// [`DuplicateName`](Self::DuplicateName), [`InvalidTarget`](Self::InvalidTarget),
/// [`PathTooLong`](Self::PathTooLong)), which are checked before anything is written, the
/// archive is incomplete and every later call fails with [`Failed`](Self::Failed).
#[derive(Debug, Error)]
pub enum WriteError {
    #[error("writing the NAR failed: {0}")]
    Io(#[source] io::Error),
    #[error("reading the contents of a file for the NAR failed: {0}")]
    ContentsRead(#[source] io::Error),
    #[error("the file contents ended after {got} of the {expected} bytes announced")]
    ShortContents { expected: u64, got: u64 },
    #[error("invalid entry name \"{}\": {reason}", name.escape_ascii())]
    InvalidName { name: Vec<u8>, reason: NameError },
    #[error(
        "entry \"{}\" written after \"{}\": entries must come in strictly increasing order",
        name.escape_ascii(),
        prev.escape_ascii()
    )]
    NotSorted { prev: Vec<u8>, name: Vec<u8> },
    #[error("entry \"{}\" written twice in one directory", name.escape_ascii())]
    DuplicateName { name: Vec<u8> },
    #[error("invalid symlink target: {0}")]
    InvalidTarget(TargetError),
    #[error("the entry's path inside the NAR would be {len} bytes long, more than {MAX_PATH_LEN}")]
    PathTooLong { len: usize },
    #[error(
        "the previous entry is unfinished: its node was dropped unwritten or its directory \
         was not closed"
    )]
    UnfinishedEntry,
    #[error("the NAR writer failed earlier; the archive is incomplete")]
    Failed,
}

impl From<WriteError> for io::Error {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Io(e) | WriteError::ContentsRead(e) => e,
            WriteError::ShortContents { .. } => io::Error::new(ErrorKind::UnexpectedEof, error),
            other => io::Error::new(ErrorKind::InvalidInput, other),
        }
    }
}

/// What every node and directory of one archive shares.
struct Sink<'w> {
    out: &'w mut dyn Write,
    /// Set once the archive can no longer be completed.
    failed: bool,
    /// A node was handed out by [`Directory::entry`] and not written yet.
    pending_node: bool,
    /// Directories opened and not closed yet.
    open_dirs: usize,
}

impl Sink<'_> {
    fn bytes(&mut self, bytes: &[u8]) -> Result<(), WriteError> {
        self.out.write_all(bytes).map_err(WriteError::Io)
    }

    fn padding(&mut self, len: u64) -> Result<(), WriteError> {
        nix_daemon::write_padding(self.out, len).map_err(WriteError::Io)
    }

    fn string(&mut self, s: &[u8]) -> Result<(), WriteError> {
        nix_daemon::write_bytes(self.out, s).map_err(WriteError::Io)
    }

    fn strings(&mut self, strings: &[&[u8]]) -> Result<(), WriteError> {
        strings.iter().try_for_each(|s| self.string(s))
    }

    /// Runs `write`, which writes bytes, and marks the archive failed if it fails.
    fn guarded<T>(
        &mut self,
        write: impl FnOnce(&mut Self) -> Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        if self.failed {
            return Err(WriteError::Failed);
        }
        let result = write(self);
        self.failed = result.is_err();
        result
    }

    /// Copies exactly `size` bytes of `contents`, then the padding.
    fn contents(&mut self, size: u64, contents: &mut dyn Read) -> Result<(), WriteError> {
        let mut buf = vec![0u8; size.min(64 * 1024) as usize];
        let mut done = 0u64;
        while done < size {
            let want = (size - done).min(buf.len() as u64) as usize;
            let n = match contents.read(&mut buf[..want]) {
                Ok(0) => return Err(WriteError::ShortContents { expected: size, got: done }),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(WriteError::ContentsRead(e)),
            };
            self.bytes(&buf[..n])?;
            done += n as u64;
        }
        self.padding(size)
    }
}

/// The sink of the root node is owned; a child borrows its parent's.
enum SinkRef<'a, 'w> {
    Owned(Sink<'w>),
    Borrowed(&'a mut Sink<'w>),
}

impl<'w> Deref for SinkRef<'_, 'w> {
    type Target = Sink<'w>;
    fn deref(&self) -> &Sink<'w> {
        match self {
            SinkRef::Owned(sink) => sink,
            SinkRef::Borrowed(sink) => sink,
        }
    }
}

impl<'w> DerefMut for SinkRef<'_, 'w> {
    fn deref_mut(&mut self) -> &mut Sink<'w> {
        match self {
            SinkRef::Owned(sink) => sink,
            SinkRef::Borrowed(sink) => sink,
        }
    }
}

/// Starts a NAR on `out`: writes the magic and returns the root node.
///
/// The archive is complete once the root node is written: when [`Node::file`] or
/// [`Node::symlink`] returns `Ok`, or when the root [`Directory::close`] does. Dropping the
/// root unwritten leaves a truncated archive behind, which is how a caller gives up.
pub fn open<'w>(out: &'w mut dyn Write) -> Result<Node<'w, 'w>, WriteError> {
    let mut sink = Sink { out, failed: false, pending_node: false, open_dirs: 0 };
    sink.guarded(|s| s.string(format::MAGIC))?;
    Ok(Node { sink: SinkRef::Owned(sink), path_len: 0 })
}

/// A place in the archive that must be filled with exactly one file, symlink or directory.
#[must_use = "a node must be written, or the archive is incomplete"]
pub struct Node<'a, 'w> {
    sink: SinkRef<'a, 'w>,
    /// The length of this node's path inside the NAR; 0 for the root.
    path_len: usize,
}

impl<'a, 'w> Node<'a, 'w> {
    /// Writes a regular file of `size` bytes, copied from `contents`.
    ///
    /// Reads exactly `size` bytes, no more; fails with [`WriteError::ShortContents`] if
    /// `contents` ends before. Only the executable bit is recorded, as in Nix.
    pub fn file(
        mut self,
        executable: bool,
        size: u64,
        contents: &mut dyn Read,
    ) -> Result<(), WriteError> {
        self.sink.guarded(|s| {
            s.strings(&[format::OPEN, format::TYPE, format::REGULAR])?;
            if executable {
                s.strings(&[format::EXECUTABLE, b""])?;
            }
            s.string(format::CONTENTS)?;
            nix_daemon::write_u64(s.out, size).map_err(WriteError::Io)?;
            s.contents(size, contents)?;
            s.string(format::CLOSE)?;
            s.pending_node = false;
            Ok(())
        })
    }

    /// Writes a symlink to `target`, which must be non-empty, without NUL bytes, and at most
    /// [`MAX_TARGET_LEN`](super::MAX_TARGET_LEN) bytes long. It is not resolved or checked
    /// for existence: dangling and absolute targets are as valid as in Nix.
    pub fn symlink(mut self, target: &[u8]) -> Result<(), WriteError> {
        format::check_target(target).map_err(WriteError::InvalidTarget)?;
        self.sink.guarded(|s| {
            s.strings(&[format::OPEN, format::TYPE, format::SYMLINK, format::TARGET, target])?;
            s.string(format::CLOSE)?;
            s.pending_node = false;
            Ok(())
        })
    }

    /// Starts a directory; write its entries with [`Directory::entry`], then
    /// [`Directory::close`] it.
    pub fn directory(mut self) -> Result<Directory<'a, 'w>, WriteError> {
        self.sink.guarded(|s| {
            s.strings(&[format::OPEN, format::TYPE, format::DIRECTORY])?;
            s.pending_node = false;
            s.open_dirs += 1;
            Ok(())
        })?;
        let depth = self.sink.open_dirs;
        Ok(Directory { sink: self.sink, path_len: self.path_len, depth, prev_name: Vec::new() })
    }
}

/// An open directory; entries must be written in strictly increasing bytewise order of name.
#[must_use = "a directory must be closed, or the archive is incomplete"]
pub struct Directory<'a, 'w> {
    sink: SinkRef<'a, 'w>,
    path_len: usize,
    /// How many directories are open, this one included, while this one is innermost.
    depth: usize,
    /// The last entry's name; empty before the first (names are never empty).
    prev_name: Vec<u8>,
}

impl<'w> Directory<'_, 'w> {
    /// Adds an entry called `name` and returns its node, which must be written before the
    /// next call on this directory.
    ///
    /// `name` must follow Nix's rules (not empty, not `.` or `..`, no `/` or NUL, at most
    /// [`MAX_NAME_LEN`](super::MAX_NAME_LEN) bytes) and sort strictly after the previous
    /// entry's name, bytewise; these are checked before anything is written.
    pub fn entry(&mut self, name: &[u8]) -> Result<Node<'_, 'w>, WriteError> {
        format::check_name(name)
            .map_err(|reason| WriteError::InvalidName { name: name.to_vec(), reason })?;
        if !self.prev_name.is_empty() && name <= &self.prev_name[..] {
            return Err(if name == &self.prev_name[..] {
                WriteError::DuplicateName { name: name.to_vec() }
            } else {
                WriteError::NotSorted { prev: self.prev_name.clone(), name: name.to_vec() }
            });
        }
        let path_len = format::child_path_len(self.path_len, name.len());
        if path_len > MAX_PATH_LEN {
            return Err(WriteError::PathTooLong { len: path_len });
        }
        self.finish_previous()?;
        let had_entry = !self.prev_name.is_empty();
        self.sink.guarded(|s| {
            if had_entry {
                s.string(format::CLOSE)?;
            }
            s.strings(&[format::ENTRY, format::OPEN, format::NAME, name, format::NODE])?;
            s.pending_node = true;
            Ok(())
        })?;
        self.prev_name.clear();
        self.prev_name.extend_from_slice(name);
        Ok(Node { sink: SinkRef::Borrowed(&mut self.sink), path_len })
    }

    /// Ends the directory. For the root directory, this completes the archive.
    pub fn close(mut self) -> Result<(), WriteError> {
        self.finish_previous()?;
        let had_entry = !self.prev_name.is_empty();
        self.sink.guarded(|s| {
            if had_entry {
                s.string(format::CLOSE)?;
            }
            s.string(format::CLOSE)?;
            s.open_dirs -= 1;
            Ok(())
        })
    }

    /// Fails, and fails the archive, if the last entry's node was not completely written.
    fn finish_previous(&mut self) -> Result<(), WriteError> {
        let depth = self.depth;
        self.sink.guarded(|s| {
            if s.pending_node || s.open_dirs != depth {
                return Err(WriteError::UnfinishedEntry);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NAR of a tree written by `build`, or the first error.
    fn nar(
        build: impl FnOnce(Node<'_, '_>) -> Result<(), WriteError>,
    ) -> Result<Vec<u8>, WriteError> {
        let mut out = Vec::new();
        build(open(&mut out)?)?;
        Ok(out)
    }

    fn s(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        nix_daemon::put_bytes(&mut out, bytes);
        out
    }

    fn strings(items: &[&[u8]]) -> Vec<u8> {
        items.iter().flat_map(|i| s(i)).collect()
    }

    #[test]
    fn single_file_matches_the_grammar() {
        let got = nar(|n| n.file(true, 3, &mut &b"hi\n"[..])).unwrap();
        let want = strings(&[
            b"nix-archive-1",
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"",
            b"contents",
            b"hi\n",
            b")",
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn directory_matches_the_grammar() {
        let got = nar(|n| {
            let mut d = n.directory()?;
            d.entry(b"a")?.symlink(b"b")?;
            d.entry(b"b")?.directory()?.close()?;
            d.close()
        })
        .unwrap();
        let mut want = strings(&[b"nix-archive-1", b"(", b"type", b"directory"]);
        want.extend(strings(&[b"entry", b"(", b"name", b"a", b"node"]));
        want.extend(strings(&[b"(", b"type", b"symlink", b"target", b"b", b")", b")"]));
        want.extend(strings(&[b"entry", b"(", b"name", b"b", b"node"]));
        want.extend(strings(&[b"(", b"type", b"directory", b")", b")", b")"]));
        assert_eq!(got, want);
    }

    #[test]
    fn file_reads_exactly_size_bytes() {
        let mut contents = &b"abcdef"[..];
        let got = nar(|n| n.file(false, 4, &mut contents)).unwrap();
        assert_eq!(contents, b"ef");
        assert!(got.windows(8).any(|w| w == b"abcd\0\0\0\0"));
    }

    #[test]
    fn short_contents_fail_the_archive() {
        let mut out = Vec::new();
        let mut d = open(&mut out).unwrap().directory().unwrap();
        let err = d.entry(b"f").unwrap().file(false, 10, &mut &b"abc"[..]).unwrap_err();
        assert!(matches!(err, WriteError::ShortContents { expected: 10, got: 3 }), "{err}");
        assert!(matches!(d.entry(b"g"), Err(WriteError::Failed)));
        assert!(matches!(d.close(), Err(WriteError::Failed)));
    }

    #[test]
    fn names_are_checked_before_writing() {
        let mut out = Vec::new();
        let mut d = open(&mut out).unwrap().directory().unwrap();
        for (name, reason) in [
            (&b""[..], NameError::Empty),
            (b".", NameError::Dot),
            (b"..", NameError::Dot),
            (b"a/b", NameError::Slash),
            (b"a\0b", NameError::Nul),
            (&[b'x'; 256], NameError::TooLong(256)),
        ] {
            match d.entry(name) {
                Err(WriteError::InvalidName { reason: r, .. }) => assert_eq!(r, reason),
                other => panic!("{:?} accepted: {:?}", name.escape_ascii(), other.is_ok()),
            }
        }
        d.entry(b"b").unwrap().symlink(b"x").unwrap();
        assert!(matches!(d.entry(b"b"), Err(WriteError::DuplicateName { .. })));
        assert!(matches!(d.entry(b"a"), Err(WriteError::NotSorted { .. })));
        assert!(matches!(d.entry(b"B"), Err(WriteError::NotSorted { .. })));
        // Refused names leave the archive intact.
        d.entry(b"c").unwrap().symlink(b"x").unwrap();
        d.close().unwrap();
        let clean = nar(|n| {
            let mut d = n.directory()?;
            d.entry(b"b")?.symlink(b"x")?;
            d.entry(b"c")?.symlink(b"x")?;
            d.close()
        })
        .unwrap();
        assert_eq!(out, clean);
    }

    #[test]
    fn bad_targets_are_refused() {
        for target in [&b""[..], b"a\0", &[b'x'; 4096]] {
            assert!(matches!(nar(|n| n.symlink(target)), Err(WriteError::InvalidTarget(_))));
        }
    }

    #[test]
    fn dropped_node_is_an_error() {
        let mut out = Vec::new();
        let mut d = open(&mut out).unwrap().directory().unwrap();
        drop(d.entry(b"a").unwrap());
        assert!(matches!(d.entry(b"b"), Err(WriteError::UnfinishedEntry)));
        assert!(matches!(d.close(), Err(WriteError::Failed)));
    }

    #[test]
    fn unclosed_subdirectory_is_an_error() {
        let mut out = Vec::new();
        let mut d = open(&mut out).unwrap().directory().unwrap();
        {
            let mut sub = d.entry(b"a").unwrap().directory().unwrap();
            sub.entry(b"x").unwrap().symlink(b"y").unwrap();
        }
        assert!(matches!(d.close(), Err(WriteError::UnfinishedEntry)));
    }

    /// Nests `levels` directories named with 255 bytes, then adds `last` as a symlink.
    fn nest(dir: &mut Directory<'_, '_>, levels: usize, last: &[u8]) -> Result<(), WriteError> {
        if levels == 0 {
            return dir.entry(last)?.symlink(b"x");
        }
        let mut sub = dir.entry(&[b'n'; 255])?.directory()?;
        nest(&mut sub, levels - 1, last)?;
        sub.close()
    }

    #[test]
    fn path_length_is_bounded() {
        // 15 levels are 15 * 256 - 1 = 3839 bytes; a 255-byte name brings it to 4095.
        nar(|n| {
            let mut d = n.directory()?;
            nest(&mut d, 15, &[b'y'; 255])?;
            d.close()
        })
        .unwrap();
        // 16 levels are 4095 bytes already, so nothing fits inside.
        let err = nar(|n| {
            let mut d = n.directory()?;
            nest(&mut d, 16, b"x")?;
            d.close()
        })
        .unwrap_err();
        assert!(matches!(err, WriteError::PathTooLong { len: 4097 }), "{err}");
    }

    #[test]
    fn write_errors_are_reported_and_fail_the_archive() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Broken;
        assert!(matches!(open(&mut out), Err(WriteError::Io(_))));
    }
}
