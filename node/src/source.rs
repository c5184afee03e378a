//! The mesh as the local substituter sees it: [`MeshSource`] implements
//! [`nixmesh_localhttp::PathSource`] with the index for "who holds it" and the fetch client
//! ([`crate::fetch::client`]) for the rest.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures::TryStreamExt;
use libp2p::PeerId;
use nixmesh_localhttp::{NarStream, NodeStatus, PathSource, PeerSummary, SourceError};
use nixmesh_protocol::{Sha256, StorePathHash};
use tracing::warn;

use crate::adverts::AdvertLog;
use crate::fetch::FetchClient;
use crate::fetch::client::FetchError;
use crate::index::Index;
use crate::mesh::Mesh;

/// What `nixmesh status` reports besides live state.
#[derive(Debug, Clone, Default)]
pub struct StaticStatus {
    pub trusted_keys: Vec<String>,
    pub signing_key: Option<String>,
}

/// The mesh behind the substituter.
pub struct MeshSource {
    mesh: Mesh,
    fetch: FetchClient,
    index: Arc<Index>,
    log: Arc<AdvertLog>,
    status: StaticStatus,
}

impl MeshSource {
    pub fn new(mesh: Mesh, index: Arc<Index>, log: Arc<AdvertLog>, status: StaticStatus) -> Self {
        let fetch = FetchClient::new(mesh.clone());
        MeshSource { mesh, fetch, index, log, status }
    }
}

impl From<FetchError> for SourceError {
    fn from(e: FetchError) -> Self {
        SourceError::Failed { peer: e.peer.to_string(), operation: e.operation, reason: e.reason }
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
        Ok(self.fetch.narinfo(*peer, hash).await?)
    }

    async fn fetch_nar(
        &self,
        peer: &PeerId,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        let body = self.fetch.nar(*peer, hash, nar_hash, offset).await?;
        Ok(body.map(|body| -> NarStream { Box::pin(body.map_err(SourceError::from)) }))
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
            degraded: self.index.trouble().map(|t| format!("index: {t}")),
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
