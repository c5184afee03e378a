//! The mesh as the local substituter sees it: [`MeshSource`] implements
//! [`nixmesh_localhttp::PathSource`] with the index for "who holds it" and the fetch client
//! ([`crate::fetch::client`]) for the rest. (What the status pages show is [`crate::view`].)

use std::sync::Arc;

use futures::TryStreamExt;
use libp2p::PeerId;
use nixmesh_localhttp::{NarStream, PathSource, SourceError};
use nixmesh_protocol::{Sha256, StorePathHash};
use tracing::warn;

use crate::fetch::FetchClient;
use crate::fetch::client::FetchError;
use crate::index::Index;
use crate::mesh::Mesh;
use crate::traffic::Traffic;

/// The mesh behind the substituter.
pub struct MeshSource {
    mesh: Mesh,
    fetch: FetchClient,
    index: Arc<Index>,
    /// Where the NAR bytes received are counted.
    traffic: Arc<Traffic>,
}

impl MeshSource {
    pub fn new(mesh: Mesh, index: Arc<Index>, traffic: Arc<Traffic>) -> Self {
        let fetch = FetchClient::new(mesh.clone());
        MeshSource { mesh, fetch, index, traffic }
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
        let (traffic, peer) = (self.traffic.clone(), *peer);
        let counted = move |chunk: &bytes::Bytes| traffic.received(peer, chunk.len() as u64);
        Ok(body.map(|body| -> NarStream {
            Box::pin(body.inspect_ok(counted).map_err(SourceError::from))
        }))
    }
}
