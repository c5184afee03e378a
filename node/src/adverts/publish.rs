//! This node's side of advertising: rescan the local store, answer subscribers.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use nixmesh_protocol::mesh_messages::{
    ADVERTS_PROTOCOL, AdvertMessage, AdvertPosition, AdvertRequest, MAX_HASHES_PER_FRAME,
    MAX_REQUEST_FRAME_LEN,
};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, warn};

use super::store_watch::StoreWatch;
use super::{AdvertLog, CatchUp};
use crate::local::store::Store;
use crate::mesh::framed::{FrameError, FrameLimits, MeshStream};
use crate::mesh::{Mesh, StreamLimits, serve_streams};
use crate::node::shutdown::Shutdown;

/// How long a subscriber may take to send its request, or to take one frame.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const LIMITS: FrameLimits = FrameLimits {
    idle: FRAME_TIMEOUT,
    read: FRAME_TIMEOUT,
    write: FRAME_TIMEOUT,
    max_frame: MAX_REQUEST_FRAME_LEN,
};
/// Subscribers served at once (each is a long-lived stream), two per peer (one, and the one
/// replacing it while the old closes: see [`Current`]), 64 per origin (the peer's host); none
/// wait for a turn.
const SUBSCRIBERS: StreamLimits = StreamLimits {
    concurrent: 1024,
    waiting: 0,
    max_wait: Duration::ZERO,
    per_peer: 2,
    per_origin: 64,
};

/// With a working [`StoreWatch`], the store is listed this often anyway, in case a change
/// escaped it.
const WATCHED_RESCAN: Duration = Duration::from_secs(60);
/// The least time between two listings, so that a store being written all the time (a
/// large build, a `nix copy`) is listed a few times a second, not after every write.
const MIN_RESCAN_GAP: Duration = Duration::from_millis(250);
/// The gap is also at least this many times the last listing's time (the daemon's answer
/// and the comparison), so that a large store being written all the time (a rebuild) is
/// not listed without pause: 50,000 paths take 20-30 ms of the node's CPU and 25-100 ms to
/// list, which at the least gap was a fifth of a core for as long as the rebuild ran.
const RESCAN_GAP_PER_LISTING: u32 = 10;
/// ... but never more than this, so that a new path reaches peers in a few seconds from any
/// store.
const MAX_RESCAN_GAP: Duration = Duration::from_secs(5);

/// The time to leave between a listing that took `took` and the next.
fn rescan_gap(took: Duration) -> Duration {
    (took * RESCAN_GAP_PER_LISTING).clamp(MIN_RESCAN_GAP, MAX_RESCAN_GAP)
}

/// Keeps `log` current with the local store until `shutdown` (see [`rescan_loop`]): rescans
/// whenever the store's database changes, when its files (`real_store_dir`) are on this
/// machine and can be watched, and otherwise every `interval`.
pub fn start_rescans(
    store: &Store,
    log: &Arc<AdvertLog>,
    real_store_dir: Option<&Path>,
    interval: Duration,
    shutdown: &Shutdown,
) {
    let watch = real_store_dir.and_then(|dir| match StoreWatch::for_store(dir) {
        Ok(watch) => {
            info!(dir = %watch.dir().display(), "watching the store's database for changes");
            Some(watch)
        }
        Err(e) => {
            info!("cannot watch the store's database ({e}); listing the store every {interval:?}");
            None
        }
    });
    let (store, log) = (store.clone(), log.clone());
    shutdown.spawn(rescan_loop(store, log, interval, watch, shutdown.clone()));
}

/// Rescans the local store and records what changed, until `shutdown`: whenever `watch` says
/// the database changed, and every [`WATCHED_RESCAN`]; without a watch (or once it breaks),
/// every `interval`.
pub async fn rescan_loop(
    store: Store,
    log: Arc<AdvertLog>,
    interval: Duration,
    mut watch: Option<StoreWatch>,
    shutdown: Shutdown,
) {
    let period = if watch.is_some() { WATCHED_RESCAN } else { interval };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last, mut gap) = (tokio::time::Instant::now(), MIN_RESCAN_GAP);
    loop {
        tokio::select! {
            () = shutdown.signalled() => return,
            _ = tick.tick() => {}
            changed = changed(&mut watch) => if let Err(e) = changed {
                warn!("watching the store failed ({e}); listing it every {interval:?} instead");
                watch = None;
                tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            },
        }
        tokio::select! {
            () = shutdown.signalled() => return,
            () = tokio::time::sleep_until(last + gap) => {}
        }
        last = tokio::time::Instant::now();
        match store.query_all_valid_paths().await {
            Ok(hashes) => {
                if let Some(change) = log.update(hashes) {
                    info!(
                        generation = change.to,
                        added = change.added.len(),
                        removed = change.removed.len(),
                        "local store changed"
                    );
                }
            }
            Err(e) => warn!("cannot list the local store: {e}"),
        }
        gap = rescan_gap(last.elapsed());
    }
}

/// The next change `watch` sees; never, without one.
async fn changed(watch: &mut Option<StoreWatch>) -> std::io::Result<()> {
    match watch {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// Answers subscribers on [`ADVERTS_PROTOCOL`] until `shutdown`.
///
/// A subscriber's slot is given back as soon as it is gone: its stream ended or broke, its
/// connection closed (or is being closed for silence), or it subscribed again (see
/// [`Current`]). A holder whose store is quiet writes nothing for hours, so waiting to find
/// out on the next write kept a restarted peer's old slots, and twice restarted, the peer
/// was refused.
pub async fn serve(mesh: Mesh, log: Arc<AdvertLog>, shutdown: Shutdown) {
    let span = |peer| info_span!("advert-subscriber", %peer);
    let current = Arc::new(Current::default());
    serve_streams(&mesh, ADVERTS_PROTOCOL, SUBSCRIBERS, shutdown, span, |peer, stream| {
        let log = log.clone();
        let subscription = current.replace(peer);
        let gone = mesh.peers().until_gone(&peer);
        async move {
            let serving = serve_subscriber(MeshStream::mesh(stream, LIMITS), &log);
            tokio::select! {
                served = serving => match served {
                    Ok(()) | Err(FrameError::Closed) => debug!("subscriber left"),
                    Err(e) => debug!("subscriber stream ended: {e}"),
                },
                () = subscription.replaced.cancelled() => {
                    debug!("subscriber replaced by its new subscription");
                }
                () = cancelled(gone.as_ref()) => debug!("subscriber's peer gone"),
            }
        }
    })
    .await
}

/// Until `token` is cancelled; never, without one.
async fn cancelled(token: Option<&CancellationToken>) {
    match token {
        Some(token) => token.cancelled().await,
        None => std::future::pending().await,
    }
}

/// The subscription served to each peer now. A peer follows a holder on one stream at a
/// time, so its new subscription means the old one is dead to it (it restarted, or the
/// stream broke on its side unseen here): the old one is ended, its slot given back.
#[derive(Default)]
struct Current {
    by_peer: Mutex<HashMap<PeerId, (u64, CancellationToken)>>,
    next: std::sync::atomic::AtomicU64,
}

/// One peer's subscription; leaves [`Current`] when dropped, unless replaced already.
struct Subscription {
    current: Arc<Current>,
    peer: PeerId,
    id: u64,
    /// Cancelled when the peer subscribes again.
    replaced: CancellationToken,
}

impl Current {
    /// `peer`'s new subscription, replacing (ending) any it had.
    fn replace(self: &Arc<Self>, peer: PeerId) -> Subscription {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let replaced = CancellationToken::new();
        let old = self.lock().insert(peer, (id, replaced.clone()));
        if let Some((_, old)) = old {
            old.cancel();
        }
        Subscription { current: self.clone(), peer, id, replaced }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, HashMap<PeerId, (u64, CancellationToken)>> {
        self.by_peer.lock()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut by_peer = self.current.lock();
        if by_peer.get(&self.peer).is_some_and(|(id, _)| *id == self.id) {
            by_peer.remove(&self.peer);
        }
    }
}

async fn serve_subscriber(mut stream: MeshStream, log: &AdvertLog) -> Result<(), FrameError> {
    let AdvertRequest::Subscribe { resume } = stream.read().await?;
    let mut changed = log.watch();
    let mut known = resume;
    loop {
        // Mark the current generation seen before reading the log, so that a change landing
        // in between wakes us again rather than being missed.
        changed.borrow_and_update();
        match log.catch_up(known) {
            CatchUp::Current => {}
            CatchUp::Snapshot { position, hashes } => {
                send_snapshot(&mut stream, position, hashes).await?;
                known = Some(position);
            }
            CatchUp::Changes(changes) if changes.iter().any(too_large_for_a_frame) => {
                // A snapshot says the same in chunks.
                let CatchUp::Snapshot { position, hashes } = log.catch_up(None) else {
                    unreachable!("catch_up(None) is always a snapshot")
                };
                send_snapshot(&mut stream, position, hashes).await?;
                known = Some(position);
            }
            CatchUp::Changes(changes) => {
                let epoch = known.expect("changes follow a known position").epoch;
                for change in changes {
                    let position = AdvertPosition { epoch, generation: change.to };
                    let message = AdvertMessage::Delta {
                        position,
                        from: change.from,
                        added: change.added,
                        removed: change.removed,
                    };
                    stream.write(&message).await?;
                    known = Some(position);
                }
            }
        }
        // A quiet store may write nothing here for hours: meanwhile, watch the stream for
        // its end, so that a subscriber that is gone gives its slot back at once.
        tokio::select! {
            changed = changed.changed() => if changed.is_err() {
                return Ok(());
            },
            ended = stream.ended() => return Err(ended),
        }
    }
}

async fn send_snapshot(
    stream: &mut MeshStream,
    position: AdvertPosition,
    hashes: Vec<nixmesh_protocol::StorePathHash>,
) -> Result<(), FrameError> {
    let mut chunks = hashes.chunks(MAX_HASHES_PER_FRAME).peekable();
    if chunks.peek().is_none() {
        let message = AdvertMessage::Snapshot { position, hashes: Vec::new(), last: true };
        return stream.write(&message).await;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let message = AdvertMessage::Snapshot { position, hashes: chunk.to_vec(), last };
        stream.write(&message).await?;
    }
    Ok(())
}

fn too_large_for_a_frame(change: &super::Change) -> bool {
    change.added.len() + change.removed.len() > MAX_HASHES_PER_FRAME
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_subscription_replaces_the_peers_old_one_and_only_its_own() {
        let current = Arc::new(Current::default());
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = current.replace(a);
        let other = current.replace(b);
        let second = current.replace(a);
        assert!(first.replaced.is_cancelled(), "the old subscription is ended");
        assert!(!other.replaced.is_cancelled() && !second.replaced.is_cancelled());
        drop(first);
        assert_eq!(current.lock().get(&a).map(|(id, _)| *id), Some(second.id));
        drop(second);
        assert!(current.lock().get(&a).is_none(), "a peer's entry goes with its subscription");
        assert_eq!(current.lock().len(), 1);
    }

    #[test]
    fn the_gap_between_listings_grows_with_their_cost_within_bounds() {
        assert_eq!(rescan_gap(Duration::from_millis(1)), MIN_RESCAN_GAP);
        assert_eq!(rescan_gap(Duration::from_millis(100)), Duration::from_secs(1));
        assert_eq!(rescan_gap(Duration::from_secs(1)), MAX_RESCAN_GAP);
    }
}
