//! The mesh as the local substituter sees it: [`MeshSource`] implements
//! [`nixmesh_localhttp::PathSource`] with the index for "who holds it" and fetch streams to
//! peers for the rest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use libp2p::PeerId;
use nixmesh_localhttp::{NarStream, NodeStatus, PathSource, PeerSummary, SourceError};
use nixmesh_protocol::wire::{
    FETCH_PROTOCOL, FetchRequest, FetchResponse, MAX_FRAME_LEN, MAX_NARINFO_LEN,
};
use nixmesh_protocol::{Sha256, StorePathHash};
use tokio::io::AsyncReadExt;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tokio_util::io::ReaderStream;
use tracing::warn;

use crate::adverts::AdvertLog;
use crate::index::Index;
use crate::mesh::Mesh;
use crate::mesh::framing::{read_frame, write_frame};

/// Bounds on a single exchange; the substituter applies its own, tighter ones on top.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);
/// NAR bytes are read from the peer in chunks of this size.
const NAR_CHUNK: usize = 64 * 1024;

/// What `nixmesh status` reports besides live state.
#[derive(Debug, Clone, Default)]
pub struct StaticStatus {
    pub trusted_keys: Vec<String>,
    pub signing_key: Option<String>,
}

/// The mesh behind the substituter.
pub struct MeshSource {
    mesh: Mesh,
    index: Arc<Index>,
    log: Arc<AdvertLog>,
    status: StaticStatus,
}

impl MeshSource {
    pub fn new(mesh: Mesh, index: Arc<Index>, log: Arc<AdvertLog>, status: StaticStatus) -> Self {
        MeshSource { mesh, index, log, status }
    }

    async fn request(
        &self,
        peer: &PeerId,
        request: FetchRequest,
        operation: &'static str,
    ) -> Result<(libp2p::Stream, FetchResponse), SourceError> {
        let failed =
            |reason: String| SourceError::Failed { peer: peer.to_string(), operation, reason };
        let stream = self
            .mesh
            .control()
            .open_stream(*peer, Mesh::protocol(FETCH_PROTOCOL))
            .await
            .map_err(|e| failed(format!("cannot open a stream: {e}")))?;
        let mut stream = stream.compat();
        write_frame(&mut stream, &request, FRAME_TIMEOUT)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let response = read_frame(&mut stream, FRAME_TIMEOUT, MAX_FRAME_LEN)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok((stream.into_inner(), response))
    }
}

impl PathSource for MeshSource {
    type Peer = PeerId;

    fn holders(&self, hash: &StorePathHash) -> Vec<PeerId> {
        match self.index.holders(hash) {
            Ok(holders) => self.mesh.peers().connected_by_rtt(holders),
            Err(e) => {
                warn!(%hash, "index lookup failed: {e}");
                Vec::new()
            }
        }
    }

    async fn fetch_narinfo(
        &self,
        peer: &PeerId,
        hash: StorePathHash,
    ) -> Result<Option<String>, SourceError> {
        let operation = "narinfo";
        let (_, response) = self.request(peer, FetchRequest::NarInfo { hash }, operation).await?;
        let failed =
            |reason: String| SourceError::Failed { peer: peer.to_string(), operation, reason };
        match response {
            FetchResponse::NarInfo { text } if text.len() <= MAX_NARINFO_LEN => Ok(Some(text)),
            FetchResponse::NarInfo { text } => {
                Err(failed(format!("narinfo of {} bytes", text.len())))
            }
            FetchResponse::NotFound => Ok(None),
            FetchResponse::Failed { message } => Err(failed(message)),
            FetchResponse::Nar { .. } => {
                Err(failed("answered a narinfo request with a NAR".into()))
            }
        }
    }

    async fn fetch_nar(
        &self,
        peer: &PeerId,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        let operation = "NAR";
        let request = FetchRequest::Nar { hash, nar_hash, offset };
        let (stream, response) = self.request(peer, request, operation).await?;
        let failed =
            |reason: String| SourceError::Failed { peer: peer.to_string(), operation, reason };
        match response {
            FetchResponse::Nar { nar_size, offset: sent_from }
                if sent_from == offset && offset <= nar_size =>
            {
                let body = stream.compat().take(nar_size - offset);
                let peer_name = peer.to_string();
                let bytes = ReaderStream::with_capacity(body, NAR_CHUNK).map_err(move |e| {
                    SourceError::Failed {
                        peer: peer_name.clone(),
                        operation,
                        reason: e.to_string(),
                    }
                });
                Ok(Some(bytes.boxed()))
            }
            FetchResponse::Nar { .. } => Err(failed("sent the NAR from another offset".into())),
            FetchResponse::NotFound => Ok(None),
            FetchResponse::Failed { message } => Err(failed(message)),
            FetchResponse::NarInfo { .. } => {
                Err(failed("answered a NAR request with a narinfo".into()))
            }
        }
    }

    fn peers(&self) -> Vec<PeerSummary> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut summaries: BTreeMap<PeerId, PeerSummary> = BTreeMap::new();
        for indexed in self.index.peers().unwrap_or_default() {
            summaries.insert(
                indexed.id,
                PeerSummary {
                    id: indexed.id.to_string(),
                    addresses: Vec::new(),
                    paths: indexed.paths,
                    connected: false,
                    last_seen_secs_ago: Some(now.saturating_sub(indexed.last_update_unix)),
                    rtt: None,
                },
            );
        }
        for (id, state) in self.mesh.peers().snapshot() {
            let summary = summaries.entry(id).or_insert_with(|| PeerSummary {
                id: id.to_string(),
                addresses: Vec::new(),
                paths: self.index.path_count(&id),
                connected: false,
                last_seen_secs_ago: None,
                rtt: None,
            });
            summary.addresses = state.addresses.iter().map(|a| a.to_string()).collect();
            summary.connected = state.connections > 0;
            if let Some(seen) = state.last_seen {
                summary.last_seen_secs_ago = Some(seen.elapsed().as_secs());
            }
            summary.rtt = state.rtt;
        }
        summaries.into_values().collect()
    }

    fn status(&self) -> NodeStatus {
        // Known: seen since the start, or in the index from before.
        let mut known: std::collections::HashSet<PeerId> =
            self.mesh.peers().snapshot().into_iter().map(|(id, _)| id).collect();
        known.extend(self.index.peers().unwrap_or_default().into_iter().map(|p| p.id));
        NodeStatus {
            peer_id: self.mesh.local_peer_id().to_string(),
            listen_addresses: self
                .mesh
                .listen_addresses()
                .borrow()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            local_paths: self.log.len() as u64,
            peers_connected: self.mesh.peers().connected_count() as u64,
            peers_known: known.len() as u64,
            indexed_paths: self.index.total_entries(),
            trusted_keys: self.status.trusted_keys.clone(),
            signing_key: self.status.signing_key.clone(),
        }
    }
}
