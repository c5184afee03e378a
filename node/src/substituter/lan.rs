//! The substituter for the LAN (`lan_listen`): the same substituter on a second listener, for
//! machines that run no node (a new machine's installer, a CI container, a guest's laptop).
//!
//! It answers with what this node can get: from this machine's own store first, then from the
//! mesh's holders and, through the LAN-wide single flight, from upstream ([`LanSource`]); but
//! only what the node would serve its peers: its own paths under the serving policy
//! (trusted-signed, signed by its own key, content-addressed; never a `--serve-exclude` name),
//! and the mesh's only with a trusted signature or a self-certifying `CA:` (the substituter's
//! rule), never an excluded name either. Narinfos keep the signatures they carry, so a stock
//! Nix trusting cache.nixos.org needs no new key for what came from there.
//!
//! The listener has limits of its own, apart from the localhost listener's, so that LAN
//! clients never take the machine's own Nix's permits and NAR slots, and its work waits its
//! turn while the machine's own Nix fetches ([`nixmesh_localhttp::local_first`]); each client
//! host has a share of it; with a mesh key, only the networks in `lan_allow` are answered (see
//! [`nixmesh_localhttp::client_hosts`]); it serves the cache alone, no status pages.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use nixmesh_localhttp::client_hosts::{Cidr, ClientHosts, admitting};
use nixmesh_localhttp::health::PeerHealth;
use nixmesh_localhttp::{Config, Metrics, NarStream, NodeView, PathSource, SourceError};
use nixmesh_protocol::{NarInfo, Sha256, StorePath, StorePathHash};
use tracing::debug;

use crate::adverts::AdvertLog;
use crate::fetch::Provider;
use crate::fetch::policy::NamePattern;
use crate::fetch::server::LAN_CLIENT;
use crate::substituter::mesh_source::MeshSource;
use crate::upstream::Holder;

/// Requests one LAN client host may have in flight: Nix's own client opens 25 connections.
pub const PER_HOST: usize = 25;
/// The size of the listener's own pool of narinfo permits and NAR slots, against the
/// localhost listener's: half. The pools are apart, so LAN clients never take the machine's
/// own Nix's permits; that its Nix also goes first in CPU and in the holders' time is
/// `Role::Lan`'s wait (`nixmesh_localhttp::local_first`).
pub const SHARE_OF_LOCAL: usize = 2;

/// How long a request right after the start waits for the local store's first listing.
const FIRST_LISTING_WAIT: Duration = Duration::from_secs(5);
const LISTING_POLL: Duration = Duration::from_millis(25);

/// Where a LAN client's path comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LanHolder {
    /// This machine's own store.
    Here,
    /// A holder of the mesh, or the upstreams by way of it.
    Mesh(Holder),
}

impl std::fmt::Display for LanHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LanHolder::Here => f.write_str("this node's store"),
            LanHolder::Mesh(holder) => holder.fmt(f),
        }
    }
}

/// The LAN listener's source: this machine's store, then the mesh.
pub struct LanSource {
    mesh: Arc<MeshSource>,
    provider: Provider,
    /// What the local store held at its last listing: whether to ask it, without waiting.
    local: Arc<AdvertLog>,
    /// Names never served.
    exclude: Vec<NamePattern>,
}

impl LanSource {
    pub fn new(
        mesh: Arc<MeshSource>,
        provider: Provider,
        local: Arc<AdvertLog>,
        exclude: Vec<NamePattern>,
    ) -> Self {
        LanSource { mesh, provider, local, exclude }
    }

    fn excluded(&self, narinfo_text: &str) -> bool {
        let Ok(narinfo) = NarInfo::parse(narinfo_text) else { return false };
        let name = narinfo.store_path.name();
        self.exclude.iter().any(|pattern| pattern.matches(name))
    }

    /// `e`, from this machine's store, as the substituter sees it (its text: the store's
    /// operations have no time limit of their own to report).
    fn failed(operation: &'static str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Failed { peer: LanHolder::Here.to_string(), operation, reason: e.to_string() }
    }
}

impl PathSource for LanSource {
    type Peer = LanHolder;

    /// This machine first when its store holds `hash`, then the mesh's holders.
    fn holders(&self, hash: &StorePathHash) -> Vec<LanHolder> {
        let mesh = self.mesh.holders(hash).into_iter().map(LanHolder::Mesh);
        let here = self.local.contains(hash).then_some(LanHolder::Here);
        here.into_iter().chain(mesh).collect()
    }

    /// Right after the start, before the local store's first listing: waits for it (within
    /// [`FIRST_LISTING_WAIT`]) rather than answer a miss for a path this machine holds. Then
    /// the mesh's holders that reconnect (see [`MeshSource`]).
    async fn holders_reconnecting(&self, hash: &StorePathHash) -> Vec<LanHolder> {
        let deadline = tokio::time::Instant::now() + FIRST_LISTING_WAIT;
        while !self.local.listed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(LISTING_POLL).await;
        }
        if self.local.contains(hash) {
            return self.holders(hash);
        }
        let holders = self.mesh.holders_reconnecting(hash).await;
        holders.into_iter().map(LanHolder::Mesh).collect()
    }

    async fn fetch_narinfo(
        &self,
        holder: &LanHolder,
        hash: StorePathHash,
    ) -> Result<Option<String>, SourceError> {
        match holder {
            LanHolder::Here => {
                let narinfo = self.provider.narinfo_for(&LAN_CLIENT, hash).await;
                let narinfo = narinfo.map_err(|e| Self::failed("narinfo", e))?;
                Ok(narinfo.map(|narinfo| narinfo.to_string()))
            }
            LanHolder::Mesh(holder) => {
                let text = self.mesh.fetch_narinfo(holder, hash).await?;
                match text {
                    Some(text) if self.excluded(&text) => {
                        debug!(%hash, "a name --serve-exclude names: not served on the LAN");
                        Ok(None)
                    }
                    other => Ok(other),
                }
            }
        }
    }

    async fn fetch_nar(
        &self,
        holder: &LanHolder,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        let LanHolder::Mesh(holder) = holder else {
            return self.local_nar(hash, nar_hash, offset).await;
        };
        self.mesh.fetch_nar(holder, hash, nar_hash, offset).await
    }

    async fn fetch_listing(
        &self,
        holder: &LanHolder,
        hash: StorePathHash,
        nar_hash: Sha256,
    ) -> Result<Option<bytes::Bytes>, SourceError> {
        self.listing(holder, hash, nar_hash).await
    }

    /// The mesh's peers that may give their logs (`serve_logs` is theirs to set); this
    /// machine's own logs are not served on the LAN.
    fn log_holders(&self) -> Vec<LanHolder> {
        self.mesh.log_holders().into_iter().map(LanHolder::Mesh).collect()
    }

    async fn fetch_build_log(
        &self,
        holder: &LanHolder,
        drv: &StorePath,
    ) -> Result<Option<bytes::Bytes>, SourceError> {
        match holder {
            LanHolder::Here => Ok(None),
            LanHolder::Mesh(holder) => self.mesh.fetch_build_log(holder, drv).await,
        }
    }
}

impl LanSource {
    /// The listing of `hash` from `holder`: this machine's made from its store, or a peer's.
    async fn listing(
        &self,
        holder: &LanHolder,
        hash: StorePathHash,
        nar_hash: Sha256,
    ) -> Result<Option<bytes::Bytes>, SourceError> {
        match holder {
            LanHolder::Here => {
                let listing = self.provider.local_listing(hash, nar_hash).await;
                listing.map_err(|e| Self::failed("listing", e))
            }
            LanHolder::Mesh(holder) => self.mesh.fetch_listing(holder, hash, nar_hash).await,
        }
    }

    /// This machine's NAR of `hash` from `offset`, if it is the one with `nar_hash` and may be
    /// served.
    async fn local_nar(
        &self,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        let info = self.provider.info_for(&LAN_CLIENT, hash).await;
        let info = info.map_err(|e| Self::failed("NAR", e))?;
        let Some(info) = info.filter(|i| i.nar_hash == nar_hash && offset <= i.nar_size) else {
            return Ok(None);
        };
        let nar = self.provider.nar(&info).await.map_err(|e| Self::failed("NAR", e))?;
        let mut to_skip = offset;
        let from_offset = nar.map_err(|e| Self::failed("NAR", e)).try_filter_map(
            move |mut chunk: bytes::Bytes| {
                let skip = to_skip.min(chunk.len() as u64);
                to_skip -= skip;
                let _ = chunk.split_to(skip as usize);
                futures::future::ready(Ok((!chunk.is_empty()).then_some(chunk)))
            },
        );
        Ok(Some(Box::pin(from_offset)))
    }
}

/// The LAN listener's gate: the networks it answers.
pub struct LanListener {
    /// `lan_allow`; empty: every host.
    pub allow: Vec<Cidr>,
}

impl LanListener {
    /// The LAN substituter's router over `source`: the localhost substituter's settings
    /// (`local`) with half its permits and NAR slots and no status pages, counted as the LAN's
    /// in `metrics`, behind the allow-list and a share per client host.
    pub fn router(
        &self,
        source: LanSource,
        view: Arc<dyn NodeView>,
        local: &Config,
        metrics: &Metrics,
    ) -> nixmesh_localhttp::Router {
        let config = Config {
            status_pages: false,
            role: nixmesh_localhttp::Role::Lan,
            max_concurrent_requests: (local.max_concurrent_requests / SHARE_OF_LOCAL).max(1),
            max_concurrent_nars: (local.max_concurrent_nars / SHARE_OF_LOCAL).max(1),
            ..local.clone()
        };
        let hosts = self.client_hosts(config.request_timeout);
        let health = Arc::new(PeerHealth::default());
        let lan_metrics = Arc::new(metrics.for_lan());
        let router = nixmesh_localhttp::router(Arc::new(source), view, health, config, lan_metrics);
        admitting(router, hosts)
    }

    /// The client hosts' gate: the allow-list and a share per host, each request waiting at
    /// most `wait` for its host's turn.
    fn client_hosts(&self, wait: Duration) -> Arc<ClientHosts> {
        let allow = (!self.allow.is_empty()).then(|| self.allow.clone());
        ClientHosts::new(allow, PER_HOST, wait)
    }
}
