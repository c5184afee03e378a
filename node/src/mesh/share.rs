//! Fair shares: at most so many of something for one peer, or one machine, at once, the rest
//! waiting their turn. Used on both sides of the fetch conversation (streams in use toward a
//! peer; sessions, requests and NAR transfers of a peer's, and of its machine's, at the
//! holder), so that one peer can neither take every slot nor be refused outright when it is
//! merely busy, and a machine cannot take more by showing several identities.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;

use libp2p::PeerId;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Where a peer connects from: its machine (the remote address's host), or the peer itself
/// while that is not known. Identities are free to make; addresses on a LAN are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Host(IpAddr),
    Peer(PeerId),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Host(ip) => write!(f, "host {ip}"),
            Origin::Peer(peer) => write!(f, "peer {peer}"),
        }
    }
}

/// Shares per peer.
pub type PeerShares = Shares<PeerId>;
/// One share of a peer's.
pub type PeerShare = Share<PeerId>;

/// At most `per_key` shares held at once for each key (a peer, an origin). A key's entry
/// lives only while someone holds or waits for one of its shares, so the table is as large
/// as the set of busy keys.
pub struct Shares<K: Eq + Hash + Copy> {
    per_peer: usize,
    table: Mutex<HashMap<K, Arc<Semaphore>>>,
}

/// One share of a key's; given back on drop.
pub struct Share<K: Eq + Hash + Copy> {
    permit: Option<OwnedSemaphorePermit>,
    peer: K,
    shares: Arc<Shares<K>>,
}

impl<K: Eq + Hash + Copy> Shares<K> {
    pub fn new(per_key: usize) -> Arc<Self> {
        Arc::new(Shares { per_peer: per_key, table: Mutex::new(HashMap::new()) })
    }

    /// Waits for a share of `peer`'s (the caller bounds the wait in time).
    pub async fn acquire(self: &Arc<Self>, peer: K) -> Share<K> {
        let semaphore = {
            let mut table = self.table.lock();
            table.entry(peer).or_insert_with(|| Arc::new(Semaphore::new(self.per_peer))).clone()
        };
        // Declared before the wait, so dropped after it if this future is dropped while
        // waiting: the entry goes then unless someone else still uses it.
        let _tidy = Tidy { peer, shares: self.clone() };
        let permit = semaphore.acquire_owned().await.expect("peer semaphores are never closed");
        Share { permit: Some(permit), peer, shares: self.clone() }
    }

    /// Forgets `peer`'s entry if nobody holds or waits for one of its shares (called with
    /// the caller's reference already dropped).
    fn tidy(&self, peer: &K) {
        let mut table = self.table.lock();
        if table.get(peer).is_some_and(|s| Arc::strong_count(s) == 1) {
            table.remove(peer);
        }
    }

    #[cfg(test)]
    fn peers(&self) -> usize {
        self.table.lock().len()
    }
}

/// Tidies a key's entry away when dropped (harmless while it is still in use).
struct Tidy<K: Eq + Hash + Copy> {
    peer: K,
    shares: Arc<Shares<K>>,
}

impl<K: Eq + Hash + Copy> Drop for Tidy<K> {
    fn drop(&mut self) {
        self.shares.tidy(&self.peer);
    }
}

impl<K: Eq + Hash + Copy> Drop for Share<K> {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.shares.tidy(&self.peer);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_peer_waits_beyond_its_share_and_others_do_not() {
        let shares = PeerShares::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let held = [shares.acquire(a).await, shares.acquire(a).await];
        let third = tokio::time::timeout(Duration::from_millis(20), shares.acquire(a)).await;
        assert!(third.is_err(), "a third share of a's waits");
        let other = tokio::time::timeout(Duration::from_millis(20), shares.acquire(b)).await;
        assert!(other.is_ok(), "b is not held up by a");
        drop(other);
        drop(held);
        assert_eq!(shares.peers(), 0, "idle peers leave the table");
    }
}
