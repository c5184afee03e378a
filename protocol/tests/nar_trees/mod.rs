//! Trees for the NAR tests: the golden trees, random trees, and the ways between a tree, the
//! file system and a NAR (our writer, a small file-system dumper, our reader).
//!
//! Shared by `protocol/tests/nar_*.rs` and, through `#[path]`, by the live test
//! `tests/tests/formats_nar.rs`, so that the tree `nix-store --dump` sees is the one our
//! writer is fed.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nixmesh_protocol::nar::{self, Event, NarError, NarParser, WriteError};

/// A file system object as a NAR sees it. Entries sort bytewise, as `BTreeMap<Vec<u8>, _>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tree {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Directory(Entries),
}

/// A directory's entries by name.
pub type Entries = BTreeMap<Vec<u8>, Tree>;

fn file(contents: &[u8]) -> Tree {
    Tree::File { executable: false, contents: contents.to_vec() }
}

fn executable(contents: &[u8]) -> Tree {
    Tree::File { executable: true, contents: contents.to_vec() }
}

fn symlink(target: &str) -> Tree {
    Tree::Symlink(target.as_bytes().to_vec())
}

fn dir<const N: usize>(entries: [(&[u8], Tree); N]) -> Tree {
    Tree::Directory(entries.into_iter().map(|(name, tree)| (name.to_vec(), tree)).collect())
}

/// A store path that need not exist: symlinks into the store are dumped, never followed.
const STORE_TARGET: &str = "/nix/store/00000000000000000000000000000000-example";

/// The trees behind `protocol/tests/data/nar/<name>.nar`, by name.
pub fn golden_trees() -> Vec<(&'static str, Tree)> {
    // 1025 bytes: every byte value, four times over, and one more (odd padding).
    let all_bytes: Vec<u8> = (0..1025u32).map(|i| (i % 256) as u8).collect();
    let complex = dir([
        // Bytewise order puts "-" < "." < upper case < "a" < "a-b" < "a.b" < non-ASCII.
        (b"-dash", file(b"dash\n")),
        (b"...", file(b"three dots are a valid name\n")),
        (b".hidden", file(b"hidden\n")),
        (b"B", file(b"capital B\n")),
        (b"a", file(b"a\n")),
        (b"a-b", file(b"12345678")),
        (b"a.b", dir([(b"empty", file(b""))])),
        (
            b"bin",
            dir([
                (b"empty-exec", executable(b"")),
                (b"hello", executable(b"#!/bin/sh\necho hello\n")),
            ]),
        ),
        // Latin-1 "café": not UTF-8; names are bytes.
        (b"caf\xe9", file(b"latin-1 name\n")),
        (b"data", file(&all_bytes)),
        (b"deep", dir([(b"1", dir([(b"2", dir([(b"3", dir([(b"leaf", file(b"deep\n"))]))]))]))])),
        (b"empty-dir", dir([])),
        (b"empty-file", file(b"")),
        (b"link-abs", Tree::Symlink(format!("{STORE_TARGET}/bin/example").into_bytes())),
        (b"link-dangling", symlink("does/not/exist")),
        (b"link-dir", symlink("deep/1")),
        (b"link-parent", symlink("../outside")),
        (b"link-rel", symlink("bin/hello")),
        (&[b'n'; 255], file(b"the longest name Linux allows\n")),
        (b"with space", file(b"space\n")),
        ("ä".as_bytes(), file("umlaut ä\n".as_bytes())),
        ("日本語".as_bytes(), dir([("ファイル".as_bytes(), file("こんにちは\n".as_bytes()))])),
    ]);
    vec![
        ("complex", complex),
        ("file", file(b"hello, world\n")),
        ("executable", executable(b"#!/bin/sh\nexit 0\n")),
        ("symlink", symlink(STORE_TARGET)),
        ("empty-file", file(b"")),
        ("empty-dir", dir([])),
    ]
}

/// The NAR of `tree`, from our writer.
pub fn write_nar(tree: &Tree) -> Vec<u8> {
    let mut out = Vec::new();
    write_node(nar::writer::open(&mut out).unwrap(), tree).unwrap();
    out
}

pub fn write_node(node: nar::Node<'_, '_>, tree: &Tree) -> Result<(), WriteError> {
    match tree {
        Tree::File { executable, contents } => {
            node.file(*executable, contents.len() as u64, &mut &contents[..])
        }
        Tree::Symlink(target) => node.symlink(target),
        Tree::Directory(entries) => {
            let mut dir = node.directory()?;
            for (name, tree) in entries {
                write_node(dir.entry(name)?, tree)?;
            }
            dir.close()
        }
    }
}

/// Creates `tree` at `path`, which must not exist.
pub fn materialise(tree: &Tree, path: &Path) -> io::Result<()> {
    match tree {
        Tree::File { executable, contents } => {
            fs::write(path, contents)?;
            let mode = if *executable { 0o755 } else { 0o644 };
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
        }
        Tree::Symlink(target) => std::os::unix::fs::symlink(OsStr::from_bytes(target), path),
        Tree::Directory(entries) => {
            fs::create_dir(path)?;
            for (name, tree) in entries {
                materialise(tree, &path.join(OsStr::from_bytes(name)))?;
            }
            Ok(())
        }
    }
}

/// Reads the tree at `path` back, as a NAR would record it (executable = owner's x bit).
pub fn read_fs(path: &Path) -> io::Result<Tree> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        Ok(Tree::Symlink(fs::read_link(path)?.as_os_str().as_bytes().to_vec()))
    } else if meta.is_file() {
        Ok(Tree::File { executable: meta.mode() & 0o100 != 0, contents: fs::read(path)? })
    } else if meta.is_dir() {
        let mut entries = BTreeMap::new();
        for entry in fs::read_dir(path)? {
            let entry = entry?;
            entries.insert(entry.file_name().as_bytes().to_vec(), read_fs(&entry.path())?);
        }
        Ok(Tree::Directory(entries))
    } else {
        Err(io::Error::other(format!("{}: not a file, symlink or directory", path.display())))
    }
}

/// Dumps the file system object at `path` with our writer, streaming file contents from disk:
/// the test-only counterpart of `nix-store --dump`.
pub fn dump_fs(path: &Path, node: nar::Node<'_, '_>) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        node.symlink(fs::read_link(path)?.as_os_str().as_bytes())?;
    } else if meta.is_file() {
        let mut file = fs::File::open(path)?;
        node.file(meta.mode() & 0o100 != 0, meta.len(), &mut file)?;
    } else if meta.is_dir() {
        let mut names: Vec<Vec<u8>> = fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
            .collect::<io::Result<_>>()?;
        names.sort();
        let mut dir = node.directory()?;
        for name in names {
            dump_fs(&path.join(OsStr::from_bytes(&name)), dir.entry(&name)?)?;
        }
        dir.close()?;
    } else {
        return Err(io::Error::other(format!("{}: cannot be put in a NAR", path.display())));
    }
    Ok(())
}

/// The NAR of the file system object at `path`, from [`dump_fs`].
pub fn dump_fs_to_vec(path: &Path) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    dump_fs(path, nar::writer::open(&mut out)?)?;
    Ok(out)
}

/// Builds a [`Tree`] from a parser's events, checking that they are consistent.
#[derive(Default)]
struct TreeBuilder {
    /// Open directories: name and entries so far.
    dirs: Vec<(Vec<u8>, Entries)>,
    /// The open file: name, executable, announced size, contents so far.
    file: Option<(Vec<u8>, bool, u64, Vec<u8>)>,
    root: Option<Tree>,
}

fn last_component(path: &[u8]) -> Vec<u8> {
    path.rsplit(|&b| b == b'/').next().unwrap().to_vec()
}

impl TreeBuilder {
    fn add(&mut self, name: Vec<u8>, tree: Tree) {
        match self.dirs.last_mut() {
            Some((_, entries)) => assert!(entries.insert(name, tree).is_none(), "duplicate"),
            None => assert!(self.root.replace(tree).is_none(), "two roots"),
        }
    }

    fn event(&mut self, event: Event<'_>) {
        match event {
            Event::DirectoryStart { path } => {
                self.dirs.push((last_component(path), BTreeMap::new()))
            }
            Event::DirectoryEnd { path } => {
                let (name, entries) = self.dirs.pop().expect("directory end without start");
                assert_eq!(name, last_component(path));
                self.add(name, Tree::Directory(entries));
            }
            Event::FileStart { path, executable, size, .. } => {
                assert!(self.file.is_none());
                self.file = Some((last_component(path), executable, size, Vec::new()));
            }
            Event::FileData(data) => {
                self.file.as_mut().expect("data outside a file").3.extend(data)
            }
            Event::FileEnd { path } => {
                let (name, executable, size, contents) = self.file.take().expect("file end");
                assert_eq!(name, last_component(path));
                assert_eq!(size, contents.len() as u64);
                self.add(name, Tree::File { executable, contents });
            }
            Event::Symlink { path, target } => {
                self.add(last_component(path), Tree::Symlink(target.to_vec()))
            }
        }
    }
}

/// Parses `nar` with our reader, pushing it in chunks of the sizes `chunk` returns.
pub fn parse_nar(nar: &[u8], mut chunk: impl FnMut() -> usize) -> Result<Tree, NarError> {
    let mut parser = NarParser::new();
    let mut builder = TreeBuilder::default();
    let mut rest = nar;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(chunk().clamp(1, rest.len()));
        parser.push(piece, |e| builder.event(e))?;
        rest = tail;
    }
    parser.finish()?;
    assert!(builder.dirs.is_empty() && builder.file.is_none());
    Ok(builder.root.expect("a finished NAR has a root"))
}

/// A small deterministic generator (SplitMix64), so trees are the same on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Name pieces that make bytewise order interesting: case, punctuation, UTF-8, non-UTF-8.
const NAME_PIECES: &[&[u8]] =
    &[b"a", b"b", b"B", b"-", b".", b"_", b" ", b"0", "ä".as_bytes(), "é".as_bytes(), b"\xff"];

fn random_name(rng: &mut Rng) -> Vec<u8> {
    loop {
        let mut name = Vec::new();
        for _ in 0..1 + rng.below(4) {
            name.extend_from_slice(NAME_PIECES[rng.below(NAME_PIECES.len())]);
        }
        if name != b"." && name != b".." {
            return name;
        }
    }
}

fn random_leaf(rng: &mut Rng) -> Tree {
    match rng.below(3) {
        0 => {
            let targets = ["a", "../a", "b/c", STORE_TARGET, "/etc/hostname", "dangling ä"];
            symlink(targets[rng.below(targets.len())])
        }
        _ => {
            // Sizes around the padding boundaries, and some larger ones.
            let len = match rng.below(4) {
                0 => rng.below(17),
                1 => 8 * rng.below(5),
                _ => rng.below(3000),
            };
            Tree::File { executable: rng.below(3) == 0, contents: rng.bytes(len) }
        }
    }
}

/// A random tree of at most about `budget` nodes and depth 5.
pub fn random_tree(rng: &mut Rng, budget: usize) -> Tree {
    let mut budget = budget;
    random_node(rng, &mut budget, 0)
}

fn random_node(rng: &mut Rng, budget: &mut usize, depth: usize) -> Tree {
    *budget = budget.saturating_sub(1);
    let leaf = match depth {
        0 => rng.below(8) == 0,
        _ => rng.below(3) != 0,
    };
    if depth >= 5 || *budget == 0 || leaf {
        return random_leaf(rng);
    }
    let mut entries = BTreeMap::new();
    for _ in 0..rng.below(7) {
        if *budget == 0 {
            break;
        }
        let child = random_node(rng, budget, depth + 1);
        entries.insert(random_name(rng), child);
    }
    Tree::Directory(entries)
}
