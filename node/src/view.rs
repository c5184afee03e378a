//! What the node's status pages show ([`nixmesh_localhttp::NodeView`]): its peers, from the
//! connection table and the index, and its own state. Read from local state alone.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use nixmesh_localhttp::{NodeStatus, NodeView, PeerSummary};

use crate::adverts::AdvertLog;
use crate::index::Index;
use crate::mesh::Mesh;

/// The node as `nixmesh status` and `nixmesh peers` see it.
pub struct MeshView {
    pub mesh: Mesh,
    pub index: Arc<Index>,
    pub log: Arc<AdvertLog>,
    /// The keys the node trusts, as `name:base64`.
    pub trusted_keys: Vec<String>,
    /// The public half of the node's signing key, if it signs.
    pub signing_key: Option<String>,
}

impl NodeView for MeshView {
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
        let mut known: HashSet<PeerId> =
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
            trusted_keys: self.trusted_keys.clone(),
            signing_key: self.signing_key.clone(),
            private_mesh: self.mesh.is_private(),
        }
    }
}
