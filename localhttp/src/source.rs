//! What the substituter needs from the mesh, as a trait, so that this crate knows nothing of
//! libp2p and its tests can stand in a hostile peer.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use nixmesh_protocol::{Sha256, StorePathHash};
use serde::{Deserialize, Serialize};
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
    type Peer: Clone + Eq + fmt::Display + Send + Sync + 'static;

    /// Connected peers that advertise `hash`, best first. Never waits on the network.
    fn holders(&self, hash: &StorePathHash) -> Vec<Self::Peer>;

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

    /// The peer list, for `GET /_nixmesh/peers`.
    fn peers(&self) -> Vec<PeerSummary>;

    /// The node's state, for `GET /_nixmesh/status`.
    fn status(&self) -> NodeStatus;
}

/// One peer, as `nixmesh peers` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerSummary {
    /// The libp2p peer id.
    pub id: String,
    /// Multiaddrs the node knows for the peer.
    pub addresses: Vec<String>,
    /// Store paths the peer advertises.
    pub paths: u64,
    /// Whether a connection to it is open now.
    pub connected: bool,
    /// Seconds since the peer was last heard from, if ever.
    pub last_seen_secs_ago: Option<u64>,
    /// The last ping round trip (in JSON: `rtt_ms`, milliseconds).
    #[serde(rename = "rtt_ms", with = "opt_millis")]
    pub rtt: Option<Duration>,
}

/// The node as `nixmesh status` prints it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub peer_id: String,
    pub listen_addresses: Vec<String>,
    /// Store paths this node advertises.
    pub local_paths: u64,
    pub peers_connected: u64,
    pub peers_known: u64,
    /// Paths the index knows some peer holds (with repeats across peers).
    pub indexed_paths: u64,
    pub trusted_keys: Vec<String>,
    pub signing_key: Option<String>,
    /// Why the node is not fully working, if it is not (say, its index cannot be written).
    #[serde(default)]
    pub degraded: Option<String>,
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_secs_f64() * 1000.0)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0)))
    }
}
