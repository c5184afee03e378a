//! NAR bytes exchanged with each peer, both ways: received by the fetch client for the local
//! substituter, served by the provider to peers; and what came from upstream caches:
//! downloaded by this node, and relayed to peers from its downloads. The totals are
//! Prometheus counters the node registers in the [`Registry`] `/metrics` serves; the per-peer
//! counts are for `nixmesh peers`.
//!
//! Received bytes are counted as they arrive; served ones as each NAR transfer completes.
//! Kept in memory since the start; at most [`MAX_PEERS`] peers are counted one by one (the
//! totals count every byte).

use std::collections::HashMap;

use libp2p::PeerId;
use nixmesh_telemetry::{Counter, Registry};
use parking_lot::Mutex;

/// The most peers whose bytes are counted apart.
pub const MAX_PEERS: usize = 4096;

/// NAR bytes to and from one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    pub received: u64,
    pub served: u64,
}

/// NAR bytes to and from every peer. Shared as an `Arc`.
#[derive(Debug, Default)]
pub struct Traffic {
    received: Counter,
    served: Counter,
    /// Bytes downloaded from upstream caches, as sent (compressed).
    pub upstream: Counter,
    /// NAR bytes of this node's upstream downloads sent to peers.
    relayed: Counter,
    peers: Mutex<HashMap<PeerId, PeerTraffic>>,
}

impl Traffic {
    /// Registers the totals in `metrics`: `nixmesh_nar_received_bytes_total` and
    /// `nixmesh_nar_served_bytes_total`.
    pub fn register(&self, metrics: &Registry) {
        let help = "NAR bytes received from peers (for the local substituter)";
        metrics.register("nar_received_bytes", help, self.received.clone());
        let help = "NAR bytes served to peers (from the local store)";
        metrics.register("nar_served_bytes", help, self.served.clone());
        let help = "Bytes downloaded from upstream caches (as sent, compressed)";
        metrics.register("upstream_downloaded_bytes", help, self.upstream.clone());
        let help = "NAR bytes of this node's upstream downloads relayed to peers";
        metrics.register("upstream_relayed_bytes", help, self.relayed.clone());
    }

    /// `bytes` of a NAR downloaded from upstream went to `peer`, which would otherwise have
    /// downloaded them itself.
    pub fn relayed(&self, bytes: u64) {
        self.relayed.inc_by(bytes);
    }

    /// Bytes downloaded from upstream, and the NAR bytes of them relayed to peers.
    pub fn upstream_total(&self) -> (u64, u64) {
        (self.upstream.get(), self.relayed.get())
    }

    /// `bytes` of a NAR came from `peer`.
    pub fn received(&self, peer: PeerId, bytes: u64) {
        self.received.inc_by(bytes);
        self.with(peer, |t| t.received += bytes);
    }

    /// `bytes` of a NAR went to `peer`.
    pub fn served(&self, peer: PeerId, bytes: u64) {
        self.served.inc_by(bytes);
        self.with(peer, |t| t.served += bytes);
    }

    /// The bytes exchanged with `peer`.
    pub fn of(&self, peer: &PeerId) -> PeerTraffic {
        self.lock().get(peer).copied().unwrap_or_default()
    }

    /// The bytes exchanged with all peers.
    pub fn total(&self) -> PeerTraffic {
        PeerTraffic { received: self.received.get(), served: self.served.get() }
    }

    fn with(&self, peer: PeerId, f: impl FnOnce(&mut PeerTraffic)) {
        let mut peers = self.lock();
        if peers.len() < MAX_PEERS || peers.contains_key(&peer) {
            f(peers.entry(peer).or_default());
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<PeerId, PeerTraffic>> {
        self.peers.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_peer_and_the_totals() {
        let traffic = Traffic::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        traffic.received(a, 10);
        traffic.received(a, 5);
        traffic.served(b, 7);
        assert_eq!(traffic.of(&a), PeerTraffic { received: 15, served: 0 });
        assert_eq!(traffic.of(&b), PeerTraffic { received: 0, served: 7 });
        assert_eq!(traffic.total(), PeerTraffic { received: 15, served: 7 });
        let registry = Registry::new();
        traffic.register(&registry);
        let text = registry.encode();
        assert!(text.contains("nixmesh_nar_received_bytes_total 15\n"), "{text}");
        assert!(text.contains("nixmesh_nar_served_bytes_total 7\n"), "{text}");
    }
}
