//! Fair shares per peer: at most so many of something for one peer at once, the rest waiting
//! their turn. Used on both sides of the fetch conversation (streams in use toward a peer,
//! requests of a peer's being answered), so that one peer can neither take every slot nor be
//! refused outright when it is merely busy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `per_peer` shares held at once for each peer. A peer's entry lives only while
/// someone holds or waits for one of its shares, so the table is as large as the set of busy
/// peers.
pub struct PeerShares {
    per_peer: usize,
    table: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
}

/// One share of a peer's; given back on drop.
pub struct PeerShare {
    permit: Option<OwnedSemaphorePermit>,
    peer: PeerId,
    shares: Arc<PeerShares>,
}

impl PeerShares {
    pub fn new(per_peer: usize) -> Arc<Self> {
        Arc::new(PeerShares { per_peer, table: Mutex::new(HashMap::new()) })
    }

    /// Waits for a share of `peer`'s (the caller bounds the wait in time).
    pub async fn acquire(self: &Arc<Self>, peer: PeerId) -> PeerShare {
        let semaphore = {
            let mut table = self.table.lock().expect("peer shares lock poisoned");
            table.entry(peer).or_insert_with(|| Arc::new(Semaphore::new(self.per_peer))).clone()
        };
        // Declared before the wait, so dropped after it if this future is dropped while
        // waiting: the entry goes then unless someone else still uses it.
        let _tidy = Tidy { peer, shares: self.clone() };
        let permit = semaphore.acquire_owned().await.expect("peer semaphores are never closed");
        PeerShare { permit: Some(permit), peer, shares: self.clone() }
    }

    /// Forgets `peer`'s entry if nobody holds or waits for one of its shares (called with
    /// the caller's reference already dropped).
    fn tidy(&self, peer: &PeerId) {
        let mut table = self.table.lock().expect("peer shares lock poisoned");
        if table.get(peer).is_some_and(|s| Arc::strong_count(s) == 1) {
            table.remove(peer);
        }
    }

    #[cfg(test)]
    fn peers(&self) -> usize {
        self.table.lock().unwrap().len()
    }
}

/// Tidies a peer's entry away when dropped (harmless while it is still in use).
struct Tidy {
    peer: PeerId,
    shares: Arc<PeerShares>,
}

impl Drop for Tidy {
    fn drop(&mut self) {
        self.shares.tidy(&self.peer);
    }
}

impl Drop for PeerShare {
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
