//! The NAR reader: a push parser that checks an archive as its bytes arrive.
//!
//! Feed it chunks of any size, as they come off a socket; it checks the whole structure as it
//! goes and tells what it sees as [`Event`]s. File contents are never buffered: they come out
//! as slices of the chunk that was pushed. Everything else it keeps is bounded by the limits
//! in [`format`](mod@super::format): the current path (at most
//! [`MAX_PATH_LEN`] bytes), one name or symlink target, and one word per
//! open directory, whatever the input.
//!
//! The reader accepts exactly the archives Nix writes and nothing else, so an accepted NAR
//! has one encoding: any change to its bytes either changes what it describes or is refused.
//! It is stricter than Nix's own parser where Nix's writer never needs the slack: the fields
//! of a node must come in the order Nix writes them, the limits above apply, and entries must
//! be sorted (Nix 2.8's `nix-store --restore` takes a directory with entries `b`, `a`: its
//! check compares each name with an empty string).

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

/// Which string the parser is waiting for. Each names the string it is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Magic,
    NodeOpen,
    Type,
    TypeValue,
    ExecutableOrContents,
    ExecutableValue,
    Contents,
    ContentsData,
    Target,
    TargetValue,
    EntryOrDirectoryClose,
    EntryOpen,
    Name,
    NameValue,
    Node,
    EntryClose,
    FileClose,
    SymlinkClose,
}

impl Expect {
    /// The longest string that can be valid here; longer ones are refused from their length.
    fn max_len(self) -> u64 {
        match self {
            Expect::Magic => format::MAGIC.len() as u64,
            Expect::TypeValue => format::DIRECTORY.len() as u64,
            Expect::ExecutableOrContents => format::EXECUTABLE.len() as u64,
            Expect::ExecutableValue => 0,
            Expect::Contents => format::CONTENTS.len() as u64,
            Expect::ContentsData => u64::MAX,
            Expect::Target => format::TARGET.len() as u64,
            Expect::TargetValue => MAX_TARGET_LEN as u64,
            Expect::EntryOrDirectoryClose => format::ENTRY.len() as u64,
            Expect::Name | Expect::Node | Expect::Type => 4,
            Expect::NameValue => MAX_NAME_LEN as u64,
            Expect::NodeOpen
            | Expect::EntryOpen
            | Expect::EntryClose
            | Expect::FileClose
            | Expect::SymlinkClose => 1,
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Expect::Magic => "the magic \"nix-archive-1\"",
            Expect::NodeOpen | Expect::EntryOpen => "\"(\"",
            Expect::Type => "\"type\"",
            Expect::TypeValue => "\"regular\", \"symlink\" or \"directory\"",
            Expect::ExecutableOrContents => "\"executable\" or \"contents\"",
            Expect::ExecutableValue => "the empty string after \"executable\"",
            Expect::Contents => "\"contents\"",
            Expect::ContentsData => "file contents",
            Expect::Target => "\"target\"",
            Expect::TargetValue => "a symlink target",
            Expect::EntryOrDirectoryClose => "\"entry\" or \")\"",
            Expect::Name => "\"name\"",
            Expect::NameValue => "an entry name",
            Expect::Node => "\"node\"",
            Expect::EntryClose | Expect::FileClose | Expect::SymlinkClose => "\")\"",
        }
    }
}

/// Where in a string the parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading the 8-byte length; `got` bytes of it so far.
    Len { got: u8 },
    /// Reading the body; `left` bytes to go.
    Body { left: u64 },
    /// Checking the padding; `left` bytes to go.
    Pad { left: u8 },
}

/// What a step found, without borrows, turned into an [`Event`] by the caller.
#[derive(Debug, Clone, Copy)]
enum Found {
    DirectoryStart,
    DirectoryEnd,
    FileStart { size: u64, contents_offset: u64 },
    FileData { start: usize, end: usize },
    FileEnd,
    Symlink,
}

/// The push parser. See the module docs.
#[derive(Debug, Clone)]
pub struct NarParser {
    /// `None` once the root node is complete.
    expect: Option<Expect>,
    phase: Phase,
    /// Bytes consumed so far.
    pos: u64,
    /// Where the current string (its length field) starts.
    string_start: u64,
    len_bytes: [u8; 8],
    /// The current string's length.
    len: u64,
    /// The current string's body, for every string but file contents.
    body: Vec<u8>,
    /// The path of the current node.
    path: Vec<u8>,
    /// For each open directory, outermost first, the length of its path.
    dirs: Vec<usize>,
    /// The previous entry name in the innermost open directory; empty before its first entry.
    /// Outer directories' previous names are the components of `path`.
    prev_name: Vec<u8>,
    executable: bool,
    /// A node ended and its event was handed out; `path` is cut back before the next step.
    leave_pending: bool,
    error: Option<NarError>,
}

impl Default for NarParser {
    fn default() -> Self {
        Self::new()
    }
}

impl NarParser {
    /// A parser waiting for the first byte of a NAR.
    pub fn new() -> Self {
        NarParser {
            expect: Some(Expect::Magic),
            phase: Phase::Len { got: 0 },
            pos: 0,
            string_start: 0,
            len_bytes: [0; 8],
            len: 0,
            body: Vec::new(),
            path: Vec::new(),
            dirs: Vec::new(),
            prev_name: Vec::new(),
            executable: false,
            leave_pending: false,
            error: None,
        }
    }

    /// The number of bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// Whether the root node is complete (more bytes would be an error).
    pub fn is_done(&self) -> bool {
        self.expect.is_none() && self.error.is_none()
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
        if let Some(error) = &self.error {
            return Err(error.clone());
        }
        match self.expect {
            None => Ok(()),
            Some(expect) => Err(NarError {
                offset: self.pos,
                kind: NarErrorKind::Truncated { expected: expect.describe() },
            }),
        }
    }

    fn event<'s>(&'s self, found: Found, input: &'s [u8]) -> Event<'s> {
        let path = &self.path[..];
        match found {
            Found::DirectoryStart => Event::DirectoryStart { path },
            Found::DirectoryEnd => Event::DirectoryEnd { path },
            Found::FileStart { size, contents_offset } => {
                Event::FileStart { path, executable: self.executable, size, contents_offset }
            }
            Found::FileData { start, end } => Event::FileData(&input[start..end]),
            Found::FileEnd => Event::FileEnd { path },
            Found::Symlink => Event::Symlink { path, target: &self.body },
        }
    }

    fn error(&self, offset: u64, kind: NarErrorKind) -> NarError {
        NarError { offset, kind }
    }

    /// Consumes `input` until something is found or `input` is used up.
    fn step(&mut self, input: &[u8]) -> Result<(usize, Option<Found>), NarError> {
        let mut used = 0;
        loop {
            if self.leave_pending {
                self.leave_node();
            }
            let rest = &input[used..];
            let Some(expect) = self.expect else {
                return match rest.is_empty() {
                    true => Ok((used, None)),
                    false => Err(self.error(self.pos, NarErrorKind::TrailingBytes)),
                };
            };
            if rest.is_empty() {
                return Ok((used, None));
            }
            match self.phase {
                Phase::Len { got } => {
                    let got = got as usize;
                    let n = (8 - got).min(rest.len());
                    self.len_bytes[got..got + n].copy_from_slice(&rest[..n]);
                    self.advance(&mut used, n);
                    if got + n < 8 {
                        self.phase = Phase::Len { got: (got + n) as u8 };
                        continue;
                    }
                    self.len = u64::from_le_bytes(self.len_bytes);
                    if self.len > expect.max_len() {
                        return Err(self.too_long(expect));
                    }
                    self.body.clear();
                    self.phase = Phase::Body { left: self.len };
                    if expect == Expect::ContentsData {
                        self.settle_phase()?;
                        let found = Found::FileStart { size: self.len, contents_offset: self.pos };
                        return Ok((used, Some(found)));
                    }
                    if let Some(found) = self.settle_phase()? {
                        return Ok((used, Some(found)));
                    }
                }
                Phase::Body { left } => {
                    let n = left.min(rest.len() as u64) as usize;
                    let start = used;
                    if expect != Expect::ContentsData {
                        self.body.extend_from_slice(&rest[..n]);
                    }
                    self.advance(&mut used, n);
                    self.phase = Phase::Body { left: left - n as u64 };
                    let found = self.settle_phase()?;
                    if expect == Expect::ContentsData {
                        return Ok((used, Some(Found::FileData { start, end: start + n })));
                    }
                    if let Some(found) = found {
                        return Ok((used, Some(found)));
                    }
                }
                Phase::Pad { left } => {
                    let n = (left as usize).min(rest.len());
                    if let Some(i) = rest[..n].iter().position(|&b| b != 0) {
                        let offset = self.pos + i as u64;
                        return Err(self.error(offset, NarErrorKind::NonZeroPadding(rest[i])));
                    }
                    self.advance(&mut used, n);
                    self.phase = Phase::Pad { left: left - n as u8 };
                    if let Some(found) = self.settle_phase()? {
                        return Ok((used, Some(found)));
                    }
                }
            }
        }
    }

    fn advance(&mut self, used: &mut usize, n: usize) {
        *used += n;
        self.pos += n as u64;
    }

    /// Moves past phases that need no more bytes; completes the string when none are left.
    fn settle_phase(&mut self) -> Result<Option<Found>, NarError> {
        if self.phase == (Phase::Body { left: 0 }) {
            self.phase = Phase::Pad { left: format::padding_len(self.len) as u8 };
        }
        if self.phase == (Phase::Pad { left: 0 }) {
            let expect = self.expect.expect("a string is being read");
            return self.string_done(expect);
        }
        Ok(None)
    }

    /// Starts waiting for the next string.
    fn want(&mut self, expect: Expect) {
        self.expect = Some(expect);
        self.phase = Phase::Len { got: 0 };
        self.string_start = self.pos;
    }

    fn too_long(&self, expect: Expect) -> NarError {
        let kind = match expect {
            Expect::Magic => NarErrorKind::BadMagic,
            Expect::NameValue => {
                NarErrorKind::InvalidName { name: Vec::new(), reason: NameError::TooLong(self.len) }
            }
            Expect::TargetValue => NarErrorKind::InvalidTarget(TargetError::TooLong(self.len)),
            _ => NarErrorKind::UnexpectedToken {
                expected: expect.describe(),
                found: format!("a string of {} bytes", self.len),
            },
        };
        self.error(self.string_start, kind)
    }

    /// Checks that the string just read is `token`.
    fn token(&self, expect: Expect, token: &[u8]) -> Result<(), NarError> {
        if self.body == token { Ok(()) } else { Err(self.unexpected(expect)) }
    }

    fn unexpected(&self, expect: Expect) -> NarError {
        let kind = match expect {
            Expect::Magic => NarErrorKind::BadMagic,
            _ => NarErrorKind::UnexpectedToken {
                expected: expect.describe(),
                found: format!("\"{}\"", self.body.escape_ascii()),
            },
        };
        self.error(self.string_start, kind)
    }

    /// Acts on a complete string: checks it and decides what comes next.
    fn string_done(&mut self, expect: Expect) -> Result<Option<Found>, NarError> {
        let mut found = None;
        match expect {
            Expect::Magic => {
                self.token(expect, format::MAGIC)?;
                self.want(Expect::NodeOpen);
            }
            Expect::NodeOpen => {
                self.token(expect, format::OPEN)?;
                self.want(Expect::Type);
            }
            Expect::Type => {
                self.token(expect, format::TYPE)?;
                self.want(Expect::TypeValue);
            }
            Expect::TypeValue => match &self.body[..] {
                format::REGULAR => {
                    self.executable = false;
                    self.want(Expect::ExecutableOrContents);
                }
                format::SYMLINK => self.want(Expect::Target),
                format::DIRECTORY => {
                    self.dirs.push(self.path.len());
                    self.prev_name.clear();
                    self.want(Expect::EntryOrDirectoryClose);
                    found = Some(Found::DirectoryStart);
                }
                _ => return Err(self.unexpected(expect)),
            },
            Expect::ExecutableOrContents => match &self.body[..] {
                format::EXECUTABLE => {
                    self.executable = true;
                    self.want(Expect::ExecutableValue);
                }
                format::CONTENTS => self.want(Expect::ContentsData),
                _ => return Err(self.unexpected(expect)),
            },
            // Its length was checked to be 0.
            Expect::ExecutableValue => self.want(Expect::Contents),
            Expect::Contents => {
                self.token(expect, format::CONTENTS)?;
                self.want(Expect::ContentsData);
            }
            Expect::ContentsData => self.want(Expect::FileClose),
            Expect::Target => {
                self.token(expect, format::TARGET)?;
                self.want(Expect::TargetValue);
            }
            Expect::TargetValue => {
                format::check_target(&self.body).map_err(|reason| {
                    self.error(self.string_start, NarErrorKind::InvalidTarget(reason))
                })?;
                self.want(Expect::SymlinkClose);
                found = Some(Found::Symlink);
            }
            Expect::EntryOrDirectoryClose => match &self.body[..] {
                format::ENTRY => self.want(Expect::EntryOpen),
                format::CLOSE => {
                    self.dirs.pop();
                    self.node_done();
                    found = Some(Found::DirectoryEnd);
                }
                _ => return Err(self.unexpected(expect)),
            },
            Expect::EntryOpen => {
                self.token(expect, format::OPEN)?;
                self.want(Expect::Name);
            }
            Expect::Name => {
                self.token(expect, format::NAME)?;
                self.want(Expect::NameValue);
            }
            Expect::NameValue => {
                self.enter_entry()?;
                self.want(Expect::Node);
            }
            Expect::Node => {
                self.token(expect, format::NODE)?;
                self.want(Expect::NodeOpen);
            }
            Expect::EntryClose => {
                self.token(expect, format::CLOSE)?;
                self.want(Expect::EntryOrDirectoryClose);
            }
            Expect::FileClose | Expect::SymlinkClose => {
                self.token(expect, format::CLOSE)?;
                self.node_done();
                if expect == Expect::FileClose {
                    found = Some(Found::FileEnd);
                }
            }
        }
        Ok(found)
    }

    /// Checks the entry name just read and makes it the last component of `path`.
    fn enter_entry(&mut self) -> Result<(), NarError> {
        let name = &self.body;
        let at = self.string_start;
        format::check_name(name).map_err(|reason| {
            self.error(at, NarErrorKind::InvalidName { name: name.clone(), reason })
        })?;
        if !self.prev_name.is_empty() && name <= &self.prev_name {
            let kind = if *name == self.prev_name {
                NarErrorKind::DuplicateName { name: name.clone() }
            } else {
                NarErrorKind::NotSorted { prev: self.prev_name.clone(), name: name.clone() }
            };
            return Err(self.error(at, kind));
        }
        let len = format::child_path_len(self.path.len(), name.len());
        if len > MAX_PATH_LEN {
            return Err(self.error(at, NarErrorKind::PathTooLong { len }));
        }
        if !self.path.is_empty() {
            self.path.push(b'/');
        }
        self.path.extend_from_slice(name);
        Ok(())
    }

    /// The current node is complete: the archive ends, or its entry does.
    fn node_done(&mut self) {
        if self.dirs.is_empty() {
            self.expect = None;
        } else {
            self.want(Expect::EntryClose);
            self.leave_pending = true;
        }
    }

    /// Cuts `path` back to the innermost open directory, remembering the name cut off as that
    /// directory's previous entry.
    fn leave_node(&mut self) {
        self.leave_pending = false;
        let dir_len = *self.dirs.last().expect("an entry is inside a directory");
        let name_start = if dir_len == 0 { 0 } else { dir_len + 1 };
        self.prev_name.clear();
        self.prev_name.extend_from_slice(&self.path[name_start..]);
        self.path.truncate(dir_len);
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

    /// The events as owned text, one line each.
    fn events(nar: &[u8], chunk: usize) -> Result<Vec<String>, NarError> {
        let mut parser = NarParser::new();
        let mut out = Vec::new();
        for piece in nar.chunks(chunk.max(1)) {
            parser.push(piece, |e| out.push(describe(e)))?;
        }
        parser.finish()?;
        // File data may arrive in pieces; join consecutive ones.
        let mut joined: Vec<String> = Vec::new();
        for line in out {
            match (joined.last_mut(), line.strip_prefix("data ")) {
                (Some(last), Some(more)) if last.starts_with("data ") => last.push_str(more),
                _ => joined.push(line),
            }
        }
        Ok(joined)
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
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s);
            out.resize(out.len() + format::padding_len(s.len() as u64), 0);
        }
        out
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
        let nar = raw(&[
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"b",
            b"node",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"a",
            b"node",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"x",
            b")",
            b")",
            b")",
            b")",
            b"entry",
            b"(",
            b"name",
            b"c",
            b"node",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"x",
            b")",
            b")",
            b")",
        ]);
        assert!(validate(&nar).is_ok());
        let not_sorted = raw(&[
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"b",
            b"node",
            b"(",
            b"type",
            b"directory",
            b"entry",
            b"(",
            b"name",
            b"z",
            b"node",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"x",
            b")",
            b")",
            b")",
            b")",
            b"entry",
            b"(",
            b"name",
            b"a",
            b"node",
            b"(",
            b"type",
            b"symlink",
            b"target",
            b"x",
            b")",
            b")",
            b")",
        ]);
        let (_, kind) = kind_at(&not_sorted);
        assert_eq!(kind, NarErrorKind::NotSorted { prev: b"b".to_vec(), name: b"a".to_vec() });
    }

    #[test]
    fn fields_in_nix_order_only() {
        // Nix's parser would take "executable" after "contents"; Nix never writes it.
        let nar = raw(&[b"(", b"type", b"regular", b"contents", b"", b"executable", b"", b")"]);
        let (_, kind) = kind_at(&nar);
        assert!(matches!(kind, NarErrorKind::UnexpectedToken { expected: "\")\"", .. }));
        let nar = raw(&[b"(", b"type", b"regular", b"executable", b"x"]);
        let (offset, kind) = kind_at(&nar);
        assert_eq!(offset, 24 + 16 * 3 + 24);
        assert!(matches!(kind, NarErrorKind::UnexpectedToken { .. }));
        let nar = raw(&[b"(", b"type", b"fifo"]);
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
        let mut nar = raw(&[b"(", b"type", b"symlink", b"target"]);
        nar.extend_from_slice(&u64::MAX.to_le_bytes());
        let (offset, kind) = kind_at(&nar);
        assert_eq!(offset, 24 + 16 * 4);
        assert_eq!(kind, NarErrorKind::InvalidTarget(TargetError::TooLong(u64::MAX)));
        // File contents may be that long: it is a truncation, found at the end.
        let mut nar = raw(&[b"(", b"type", b"regular", b"contents"]);
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
            let mut strings: Vec<&[u8]> = vec![b"(", b"type", b"directory"];
            for _ in 0..levels {
                strings.extend_from_slice(&[b"entry", b"(", b"name", b"d", b"node"]);
                strings.extend_from_slice(&[b"(", b"type", b"directory"]);
            }
            for _ in 0..levels {
                strings.extend_from_slice(&[b")", b")"]);
            }
            strings.push(b")");
            raw(&strings)
        };
        assert!(validate(&build(2048)).is_ok());
        let (_, kind) = kind_at(&build(2049));
        assert_eq!(kind, NarErrorKind::PathTooLong { len: 4097 });
    }
}
