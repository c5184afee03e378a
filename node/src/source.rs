//! The mesh as the local substituter sees it: [`MeshSource`] implements
//! [`nixmesh_localhttp::PathSource`] with the index for "who holds it" and the fetch client
//! ([`crate::fetch::client`]) for the rest, and the upstream caches after every peer: a path
//! no peer holds comes from upstream by way of the mesh's single flight
//! ([`crate::upstream::flight`]). (What the status pages show is [`crate::view`].)

use std::fmt;
use std::sync::Arc;

use futures::TryStreamExt;
use libp2p::PeerId;
use nixmesh_localhttp::{NarStream, PathSource, SourceError};
use nixmesh_protocol::{Sha256, StorePathHash};

use crate::fetch::FetchClient;
use crate::fetch::client::FetchError;
use crate::index::Index;
use crate::mesh::Mesh;
use crate::traffic::Traffic;
use crate::upstream::flight::Flights;

/// Where a path may come from: a peer that advertises it, or the upstream caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    Peer(PeerId),
    /// The upstream caches, by way of the NAR's claimer in the mesh.
    Upstream,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Peer(peer) => peer.fmt(f),
            Holder::Upstream => f.write_str("upstream"),
        }
    }
}

/// The mesh behind the substituter.
pub struct MeshSource {
    mesh: Mesh,
    fetch: FetchClient,
    index: Arc<Index>,
    /// Where the NAR bytes received are counted.
    traffic: Arc<Traffic>,
    /// The upstream caches; `None` without any.
    flights: Option<Arc<Flights>>,
}

impl MeshSource {
    pub fn new(
        mesh: Mesh,
        fetch: FetchClient,
        index: Arc<Index>,
        traffic: Arc<Traffic>,
        flights: Option<Arc<Flights>>,
    ) -> Self {
        MeshSource { mesh, fetch, index, traffic, flights }
    }
}

impl From<FetchError> for SourceError {
    fn from(e: FetchError) -> Self {
        SourceError::Failed { peer: e.peer.to_string(), operation: e.operation, reason: e.reason }
    }
}

/// How many of a path's connected holders a request may ask, at most: enough to ride out
/// several failing in a row, few enough that a path held by hundreds of peers is looked up
/// as fast as one held by a few ([`Index::holders_among`]).
pub const HOLDERS_ASKED: usize = 8;

impl PathSource for MeshSource {
    type Peer = Holder;

    /// The connected peers that advertise `hash`, best first; then the upstreams, unless they
    /// said lately that they lack it or are not answering. Never waits on the network.
    fn holders(&self, hash: &StorePathHash) -> Vec<Holder> {
        let table = self.mesh.peers();
        let connected = self.index.holders_among(hash, HOLDERS_ASKED, |p| table.is_connected(p));
        let peers = table.connected_by_rtt(connected);
        let mut holders: Vec<Holder> = peers.into_iter().map(Holder::Peer).collect();
        if self.flights.as_ref().is_some_and(|f| f.upstreams().may_have(hash)) {
            holders.push(Holder::Upstream);
        }
        holders
    }

    async fn fetch_narinfo(
        &self,
        holder: &Holder,
        hash: StorePathHash,
    ) -> Result<Option<String>, SourceError> {
        match holder {
            Holder::Peer(peer) => Ok(self.fetch.narinfo(*peer, hash).await?),
            Holder::Upstream => {
                let Some(flights) = &self.flights else { return Ok(None) };
                flights.narinfo(hash).await
            }
        }
    }

    async fn fetch_nar(
        &self,
        holder: &Holder,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        let peer = match holder {
            Holder::Peer(peer) => *peer,
            Holder::Upstream => {
                let Some(flights) = &self.flights else { return Ok(None) };
                return flights.nar(hash, nar_hash, offset).await;
            }
        };
        let body = self.fetch.nar(peer, hash, nar_hash, offset).await?;
        let traffic = self.traffic.clone();
        let counted = move |chunk: &bytes::Bytes| traffic.received(peer, chunk.len() as u64);
        Ok(body.map(|body| -> NarStream {
            Box::pin(body.inspect_ok(counted).map_err(SourceError::from))
        }))
    }
}
