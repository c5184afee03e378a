//! A NAR's listing: the JSON Nix writes beside a NAR as `<hash>.ls` (`nix copy --to
//! 'file://…?write-nar-listing=true'`), which says what the archive holds, and where each
//! regular file's contents start in it (`narOffset`), without the archive.
//!
//! ```text
//! {"version":1,"root":{"type":"directory","entries":{
//!   "bin":{"type":"directory","entries":{"hello":{"type":"regular","size":21,"executable":true,"narOffset":2160}}},
//!   "link":{"type":"symlink","target":"bin/hello"}}}}
//! ```
//!
//! Rendered exactly as Nix 2.8 renders it (`listNar` over `JSONWriter`, checked against golden
//! files in `protocol/tests/data/ls/`): no white space; keys in the order above, `executable`
//! only when set; entries sorted bytewise; strings with `"`, `\`, `\n`, `\r`, `\t` escaped,
//! the other bytes below 0x20 as `\u00XX`, and every other byte as it is (a name that is not
//! UTF-8 stays so, as Nix writes it).
//!
//! A listing comes from a tree whose file contents are not read ([`Listing::with_nar_offsets`]
//! counts where they would fall in the NAR), or from a NAR as it streams by
//! ([`ListingCollector`], fed the reader's events). Both are bounded: at most
//! [`MAX_LISTING_ENTRIES`] objects, and the text at most [`MAX_LISTING_LEN`] bytes.

use thiserror::Error;

use super::format::{self, padding_len};
use super::reader::Event;

/// The most file system objects (files, symlinks, directories) a listing holds. Far above
/// any package's (a whole TeX Live is some 200,000), low enough that a listing's tree fits in
/// memory a few times over.
pub const MAX_LISTING_ENTRIES: usize = 1_000_000;
/// The longest listing text a node makes, sends or accepts.
pub const MAX_LISTING_LEN: usize = 64 << 20;

/// One file system object of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A regular file: its size, its executable bit, and where its contents start in the NAR.
    Regular { size: u64, executable: bool, nar_offset: u64 },
    /// A symlink and its target, as it is (not resolved).
    Symlink { target: Vec<u8> },
    /// A directory's entries by name, sorted bytewise once in a [`Listing`].
    Directory { entries: Entries },
}

/// A directory's entries: each name and what it is.
pub type Entries = Vec<(Vec<u8>, Entry)>;

/// Why a listing could not be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ListingError {
    #[error("the listing would hold more than {MAX_LISTING_ENTRIES} entries")]
    TooManyEntries,
    #[error("the NAR's events are out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("the NAR ended before its root was complete")]
    Incomplete,
}

/// A NAR's listing, with the `narOffset` of every regular file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    root: Entry,
}

/// The bytes a NAR string of `len` bytes takes: its length, itself, its padding.
fn string_len(len: usize) -> u64 {
    8 + len as u64 + padding_len(len as u64) as u64
}

/// The bytes of the tokens in `tokens`, as NAR strings.
fn tokens_len(tokens: &[&[u8]]) -> u64 {
    tokens.iter().map(|t| string_len(t.len())).sum()
}

impl Listing {
    /// The listing of the NAR of `root`, whose `nar_offset`s are ignored and computed here
    /// from the sizes, names and targets alone: where each file's contents start in the NAR
    /// Nix makes of the tree. Directory entries are sorted bytewise, as in the NAR.
    pub fn with_nar_offsets(mut root: Entry) -> Listing {
        let start = string_len(format::MAGIC.len());
        place(&mut root, start);
        Listing { root }
    }

    /// The root object.
    pub fn root(&self) -> &Entry {
        &self.root
    }

    /// The listing as Nix writes it (see the module docs).
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"version\":1,\"root\":");
        render_entry(&mut out, &self.root);
        out.push(b'}');
        out
    }
}

/// Sets the offsets of `entry`'s files as if it were written into a NAR at `pos`, and
/// returns the position after it.
fn place(entry: &mut Entry, mut pos: u64) -> u64 {
    use format::{CLOSE, CONTENTS, DIRECTORY, ENTRY, EXECUTABLE, NAME, NODE, OPEN, REGULAR};
    use format::{SYMLINK, TARGET, TYPE};
    match entry {
        Entry::Regular { size, executable, nar_offset } => {
            pos += tokens_len(&[OPEN, TYPE, REGULAR]);
            if *executable {
                pos += tokens_len(&[EXECUTABLE, b""]);
            }
            pos += tokens_len(&[CONTENTS]) + 8;
            *nar_offset = pos;
            pos + *size + padding_len(*size) as u64 + tokens_len(&[CLOSE])
        }
        Entry::Symlink { target } => {
            pos + tokens_len(&[OPEN, TYPE, SYMLINK, TARGET, target, CLOSE])
        }
        Entry::Directory { entries } => {
            entries.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
            pos += tokens_len(&[OPEN, TYPE, DIRECTORY]);
            for (name, child) in entries {
                pos += tokens_len(&[ENTRY, OPEN, NAME, name, NODE]);
                pos = place(child, pos) + tokens_len(&[CLOSE]);
            }
            pos + tokens_len(&[CLOSE])
        }
    }
}

fn render_entry(out: &mut Vec<u8>, entry: &Entry) {
    match entry {
        Entry::Regular { size, executable, nar_offset } => {
            out.extend_from_slice(format!("{{\"type\":\"regular\",\"size\":{size}").as_bytes());
            if *executable {
                out.extend_from_slice(b",\"executable\":true");
            }
            // Nix leaves out an offset of 0, which no file's contents can have.
            if *nar_offset != 0 {
                out.extend_from_slice(format!(",\"narOffset\":{nar_offset}").as_bytes());
            }
            out.push(b'}');
        }
        Entry::Symlink { target } => {
            out.extend_from_slice(b"{\"type\":\"symlink\",\"target\":");
            render_string(out, target);
            out.push(b'}');
        }
        Entry::Directory { entries } => {
            out.extend_from_slice(b"{\"type\":\"directory\",\"entries\":{");
            for (i, (name, child)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                render_string(out, name);
                out.push(b':');
                render_entry(out, child);
            }
            out.extend_from_slice(b"}}");
        }
    }
}

/// A JSON string as Nix 2.8's `toJSON` writes one: bytes, not characters.
fn render_string(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in bytes {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..0x20 => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Collects a listing from a NAR's events ([`super::NarParser`]) as they come, keeping
/// nothing of the file contents.
#[derive(Debug, Default)]
pub struct ListingCollector {
    /// The directories open, outermost first: each one's name and the entries so far.
    open: Vec<(Vec<u8>, Entries)>,
    root: Option<Entry>,
    entries: usize,
}

/// The last component of a path inside a NAR (empty for the root).
fn base_name(path: &[u8]) -> &[u8] {
    path.rsplit(|&b| b == b'/').next().unwrap_or(path)
}

impl ListingCollector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next event of the NAR.
    pub fn event(&mut self, event: &Event<'_>) -> Result<(), ListingError> {
        let (path, entry) = match *event {
            Event::DirectoryStart { path } => {
                self.count()?;
                self.open.push((base_name(path).to_vec(), Vec::new()));
                return Ok(());
            }
            Event::DirectoryEnd { .. } => {
                let (name, entries) =
                    self.open.pop().ok_or(ListingError::OutOfOrder("a directory closed twice"))?;
                return self.add(name, Entry::Directory { entries });
            }
            Event::FileStart { path, executable, size, contents_offset } => {
                (path, Entry::Regular { size, executable, nar_offset: contents_offset })
            }
            Event::Symlink { path, target } => (path, Entry::Symlink { target: target.to_vec() }),
            Event::FileData(_) | Event::FileEnd { .. } => return Ok(()),
        };
        self.count()?;
        self.add(base_name(path).to_vec(), entry)
    }

    fn count(&mut self) -> Result<(), ListingError> {
        self.entries += 1;
        if self.entries > MAX_LISTING_ENTRIES {
            return Err(ListingError::TooManyEntries);
        }
        Ok(())
    }

    fn add(&mut self, name: Vec<u8>, entry: Entry) -> Result<(), ListingError> {
        match self.open.last_mut() {
            Some((_, entries)) => entries.push((name, entry)),
            None if self.root.is_none() => self.root = Some(entry),
            None => return Err(ListingError::OutOfOrder("a second root")),
        }
        Ok(())
    }

    /// The listing, once the NAR has ended.
    pub fn finish(self) -> Result<Listing, ListingError> {
        match (self.root, self.open.is_empty()) {
            // The reader gives entries in the NAR's (sorted) order and offsets as they are.
            (Some(root), true) => Ok(Listing { root }),
            _ => Err(ListingError::Incomplete),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::{self, NarParser};

    fn file(size: u64, executable: bool) -> Entry {
        Entry::Regular { size, executable, nar_offset: 0 }
    }

    /// A tree written with the NAR writer, then read back into a listing.
    fn listing_of_nar(nar: &[u8]) -> Listing {
        let mut parser = NarParser::new();
        let mut collector = ListingCollector::new();
        let mut failed = None;
        parser
            .push(nar, |e| {
                if let Err(err) = collector.event(&e) {
                    failed = Some(err);
                }
            })
            .unwrap();
        parser.finish().unwrap();
        assert_eq!(failed, None);
        collector.finish().unwrap()
    }

    fn write(entry: &Entry, node: nar::Node<'_, '_>) {
        match entry {
            Entry::Regular { size, executable, .. } => {
                node.file(*executable, *size, &mut std::io::repeat(7)).unwrap()
            }
            Entry::Symlink { target } => node.symlink(target).unwrap(),
            Entry::Directory { entries } => {
                let mut dir = node.directory().unwrap();
                let mut sorted: Vec<_> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(&b.0));
                for (name, child) in sorted {
                    write(child, dir.entry(name).unwrap());
                }
                dir.close().unwrap();
            }
        }
    }

    #[test]
    fn offsets_counted_agree_with_the_nar_written() {
        let tree = Entry::Directory {
            entries: vec![
                (b"z".to_vec(), file(0, false)),
                (b"a".to_vec(), file(13, true)),
                (b"link".to_vec(), Entry::Symlink { target: b"a/b/c/d/e/f/g/h/i".to_vec() }),
                (
                    b"dir with a long name, longer than 16".to_vec(),
                    Entry::Directory {
                        entries: vec![
                            (b"x".to_vec(), file(8, false)),
                            (b"y".to_vec(), file(9, true)),
                        ],
                    },
                ),
                (b"empty".to_vec(), Entry::Directory { entries: vec![] }),
            ],
        };
        let mut bytes = Vec::new();
        write(&tree, nar::writer::open(&mut bytes).unwrap());
        assert_eq!(Listing::with_nar_offsets(tree), listing_of_nar(&bytes));
    }

    #[test]
    fn strings_are_escaped_as_nix_escapes_them() {
        let mut out = Vec::new();
        render_string(&mut out, b"a\"b\\c\nd\re\tf\x01g\x1f\x7f\xe9\xc3\xa4");
        assert_eq!(out, b"\"a\\\"b\\\\c\\nd\\re\\tf\\u0001g\\u001f\x7f\xe9\xc3\xa4\"");
    }

    #[test]
    fn a_lone_file_at_the_root() {
        let listing = Listing::with_nar_offsets(file(13, false));
        assert_eq!(
            listing.render(),
            br#"{"version":1,"root":{"type":"regular","size":13,"narOffset":96}}"#
        );
    }

    #[test]
    fn events_out_of_order_are_errors_not_panics() {
        let mut collector = ListingCollector::new();
        assert!(collector.event(&Event::DirectoryEnd { path: b"" }).is_err());
        let mut collector = ListingCollector::new();
        collector.event(&Event::DirectoryStart { path: b"" }).unwrap();
        assert_eq!(collector.finish(), Err(ListingError::Incomplete));
        let mut collector = ListingCollector::new();
        collector.event(&Event::Symlink { path: b"", target: b"x" }).unwrap();
        assert!(collector.event(&Event::Symlink { path: b"", target: b"y" }).is_err());
    }
}
