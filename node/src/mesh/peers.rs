//! What the node knows of each peer right now: connections, addresses, last contact, RTT.
//!
//! Kept in memory only; what peers hold lives in the index. Every method takes the lock for a
//! few map operations, never across an await.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::share::Origin;

/// The most addresses remembered, or dialled, per peer (peers choose what they tell us).
pub(super) const MAX_ADDRESSES: usize = 16;

/// One peer's live state.
#[derive(Debug, Clone, Default)]
pub struct PeerState {
    pub addresses: BTreeSet<Multiaddr>,
    pub connections: u32,
    pub last_seen: Option<Instant>,
    pub rtt: Option<Duration>,
    /// The name it gives itself (see [`crate::mesh::peer_name`]), sanitised.
    pub name: Option<String>,
    /// The host its latest connection came from (or went to).
    pub host: Option<IpAddr>,
    /// Its latest connection's security and cipher, e.g. `tls/TLS13_AES_128_GCM_SHA256`.
    pub security: Option<String>,
    /// Cancelled when the peer is gone: its last connection closed, or the node began to
    /// close them (see [`PeerTable::until_gone`]); a new one for each time it connects.
    presence: Option<CancellationToken>,
}

/// The live state of every peer the node has seen since it started.
#[derive(Debug, Default)]
pub struct PeerTable {
    peers: Mutex<HashMap<PeerId, PeerState>>,
}

impl PeerTable {
    fn with<R>(&self, f: impl FnOnce(&mut HashMap<PeerId, PeerState>) -> R) -> R {
        f(&mut self.peers.lock())
    }

    /// Records a new connection, with the address it was dialled at if we dialled; returns
    /// true if it is the peer's first.
    pub fn connected(&self, peer: PeerId, dialled: Option<Multiaddr>) -> bool {
        self.with(|peers| {
            let state = peers.entry(peer).or_default();
            state.connections += 1;
            state.last_seen = Some(Instant::now());
            // A connection made while the last ones are still closing starts a new presence.
            if state.presence.as_ref().is_none_or(CancellationToken::is_cancelled) {
                state.presence = Some(CancellationToken::new());
            }
            if let Some(address) = dialled
                && state.addresses.len() < MAX_ADDRESSES
            {
                state.addresses.insert(address);
            }
            state.connections == 1
        })
    }

    /// Records the security `peer`'s latest connection runs on.
    pub fn secured(&self, peer: PeerId, security: String) {
        self.with(|peers| peers.entry(peer).or_default().security = Some(security));
    }

    /// Whether `peer` has been connected at some time since the node started.
    pub fn ever_connected(&self, peer: &PeerId) -> bool {
        self.with(|peers| peers.get(peer).is_some_and(|p| p.last_seen.is_some()))
    }

    /// Records a closed connection; returns true if the peer has none left.
    pub fn disconnected(&self, peer: PeerId, remaining: u32) -> bool {
        self.with(|peers| {
            let state = peers.entry(peer).or_default();
            state.connections = remaining;
            if remaining == 0
                && let Some(presence) = state.presence.take()
            {
                presence.cancel();
            }
            remaining == 0
        })
    }

    /// Records that the node is closing `peer`'s connections (it stopped answering pings):
    /// what waits on the peer gives up now rather than when the closing is done, which
    /// against a frozen machine is not bounded in time.
    pub fn dropping(&self, peer: &PeerId) {
        self.with(|peers| {
            if let Some(presence) = peers.get(peer).and_then(|s| s.presence.as_ref()) {
                presence.cancel();
            }
        })
    }

    /// A token cancelled once `peer` is gone (its last connection closed, or the node
    /// dropping it), so that a request or a stream waiting on it stops at once instead of at
    /// its time-out: a graceful close by this node does not wake readers of the
    /// connection's streams. `None` when the peer is not connected now.
    pub fn until_gone(&self, peer: &PeerId) -> Option<CancellationToken> {
        self.with(|peers| {
            let state = peers.get(peer).filter(|s| s.connections > 0)?;
            state.presence.clone()
        })
    }

    /// Records a ping round trip.
    pub fn pinged(&self, peer: PeerId, rtt: Duration) {
        self.with(|peers| {
            let state = peers.entry(peer).or_default();
            state.rtt = Some(rtt);
            state.last_seen = Some(Instant::now());
        })
    }

    /// Adds addresses the peer says it listens on.
    pub fn learned_addresses(&self, peer: PeerId, addresses: impl IntoIterator<Item = Multiaddr>) {
        self.with(|peers| {
            let state = peers.entry(peer).or_default();
            for a in addresses {
                if state.addresses.len() >= MAX_ADDRESSES {
                    break;
                }
                state.addresses.insert(a);
            }
        })
    }

    /// Records the host a connection of the peer's is with.
    pub fn at_host(&self, peer: PeerId, host: IpAddr) {
        self.with(|peers| peers.entry(peer).or_default().host = Some(host))
    }

    /// Where `peer` connects from, for fair shares: its host, or itself when that is not
    /// known.
    pub fn origin(&self, peer: &PeerId) -> Origin {
        match self.with(|peers| peers.get(peer).and_then(|s| s.host)) {
            Some(host) => Origin::Host(host),
            None => Origin::Peer(*peer),
        }
    }

    /// Records the name the peer gives itself.
    pub fn named(&self, peer: PeerId, name: Option<String>) {
        self.with(|peers| peers.entry(peer).or_default().name = name)
    }

    /// Whether a connection to `peer` is open.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.with(|peers| peers.get(peer).is_some_and(|s| s.connections > 0))
    }

    /// The connected peers among `candidates`, fastest (by last RTT) first.
    pub fn connected_by_rtt(&self, candidates: Vec<PeerId>) -> Vec<PeerId> {
        let mut live: Vec<(Duration, PeerId)> = self.with(|peers| {
            candidates
                .into_iter()
                .filter_map(|p| {
                    let s = peers.get(&p).filter(|s| s.connections > 0)?;
                    Some((s.rtt.unwrap_or(Duration::MAX), p))
                })
                .collect()
        });
        live.sort();
        live.into_iter().map(|(_, p)| p).collect()
    }

    /// A copy of every peer's state.
    pub fn snapshot(&self) -> Vec<(PeerId, PeerState)> {
        self.with(|peers| peers.iter().map(|(p, s)| (*p, s.clone())).collect())
    }

    /// Connected peers not heard from (connected or pinged) for longer than `limit`.
    pub fn silent_for(&self, limit: Duration) -> Vec<PeerId> {
        self.with(|peers| {
            peers
                .iter()
                .filter(|(_, s)| {
                    s.connections > 0 && s.last_seen.is_some_and(|t| t.elapsed() > limit)
                })
                .map(|(p, _)| *p)
                .collect()
        })
    }

    /// How many peers are connected now.
    /// The peers with a connection.
    pub fn connected_ids(&self) -> Vec<PeerId> {
        self.with(|peers| {
            peers.iter().filter(|(_, s)| s.connections > 0).map(|(peer, _)| *peer).collect()
        })
    }

    pub fn connected_count(&self) -> usize {
        self.with(|peers| peers.values().filter(|s| s.connections > 0).count())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_counting_and_ordering() {
        let table = PeerTable::default();
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/ip4/10.0.0.1/tcp/1".parse().unwrap();
        assert!(table.connected(a, Some(addr.clone())));
        assert!(!table.connected(a, Some(addr.clone())));
        assert!(table.connected(b, Some(addr.clone())));
        table.pinged(a, Duration::from_millis(9));
        table.pinged(b, Duration::from_millis(2));
        assert_eq!(table.connected_by_rtt(vec![a, b, c]), vec![b, a]);
        assert!(!table.disconnected(a, 1));
        assert!(table.disconnected(b, 0));
        assert_eq!(table.connected_by_rtt(vec![a, b, c]), vec![a]);
        assert_eq!(table.connected_count(), 1);
    }

    #[test]
    fn a_peer_is_gone_when_dropped_or_disconnected_and_back_with_a_new_connection() {
        let table = PeerTable::default();
        let peer = PeerId::random();
        assert!(table.until_gone(&peer).is_none(), "not connected: nothing to wait on");
        table.connected(peer, None);
        let first = table.until_gone(&peer).unwrap();
        table.connected(peer, None);
        assert!(!table.disconnected(peer, 1));
        assert!(!first.is_cancelled(), "one connection left");
        table.dropping(&peer);
        assert!(first.is_cancelled(), "dropping ends the presence at once");
        // A new connection while the old ones close is a new presence.
        table.connected(peer, None);
        let second = table.until_gone(&peer).unwrap();
        assert!(!second.is_cancelled());
        assert!(table.disconnected(peer, 0));
        assert!(second.is_cancelled());
        assert!(table.until_gone(&peer).is_none());
    }
}
