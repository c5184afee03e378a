//! Following peers' advertisements into the index: one task per connected peer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use nixmesh_protocol::StorePathHash;
use nixmesh_protocol::wire::{
    ADVERTS_PROTOCOL, AdvertMessage, AdvertPosition, AdvertRequest, MAX_FRAME_LEN,
};
use thiserror::Error;
use tokio::task::JoinHandle;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::index::Index;
use crate::mesh::Mesh;
use crate::mesh::framing::{FrameError, read_frame, write_frame};

/// How long to wait for the subscription request to go out.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A holder says nothing between changes, so reads wait this long before the stream is
/// considered dead (the connection's own keep-alive usually notices first).
const IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The most paths accepted in one peer's snapshot: a bound on what a hostile peer can make
/// this node store (100 times a large store).
const MAX_SNAPSHOT_PATHS: usize = 10_000_000;
const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Why one subscription stream ended.
#[derive(Debug, Error)]
enum SubscribeError {
    #[error("cannot open the stream: {0}")]
    Open(String),
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("index: {0}")]
    Index(String),
    #[error("protocol violation: {0}")]
    Protocol(String),
}

/// The subscription tasks, one per connected peer.
pub struct Subscriptions {
    mesh: Mesh,
    index: Arc<Index>,
    tasks: HashMap<PeerId, JoinHandle<()>>,
}

impl Subscriptions {
    pub fn new(mesh: Mesh, index: Arc<Index>) -> Self {
        Subscriptions { mesh, index, tasks: HashMap::new() }
    }

    /// Starts following `peer` (it just connected).
    pub fn follow(&mut self, peer: PeerId) {
        self.tasks.retain(|_, task| !task.is_finished());
        if self.tasks.contains_key(&peer) {
            return;
        }
        let span = info_span!("adverts", %peer);
        let task =
            tokio::spawn(follow(self.mesh.clone(), self.index.clone(), peer).instrument(span));
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
async fn follow(mesh: Mesh, index: Arc<Index>, peer: PeerId) {
    let mut retry = FIRST_RETRY;
    let mut resume_from_index = true;
    while mesh.peers().is_connected(&peer) {
        match subscribe_once(&mesh, &index, peer, resume_from_index).await {
            Ok(()) => debug!("holder closed the stream"),
            Err(SubscribeError::Index(e)) => {
                // Our copy disagrees with the holder's history: start from a snapshot.
                info!("index out of step ({e}); asking for a snapshot");
                resume_from_index = false;
            }
            Err(e) => debug!("subscription ended: {e}"),
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(MAX_RETRY);
    }
}

async fn subscribe_once(
    mesh: &Mesh,
    index: &Arc<Index>,
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
    let mut stream = stream.compat();
    write_frame(&mut stream, &AdvertRequest::Subscribe { resume }, REQUEST_TIMEOUT).await?;
    debug!(?resume, "subscribed");
    let mut snapshot: Option<(AdvertPosition, Vec<StorePathHash>)> = None;
    loop {
        let message =
            match read_frame::<AdvertMessage, _>(&mut stream, IDLE_TIMEOUT, MAX_FRAME_LEN).await {
                Err(FrameError::Closed) => return Ok(()),
                other => other?,
            };
        match message {
            AdvertMessage::Snapshot { position, hashes, last } => {
                let (at, collected) = snapshot.get_or_insert_with(|| (position, Vec::new()));
                if *at != position {
                    return Err(SubscribeError::Protocol(
                        "snapshot position changed mid-snapshot".into(),
                    ));
                }
                if collected.len() + hashes.len() > MAX_SNAPSHOT_PATHS {
                    return Err(SubscribeError::Protocol(format!(
                        "snapshot of more than {MAX_SNAPSHOT_PATHS} paths"
                    )));
                }
                collected.extend(hashes);
                if last {
                    let (position, hashes) = snapshot.take().expect("just inserted");
                    let count = hashes.len();
                    let index = index.clone();
                    blocking(move || {
                        index.replace_peer(&peer, position.epoch, position.generation, &hashes)
                    })
                    .await?;
                    info!(paths = count, generation = position.generation, "snapshot indexed");
                }
            }
            AdvertMessage::Delta { position, from, added, removed } => {
                if snapshot.is_some() {
                    return Err(SubscribeError::Protocol("delta inside a snapshot".into()));
                }
                let (n_added, n_removed) = (added.len(), removed.len());
                let index = index.clone();
                blocking(move || {
                    index.apply_delta(
                        &peer,
                        position.epoch,
                        from,
                        position.generation,
                        &added,
                        &removed,
                    )
                })
                .await?;
                debug!(
                    added = n_added,
                    removed = n_removed,
                    generation = position.generation,
                    "delta indexed"
                );
            }
        }
    }
}

/// Runs an index operation off the async threads (redb writes fsync).
async fn blocking<T, E>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, SubscribeError>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(|e| SubscribeError::Index(e.to_string())),
        Err(e) => {
            warn!("index task failed: {e}");
            Err(SubscribeError::Index(e.to_string()))
        }
    }
}
