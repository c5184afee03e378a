//! What can go wrong talking to the nix-daemon. Every error names the socket, so a person
//! running several stores can tell which one failed.

use std::io;
use std::path::PathBuf;

use nixmesh_protocol::StorePath;
use thiserror::Error;

use nixmesh_protocol::nix_daemon::worker_protocol::MIN_MINOR;

/// A failed store operation.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The `--store` string is neither `daemon` nor `unix:///path`.
    #[error("invalid store address {0:?}: expected \"daemon\" or \"unix:///path/to/socket\"")]
    InvalidAddress(String),

    /// The socket could not be opened (no daemon there, no permission).
    #[error("cannot connect to the nix-daemon at {}: {cause}", .socket.display())]
    Connect { socket: PathBuf, cause: io::Error },

    /// Reading or writing the socket failed, or the daemon closed it mid-operation.
    #[error("nix-daemon at {}: {cause}", .socket.display())]
    Io { socket: PathBuf, cause: io::Error },

    /// The daemon speaks a protocol version we do not.
    #[error(
        "nix-daemon at {} speaks worker protocol {major}.{minor}; nixmesh needs 1.{MIN_MINOR} \
         or newer (Nix 2.0 or later)",
        .socket.display()
    )]
    UnsupportedDaemon { socket: PathBuf, major: u64, minor: u64 },

    /// The daemon reported a failure of the operation (`STDERR_ERROR`).
    #[error("nix-daemon at {} reported an error: {message}", .socket.display())]
    Daemon { socket: PathBuf, message: String },

    /// The daemon sent something the protocol does not allow, or over our size limits.
    #[error("nix-daemon at {} broke the worker protocol: {problem}", .socket.display())]
    Protocol { socket: PathBuf, problem: String },

    /// `nar_from_path` was given a size no NAR can have (the daemon reports 0 for unknown).
    #[error("cannot stream the NAR of {path}: {nar_size} bytes is not a valid NAR size")]
    InvalidNarSize { path: StorePath, nar_size: u64 },

    /// The store's files could not be read to make a NAR.
    #[error("reading {} for its NAR: {cause}", .path.display())]
    Dump { path: PathBuf, cause: io::Error },
}

impl StoreError {
    /// Whether this is a failure of the socket itself (as opposed to an answer we refused),
    /// the kind a stale pooled connection produces.
    pub(crate) fn is_io(&self) -> bool {
        matches!(self, StoreError::Io { .. })
    }
}
