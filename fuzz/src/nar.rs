//! The NAR reader (`NarParser`, `NarValidator`, `validate`): NARs come from peers, and from
//! the daemon, byte by byte as the network delivers them.
//!
//! The input is a cutting plan and a NAR: the reader is fed the NAR whole and again in the
//! pieces the plan says, and must tell the same story both times (the same events, the same
//! first error at the same offset): where a network packet ends must change nothing. An
//! accepted NAR has one encoding, so writing the tree its events describe with the NAR
//! writer gives back the very same bytes, and its listing read from the events is the one
//! counted from the tree alone; an error points inside the input.

use nixmesh_protocol::nar::listing::{Entry, Listing, ListingCollector};
use nixmesh_protocol::nar::{self, Event, NarError, NarParser};

/// What the reader said about a NAR: its events, owned, with consecutive file data joined
/// (chunking may split it anywhere), and how it ended.
#[derive(Debug, Default, PartialEq, Eq)]
struct Story {
    events: Vec<Seen>,
    end: Option<Result<u64, NarError>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    DirectoryStart(Vec<u8>),
    DirectoryEnd(Vec<u8>),
    FileStart { path: Vec<u8>, executable: bool, size: u64, contents_offset: u64 },
    FileData(Vec<u8>),
    FileEnd(Vec<u8>),
    Symlink { path: Vec<u8>, target: Vec<u8> },
}

impl Story {
    fn record(&mut self, event: Event<'_>) {
        let seen = match event {
            Event::FileData(data) => {
                if let Some(Seen::FileData(so_far)) = self.events.last_mut() {
                    so_far.extend_from_slice(data);
                    return;
                }
                Seen::FileData(data.to_vec())
            }
            Event::DirectoryStart { path } => Seen::DirectoryStart(path.to_vec()),
            Event::DirectoryEnd { path } => Seen::DirectoryEnd(path.to_vec()),
            Event::FileStart { path, executable, size, contents_offset } => {
                Seen::FileStart { path: path.to_vec(), executable, size, contents_offset }
            }
            Event::FileEnd { path } => Seen::FileEnd(path.to_vec()),
            Event::Symlink { path, target } => {
                Seen::Symlink { path: path.to_vec(), target: target.to_vec() }
            }
        };
        self.events.push(seen);
    }
}

pub fn check(data: &[u8]) {
    let Some((&plan, nar)) = data.split_first() else { return };
    let whole = read(nar, &[nar.len()], false);
    let sizes = piece_sizes(plan);
    let cut = read(nar, &sizes, plan & 0x80 != 0);
    assert_eq!(whole, cut, "cut into pieces of {sizes:?}, the NAR read differently");

    let end = whole.end.expect("read always ends");
    assert_eq!(nar::validate(nar), end, "validate disagrees with the parser");
    match end {
        Ok(size) => {
            assert_eq!(size, nar.len() as u64);
            check_file_offsets(nar, &whole.events);
            check_listing(&whole.events);
            assert_eq!(rewrite(&whole.events), nar, "the tree read back wrote another NAR");
        }
        Err(error) => {
            assert!(error.offset <= nar.len() as u64, "error past the input: {error}");
            assert!(!error.to_string().is_empty());
        }
    }
}

/// Piece sizes from one byte: 1 to 16 bytes, repeating, so that every string of the grammar
/// gets split at every place across runs.
fn piece_sizes(plan: u8) -> [usize; 3] {
    let plan = usize::from(plan);
    [plan % 16 + 1, (plan >> 2) % 16 + 1, (plan >> 4) % 8 + 1]
}

/// Feeds `nar` in pieces of `sizes` (cycled), by `push`, or by `next_event` one event at a
/// time when `by_event`, and says what the reader saw.
fn read(nar: &[u8], sizes: &[usize], by_event: bool) -> Story {
    let mut parser = NarParser::new();
    let mut story = Story::default();
    let mut rest = nar;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().expect("cycle")).clamp(1, rest.len());
        let (mut piece, after) = rest.split_at(size);
        rest = after;
        let fed = if by_event {
            loop {
                match parser.next_event(piece) {
                    Ok((used, event)) => {
                        assert!(used <= piece.len());
                        let done = event.is_none();
                        if let Some(event) = event {
                            story.record(event);
                        }
                        piece = &piece[used..];
                        if done {
                            assert!(piece.is_empty(), "no event, yet input left over");
                            break Ok(());
                        }
                    }
                    Err(e) => break Err(e),
                }
            }
        } else {
            parser.push(piece, |event| story.record(event))
        };
        if let Err(error) = fed {
            // Errors stick: more input and `finish` say the same.
            assert_eq!(
                parser.push(b"x", |_| panic!("an event after an error")),
                Err(error.clone())
            );
            story.end = Some(Err(error));
            break;
        }
    }
    let finished = parser.finish().map(|()| parser.offset());
    match &story.end {
        Some(end) => assert_eq!(&finished, end, "finish forgot the error"),
        None => story.end = Some(finished),
    }
    story
}

/// Each file's contents really are at the offset its `FileStart` gives.
fn check_file_offsets(nar: &[u8], events: &[Seen]) {
    for (i, event) in events.iter().enumerate() {
        if let Seen::FileStart { size, contents_offset, .. } = event {
            let at = usize::try_from(*contents_offset).expect("inside the input");
            let contents = &nar[at..at + usize::try_from(*size).expect("inside the input")];
            match events.get(i + 1) {
                Some(Seen::FileData(data)) => assert_eq!(data, contents),
                _ => assert!(contents.is_empty(), "file data missing"),
            }
        }
    }
}

/// The listing read from the events (offsets as the reader gives them) is the one counted
/// from the tree's sizes, names and targets alone.
fn check_listing(events: &[Seen]) {
    let mut collector = ListingCollector::new();
    for seen in events {
        let event = match seen {
            Seen::DirectoryStart(path) => Event::DirectoryStart { path },
            Seen::DirectoryEnd(path) => Event::DirectoryEnd { path },
            Seen::FileStart { path, executable, size, contents_offset } => Event::FileStart {
                path,
                executable: *executable,
                size: *size,
                contents_offset: *contents_offset,
            },
            Seen::FileData(data) => Event::FileData(data),
            Seen::FileEnd(path) => Event::FileEnd { path },
            Seen::Symlink { path, target } => Event::Symlink { path, target },
        };
        collector.event(&event).expect("the events of an accepted NAR make a listing");
    }
    let read = collector.finish().expect("an accepted NAR's listing is complete");
    let counted = Listing::with_nar_offsets(without_offsets(read.root()));
    assert_eq!(read, counted, "the listing read and the listing counted differ");
}

fn without_offsets(entry: &Entry) -> Entry {
    match entry {
        Entry::Regular { size, executable, .. } => {
            Entry::Regular { size: *size, executable: *executable, nar_offset: 0 }
        }
        Entry::Symlink { target } => Entry::Symlink { target: target.clone() },
        Entry::Directory { entries } => Entry::Directory {
            entries: entries.iter().map(|(name, e)| (name.clone(), without_offsets(e))).collect(),
        },
    }
}

/// A file system tree, as a NAR's events describe it.
enum Tree {
    File { executable: bool, contents: Vec<u8> },
    Symlink(Vec<u8>),
    Directory(Vec<(Vec<u8>, Tree)>),
}

/// The NAR the writer makes of the tree `events` describe.
fn rewrite(events: &[Seen]) -> Vec<u8> {
    let mut events = events.iter().peekable();
    let tree = build(&mut events);
    assert!(events.next().is_none(), "events after the root node");
    let mut out = Vec::new();
    write(nar::writer::open(&mut out).expect("writing to a Vec"), &tree);
    out
}

fn build<'e>(events: &mut std::iter::Peekable<impl Iterator<Item = &'e Seen>>) -> Tree {
    match events.next().expect("a node") {
        Seen::FileStart { executable, .. } => {
            let contents = match events.peek() {
                Some(Seen::FileData(data)) => {
                    events.next();
                    data.clone()
                }
                _ => Vec::new(),
            };
            assert!(matches!(events.next(), Some(Seen::FileEnd(_))));
            Tree::File { executable: *executable, contents }
        }
        Seen::Symlink { target, .. } => Tree::Symlink(target.clone()),
        Seen::DirectoryStart(path) => {
            let mut entries = Vec::new();
            loop {
                if let Some(Seen::DirectoryEnd(end)) = events.peek() {
                    assert_eq!(end, path);
                    events.next();
                    return Tree::Directory(entries);
                }
                let child_path = match events.peek().expect("an entry or the directory's end") {
                    Seen::DirectoryStart(p) | Seen::FileStart { path: p, .. } => p.clone(),
                    Seen::Symlink { path: p, .. } => p.clone(),
                    other => panic!("{other:?} where an entry should start"),
                };
                let name = match path.is_empty() {
                    true => child_path.clone(),
                    false => child_path[path.len() + 1..].to_vec(),
                };
                entries.push((name, build(events)));
            }
        }
        other => panic!("{other:?} where a node should start"),
    }
}

fn write(node: nar::Node<'_, '_>, tree: &Tree) {
    match tree {
        Tree::File { executable, contents } => {
            node.file(*executable, contents.len() as u64, &mut &contents[..]).expect("a file")
        }
        Tree::Symlink(target) => node.symlink(target).expect("a symlink"),
        Tree::Directory(entries) => {
            let mut dir = node.directory().expect("a directory");
            for (name, child) in entries {
                write(dir.entry(name).expect("an entry the reader accepted"), child);
            }
            dir.close().expect("a directory's end");
        }
    }
}
