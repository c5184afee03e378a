//! Fuzz targets for nixmesh's parsers of untrusted input: what each one checks.
//!
//! Every module here has one `check(data: &[u8])` that feeds `data` to a real parser and
//! panics only when the parser breaks a rule it promises: it panicked itself, it accepted
//! something it cannot give back unchanged, its answer depends on how its input was cut into
//! chunks, or an error lost what it must name. The binaries in `fuzz_targets/` hand these to
//! libFuzzer; `tests/corpus.rs` runs every committed corpus input through them under plain
//! `cargo test`, so the corpus is also a regression suite that needs no fuzzer.
//!
//! - [`narinfo`]: `NarInfo::parse`, what peers and HTTP caches send.
//! - [`nar`]: the push-based NAR reader, what peers stream and the daemon dumps.
//! - [`wire`]: the mesh's frames and every message type on the fetch and adverts streams.
//! - [`daemon`]: the node's nix-daemon client reading the daemon's replies.
//! - [`formats`]: the small parsers: content addresses, keys, signatures, store paths,
//!   hashes, nixbase32 and the list settings of nix.conf (trusted keys, substituters).
//!
//! `docs/fuzzing.md` says how to run them.

pub mod daemon;
pub mod formats;
pub mod nar;
pub mod narinfo;
pub mod wire;

/// A target's checks: panics if the parser broke a rule for `data`.
pub type Check = fn(data: &[u8]);

/// The targets, by the names of their binaries and corpus directories.
pub const TARGETS: [(&str, Check); 5] = [
    ("narinfo", narinfo::check),
    ("nar", nar::check),
    ("wire", wire::check),
    ("daemon", daemon::check),
    ("formats", formats::check),
];
