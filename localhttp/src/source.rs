//! What the substituter needs from the mesh to serve Nix, as a trait, so that this crate knows
//! nothing of libp2p and its tests can stand in a hostile peer. (What the status pages show is
//! another trait, [`crate::node_view::NodeView`].)

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use nixmesh_protocol::{Sha256, StorePath, StorePathHash};
use thiserror::Error;

/// A NAR's bytes as a peer sends them, from the offset asked for.
pub type NarStream = Pin<Box<dyn Stream<Item = Result<Bytes, SourceError>> + Send>>;

/// Why a peer could not give what was asked. Every variant names the peer in its message.
#[derive(Debug, Clone, Error)]
pub enum SourceError {
    #[error("peer {peer}: {operation} failed: {reason}")]
    Failed { peer: String, operation: &'static str, reason: String },
    #[error("peer {peer}: {operation} timed out")]
    TimedOut { peer: String, operation: &'static str },
}

/// The mesh, as the substituter sees it.
///
/// `holders` is answered from local state alone; the two fetches go to the network, and the
/// substituter bounds them in time itself.
pub trait PathSource: Send + Sync + 'static {
    /// A peer's identity, as the source names it in logs and errors.
    type Peer: Clone + Eq + std::hash::Hash + fmt::Display + Send + Sync + 'static;

    /// Connected peers that advertise `hash`, best first. Never waits on the network.
    fn holders(&self, hash: &StorePathHash) -> Vec<Self::Peer>;

    /// Asked when [`PathSource::holders`] found none, before the substituter answers a miss
    /// (which Nix remembers for an hour): the holders that connect within a short while, if
    /// some peer that advertised `hash` is expected back soon (the node has just started and
    /// its peers are reconnecting), else none at once. The default expects no one.
    fn holders_reconnecting(
        &self,
        hash: &StorePathHash,
    ) -> impl Future<Output = Vec<Self::Peer>> + Send {
        let _ = hash;
        std::future::ready(Vec::new())
    }

    /// The narinfo text `peer` has for `hash`, or `None` when it says it has none.
    fn fetch_narinfo(
        &self,
        peer: &Self::Peer,
        hash: StorePathHash,
    ) -> impl Future<Output = Result<Option<String>, SourceError>> + Send;

    /// `peer`'s NAR for `hash`, from byte `offset` on, if its NAR is the one with `nar_hash`;
    /// `None` when it says it has none (or another build of the path).
    fn fetch_nar(
        &self,
        peer: &Self::Peer,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> impl Future<Output = Result<Option<NarStream>, SourceError>> + Send;

    /// `peer`'s listing (`<hash>.ls`, the JSON Nix writes) of `hash`, if its NAR is the one
    /// with `nar_hash`; `None` when it says it has none. The default has none.
    fn fetch_listing(
        &self,
        peer: &Self::Peer,
        hash: StorePathHash,
        nar_hash: Sha256,
    ) -> impl Future<Output = Result<Option<Bytes>, SourceError>> + Send {
        let _ = (peer, hash, nar_hash);
        std::future::ready(Ok(None))
    }

    /// The peers to ask for build logs, which nothing advertises: connected ones, best first,
    /// a bounded number. Never waits on the network. The default knows none.
    fn log_holders(&self) -> Vec<Self::Peer> {
        Vec::new()
    }

    /// `peer`'s build log of the derivation `drv`, as text; `None` when it has none or does
    /// not give its logs. The default has none.
    fn fetch_build_log(
        &self,
        peer: &Self::Peer,
        drv: &StorePath,
    ) -> impl Future<Output = Result<Option<Bytes>, SourceError>> + Send {
        let _ = (peer, drv);
        std::future::ready(Ok(None))
    }
}
