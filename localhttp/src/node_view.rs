//! What the `/_nixmesh/*` pages show of the node, as a trait apart from the data plane
//! ([`crate::source::PathSource`]): the node's state and its peers, for `nixmesh status` and
//! `nixmesh peers`. Nothing here is on the path of a narinfo or a NAR.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The node, as its status pages show it. Answered from local state alone.
pub trait NodeView: Send + Sync + 'static {
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
    /// Whether only some nodes may connect: those with the mesh key, or those allowed by id.
    #[serde(default)]
    pub private_mesh: bool,
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
