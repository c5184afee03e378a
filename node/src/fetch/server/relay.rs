//! What the provider asks for paths from upstream, as the claimer of the peers that ask it
//! (`crate::upstream::flight` implements it): the provider only carries its answers, and
//! knows nothing of upstreams.

use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use futures::future::BoxFuture;
use nixmesh_protocol::{Sha256, StorePathHash};
use thiserror::Error;

/// A NAR's bytes as a claimer relays them, from the offset asked for.
pub type RelayedBytes = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// The upstream side of a relay's failure, kept whole (its kind, its causes) for whoever
/// implements [`UpstreamRelay`] to downcast; the provider only tells the asker its text.
pub type UpstreamCause = Box<dyn std::error::Error + Send + Sync>;

/// Why a claimer relays nothing to the peer that asked.
#[derive(Debug, Error)]
pub enum RelayError {
    /// The NAR is shorter than the offset asked for.
    #[error("offset {offset} is past the NAR's end ({nar_size})")]
    PastEnd { offset: u64, nar_size: u64 },
    /// A download of the same NAR for one reader (too large for the spool) is under way here.
    #[error("busy: NAR {nar_hash} is being downloaded here for another reader")]
    Busy { nar_hash: Sha256 },
    /// The upstreams (or the path's claimer, or the spool) failed.
    #[error("{0}")]
    Upstream(UpstreamCause),
}

/// What answers the peers that ask this node for paths from upstream, as their claimer.
pub trait UpstreamRelay: Send + Sync + 'static {
    /// The upstreams' narinfo for `hash`, its URL absolute; `None` when they lack it.
    fn narinfo(&self, hash: StorePathHash) -> BoxFuture<'_, Result<Option<String>, RelayError>>;
    /// The NAR with `nar_hash` of `hash`: its size, and its bytes from `offset` as they
    /// arrive; `None` when no upstream has that build of the path.
    fn nar(
        &self,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> BoxFuture<'_, Result<Option<(u64, RelayedBytes)>, RelayError>>;
    /// Counts `len` NAR bytes relayed to a peer.
    fn relayed(&self, len: u64);
}
