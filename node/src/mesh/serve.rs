//! Serving one of the node's protocols to peers: every inbound stream on a task of its own,
//! within limits, without ever stalling the accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, Span, debug, warn};

use super::Mesh;

/// How many streams of one protocol are served at once, how many more may wait (each for at
/// most `max_wait`) for a turn, and how many of all those one peer may have. A stream beyond
/// these is closed at once, so the peer learns right away to try elsewhere instead of
/// finding out by a time-out, and one peer cannot take every turn.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub concurrent: usize,
    pub waiting: usize,
    pub max_wait: Duration,
    pub per_peer: usize,
}

/// Streams admitted per peer; an entry goes when its count reaches zero.
#[derive(Default)]
struct PerPeer(Mutex<HashMap<PeerId, usize>>);

impl PerPeer {
    fn admit(self: &Arc<Self>, peer: PeerId, limit: usize) -> Option<PeerSlot> {
        let mut counts = self.0.lock().expect("per-peer counts lock poisoned");
        let count = counts.entry(peer).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(PeerSlot { table: self.clone(), peer })
    }
}

/// One admitted stream of a peer's; given back on drop.
struct PeerSlot {
    table: Arc<PerPeer>,
    peer: PeerId,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut counts = self.table.0.lock().expect("per-peer counts lock poisoned");
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// Accepts `protocol`'s streams until `shutdown` and runs `handle` on each (in `span(peer)`),
/// within `limits`.
pub async fn serve_streams<H, F>(
    mesh: &Mesh,
    protocol: &'static str,
    limits: StreamLimits,
    mut shutdown: watch::Receiver<bool>,
    span: impl Fn(PeerId) -> Span,
    handle: H,
) where
    H: Fn(PeerId, Stream) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut incoming = match mesh.control().accept(Mesh::protocol(protocol)) {
        Ok(incoming) => incoming,
        Err(e) => return warn!(protocol, "cannot accept streams: {e}"),
    };
    let admitted = Arc::new(Semaphore::new(limits.concurrent + limits.waiting));
    let running = Arc::new(Semaphore::new(limits.concurrent));
    let per_peer = Arc::new(PerPeer::default());
    loop {
        let (peer, stream) = tokio::select! {
            _ = shutdown.changed() => return,
            next = incoming.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let Some(slot) = per_peer.admit(peer, limits.per_peer) else {
            debug!(%peer, protocol, "refusing a stream: the peer has {} already", limits.per_peer);
            continue;
        };
        let Ok(admission) = admitted.clone().try_acquire_owned() else {
            let all = limits.concurrent + limits.waiting;
            warn!(%peer, protocol, "refusing a stream: {all} served or waiting");
            continue;
        };
        let running = running.clone();
        let work = handle(peer, stream);
        tokio::spawn(
            async move {
                let Ok(Ok(turn)) =
                    tokio::time::timeout(limits.max_wait, running.acquire_owned()).await
                else {
                    return debug!("dropped: no turn within {:?}", limits.max_wait);
                };
                work.await;
                // Named here so that the task owns them (an unused capture would be dropped
                // at once) and gives them back only now.
                drop((turn, admission, slot));
            }
            .instrument(span(peer)),
        );
    }
}
