//! The fetch conversation, both sides: [`client`] asks peers for narinfos and NARs (and
//! `documents`, for listings and build logs), [`server`] answers them from the local store.
//!
//! A fetch stream is a session: the asker sends a request, reads the whole answer (a NAR's
//! bytes included), and may then send the next request on the same stream. Streams are kept
//! per peer and reused, so the per-path cost is one request frame and one answer, not a new
//! stream with its protocol negotiation. A request that finds its stream closed before
//! any answer arrived was not answered, so the client asks again on a new stream: requests
//! only read, so asking twice is harmless.

pub mod client;
mod documents;
pub mod link;
pub mod policy;
pub mod server;
pub mod traffic;
pub mod zstd_blocks;

use std::time::Duration;

pub use client::FetchClient;
pub use server::Provider;

/// How long either side may take to send or receive one frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a session may sit idle between requests before the holder closes it. The client
/// reuses a stream only well within this, so that it rarely finds one just closed.
const SESSION_IDLE: Duration = Duration::from_secs(60);
const REUSE_WITHIN: Duration = Duration::from_secs(20);
/// NAR bytes travel in chunks of this size.
const NAR_CHUNK: usize = 64 * 1024;

/// The version of the fetch conversation agreed on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchVersion {
    /// `/nixmesh/fetch/2`: NARs raw only.
    V2,
    /// `/nixmesh/fetch/3`: also NARs as zstd blocks (`NarCoded`, `NarBlocks`).
    V3,
}

impl FetchVersion {
    /// The version whose protocol name is `protocol`.
    pub fn of(protocol: &str) -> Option<Self> {
        use nixmesh_protocol::mesh_messages::{FETCH_PROTOCOL, FETCH_PROTOCOL_V3};
        match protocol {
            FETCH_PROTOCOL => Some(FetchVersion::V2),
            FETCH_PROTOCOL_V3 => Some(FetchVersion::V3),
            _ => None,
        }
    }
}
