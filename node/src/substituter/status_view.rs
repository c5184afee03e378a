//! What the node's status pages show ([`nixmesh_localhttp::NodeView`]): its peers, from the
//! connection table, the index and the NAR bytes exchanged, and its own state. Read from local
//! state alone.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use nixmesh_localhttp::health::PeerHealth;
use nixmesh_localhttp::{NodeStatus, NodeView, PeerSummary, UpstreamSummary};
use nixmesh_protocol::StorePathHash;
use tracing::warn;

use crate::adverts::AdvertLog;
use crate::fetch::policy::Refusals;
use crate::fetch::traffic::Traffic;
use crate::index::Index;
use crate::mesh::Mesh;
use crate::upstream::Holder;
use crate::upstream::flight::Flights;

/// The node as `nixmesh status` and `nixmesh peers` see it.
pub struct MeshView {
    pub mesh: Mesh,
    pub index: Arc<Index>,
    pub log: Arc<AdvertLog>,
    pub traffic: Arc<Traffic>,
    /// The name this node gives itself to peers.
    pub name: Option<String>,
    /// The keys the node trusts, as `name:base64`.
    pub trusted_keys: Vec<String>,
    /// The public half of the node's signing key, if it signs.
    pub signing_key: Option<String>,
    /// The latest paths not served to peers, and why.
    pub refusals: Arc<Refusals>,
    /// Faults of peers, as the substituter counts them.
    pub health: Arc<PeerHealth<Holder>>,
    /// The upstreams and this node's downloads from them, if it has any.
    pub flights: Option<Arc<Flights>>,
    /// Where the LAN substituter listens, if it does.
    pub lan_address: Option<SocketAddr>,
}

impl MeshView {
    /// `http://ADDRESS:PORT` for the LAN substituter: its own address, or, listening on every
    /// address, each of this machine's that the mesh listens on but loopback.
    fn lan_urls(&self) -> Vec<String> {
        let Some(lan) = self.lan_address else { return Vec::new() };
        let url = |ip: IpAddr| format!("http://{}", SocketAddr::new(ip, lan.port()));
        if !lan.ip().is_unspecified() {
            return vec![url(lan.ip())];
        }
        let mut ips: Vec<IpAddr> = self
            .mesh
            .listen_addresses()
            .borrow()
            .iter()
            .filter_map(crate::mesh::host_ip)
            .filter(|ip| !ip.is_loopback() && ip.is_ipv4() == lan.is_ipv4())
            .collect();
        ips.sort();
        ips.dedup();
        ips.into_iter().map(url).collect()
    }

    /// Every peer the index or the connection table knows, those in `only` alone if given.
    fn summaries(&self, only: Option<&HashSet<PeerId>>) -> Vec<PeerSummary> {
        let wanted = |id: &PeerId| only.is_none_or(|only| only.contains(id));
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut summaries: BTreeMap<PeerId, PeerSummary> = BTreeMap::new();
        for indexed in self.index.peers().unwrap_or_default() {
            if !wanted(&indexed.id) {
                continue;
            }
            summaries.insert(
                indexed.id,
                PeerSummary {
                    id: indexed.id.to_string(),
                    paths: indexed.paths,
                    last_seen_secs_ago: Some(now.saturating_sub(indexed.last_update_unix)),
                    ..PeerSummary::default()
                },
            );
        }
        for (id, state) in self.mesh.peers().snapshot() {
            if !wanted(&id) {
                continue;
            }
            let summary = summaries.entry(id).or_insert_with(|| PeerSummary {
                id: id.to_string(),
                paths: self.index.path_count(&id),
                ..PeerSummary::default()
            });
            summary.addresses = state.addresses.iter().map(|a| a.to_string()).collect();
            summary.connected = state.connections > 0;
            if let Some(seen) = state.last_seen {
                summary.last_seen_secs_ago = Some(seen.elapsed().as_secs());
            }
            summary.rtt = state.rtt;
            summary.name = state.name;
            summary.security = state.security;
        }
        for (id, summary) in &mut summaries {
            let traffic = self.traffic.of(id);
            summary.bytes_received = traffic.received;
            summary.bytes_served = traffic.served;
        }
        for (id, summary) in summaries.iter_mut() {
            summary.demoted = self.health.demotion(&Holder::Peer(*id)).map(|d| {
                let how = if d.skipped { "skipped" } else { "asked last" };
                format!("{how} for {} s more: {}", d.left.as_secs(), d.reason)
            });
        }
        summaries.into_values().collect()
    }
}

impl NodeView for MeshView {
    fn peers(&self) -> Vec<PeerSummary> {
        self.summaries(None)
    }

    fn status(&self) -> NodeStatus {
        // Known: seen since the start, or in the index from before.
        let mut known: HashSet<PeerId> =
            self.mesh.peers().snapshot().into_iter().map(|(id, _)| id).collect();
        known.extend(self.index.peers().unwrap_or_default().into_iter().map(|p| p.id));
        let traffic = self.traffic.total();
        let upstream = self.flights.as_ref().map(|f| f.upstreams().status()).unwrap_or_default();
        let upstream_bytes = self.traffic.upstream_total();
        NodeStatus {
            degraded: self.index.trouble().map(|t| format!("index: {t}")),
            peer_id: self.mesh.local_peer_id().to_string(),
            name: self.name.clone(),
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
            bytes_received: traffic.received,
            bytes_served: traffic.served,
            private_mesh: self.mesh.is_private(),
            not_served: self.refusals.latest(),
            upstreams: upstream
                .caches
                .into_iter()
                .map(|c| UpstreamSummary { url: c.url, skipped: c.skipped })
                .collect(),
            bytes_from_upstream: upstream_bytes.0,
            bytes_relayed: upstream_bytes.1,
            lan_urls: self.lan_urls(),
            ..NodeStatus::default()
        }
    }

    fn advertisers(&self, hash: &StorePathHash) -> Vec<PeerSummary> {
        match self.index.holders(hash) {
            Ok(holders) => self.summaries(Some(&holders.into_iter().collect())),
            Err(e) => {
                warn!(%hash, "index lookup failed: {e}");
                Vec::new()
            }
        }
    }
}
