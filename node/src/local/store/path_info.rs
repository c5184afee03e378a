//! What the daemon says about a store path, in a file of its own so that the fuzz targets
//! (`fuzz/src/daemon.rs`) can compile the daemon client without the rest of the node.

use nixmesh_protocol::{Sha256, StorePath};

/// What the daemon knows about a valid store path (its `ValidPathInfo`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub path: StorePath,
    /// The derivation that built it, if the store remembers one.
    pub deriver: Option<StorePath>,
    /// The SHA-256 of the path's NAR serialisation.
    pub nar_hash: Sha256,
    pub references: Vec<StorePath>,
    /// Seconds since the epoch at which the path became valid.
    pub registration_time: u64,
    /// The size of the NAR in bytes.
    pub nar_size: u64,
    /// Whether this store built the path itself (rather than receiving it).
    pub ultimate: bool,
    /// Signatures as Nix stores them, `name:base64`, unverified.
    pub signatures: Vec<String>,
    /// The content address (`fixed:r:sha256:…`, `text:sha256:…`), for content-addressed paths.
    pub ca: Option<String>,
}
