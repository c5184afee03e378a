//! What the `/_nixmesh/*` pages show of the node, as a trait apart from the data plane
//! ([`crate::source::PathSource`]): the node's state and its peers, for `nixmesh status` and
//! `nixmesh peers`. Nothing here is on the path of a narinfo or a NAR.

use std::time::Duration;

use nixmesh_protocol::StorePathHash;
use serde::{Deserialize, Serialize};

/// The node, as its status pages show it. Answered from local state alone.
pub trait NodeView: Send + Sync + 'static {
    /// The peer list, for `GET /_nixmesh/peers`.
    fn peers(&self) -> Vec<PeerSummary>;

    /// The node's state, for `GET /_nixmesh/status` (and the gauges of `GET /metrics`). The
    /// substituter fills in [`NodeStatus::requests`] itself.
    fn status(&self) -> NodeStatus;

    /// Every peer the index says advertises `hash`, connected or not, for
    /// `GET /_nixmesh/why/<hash>`.
    fn advertisers(&self, hash: &StorePathHash) -> Vec<PeerSummary>;
}

/// One peer, as `nixmesh peers` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerSummary {
    /// The libp2p peer id.
    pub id: String,
    /// The name the peer gives itself (its hostname), sanitised; unchecked, so only a label:
    /// the id is what identifies it.
    #[serde(default)]
    pub name: Option<String>,
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
    /// Why the substituter asks this peer last, or not at all, for now (see
    /// [`crate::health`]); `None` when it is in good standing.
    #[serde(default)]
    pub demoted: Option<String>,
    /// NAR bytes received from it since this node started.
    #[serde(default)]
    pub bytes_received: u64,
    /// NAR bytes served to it since this node started.
    #[serde(default)]
    pub bytes_served: u64,
    /// Its latest connection's security and cipher suite, e.g. `tls/TLS13_AES_128_GCM_SHA256`
    /// or `noise/ChaChaPoly`; `None` before it first connected.
    #[serde(default)]
    pub security: Option<String>,
}

/// The node as `nixmesh status` prints it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    pub peer_id: String,
    /// The name this node gives itself to peers (its hostname).
    #[serde(default)]
    pub name: Option<String>,
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
    /// NAR bytes received from peers since the start.
    #[serde(default)]
    pub bytes_received: u64,
    /// NAR bytes served to peers since the start.
    #[serde(default)]
    pub bytes_served: u64,
    /// The substituter's answers to Nix since the start.
    #[serde(default)]
    pub requests: RequestCounts,
    /// The latest paths this node would not serve to a peer that asked, and why (newest
    /// last).
    #[serde(default)]
    pub not_served: Vec<String>,
    /// Whether only some nodes may connect: those with the mesh key, or those allowed by id.
    #[serde(default)]
    pub private_mesh: bool,
    /// The upstream caches the node fetches from what no peer holds.
    #[serde(default)]
    pub upstreams: Vec<UpstreamSummary>,
    /// The LAN substituter's URLs (`lan_listen`), one for each of this machine's addresses:
    /// what to give `nixos-install --option substituters` on a machine with no node.
    #[serde(default)]
    pub lan_urls: Vec<String>,
    /// Bytes this node downloaded from upstream caches since the start (as sent, compressed).
    #[serde(default)]
    pub bytes_from_upstream: u64,
    /// NAR bytes of this node's upstream downloads sent on to peers that would otherwise have
    /// downloaded them themselves.
    #[serde(default)]
    pub bytes_relayed: u64,
}

/// An upstream cache, as the status page shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UpstreamSummary {
    pub url: String,
    /// Not asked for now: it failed to answer in time lately (see the node's logs).
    pub skipped: bool,
}

/// The substituter's counts since the node started, as `nixmesh status` shows them.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RequestCounts {
    pub narinfo_hits: u64,
    pub narinfo_misses: u64,
    /// Narinfos with holders but none that could be served.
    pub narinfo_refused: u64,
    /// NARs sent to Nix whole.
    pub nars_sent: u64,
    /// NARs cut off after their response started.
    pub nars_aborted: u64,
}

impl RequestCounts {
    /// Narinfo hits among all narinfo requests answered, if there were any.
    pub fn hit_rate(&self) -> Option<f64> {
        let asked = self.narinfo_hits + self.narinfo_misses + self.narinfo_refused;
        (asked > 0).then(|| self.narinfo_hits as f64 / asked as f64)
    }
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
