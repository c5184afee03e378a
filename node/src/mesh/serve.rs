//! Serving one of the node's protocols to peers: every inbound stream on a task of its own,
//! within limits, without ever stalling the accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, Span, debug, warn};

use super::Mesh;
use super::share::{PeerShare, PeerShares};
use crate::shutdown::Shutdown;

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
    shutdown: Shutdown,
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
            () = shutdown.signalled() => return,
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
        shutdown.spawn_until_stopped(
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

/// How many requests are answered at once, how many of them for one peer, and how long a
/// request may wait for its turn.
#[derive(Debug, Clone, Copy)]
pub struct TurnLimits {
    pub concurrent: usize,
    pub per_peer: usize,
    pub max_wait: Duration,
}

/// Turns to answer peers' requests on long-lived streams, where a stream's admission says
/// nothing about how much work it brings: each request waits for a turn of its own, within
/// its peer's share, so a few busy peers cannot take every turn.
pub struct Turns {
    limits: TurnLimits,
    running: Arc<Semaphore>,
    shares: Arc<PeerShares>,
}

/// A turn; given back on drop.
pub struct Turn {
    _running: OwnedSemaphorePermit,
    _share: PeerShare,
}

impl Turns {
    pub fn new(limits: TurnLimits) -> Self {
        Turns {
            limits,
            running: Arc::new(Semaphore::new(limits.concurrent)),
            shares: PeerShares::new(limits.per_peer),
        }
    }

    /// A turn for `peer`, or `None` if none came within the limits' wait.
    pub async fn take(&self, peer: PeerId) -> Option<Turn> {
        let wait = async {
            let share = self.shares.acquire(peer).await;
            let running = self.running.clone().acquire_owned().await.ok()?;
            Some(Turn { _running: running, _share: share })
        };
        let turn = tokio::time::timeout(self.limits.max_wait, wait).await.ok().flatten();
        if turn.is_none() {
            warn!(%peer, "no turn for a request within {:?}", self.limits.max_wait);
        }
        turn
    }
}
