//! Forgetting peers that left: what a peer advertised stays in the index while it is away
//! (so its return resumes from a delta), but a peer unseen for the configured time (a week by
//! default) is dropped from the index, so identities that come and go cannot fill the disk.
//!
//! "Unseen since" is never earlier than the truth: the peer table's last sighting if this
//! run saw the peer, else the later of its last indexed update and this node's start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;
use tracing::{info, warn};

use crate::index::Index;
use crate::mesh::{Mesh, PeerTable};
use crate::node::shutdown::Shutdown;

/// How often the index is looked over, at most (shorter for short expiry times).
const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// Forgets the peers of `mesh` unseen for `after`, until `shutdown` (see [`forget_departed`]).
pub fn start(index: Arc<Index>, mesh: &Mesh, after: Duration, shutdown: &Shutdown) {
    let peers = mesh.peers().clone();
    shutdown.spawn(forget_departed(index, peers, after, shutdown.clone()));
}

/// Forgets peers unseen for `after`, until `shutdown`.
pub async fn forget_departed(
    index: Arc<Index>,
    peers: Arc<PeerTable>,
    after: Duration,
    shutdown: Shutdown,
) {
    let started = Instant::now();
    let started_unix = unix_now();
    let every = (after / 4).clamp(Duration::from_millis(100), MAX_CHECK_INTERVAL);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.signalled() => return,
            _ = tick.tick() => {}
        }
        let seen: HashMap<_, _> = peers.snapshot().into_iter().collect();
        let Ok(indexed) = index.peers() else { continue };
        for peer in indexed {
            let unseen = match seen.get(&peer.id) {
                Some(state) if state.connections > 0 => continue,
                Some(state) => state.last_seen.map_or(started.elapsed(), |t| t.elapsed()),
                None => {
                    let since = peer.last_update_unix.max(started_unix);
                    Duration::from_secs(unix_now().saturating_sub(since))
                }
            };
            if unseen <= after {
                continue;
            }
            let (index, id) = (index.clone(), peer.id);
            match tokio::task::spawn_blocking(move || index.forget_peer(&id)).await {
                Ok(Ok(())) => {
                    info!(peer = %id, paths = peer.paths, ?unseen, "forgot a peer unseen for {after:?}");
                }
                Ok(Err(e)) => warn!(peer = %id, "cannot forget a departed peer: {e}"),
                Err(e) => warn!(peer = %id, "forgetting a departed peer failed: {e}"),
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}
