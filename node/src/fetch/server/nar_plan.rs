//! How a NAR request is answered: from which bytes, raw or as zstd blocks, once the path
//! info, the NarHash asked for and a transfer slot allow it.

use libp2p::PeerId;
use nixmesh_protocol::mesh_messages::FetchResponse;
use nixmesh_protocol::{Sha256, StorePathHash};
use tracing::debug;

use super::{NAR_TRANSFERS, Plan, Provider, coded};
use crate::fetch::link::MeshCompression;
use crate::mesh::Turn;
use crate::mesh::share::Origin;

/// A NAR request, fetch/2's or fetch/3's.
pub(super) struct NarAsked {
    pub(super) hash: StorePathHash,
    pub(super) nar_hash: Sha256,
    pub(super) offset: u64,
    /// Whether the asker takes zstd blocks.
    pub(super) zstd: bool,
}

impl Provider {
    /// How to send the NAR asked for, raw or as zstd blocks: blocks only when asked, allowed
    /// (`mesh_compression`), this process not busy, and the NAR large enough to gain.
    pub(super) async fn plan_nar(
        &self,
        peer: PeerId,
        origin: Origin,
        asked: NarAsked,
        turn: Turn,
    ) -> Result<Plan, FetchResponse> {
        let failed = |message: String| FetchResponse::Failed { message };
        let NarAsked { hash, nar_hash, offset, zstd } = asked;
        // Nix asks for a NAR right after its narinfo: the path info from then saves two
        // daemon round trips. The NarHash asked for is checked against it all the same,
        // and a path deleted since makes its NAR fail, never a wrong one.
        let info = self.servable_info(peer, hash).await?;
        if info.nar_hash != nar_hash {
            // Another build of the path than the one asked for: as good as not held.
            debug!(path = %info.path, "asked for another NAR hash than ours");
            return Err(FetchResponse::NotFound);
        }
        if offset > info.nar_size {
            let size = info.nar_size;
            return Err(failed(format!("offset {offset} is past the NAR's end ({size})")));
        }
        drop(turn);
        let Some(slot) = self.nar_transfers.take(peer, origin).await else {
            let wait = NAR_TRANSFERS.max_wait;
            return Err(failed(format!("busy: no NAR slot within {wait:?}")));
        };
        let nar = self.nar(&info).await.map_err(|e| failed(e.to_string()))?;
        let zstd = zstd
            && self.compression == MeshCompression::Auto
            && info.nar_size - offset >= coded::WORTH_CODING
            && !self.cpu.busy();
        debug!(path = %info.path, offset, size = info.nar_size, zstd, "sending NAR");
        let slot = Box::new(slot);
        Ok(Plan::Nar { nar, nar_size: info.nar_size, offset, slot, zstd })
    }
}
