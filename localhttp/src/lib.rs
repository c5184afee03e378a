//! The localhost HTTP substituter: Nix's binary-cache protocol in front of the mesh.

pub mod source;

pub use source::{NarStream, NodeStatus, PathSource, PeerSummary, SourceError};
