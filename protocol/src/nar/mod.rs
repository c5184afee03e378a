//! NAR, Nix's archive format: a streaming writer and a streaming reader/validator.
//!
//! A NAR serialises one file system object, a regular file (contents and an executable bit),
//! a symlink (its target) or a directory (named entries, sorted bytewise), with nothing else:
//! no timestamps, owners or other permission bits, so one tree has exactly one NAR. Every
//! string is a little-endian `u64` length, the bytes, and zero bytes up to a multiple of 8:
//!
//! ```text
//! nar   = "nix-archive-1" node
//! node  = "(" "type" ( "regular" ["executable" ""] "contents" bytes
//!                    | "symlink" "target" bytes
//!                    | "directory" { "entry" "(" "name" bytes "node" node ")" } ) ")"
//! ```
//!
//! - [`writer`]: [`writer::open`] a NAR on any [`std::io::Write`] and hand it the tree node
//!   by node; it refuses what Nix would not write (unsorted or invalid names, short file
//!   contents, a node left unwritten).
//! - [`reader`]: [`NarParser`] takes the archive in chunks of any size, checks it as it
//!   goes and reports [`Event`]s, in bounded memory and without buffering file contents;
//!   [`NarValidator`] and [`validate`] just check and count.
//! - [`listing`]: the `.ls` listing Nix writes beside a NAR (what it holds, and where each
//!   file's contents start), from a tree or from a NAR's events.
//!
//! Both accept exactly the archives Nix writes (`nix-store --dump`, checked against golden
//! files in `protocol/tests/data/nar/`), within the bounds in [`format`](mod@format): entry
//! names of at most [`MAX_NAME_LEN`] bytes, symlink targets of at most [`MAX_TARGET_LEN`],
//! and paths inside the archive of at most [`MAX_PATH_LEN`], which no archive Nix can make
//! exceeds.
//!
//! ```
//! use nixmesh_protocol::nar::{self, Event, NarParser};
//!
//! let mut bytes = Vec::new();
//! let mut root = nar::writer::open(&mut bytes)?.directory()?;
//! root.entry(b"hello")?.file(true, 3, &mut &b"hi\n"[..])?;
//! root.entry(b"link")?.symlink(b"hello")?;
//! root.close()?;
//!
//! let mut parser = NarParser::new();
//! let mut files = Vec::new();
//! for chunk in bytes.chunks(5) {
//!     parser.push(chunk, |event| {
//!         if let Event::FileStart { path, size, .. } = event {
//!             files.push((path.to_vec(), size));
//!         }
//!     })?;
//! }
//! parser.finish()?;
//! assert_eq!(files, [(b"hello".to_vec(), 3)]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod format;
pub mod listing;
pub mod reader;
pub mod writer;

pub use format::{MAX_NAME_LEN, MAX_PATH_LEN, MAX_TARGET_LEN, NameError, TargetError};
pub use reader::{Event, NarError, NarErrorKind, NarParser, NarValidator, validate};
pub use writer::{Directory, Node, WriteError};
