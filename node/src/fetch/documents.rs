//! Asking peers for the two answers whose bytes follow them whole, listings (`<hash>.ls`)
//! and build logs: each announces its length, checked against its bound before a byte is
//! read, and is then read in full (the asker serves it whole, so it holds it whole).

use bytes::{Bytes, BytesMut};
use libp2p::PeerId;
use nixmesh_protocol::mesh_messages::{FetchRequest, FetchResponse, MAX_BUILD_LOG_LEN};
use nixmesh_protocol::nar::listing::MAX_LISTING_LEN;
use nixmesh_protocol::{Sha256, StorePathHash};

use super::NAR_CHUNK;
use super::client::{FetchClient, FetchError, FetchFailure, Session, Violation, answer_kind};

impl FetchClient {
    /// `peer`'s listing of `hash` if its NAR has `nar_hash`; `None` when it says it has none.
    pub async fn listing(
        &self,
        peer: PeerId,
        hash: StorePathHash,
        nar_hash: Sha256,
    ) -> Result<Option<Bytes>, FetchError> {
        self.document(peer, FetchRequest::Listing { hash, nar_hash }, "listing").await
    }

    /// `peer`'s build log of the derivation `drv` (a store path's base name); `None` when it
    /// has none or does not serve its logs.
    pub async fn build_log(&self, peer: PeerId, drv: &str) -> Result<Option<Bytes>, FetchError> {
        self.document(peer, FetchRequest::BuildLog { drv: drv.to_owned() }, "build log").await
    }

    async fn document(
        &self,
        peer: PeerId,
        request: FetchRequest,
        operation: &'static str,
    ) -> Result<Option<Bytes>, FetchError> {
        let failed = |failure: FetchFailure| FetchError { peer, operation, failure };
        let listing = matches!(request, FetchRequest::Listing { .. });
        let (session, response) = self.exchange(peer, request, operation).await?;
        let (len, limit, what) = match response {
            FetchResponse::Listing { len } if listing => (len, MAX_LISTING_LEN, "a listing"),
            FetchResponse::BuildLog { len } if !listing => (len, MAX_BUILD_LOG_LEN, "a build log"),
            FetchResponse::NotFound => {
                session.finished();
                return Ok(None);
            }
            FetchResponse::Failed { message } => {
                session.finished();
                return Err(failed(FetchFailure::Declined { message }));
            }
            other => {
                let got = answer_kind(&other);
                return Err(failed(Violation::OtherAnswer { asked: operation, got }.into()));
            }
        };
        if len > limit as u64 {
            let limit = limit as u64;
            return Err(failed(Violation::TooLong { what, len, limit }.into()));
        }
        read_whole(session, len as usize).await.map(Some).map_err(failed)
    }
}

/// The `len` bytes that follow an answer; the session goes back for reuse once read.
async fn read_whole(mut session: Session, len: usize) -> Result<Bytes, FetchFailure> {
    let mut body = BytesMut::with_capacity(len.min(NAR_CHUNK));
    while body.len() < len {
        let want = (len - body.len()).min(NAR_CHUNK);
        let chunk = session.stream.read_bytes(want).await?;
        if chunk.is_empty() {
            let (got, expected) = (body.len() as u64, len as u64);
            return Err(Violation::EndedEarly { got, expected }.into());
        }
        body.extend_from_slice(&chunk);
    }
    session.finished();
    Ok(body.freeze())
}
