//! The holder's answers that are documents, not NARs: a path's listing, under the rule its
//! narinfo is served by and only for the NarHash asked for; and a derivation's build log,
//! only from a node that serves its logs (`serve_logs`: a log can hold what a private build
//! printed) and not for a name `--serve-exclude` keeps back.

use bytes::Bytes;
use libp2p::PeerId;
use nixmesh_protocol::mesh_messages::{FetchResponse, MAX_BUILD_LOG_LEN};
use nixmesh_protocol::nar::listing::{Listing, MAX_LISTING_LEN};
use nixmesh_protocol::{Sha256, StorePath, StorePathHash};
use tracing::{debug, info};

use super::{LAN_CLIENT, NAR_TRANSFERS, Plan, ProvideError, Provider};
use crate::local::store::listing::{self, ListingFailed};
use crate::local::store::{PathInfo, build_log};
use crate::mesh::Turn;
use crate::mesh::share::Origin;

fn failed(message: String) -> FetchResponse {
    FetchResponse::Failed { message }
}

impl Provider {
    /// The listing of `hash` if its NAR here has `nar_hash` and the path may be served to
    /// `peer`: made from the files on disk while `turn` is held (metadata only), else from
    /// the daemon's NAR in a NAR transfer slot, as the NAR itself would be.
    pub(super) async fn plan_listing(
        &self,
        peer: PeerId,
        origin: Origin,
        hash: StorePathHash,
        nar_hash: Sha256,
        turn: Turn,
    ) -> Result<Plan, FetchResponse> {
        let info = self.servable_info(peer, hash).await?;
        if info.nar_hash != nar_hash {
            debug!(path = %info.path, "listing asked for another NAR hash than ours");
            return Err(FetchResponse::NotFound);
        }
        let on_disk = self.real_store_dir.as_ref().map(|dir| dir.join(info.path.base_name()));
        let listing = match on_disk.filter(|p| std::fs::symlink_metadata(p).is_ok()) {
            Some(path) => listing::from_disk(path).await,
            None => {
                drop(turn);
                let Some(_slot) = self.nar_transfers.take(peer, origin).await else {
                    let wait = NAR_TRANSFERS.max_wait;
                    return Err(failed(format!("busy: no NAR slot within {wait:?}")));
                };
                self.listing_from_daemon(&info).await
            }
        };
        let body = listing.map_err(|e| failed(e.to_string()))?.render();
        if body.len() > MAX_LISTING_LEN {
            let message = format!("the listing of {} is over {MAX_LISTING_LEN} bytes", info.path);
            return Err(failed(message));
        }
        debug!(path = %info.path, len = body.len(), "sending a listing");
        let answer = FetchResponse::Listing { len: body.len() as u64 };
        Ok(Plan::Document { answer, body: Bytes::from(body) })
    }

    /// The listing of this store's `hash` for a LAN client (see `crate::substituter::lan`): `None` when the
    /// store has no such path, another build of it, or may not serve it.
    pub(crate) async fn local_listing(
        &self,
        hash: StorePathHash,
        nar_hash: Sha256,
    ) -> Result<Option<Bytes>, ProvideError> {
        let info = self.info_for(&LAN_CLIENT, hash).await?;
        let Some(info) = info.filter(|info| info.nar_hash == nar_hash) else { return Ok(None) };
        let on_disk = self.real_store_dir.as_ref().map(|dir| dir.join(info.path.base_name()));
        let listing = match on_disk.filter(|p| std::fs::symlink_metadata(p).is_ok()) {
            Some(path) => listing::from_disk(path).await,
            None => self.listing_from_daemon(&info).await,
        };
        let body = listing?.render();
        if body.len() > MAX_LISTING_LEN {
            let (path, limit) = (info.path, MAX_LISTING_LEN);
            return Err(ProvideError::ListingTooLarge { path, limit });
        }
        Ok(Some(Bytes::from(body)))
    }

    async fn listing_from_daemon(&self, info: &PathInfo) -> Result<Listing, ListingFailed> {
        let path = info.path.to_string();
        let nar = self.store.nar_from_path(&info.path, info.nar_size).await;
        let nar =
            nar.map_err(|e| ListingFailed::Nar { path: path.clone(), cause: e.to_string() })?;
        listing::from_nar(&path, nar).await
    }

    /// The build log of `drv` (a store path's base name), if this node serves its logs and
    /// has that one.
    pub(super) async fn plan_build_log(
        &self,
        peer: PeerId,
        drv: &str,
    ) -> Result<Plan, FetchResponse> {
        let Some(log_dir) = &self.log_dir else {
            debug!(%peer, drv, "build log asked; logs are not served (serve_logs)");
            return Err(FetchResponse::NotFound);
        };
        // The derivation's name is its outputs' (`hello-2.12.drv` builds `hello-2.12`).
        let name =
            StorePath::from_base_name(drv).map(|p| p.name().trim_end_matches(".drv").to_owned());
        if let Ok(name) = name
            && let Some(pattern) = self.policy.exclude.iter().find(|p| p.matches(&name))
        {
            info!(%peer, drv, "build log not served: its name matches --serve-exclude {pattern:?}");
            return Err(FetchResponse::NotFound);
        }
        let log = build_log::read(log_dir, drv, MAX_BUILD_LOG_LEN).await;
        let body = log.map_err(|e| failed(e.to_string()))?.ok_or(FetchResponse::NotFound)?;
        debug!(%peer, drv, len = body.len(), "sending a build log");
        let answer = FetchResponse::BuildLog { len: body.len() as u64 };
        Ok(Plan::Document { answer, body: Bytes::from(body) })
    }
}
