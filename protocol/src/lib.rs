//! Nix's formats and nixmesh's wire messages, with no I/O.
//!
//! Everything here is pure: types, parsers and encoders that other crates feed bytes to.
//! Nothing in this crate opens a socket or a file, or depends on an async runtime.

pub mod content_address;
pub mod hash;
pub mod mesh_messages;
pub mod nar;
pub mod narinfo;
pub mod nix_conf;
pub mod nix_daemon;
pub mod nixbase32;
pub mod signature;
pub mod store_path;

pub use content_address::ContentAddress;
pub use hash::{HashAlgo, NixHash, Sha256};
pub use narinfo::NarInfo;
pub use store_path::{StorePath, StorePathHash};

/// At most the first 80 characters of `text`: how input is quoted in an error message, so that
/// hostile input cannot make the message (or the log line) long.
pub fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}
