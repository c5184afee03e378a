//! Serving one of the node's protocols to peers: every inbound stream on a task of its own,
//! within limits, without ever stalling the accept loop.
//!
//! Each limit is held per peer and per origin (the peer's host, see [`Origin`]), so several
//! identities on one machine share one machine's part. Every refusal is logged, at most a
//! line a second, saying how many were held back since.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use nixmesh_telemetry::RateLimitedLog;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, Span, debug, warn};

use super::Mesh;
use super::share::{Origin, PeerShare, PeerShares, Share, Shares};
use crate::node::shutdown::Shutdown;

/// How many streams of one protocol are served at once, how many more may wait (each for at
/// most `max_wait`) for a turn, and how many of all those one peer, and one origin, may have.
/// A stream beyond these is closed at once, so the peer learns right away to try elsewhere
/// instead of finding out by a time-out, and one peer or machine cannot take every turn.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub concurrent: usize,
    pub waiting: usize,
    pub max_wait: Duration,
    pub per_peer: usize,
    pub per_origin: usize,
}

/// Streams admitted per key (a peer, an origin); an entry goes when its count reaches zero.
struct PerPeer<K>(Mutex<HashMap<K, usize>>);

impl<K> Default for PerPeer<K> {
    fn default() -> Self {
        PerPeer(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + Hash + Copy> PerPeer<K> {
    fn admit(self: &Arc<Self>, peer: K, limit: usize) -> Option<PeerSlot<K>> {
        let mut counts = self.0.lock();
        let count = counts.entry(peer).or_default();
        if *count >= limit {
            if *count == 0 {
                counts.remove(&peer);
            }
            return None;
        }
        *count += 1;
        Some(PeerSlot { table: self.clone(), peer })
    }
}

/// One admitted stream of a key's; given back on drop.
struct PeerSlot<K: Eq + Hash + Copy> {
    table: Arc<PerPeer<K>>,
    peer: K,
}

impl<K: Eq + Hash + Copy> Drop for PeerSlot<K> {
    fn drop(&mut self) {
        let mut counts = self.table.0.lock();
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
    let handle = |peer, stream, _| handle(peer, stream);
    serve_stream_versions(mesh, &[protocol], limits, shutdown, span, handle).await
}

/// As [`serve_streams`], for the streams of every version in `protocols` (one conversation's),
/// within one set of `limits`; `handle` is told the version agreed.
pub async fn serve_stream_versions<H, F>(
    mesh: &Mesh,
    protocols: &[&'static str],
    limits: StreamLimits,
    shutdown: Shutdown,
    span: impl Fn(PeerId) -> Span,
    handle: H,
) where
    H: Fn(PeerId, Stream, StreamProtocol) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let protocol = protocols.first().copied().unwrap_or_default();
    let versions: Vec<_> = protocols.iter().map(|p| Mesh::protocol(p)).collect();
    let mut incoming = match mesh.control().accept_versions(&versions) {
        Ok(incoming) => incoming,
        Err(e) => return warn!(protocol, "cannot accept streams: {e}"),
    };
    let admitted = Arc::new(Semaphore::new(limits.concurrent + limits.waiting));
    let running = Arc::new(Semaphore::new(limits.concurrent));
    let per_peer = Arc::new(PerPeer::default());
    let per_origin = Arc::new(PerPeer::default());
    let refusals = RateLimitedLog::default();
    let refused = |peer: PeerId, why: String| {
        if let Some(held_back) = refusals.admit() {
            warn!(%peer, protocol, held_back, "refusing a stream: {why}");
        }
    };
    loop {
        let (peer, stream, version) = tokio::select! {
            () = shutdown.signalled() => return,
            next = incoming.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let Some(slot) = per_peer.admit(peer, limits.per_peer) else {
            refused(peer, format!("the peer has {} already", limits.per_peer));
            continue;
        };
        let origin = mesh.peers().origin(&peer);
        let Some(origin_slot) = per_origin.admit(origin, limits.per_origin) else {
            refused(peer, format!("its {origin} has {} already", limits.per_origin));
            continue;
        };
        let Ok(admission) = admitted.clone().try_acquire_owned() else {
            let all = limits.concurrent + limits.waiting;
            refused(peer, format!("{all} served or waiting"));
            continue;
        };
        let running = running.clone();
        let work = handle(peer, stream, version);
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
                drop((turn, admission, slot, origin_slot));
            }
            .instrument(span(peer)),
        );
    }
}

/// How many requests are answered at once, how many of them for one peer and for one origin,
/// and how long a request may wait for its turn.
#[derive(Debug, Clone, Copy)]
pub struct TurnLimits {
    pub concurrent: usize,
    pub per_peer: usize,
    pub per_origin: usize,
    pub max_wait: Duration,
}

/// Turns to answer peers' requests on long-lived streams, where a stream's admission says
/// nothing about how much work it brings: each request waits for a turn of its own, within
/// its peer's and its origin's shares, so a few busy peers or machines cannot take every
/// turn. Also used for NAR transfers, which hold theirs for as long as the peer reads.
pub struct Turns {
    limits: TurnLimits,
    running: Arc<Semaphore>,
    shares: Arc<PeerShares>,
    origins: Arc<Shares<Origin>>,
    refusals: RateLimitedLog,
    what: &'static str,
}

/// A turn; given back on drop.
pub struct Turn {
    _running: OwnedSemaphorePermit,
    _origin: Share<Origin>,
    _share: PeerShare,
}

impl Turns {
    /// Turns for `what` (named in the log line when one is refused) within `limits`.
    pub fn new(what: &'static str, limits: TurnLimits) -> Self {
        Turns {
            limits,
            running: Arc::new(Semaphore::new(limits.concurrent)),
            shares: PeerShares::new(limits.per_peer),
            origins: Shares::new(limits.per_origin),
            refusals: RateLimitedLog::default(),
            what,
        }
    }

    /// A turn for `peer` from `origin`, or `None` (logged) if none came within the limits'
    /// wait.
    pub async fn take(&self, peer: PeerId, origin: Origin) -> Option<Turn> {
        let wait = async {
            let share = self.shares.acquire(peer).await;
            let origin = self.origins.acquire(origin).await;
            let running = self.running.clone().acquire_owned().await.ok()?;
            Some(Turn { _running: running, _origin: origin, _share: share })
        };
        let turn = tokio::time::timeout(self.limits.max_wait, wait).await.ok().flatten();
        if turn.is_none()
            && let Some(held_back) = self.refusals.admit()
        {
            warn!(%peer, %origin, held_back, "no turn for {} within {:?}", self.what,
                self.limits.max_wait);
        }
        turn
    }
}
