//! The NAR reader: a push parser that checks an archive as its bytes arrive.
//!
//! Feed it chunks of any size, as they come off a socket; it checks the whole structure as it
//! goes and tells what it sees as [`Event`]s. File contents are never buffered: they come out
//! as slices of the chunk that was pushed. Everything else it keeps is bounded by the limits
//! in [`format`](mod@super::format): the current path (at most [`MAX_PATH_LEN`] bytes), the
//! string being read if it is not file contents (at most [`MAX_TARGET_LEN`] bytes, with its
//! length and padding), and one word per open directory, whatever the input.
//!
//! The reader accepts exactly the archives Nix writes and nothing else, so an accepted NAR
//! has one encoding: any change to its bytes either changes what it describes or is refused.
//! It is stricter than Nix's own parser where Nix's writer never needs the slack: the fields
//! of a node must come in the order Nix writes them, the limits above apply, and entries must
//! be sorted (Nix 2.8's `nix-store --restore` takes a directory with entries `b`, `a`: its
//! check compares each name with an empty string). Errors are reported at the offending
//! string's length field (a length too long for its place is refused before any body is
//! read), bad padding at its byte.
//!
//! Most strings are fixed by the grammar (`"entry"` is always followed by `"("` and `"name"`),
//! so, as nix-compat's `nar/wire` does, the parser waits for runs of fixed tokens and has a
//! state of its own only where there is a choice or a value: a node's type, `"executable"` or
//! `"contents"`, `"entry"` or `")"`, a name, a target, file contents.

use thiserror::Error;

use super::format::{self, MAX_NAME_LEN, MAX_PATH_LEN, MAX_TARGET_LEN, NameError, TargetError};

/// The first thing wrong with an archive, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid NAR at byte {offset}: {kind}")]
pub struct NarError {
    /// Offset of the offending string (its length field) or byte from the start of the NAR.
    pub offset: u64,
    pub kind: NarErrorKind,
}

/// What is wrong with an archive.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NarErrorKind {
    #[error("not a NAR: it does not start with \"nix-archive-1\"")]
    BadMagic,
    #[error("expected {expected}, found {found}")]
    UnexpectedToken { expected: &'static str, found: String },
    #[error("invalid entry name \"{}\": {reason}", name.escape_ascii())]
    InvalidName { name: Vec<u8>, reason: NameError },
    #[error(
        "entry \"{}\" follows \"{}\": entries must be sorted bytewise",
        name.escape_ascii(),
        prev.escape_ascii()
    )]
    NotSorted { prev: Vec<u8>, name: Vec<u8> },
    #[error("entry \"{}\" appears twice in one directory", name.escape_ascii())]
    DuplicateName { name: Vec<u8> },
    #[error("invalid symlink target: {0}")]
    InvalidTarget(TargetError),
    #[error("an entry's path inside the NAR is {len} bytes long, more than {MAX_PATH_LEN}")]
    PathTooLong { len: usize },
    #[error("padding byte {0:#04x} is not zero")]
    NonZeroPadding(u8),
    #[error("the NAR ends early, where {expected} should come")]
    Truncated { expected: &'static str },
    #[error("bytes follow the end of the NAR")]
    TrailingBytes,
}

/// Something the reader found, in archive order.
///
/// Paths are relative to the root, components joined by `/`; the root's path is empty.
/// An event says what the bytes so far describe; only [`NarParser::finish`] says the
/// archive as a whole is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A directory starts; its entries follow in sorted order, then [`Event::DirectoryEnd`].
    DirectoryStart { path: &'a [u8] },
    /// The directory at `path` has no more entries.
    DirectoryEnd { path: &'a [u8] },
    /// A regular file starts; `size` bytes of [`Event::FileData`] follow, then
    /// [`Event::FileEnd`]. `contents_offset` is where its contents start in the NAR (what a
    /// `.ls` listing calls `narOffset`).
    FileStart { path: &'a [u8], executable: bool, size: u64, contents_offset: u64 },
    /// The next piece of the current file's contents, a slice of the pushed input.
    FileData(&'a [u8]),
    /// The file at `path` is complete.
    FileEnd { path: &'a [u8] },
    /// A symlink.
    Symlink { path: &'a [u8], target: &'a [u8] },
}

/// A string the grammar fixes, and how errors name it.
#[derive(Debug)]
struct Token(&'static [u8], &'static str);

const MAGIC: Token = Token(format::MAGIC, "the magic \"nix-archive-1\"");
const OPEN: Token = Token(format::OPEN, "\"(\"");
const CLOSE: Token = Token(format::CLOSE, "\")\"");
const TYPE: Token = Token(format::TYPE, "\"type\"");
const EMPTY: Token = Token(b"", "the empty string after \"executable\"");
const CONTENTS: Token = Token(format::CONTENTS, "\"contents\"");
const TARGET: Token = Token(format::TARGET, "\"target\"");
const NAME: Token = Token(format::NAME, "\"name\"");
const NODE: Token = Token(format::NODE, "\"node\"");

/// A string the grammar does not fix: a choice or a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// `"regular"`, `"symlink"` or `"directory"`.
    Type,
    ExecutableOrContents,
    /// A file's contents: only the length is collected; the body streams.
    Contents {
        executable: bool,
    },
    Target,
    EntryOrClose,
    Name,
    /// The `")"` that ends a file (`file`) or a symlink.
    Close {
        file: bool,
    },
}

impl Slot {
    /// How errors name this string, and the longest it can be (file contents: any length).
    fn rule(self) -> (&'static str, usize) {
        match self {
            Slot::Type => ("\"regular\", \"symlink\" or \"directory\"", format::DIRECTORY.len()),
            Slot::ExecutableOrContents => {
                ("\"executable\" or \"contents\"", format::EXECUTABLE.len())
            }
            Slot::Contents { .. } => ("file contents", usize::MAX),
            Slot::Target => ("a symlink target", MAX_TARGET_LEN),
            Slot::EntryOrClose => ("\"entry\" or \")\"", format::ENTRY.len()),
            Slot::Name => ("an entry name", MAX_NAME_LEN),
            Slot::Close { .. } => (CLOSE.1, CLOSE.0.len()),
        }
    }
}

/// What the parser waits for.
#[derive(Debug, Clone, Copy)]
enum State {
    /// The fixed `tokens` in order, then the string `then`.
    Strings { tokens: &'static [Token], then: Slot },
    /// Inside a file's contents, which go out as they come in: `left` bytes, then `pad` zeros.
    Contents { left: u64, pad: u8 },
    /// The root node is complete.
    Done,
}

impl Default for State {
    fn default() -> Self {
        State::Strings { tokens: &[MAGIC, OPEN, TYPE], then: Slot::Type }
    }
}

/// What a step found, without borrows, turned into an [`Event`] by the caller.
#[derive(Debug, Clone, Copy)]
enum Found {
    DirectoryStart,
    DirectoryEnd,
    FileStart { executable: bool, size: u64, contents_offset: u64 },
    FileData { start: usize, end: usize },
    FileEnd,
    Symlink,
}

/// The push parser. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct NarParser {
    state: State,
    /// Bytes consumed so far.
    pos: u64,
    /// Where the current string (its length field) starts.
    string_start: u64,
    /// The current string as far as it has come: length field, body and padding (for file
    /// contents, the length field only). Until the next string starts it holds the last one,
    /// whose body an [`Event::Symlink`] lends out.
    buf: Vec<u8>,
    /// The path of the current node.
    path: Vec<u8>,
    /// For each open directory, outermost first, the length of its path.
    dirs: Vec<usize>,
    /// The previous entry name in the innermost open directory; empty before its first entry.
    /// Outer directories' previous names are the components of `path`.
    prev_name: Vec<u8>,
    error: Option<NarError>,
}

impl NarParser {
    /// A parser waiting for the first byte of a NAR.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Whether the root node is complete (more bytes would be an error).
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done) && self.error.is_none()
    }

    /// Parses `data`, the next bytes of the archive, calling `on_event` for each event.
    ///
    /// Returns the first error in the archive; after one, every call returns it again.
    pub fn push(
        &mut self,
        mut data: &[u8],
        mut on_event: impl FnMut(Event<'_>),
    ) -> Result<(), NarError> {
        loop {
            let (used, event) = self.next_event(data)?;
            match event {
                Some(event) => on_event(event),
                None => return Ok(()),
            }
            data = &data[used..];
        }
    }

    /// Parses `input` up to and including the next event, for callers that handle events
    /// one at a time (to await between them, say). Returns how many bytes of `input` were
    /// consumed and the event; `None` means all of `input` was consumed without one.
    pub fn next_event<'s>(
        &'s mut self,
        input: &'s [u8],
    ) -> Result<(usize, Option<Event<'s>>), NarError> {
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        match self.step(input) {
            Ok((used, found)) => Ok((used, found.map(|found| self.event(found, input)))),
            Err(error) => {
                self.error = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Says whether the bytes pushed so far are a complete NAR.
    pub fn finish(&self) -> Result<(), NarError> {
        match (&self.error, self.state) {
            (Some(error), _) => Err(error.clone()),
            (None, State::Done) => Ok(()),
            (None, _) => {
                let kind = NarErrorKind::Truncated { expected: self.rule().0 };
                Err(NarError { offset: self.pos, kind })
            }
        }
    }

    fn event<'s>(&'s self, found: Found, input: &'s [u8]) -> Event<'s> {
        let path = &self.path[..];
        match found {
            Found::DirectoryStart => Event::DirectoryStart { path },
            Found::DirectoryEnd => Event::DirectoryEnd { path },
            Found::FileStart { executable, size, contents_offset } => {
                Event::FileStart { path, executable, size, contents_offset }
            }
            Found::FileData { start, end } => Event::FileData(&input[start..end]),
            Found::FileEnd => Event::FileEnd { path },
            Found::Symlink => Event::Symlink { path, target: self.body() },
        }
    }

    /// How errors name the string the parser waits for, and the longest it can be.
    fn rule(&self) -> (&'static str, usize) {
        match self.state {
            State::Strings { tokens: [token, ..], .. } => (token.1, token.0.len()),
            State::Strings { then, .. } => then.rule(),
            State::Contents { .. } => ("file contents", usize::MAX),
            State::Done => ("nothing more", 0),
        }
    }

    /// Consumes `input` until something is found or `input` is used up.
    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Found>), NarError> {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            if rest.is_empty() {
                return Ok((used, None));
            }
            match self.state {
                State::Done => {
                    return Err(NarError { offset: self.pos, kind: NarErrorKind::TrailingBytes });
                }
                State::Strings { tokens, then } => {
                    if self.fill(input, &mut used)?
                        && let Some(found) = self.string_done(tokens, then)?
                    {
                        return Ok((used, Some(found)));
                    }
                }
                State::Contents { left: 0, pad } => {
                    let n = rest.len().min(pad.into());
                    check_padding(&rest[..n], self.pos)?;
                    used += n;
                    self.pos += n as u64;
                    self.contents(0, pad - n as u8);
                }
                State::Contents { left, pad } => {
                    let n = left.min(rest.len() as u64);
                    let start = used;
                    used += n as usize;
                    self.pos += n;
                    self.contents(left - n, pad);
                    return Ok((used, Some(Found::FileData { start, end: used })));
                }
            }
        }
    }

    /// Adds the next bytes of `input` to the current string in `buf`: its length field, then,
    /// unless it is file contents, its body and padding. Says whether the string is complete.
    fn fill(&mut self, input: &[u8], used: &mut usize) -> Result<bool, NarError> {
        if self.pos == self.string_start {
            self.buf.clear();
        }
        if self.buf.len() < 8 {
            self.take(input, used, 8 - self.buf.len());
            let max_len = self.rule().1;
            // File contents, of any length, stream: only their length field is collected.
            if self.buf.len() < 8 || max_len == usize::MAX {
                return Ok(self.buf.len() == 8);
            }
            // Refused before any body is read, so a huge length costs nothing.
            if self.len() > max_len as u64 {
                return Err(self.unexpected());
            }
        }
        // The length is bounded now, so the whole string fits in `buf`.
        let body_end = 8 + self.len() as usize;
        let end = body_end + format::padding_len(self.len());
        self.take(input, used, end - self.buf.len());
        let pad = self.buf.get(body_end..).unwrap_or_default();
        check_padding(pad, self.string_start + body_end as u64)?;
        Ok(self.buf.len() == end)
    }

    /// Moves up to `n` bytes of `input` into `buf`.
    fn take(&mut self, input: &[u8], used: &mut usize, n: usize) {
        let n = n.min(input.len() - *used);
        self.buf.extend_from_slice(&input[*used..*used + n]);
        *used += n;
        self.pos += n as u64;
    }

    /// The length field of the string in `buf`.
    fn len(&self) -> u64 {
        u64::from_le_bytes(self.buf[..8].try_into().expect("8 bytes"))
    }

    /// The body of the string in `buf`, as far as it has come (none of file contents).
    fn body(&self) -> &[u8] {
        let body = &self.buf[8..];
        &body[..body.len().min(self.len() as usize)]
    }

    /// Waits for `tokens` and then the string `then`, from the next byte on.
    fn want(&mut self, tokens: &'static [Token], then: Slot) {
        self.state = State::Strings { tokens, then };
        self.string_start = self.pos;
    }

    /// Goes on inside a file's contents with `left` bytes and `pad` zeros to go.
    fn contents(&mut self, left: u64, pad: u8) {
        match (left, pad) {
            (0, 0) => self.want(&[], Slot::Close { file: true }),
            _ => self.state = State::Contents { left, pad },
        }
    }

    /// The current string is not one the grammar allows here.
    fn unexpected(&self) -> NarError {
        let len = self.len();
        let kind = match self.state {
            // Only the magic starts at 0, and bytes that do not start with it are not a NAR.
            _ if self.string_start == 0 => NarErrorKind::BadMagic,
            // Names and targets are refused here only when too long to read.
            State::Strings { tokens: [], then: Slot::Name } => {
                NarErrorKind::InvalidName { name: Vec::new(), reason: NameError::TooLong(len) }
            }
            State::Strings { tokens: [], then: Slot::Target } => {
                NarErrorKind::InvalidTarget(TargetError::TooLong(len))
            }
            _ => NarErrorKind::UnexpectedToken {
                expected: self.rule().0,
                found: match self.body().len() as u64 == len {
                    true => format!("\"{}\"", self.body().escape_ascii()),
                    false => format!("a string of {len} bytes"),
                },
            },
        };
        NarError { offset: self.string_start, kind }
    }

    /// Acts on the complete string in `buf`: checks it and decides what comes next.
    fn string_done(
        &mut self,
        tokens: &'static [Token],
        then: Slot,
    ) -> Result<Option<Found>, NarError> {
        let mut found = None;
        if let ([], Slot::EntryOrClose) = (tokens, then) {
            self.leave_entry();
        }
        match (tokens, then, self.body()) {
            ([token, tokens @ ..], _, body) if body == token.0 => self.want(tokens, then),
            ([], Slot::Type, format::REGULAR) => self.want(&[], Slot::ExecutableOrContents),
            ([], Slot::Type, format::SYMLINK) => self.want(&[TARGET], Slot::Target),
            ([], Slot::Type, format::DIRECTORY) => {
                self.dirs.push(self.path.len());
                self.prev_name.clear();
                self.want(&[], Slot::EntryOrClose);
                found = Some(Found::DirectoryStart);
            }
            ([], Slot::ExecutableOrContents, format::EXECUTABLE) => {
                self.want(&[EMPTY, CONTENTS], Slot::Contents { executable: true });
            }
            ([], Slot::ExecutableOrContents, format::CONTENTS) => {
                self.want(&[], Slot::Contents { executable: false });
            }
            ([], Slot::Contents { executable }, _) => {
                let size = self.len();
                self.contents(size, format::padding_len(size) as u8);
                found = Some(Found::FileStart { executable, size, contents_offset: self.pos });
            }
            ([], Slot::Target, target) => {
                if let Err(reason) = format::check_target(target) {
                    let kind = NarErrorKind::InvalidTarget(reason);
                    return Err(NarError { offset: self.string_start, kind });
                }
                self.want(&[], Slot::Close { file: false });
                found = Some(Found::Symlink);
            }
            ([], Slot::EntryOrClose, format::ENTRY) => self.want(&[OPEN, NAME], Slot::Name),
            ([], Slot::EntryOrClose, format::CLOSE) => {
                self.dirs.pop();
                self.node_done();
                found = Some(Found::DirectoryEnd);
            }
            ([], Slot::Name, _) => {
                self.enter_entry()?;
                self.want(&[NODE, OPEN, TYPE], Slot::Type);
            }
            ([], Slot::Close { file }, format::CLOSE) => {
                self.node_done();
                found = file.then_some(Found::FileEnd);
            }
            _ => return Err(self.unexpected()),
        }
        Ok(found)
    }

    /// Checks the entry name just read and makes it the last component of `path`.
    fn enter_entry(&mut self) -> Result<(), NarError> {
        let name = &self.buf[8..8 + self.len() as usize];
        let prev = &self.prev_name[..];
        let len = format::child_path_len(self.path.len(), name.len());
        // An empty `prev` (no entry yet) sorts before every valid name.
        let kind = match format::check_name(name) {
            Err(reason) => NarErrorKind::InvalidName { name: name.to_vec(), reason },
            Ok(()) if name == prev => NarErrorKind::DuplicateName { name: name.to_vec() },
            Ok(()) if name < prev => {
                NarErrorKind::NotSorted { prev: prev.to_vec(), name: name.to_vec() }
            }
            Ok(()) if len > MAX_PATH_LEN => NarErrorKind::PathTooLong { len },
            Ok(()) => {
                if !self.path.is_empty() {
                    self.path.push(b'/');
                }
                self.path.extend_from_slice(name);
                return Ok(());
            }
        };
        Err(NarError { offset: self.string_start, kind })
    }

    /// The current node is complete: the archive ends, or its entry does.
    fn node_done(&mut self) {
        match self.dirs.is_empty() {
            true => self.state = State::Done,
            false => self.want(&[CLOSE], Slot::EntryOrClose),
        }
    }

    /// Cuts `path` back to the innermost open directory, remembering the entry cut off, if
    /// any, as its previous one. Not done when the entry ends: its last event lends `path`.
    fn leave_entry(&mut self) {
        let dir_len = *self.dirs.last().expect("entries are inside a directory");
        if self.path.len() > dir_len {
            let name_start = if dir_len == 0 { 0 } else { dir_len + 1 };
            self.prev_name.clear();
            self.prev_name.extend_from_slice(&self.path[name_start..]);
            self.path.truncate(dir_len);
        }
    }
}

/// Checks that `pad`, padding bytes that start at `offset`, are zeros.
fn check_padding(pad: &[u8], offset: u64) -> Result<(), NarError> {
    match pad.iter().position(|&b| b != 0) {
        Some(i) => {
            Err(NarError { offset: offset + i as u64, kind: NarErrorKind::NonZeroPadding(pad[i]) })
        }
        None => Ok(()),
    }
}

/// Checks that bytes are one valid NAR and counts them, keeping nothing else.
#[derive(Debug, Clone, Default)]
pub struct NarValidator {
    parser: NarParser,
}

impl NarValidator {
    /// A validator waiting for the first byte.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next bytes of the archive.
    pub fn push(&mut self, data: &[u8]) -> Result<(), NarError> {
        self.parser.push(data, |_| {})
    }

    /// The number of bytes pushed and accepted so far.
    pub fn bytes(&self) -> u64 {
        self.parser.offset()
    }

    /// Says whether the bytes pushed are a complete NAR, and returns its size.
    pub fn finish(&self) -> Result<u64, NarError> {
        self.parser.finish().map(|()| self.parser.offset())
    }
}

/// Checks that `nar` is exactly one valid NAR and returns its size.
pub fn validate(nar: &[u8]) -> Result<u64, NarError> {
    let mut validator = NarValidator::new();
    validator.push(nar)?;
    validator.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nar::writer;

    fn sample() -> Vec<u8> {
        let mut out = Vec::new();
        let mut root = writer::open(&mut out).unwrap().directory().unwrap();
        root.entry(b"a").unwrap().file(true, 3, &mut &b"hi\n"[..]).unwrap();
        let mut sub = root.entry(b"d").unwrap().directory().unwrap();
        sub.entry(b"e").unwrap().directory().unwrap().close().unwrap();
        sub.entry(b"l").unwrap().symlink(b"../a").unwrap();
        sub.close().unwrap();
        root.entry(b"z").unwrap().file(false, 0, &mut &b""[..]).unwrap();
        root.close().unwrap();
        out
    }

    /// The events as owned text, one line each, consecutive file data joined.
    fn events(nar: &[u8], chunk: usize) -> Result<Vec<String>, NarError> {
        let mut parser = NarParser::new();
        let mut out: Vec<String> = Vec::new();
        for piece in nar.chunks(chunk.max(1)) {
            parser.push(piece, |e| match (e, out.last_mut()) {
                (Event::FileData(more), Some(last)) if last.starts_with("data ") => {
                    last.push_str(&more.escape_ascii().to_string())
                }
                _ => out.push(describe(e)),
            })?;
        }
        parser.finish()?;
        Ok(out)
    }

    fn describe(e: Event<'_>) -> String {
        let p = |p: &[u8]| p.escape_ascii().to_string();
        match e {
            Event::DirectoryStart { path } => format!("dir {}", p(path)),
            Event::DirectoryEnd { path } => format!("end {}", p(path)),
            Event::FileStart { path, executable, size, contents_offset } => {
                format!("file {} x={executable} size={size} at={contents_offset}", p(path))
            }
            Event::FileData(data) => format!("data {}", p(data)),
            Event::FileEnd { path } => format!("fend {}", p(path)),
            Event::Symlink { path, target } => format!("link {} -> {}", p(path), p(target)),
        }
    }

    #[test]
    fn events_in_order_whatever_the_chunking() {
        let nar = sample();
        let want = [
            "dir ",
            "file a x=true size=3 at=264",
            "data hi\\n",
            "fend a",
            "dir d",
            "dir d/e",
            "end d/e",
            "link d/l -> ../a",
            "end d",
            "file z x=false size=0 at=984",
            "fend z",
            "end ",
        ];
        for chunk in [1, 2, 3, 7, 8, 9, 64, nar.len()] {
            assert_eq!(events(&nar, chunk).unwrap(), want, "chunk size {chunk}");
        }
        assert_eq!(&nar[264..267], b"hi\n");
        assert_eq!(&nar[960..984], b"\x08\0\0\0\0\0\0\0contents\0\0\0\0\0\0\0\0");
        assert_eq!(validate(&nar), Ok(nar.len() as u64));
    }

    #[test]
    fn every_proper_prefix_is_truncated() {
        let nar = sample();
        for len in 0..nar.len() {
            let mut v = NarValidator::new();
            v.push(&nar[..len]).unwrap();
            let err = v.finish().unwrap_err();
            assert_eq!(err.offset, len as u64);
            assert!(matches!(err.kind, NarErrorKind::Truncated { .. }), "{err}");
        }
    }

    fn kind_at(nar: &[u8]) -> (u64, NarErrorKind) {
        let err = validate(nar).unwrap_err();
        (err.offset, err.kind)
    }

    #[test]
    fn trailing_bytes() {
        let mut nar = sample();
        let len = nar.len() as u64;
        nar.push(0);
        assert_eq!(kind_at(&nar), (len, NarErrorKind::TrailingBytes));
    }

    #[test]
    fn bad_magic() {
        let mut nar = sample();
        nar[8] = b'N';
        assert_eq!(kind_at(&nar), (0, NarErrorKind::BadMagic));
        assert_eq!(kind_at(&[0xff; 8]), (0, NarErrorKind::BadMagic));
    }

    #[test]
    fn bad_padding_is_found_at_its_byte() {
        let mut nar = sample();
        // "nix-archive-1" is 13 bytes, so 3 padding bytes follow it at 21..24.
        nar[22] = 7;
        assert_eq!(kind_at(&nar), (22, NarErrorKind::NonZeroPadding(7)));
    }

    /// A NAR by hand: the magic, then `strings`.
    fn raw(strings: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for s in [&b"nix-archive-1"[..]].iter().chain(strings) {
            crate::nix_daemon::put_bytes(&mut out, s);
        }
        out
    }

    /// [`raw`] of the words in `text`, `""` standing for the empty string.
    fn words(text: &str) -> Vec<u8> {
        let words: Vec<&[u8]> = text
            .split_whitespace()
            .map(|w| if w == "\"\"" { &b""[..] } else { w.as_bytes() })
            .collect();
        raw(&words)
    }

    fn dir_of(names: &[&[u8]]) -> Vec<u8> {
        let mut strings: Vec<&[u8]> = vec![b"(", b"type", b"directory"];
        for name in names {
            strings.extend_from_slice(&[b"entry", b"(", b"name", name, b"node"]);
            strings.extend_from_slice(&[b"(", b"type", b"symlink", b"target", b"x", b")", b")"]);
        }
        strings.push(b")");
        raw(&strings)
    }

    #[test]
    fn names_must_be_valid_and_sorted() {
        assert!(validate(&dir_of(&[b"B", b"a", b"a-b", b"a.b", "ä".as_bytes()])).is_ok());
        let (_, kind) = kind_at(&dir_of(&[b"b", b"a"]));
        assert_eq!(kind, NarErrorKind::NotSorted { prev: b"b".to_vec(), name: b"a".to_vec() });
        let (_, kind) = kind_at(&dir_of(&[b"a", b"a"]));
        assert_eq!(kind, NarErrorKind::DuplicateName { name: b"a".to_vec() });
        for (name, reason) in [
            (&b""[..], NameError::Empty),
            (b".", NameError::Dot),
            (b"..", NameError::Dot),
            (b"a/b", NameError::Slash),
            (b"\0", NameError::Nul),
        ] {
            let (_, kind) = kind_at(&dir_of(&[name]));
            assert_eq!(kind, NarErrorKind::InvalidName { name: name.to_vec(), reason });
        }
        let (offset, kind) = kind_at(&dir_of(&[&[b'x'; 256]]));
        assert_eq!(
            kind,
            NarErrorKind::InvalidName { name: vec![], reason: NameError::TooLong(256) }
        );
        // The name's length field: after the magic (24), "(" "type" "directory" "entry" "("
        // "name" (5 strings of 16 bytes, "directory" of 24).
        assert_eq!(offset, 24 + 16 * 5 + 24);
    }

    #[test]
    fn sorting_is_per_directory() {
        // "b/a" after "b" is fine: only siblings are compared, and after leaving "b", the
        // next sibling is compared with "b", not with "a".
        let link = |name: &str| format!("entry ( name {name} node ( type symlink target x ) )");
        let nar = |inner: &str, next: &str| {
            let b = format!("entry ( name b node ( type directory {} ) )", link(inner));
            words(&format!("( type directory {b} {} )", link(next)))
        };
        assert!(validate(&nar("a", "c")).is_ok());
        let (_, kind) = kind_at(&nar("z", "a"));
        assert_eq!(kind, NarErrorKind::NotSorted { prev: b"b".to_vec(), name: b"a".to_vec() });
    }

    #[test]
    fn fields_in_nix_order_only() {
        // Nix's parser would take "executable" after "contents"; Nix never writes it.
        let nar = words(r#"( type regular contents "" executable "" )"#);
        let (_, kind) = kind_at(&nar);
        assert!(matches!(kind, NarErrorKind::UnexpectedToken { expected: "\")\"", .. }));
        let nar = words("( type regular executable x");
        let (offset, kind) = kind_at(&nar);
        assert_eq!(offset, 24 + 16 * 3 + 24);
        assert!(matches!(kind, NarErrorKind::UnexpectedToken { .. }));
        let nar = words("( type fifo");
        let (_, kind) = kind_at(&nar);
        assert_eq!(
            kind,
            NarErrorKind::UnexpectedToken {
                expected: "\"regular\", \"symlink\" or \"directory\"",
                found: "\"fifo\"".into()
            }
        );
    }

    #[test]
    fn huge_lengths_are_refused_from_the_length_alone() {
        let mut nar = words("( type symlink target");
        nar.extend_from_slice(&u64::MAX.to_le_bytes());
        let (offset, kind) = kind_at(&nar);
        assert_eq!(offset, 24 + 16 * 4);
        assert_eq!(kind, NarErrorKind::InvalidTarget(TargetError::TooLong(u64::MAX)));
        // File contents may be that long: it is a truncation, found at the end.
        let mut nar = words("( type regular contents");
        nar.extend_from_slice(&u64::MAX.to_le_bytes());
        nar.extend_from_slice(&[1, 2, 3]);
        let (offset, kind) = kind_at(&nar);
        assert_eq!(offset, nar.len() as u64);
        assert_eq!(kind, NarErrorKind::Truncated { expected: "file contents" });
    }

    #[test]
    fn errors_stick() {
        let mut p = NarParser::new();
        let first = p.push(&[0xff; 8], |_| {}).unwrap_err();
        assert_eq!(p.push(b"anything", |_| {}), Err(first.clone()));
        assert_eq!(p.finish(), Err(first));
    }

    #[test]
    fn deep_nesting_is_bounded_by_path_length() {
        // 2048 levels of one-byte names make a path of 4095 bytes; one more is refused.
        let build = |levels: usize| {
            let open = "entry ( name d node ( type directory ".repeat(levels);
            words(&format!("( type directory {open} {} )", ") ) ".repeat(levels)))
        };
        assert!(validate(&build(2048)).is_ok());
        let (_, kind) = kind_at(&build(2049));
        assert_eq!(kind, NarErrorKind::PathTooLong { len: 4097 });
    }
}
