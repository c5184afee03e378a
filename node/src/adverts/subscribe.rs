//! Following peers' advertisements into the index: one task per connected peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use nixmesh_protocol::StorePathHash;
use nixmesh_protocol::mesh_messages::{
    ADVERTS_PROTOCOL, AdvertMessage, AdvertPosition, AdvertRequest, MAX_FRAME_LEN,
};
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::index::{Index, IndexError};
use crate::mesh::framed::{FrameError, FrameLimits, MeshStream};
use crate::mesh::{Mesh, MeshEvent};
use crate::node::shutdown::Shutdown;

/// How long to wait for the subscription request to go out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A holder says nothing between changes, so reads wait this long before the stream is
/// considered dead (the connection's own keep-alive usually notices first).
const IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// A frame, once begun, arrives within this.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
const LIMITS: FrameLimits = FrameLimits {
    idle: IDLE_TIMEOUT,
    read: FRAME_TIMEOUT,
    write: REQUEST_TIMEOUT,
    max_frame: MAX_FRAME_LEN,
};
/// The most paths one peer may advertise, snapshot and deltas alike: ten times a large
/// store, and a bound on what a hostile peer can make this node store (about 40 MB while a
/// snapshot is collected, 400 MB of index on disk).
const MAX_PEER_PATHS: usize = 2_000_000;
/// Snapshots collected at once; more peers wait their turn (reading nothing meanwhile, so
/// the holders wait too), which bounds the memory they take together.
const CONCURRENT_SNAPSHOTS: usize = 2;
/// The most peers followed at once.
const MAX_FOLLOWED: usize = 1024;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long a peer whose paths the index refused at its size bound waits before it is asked
/// again (the index logs the refusal).
const REFUSED_RETRY: Duration = Duration::from_secs(600);

/// Why one subscription stream ended.
#[derive(Debug, Error)]
enum SubscribeError {
    #[error("cannot open the stream: {0}")]
    Open(String),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("index: {0}")]
    Index(String),
    /// The index is at its size bound and this peer is over its share.
    #[error("index: {0}")]
    Refused(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// Follows each peer `events` reports connected into `index`, and stops following it when
/// it disconnects (see [`Subscriptions`]), until `shutdown`.
pub fn follow_peers(
    mesh: &Mesh,
    index: Arc<Index>,
    mut events: mpsc::Receiver<MeshEvent>,
    shutdown: &Shutdown,
) {
    let mut subscriptions = Subscriptions::new(mesh.clone(), index, shutdown.clone());
    shutdown.spawn_until_stopped(async move {
        while let Some(event) = events.recv().await {
            match event {
                MeshEvent::Connected(peer) => subscriptions.follow(peer),
                MeshEvent::Disconnected(peer) => subscriptions.unfollow(&peer),
            }
        }
    });
}

/// The subscription tasks, one per connected peer.
pub struct Subscriptions {
    mesh: Mesh,
    shutdown: Shutdown,
    index: Arc<Index>,
    tasks: HashMap<PeerId, JoinHandle<()>>,
    snapshots: Arc<Semaphore>,
}

impl Subscriptions {
    pub fn new(mesh: Mesh, index: Arc<Index>, shutdown: Shutdown) -> Self {
        let snapshots = Arc::new(Semaphore::new(CONCURRENT_SNAPSHOTS));
        Subscriptions { mesh, shutdown, index, tasks: HashMap::new(), snapshots }
    }

    /// Starts following `peer` (it just connected).
    pub fn follow(&mut self, peer: PeerId) {
        self.tasks.retain(|_, task| !task.is_finished());
        if self.tasks.contains_key(&peer) {
            return;
        }
        if self.tasks.len() >= MAX_FOLLOWED {
            return warn!(%peer, "not following: already {MAX_FOLLOWED} peers followed");
        }
        let span = info_span!("adverts", %peer);
        let (mesh, index, snapshots) =
            (self.mesh.clone(), self.index.clone(), self.snapshots.clone());
        let task = self
            .shutdown
            .spawn_until_stopped(follow(mesh, index, snapshots, peer).instrument(span));
        self.tasks.insert(peer, task);
    }

    /// Stops following `peer` (its last connection closed). What it advertised stays in the
    /// index for its return; lookups skip peers that are not connected.
    pub fn unfollow(&mut self, peer: &PeerId) {
        if let Some(task) = self.tasks.remove(peer) {
            task.abort();
        }
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        for task in self.tasks.values() {
            task.abort();
        }
    }
}

/// Follows `peer` for as long as it stays connected, resubscribing after errors.
async fn follow(mesh: Mesh, index: Arc<Index>, snapshots: Arc<Semaphore>, peer: PeerId) {
    let mut retry = FIRST_RETRY;
    let mut resume_from_index = true;
    while mesh.peers().is_connected(&peer) {
        // After an index error, the next subscription asks for a snapshot; after anything
        // else it resumes from the index again (a failed resume just leads back here).
        resume_from_index =
            match subscribe_once(&mesh, &index, &snapshots, peer, resume_from_index).await {
                Ok(()) => {
                    debug!("holder closed the stream");
                    true
                }
                Err(SubscribeError::Index(e)) => {
                    info!("index out of step ({e}); asking for a snapshot");
                    false
                }
                Err(SubscribeError::Refused(e)) => {
                    debug!("{e}; asking again in {REFUSED_RETRY:?}");
                    tokio::time::sleep(REFUSED_RETRY).await;
                    true
                }
                Err(e) => {
                    debug!("subscription ended: {e}");
                    true
                }
            };
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

/// One subscription to `peer`'s advertisements, until the holder closes it or it fails.
async fn subscribe_once(
    mesh: &Mesh,
    index: &Arc<Index>,
    snapshots: &Arc<Semaphore>,
    peer: PeerId,
    resume_from_index: bool,
) -> Result<(), SubscribeError> {
    let resume = if resume_from_index {
        let index = index.clone();
        blocking(move || index.peer_position(&peer))
            .await?
            .map(|(epoch, generation)| AdvertPosition { epoch, generation })
    } else {
        None
    };
    let stream = mesh
        .control()
        .open_stream(peer, Mesh::protocol(ADVERTS_PROTOCOL))
        .await
        .map_err(|e| SubscribeError::Open(e.to_string()))?;
    let mut stream = MeshStream::mesh(stream, LIMITS);
    stream.write(&AdvertRequest::Subscribe { resume }).await?;
    debug!(?resume, "subscribed");
    let mut following = Following { index, snapshots, peer, snapshot: None };
    loop {
        let message = match stream.read::<AdvertMessage>().await {
            Err(FrameError::Closed) => return Ok(()),
            other => other?,
        };
        match message {
            AdvertMessage::Snapshot { position, hashes, last } => {
                following.snapshot_part(position, hashes, last).await?;
            }
            AdvertMessage::Delta { position, from, added, removed } => {
                following.delta(position, from, added, removed).await?;
            }
        }
    }
}

/// A snapshot being collected, with its turn among the snapshots collected at once.
struct Collecting {
    position: AdvertPosition,
    hashes: Vec<StorePathHash>,
    _turn: OwnedSemaphorePermit,
}

/// What one subscription writes into the index, message by message.
struct Following<'a> {
    index: &'a Arc<Index>,
    snapshots: &'a Arc<Semaphore>,
    peer: PeerId,
    snapshot: Option<Collecting>,
}

impl Following<'_> {
    /// Collects one part of a snapshot (waiting for a turn at its first part); the last part
    /// replaces the peer's set in the index.
    async fn snapshot_part(
        &mut self,
        position: AdvertPosition,
        hashes: Vec<StorePathHash>,
        last: bool,
    ) -> Result<(), SubscribeError> {
        if self.snapshot.is_none() {
            let turn = self.snapshots.clone().acquire_owned().await;
            let turn = turn.expect("the semaphore is never closed");
            self.snapshot = Some(Collecting { position, hashes: Vec::new(), _turn: turn });
        }
        let collecting = self.snapshot.as_mut().expect("just set");
        if collecting.position != position {
            return Err(SubscribeError::Protocol("snapshot position changed mid-snapshot".into()));
        }
        if collecting.hashes.len() + hashes.len() > MAX_PEER_PATHS {
            return Err(SubscribeError::Protocol(format!(
                "snapshot of more than {MAX_PEER_PATHS} paths"
            )));
        }
        collecting.hashes.extend(hashes);
        if last {
            // The turn is held until the snapshot is written.
            let Collecting { position, hashes, _turn } = self.snapshot.take().expect("just set");
            let count = hashes.len();
            let (index, peer) = (self.index.clone(), self.peer);
            blocking(move || {
                index.replace_peer(&peer, position.epoch, position.generation, &hashes)
            })
            .await?;
            info!(paths = count, generation = position.generation, "snapshot indexed");
        }
        Ok(())
    }

    /// Applies one change of the peer's set to the index.
    async fn delta(
        &mut self,
        position: AdvertPosition,
        from: u64,
        added: Vec<StorePathHash>,
        removed: Vec<StorePathHash>,
    ) -> Result<(), SubscribeError> {
        if self.snapshot.is_some() {
            return Err(SubscribeError::Protocol("delta inside a snapshot".into()));
        }
        let peer = self.peer;
        if self.index.path_count(&peer) as usize + added.len() > MAX_PEER_PATHS {
            return Err(SubscribeError::Protocol(format!(
                "advertises more than {MAX_PEER_PATHS} paths"
            )));
        }
        let (n_added, n_removed) = (added.len(), removed.len());
        let index = self.index.clone();
        blocking(move || {
            index.apply_delta(&peer, position.epoch, from, position.generation, &added, &removed)
        })
        .await?;
        debug!(
            added = n_added,
            removed = n_removed,
            generation = position.generation,
            "delta indexed"
        );
        Ok(())
    }
}

/// Runs an index operation off the async threads (writes take milliseconds).
async fn blocking<T>(
    f: impl FnOnce() -> Result<T, IndexError> + Send + 'static,
) -> Result<T, SubscribeError>
where
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Err(e)) if e.is_full() => Err(SubscribeError::Refused(e.to_string())),
        Ok(result) => result.map_err(|e| SubscribeError::Index(e.to_string())),
        Err(e) => {
            warn!("index task failed: {e}");
            Err(SubscribeError::Index(e.to_string()))
        }
    }
}
