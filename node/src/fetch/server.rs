//! Answering peers' fetch sessions from the local store: narinfos built from the daemon's
//! path info (signed on the fly with `--sign-key-file`), and NARs made from the store's files
//! (or, for paths not found there, streamed from the daemon).
//!
//! Limits: at most [`SESSIONS`] open sessions (and so many per peer and per origin, the
//! peer's host: several identities on one machine share one machine's part); each request
//! waits for a turn ([`TURNS`]: so many answered at once, so many for one peer and one
//! origin, each waited for a bounded time, then a `Failed` "busy" answer), held only while
//! the answer is decided, never while it is written: a peer that does not read holds no
//! turn. NARs wait for a transfer slot ([`NAR_TRANSFERS`], shared the same way), since each
//! holds a reading thread or a daemon connection for as long as the peer reads; a peer that
//! stops reading loses its slot when a write has waited [`FRAME_TIMEOUT`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use libp2p::PeerId;
use nixmesh_protocol::mesh_messages::{
    FETCH_PROTOCOL, FETCH_PROTOCOL_V3, FetchRequest, FetchResponse, MAX_REQUEST_FRAME_LEN,
};
use nixmesh_protocol::signature::{Signature, SigningKey};
use nixmesh_protocol::{NarInfo, StorePath, StorePathHash};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info, info_span, warn};

use super::link::{MeshCompression, ProcessCpu};
use super::policy::{Refusals, ServingPolicy};
use super::{FRAME_TIMEOUT, FetchVersion, SESSION_IDLE};
use crate::fetch::traffic::Traffic;
use crate::local::store::listing::ListingFailed;
use crate::local::store::{PathInfo, Store, StoreError, dump};
use crate::mesh::framed::{FrameError, FrameLimits, FramedStream, MeshStream};
use crate::mesh::share::Origin;
use crate::mesh::{Mesh, PeerTable, StreamLimits, Turn, TurnLimits, Turns, serve_stream_versions};
use crate::node::shutdown::Shutdown;

mod coded;
mod documents;
mod nar_plan;
mod relay;
mod send;

pub use relay::{RelayError, RelayedBytes, UpstreamCause, UpstreamRelay};

/// How long a peer may take to send its first request on a new stream, and any request once
/// it has begun.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A new session's limits: the first request within [`REQUEST_TIMEOUT`] (later ones within
/// [`SESSION_IDLE`]), each request read within it, each answer and NAR chunk written within
/// [`FRAME_TIMEOUT`].
const LIMITS: FrameLimits = FrameLimits {
    idle: REQUEST_TIMEOUT,
    read: REQUEST_TIMEOUT,
    write: FRAME_TIMEOUT,
    max_frame: MAX_REQUEST_FRAME_LEN,
};
/// Sessions open at once, in all and per peer (above what a client uses per peer,
/// [`super::client::STREAMS_PER_PEER`]). A session is cheap while idle: it waits in a
/// read.
const SESSIONS: StreamLimits = StreamLimits {
    concurrent: 2048,
    waiting: 0,
    max_wait: Duration::ZERO,
    per_peer: 64,
    per_origin: 256,
};
/// Requests being decided at once, in all, per peer and per origin (a quarter is always
/// left for other machines), and how long one may wait for a turn.
const TURNS: TurnLimits =
    TurnLimits { concurrent: 64, per_peer: 32, per_origin: 48, max_wait: Duration::from_secs(10) };

/// NARs up to this size are made from their files on the session's own task and sent with
/// their answer in one write ([`send::nar`]): a few system calls on the page cache cost less
/// than the two thread hand-offs of a blocking walk, and one write less than two.
const SMALL_NAR: u64 = 64 * 1024;
/// NARs sent at once. Each holds a blocking thread reading the store, or a daemon connection
/// for its whole transfer; they get three quarters of the daemon pool, so the rest stays free
/// for path info and store rescans.
const MAX_NAR_TRANSFERS: usize = crate::local::store::MAX_ACTIVE * 3 / 4;
/// NAR transfers at once, in all, per peer and per origin (so that a third is always left for
/// other machines, one of which is downloading what Nix's 16 substitution jobs ask), and how
/// long a NAR request may wait for a slot before the peer is told to go elsewhere.
const NAR_TRANSFERS: TurnLimits = TurnLimits {
    concurrent: MAX_NAR_TRANSFERS,
    per_peer: 16,
    per_origin: 16,
    max_wait: Duration::from_secs(10),
};

/// How a LAN client (`crate::substituter::lan`) is named where the provider logs what it did not serve.
pub(crate) const LAN_CLIENT: &str = "a LAN client";

/// Why this node could not give a path of its store, to a peer or a LAN client. Peers get
/// its text in a `Failed` answer; the LAN substituter, in its `SourceError`.
#[derive(Debug, Error)]
pub enum ProvideError {
    /// The nix-daemon could not say whether it has the path, or what it is.
    #[error("asking the nix-daemon about {hash}: {source}")]
    Store { hash: StorePathHash, source: StoreError },
    /// The path's listing could not be made.
    #[error(transparent)]
    Listing(#[from] ListingFailed),
    /// The path's listing is longer than a listing may be.
    #[error("the listing of {path} is over {limit} bytes")]
    ListingTooLarge { path: StorePath, limit: usize },
}

/// Answers peers' fetches from the local store.
#[derive(Clone)]
pub struct Provider {
    store: Store,
    signing_key: Option<Arc<SigningKey>>,
    nar_transfers: Arc<Turns>,
    recent: Arc<RecentPathInfo>,
    /// Where the store's files are on disk, to make NARs from directly.
    real_store_dir: Option<Arc<Path>>,
    /// Where the NAR bytes sent are counted.
    traffic: Arc<Traffic>,
    /// What may be served at all.
    policy: Arc<ServingPolicy>,
    /// The latest paths not served, and why.
    refusals: Arc<Refusals>,
    /// This node's downloads from upstream, relayed to the peers that ask this node as their
    /// claimer; none without upstreams.
    flights: Option<Arc<dyn UpstreamRelay>>,
    /// Where the store's build logs are, when they are served to peers (`serve_logs`).
    log_dir: Option<Arc<Path>>,
    /// Whether NARs asked for as zstd blocks are sent so (`mesh_compression`).
    compression: MeshCompression,
    /// How busy this process is: a busy holder sends NARs raw.
    cpu: Arc<ProcessCpu>,
}

impl Provider {
    /// A provider for `store`; with `real_store_dir`, NARs are made from the files there
    /// (see [`crate::local::store::dump`]), and asked of the daemon only for paths not found there.
    pub fn new(
        store: Store,
        signing_key: Option<Arc<SigningKey>>,
        real_store_dir: Option<PathBuf>,
    ) -> Self {
        Provider {
            store,
            nar_transfers: Arc::new(Turns::new("a NAR transfer", NAR_TRANSFERS)),
            recent: Arc::new(RecentPathInfo::default()),
            real_store_dir: real_store_dir.map(Arc::from),
            traffic: Arc::default(),
            policy: Arc::new(ServingPolicy { signs: signing_key.is_some(), ..Default::default() }),
            refusals: Arc::default(),
            flights: None,
            log_dir: None,
            compression: MeshCompression::Auto,
            cpu: Arc::default(),
            signing_key,
        }
    }

    /// The provider, sending NARs as zstd blocks to the peers that ask, or never (`Off`).
    pub fn compressing(self, compression: MeshCompression) -> Self {
        Provider { compression, ..self }
    }

    /// The provider, giving peers the build logs in `log_dir` (see [`crate::local::store::build_log`]).
    pub fn serving_logs(self, log_dir: PathBuf) -> Self {
        Provider { log_dir: Some(Arc::from(log_dir)), ..self }
    }

    /// The provider, relaying NARs from this node's upstream downloads to the peers that
    /// ask for them (`UpstreamNar`).
    pub fn relaying(self, flights: Arc<dyn UpstreamRelay>) -> Self {
        Provider { flights: Some(flights), ..self }
    }

    /// The provider, serving only what `policy` allows (by default: what its own signing key
    /// covers, and content-addressed paths), and listing refusals in `refusals`.
    pub fn serving(self, policy: ServingPolicy, refusals: Arc<Refusals>) -> Self {
        Provider { policy: Arc::new(policy), refusals, ..self }
    }

    /// The provider, counting the NAR bytes it sends in `traffic`.
    pub fn counting(self, traffic: Arc<Traffic>) -> Self {
        Provider { traffic, ..self }
    }

    /// The NAR of `info`'s path: from its files if they are where the store keeps them, else
    /// from the daemon.
    pub(crate) async fn nar(&self, info: &PathInfo) -> Result<NarBytes, StoreError> {
        if let Some(dir) = &self.real_store_dir {
            let on_disk = dir.join(info.path.base_name());
            if std::fs::symlink_metadata(&on_disk).is_ok() {
                if info.nar_size <= SMALL_NAR {
                    let nar = dump::dump_small(&on_disk, info.nar_size);
                    return Ok(Box::pin(futures::stream::once(std::future::ready(nar))));
                }
                return Ok(Box::pin(dump::dump(on_disk)));
            }
            debug!(path = %info.path, "not on disk under {}; asking the daemon", dir.display());
        }
        Ok(Box::pin(self.store.nar_from_path(&info.path, info.nar_size).await?))
    }

    pub(crate) async fn path_info(
        &self,
        hash: StorePathHash,
    ) -> Result<Option<PathInfo>, ProvideError> {
        let store = |source| ProvideError::Store { hash, source };
        let Some(path) = self.store.query_path_from_hash_part(&hash).await.map_err(store)? else {
            return Ok(None);
        };
        self.store.query_path_info(&path).await.map_err(store)
    }

    /// The narinfo of `hash` for `asker` (a peer, or a LAN client), if the store has the path
    /// and the policy lets it be served; its path info is then remembered for the requests
    /// that follow it (a NAR, a listing).
    pub(crate) async fn narinfo_for(
        &self,
        asker: &(dyn std::fmt::Display + Sync),
        hash: StorePathHash,
    ) -> Result<Option<NarInfo>, ProvideError> {
        let Some(info) = self.path_info(hash).await? else { return Ok(None) };
        let narinfo = self.servable_to(asker, info.clone());
        if narinfo.is_some() {
            // Only what may be served is remembered.
            self.recent.insert(hash, info);
        }
        Ok(narinfo)
    }

    /// The path info of `hash` for a request that follows its narinfo (a NAR, a listing):
    /// remembered from the narinfo, which passed the serving policy then, else asked of the
    /// daemon and held to the same rule, so that a URL guessed or passed around gets nothing
    /// the narinfo would not have. `None`: not here, or not to be served.
    pub(crate) async fn info_for(
        &self,
        asker: &(dyn std::fmt::Display + Sync),
        hash: StorePathHash,
    ) -> Result<Option<PathInfo>, ProvideError> {
        if let Some(info) = self.recent.get(&hash) {
            return Ok(Some(info));
        }
        let Some(info) = self.path_info(hash).await? else { return Ok(None) };
        Ok(self.servable_to(asker, info.clone()).map(|_| info))
    }

    /// [`Provider::info_for`] a peer, as its answer.
    pub(super) async fn servable_info(
        &self,
        peer: PeerId,
        hash: StorePathHash,
    ) -> Result<PathInfo, FetchResponse> {
        let info = self.info_for(&peer, hash).await;
        let failed = |e: ProvideError| FetchResponse::Failed { message: e.to_string() };
        info.map_err(failed)?.ok_or(FetchResponse::NotFound)
    }

    /// The narinfo for `info` with the signatures the store holds and ours, if the policy lets
    /// it be served to `asker` (a peer, or a LAN client), named in the log and the refusals
    /// listed.
    pub(crate) fn servable_to(
        &self,
        asker: &dyn std::fmt::Display,
        info: PathInfo,
    ) -> Option<NarInfo> {
        let mut narinfo = self.narinfo_of(info);
        if let Err(why) = self.policy.decide(&narinfo) {
            info!(%asker, path = %narinfo.store_path, "not served: {why}");
            self.refusals.record(format!("{} (asked by {asker}): {why}", narinfo.store_path));
            return None;
        }
        // Signing every path, not only unsigned ones: a path signed by a key the peers do not
        // trust is as unusable to them as an unsigned one.
        if let Some(key) = &self.signing_key {
            narinfo.sign(key);
        }
        Some(narinfo)
    }

    /// The narinfo for `info`, with the signatures the store holds.
    fn narinfo_of(&self, info: PathInfo) -> NarInfo {
        let signatures = info
            .signatures
            .iter()
            .filter_map(|s| match Signature::parse(s) {
                Ok(sig) => Some(sig),
                Err(e) => {
                    warn!(path = %info.path, "skipping a signature the store holds: {e}");
                    None
                }
            })
            .collect();
        NarInfo {
            url: format!("nar/{}.nar", info.nar_hash.to_nixbase32()),
            store_path: info.path,
            compression: Some("none".to_owned()),
            file_hash: None,
            file_size: None,
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references,
            deriver: info.deriver,
            system: None,
            signatures,
            ca: info.ca,
            extra: Vec::new(),
        }
    }

    /// Answers fetch sessions until `shutdown`.
    pub async fn serve(self, mesh: Mesh, shutdown: Shutdown) {
        let span = |peer| info_span!("fetch-from", %peer);
        let turns = Arc::new(Turns::new("a request", TURNS));
        let peers = mesh.peers().clone();
        let versions = [FETCH_PROTOCOL_V3, FETCH_PROTOCOL];
        serve_stream_versions(&mesh, &versions, SESSIONS, shutdown, span, |peer, stream, agreed| {
            let (provider, turns, peers) = (self.clone(), turns.clone(), peers.clone());
            let version = FetchVersion::of(agreed.as_ref()).unwrap_or(FetchVersion::V2);
            async move {
                let stream = MeshStream::mesh(stream, LIMITS);
                match provider.session(peer, version, &peers, stream, &turns).await {
                    Ok(()) | Err(FrameError::Closed) => {}
                    Err(e) => debug!("fetch session ended: {e}"),
                }
            }
        })
        .await
    }

    /// Answers one request after another on `stream` (of fetch `version`) until the peer
    /// closes it, leaves it idle for [`SESSION_IDLE`], or a write fails.
    async fn session<S>(
        &self,
        peer: PeerId,
        version: FetchVersion,
        peers: &PeerTable,
        mut stream: FramedStream<S>,
        turns: &Turns,
    ) -> Result<(), FrameError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        loop {
            let request: FetchRequest = stream.read().await?;
            stream.set_idle(SESSION_IDLE);
            if version == FetchVersion::V2 && matches!(request, FetchRequest::NarCoded { .. }) {
                // What a fetch/2 node would not even decode.
                let message = "not a fetch/2 request".to_owned();
                stream.write(&FetchResponse::Failed { message }).await?;
                continue;
            }
            let origin = peers.origin(&peer);
            let Some(turn) = turns.take(peer, origin).await else {
                let message = format!("busy: no turn within {:?}", TURNS.max_wait);
                stream.write(&FetchResponse::Failed { message }).await?;
                continue;
            };
            // The turn ends with the decision, before anything is written.
            match self.plan(peer, origin, &request, turn).await {
                Err(answer) => stream.write(&answer).await?,
                Ok(Plan::NarInfo(text)) => stream.write(&FetchResponse::NarInfo { text }).await?,
                Ok(Plan::Nar { nar, nar_size, offset, slot, zstd: false }) => {
                    send::nar(&mut stream, nar, nar_size, offset).await?;
                    self.traffic.served(peer, nar_size - offset);
                    drop(slot);
                }
                Ok(Plan::Nar { nar, nar_size, offset, slot, zstd: true }) => {
                    stream.write(&FetchResponse::NarBlocks { nar_size, offset }).await?;
                    coded::send_blocks(&mut stream, nar, nar_size, offset).await?;
                    self.traffic.served(peer, nar_size - offset);
                    drop(slot);
                }
                Ok(Plan::Relay { nar, nar_size, offset, flights, slot }) => {
                    send::relayed(&mut stream, nar, nar_size, offset).await?;
                    flights.relayed(nar_size - offset);
                    drop(slot);
                }
                Ok(Plan::Document { answer, body }) => {
                    stream.write(&answer).await?;
                    for chunk in body.chunks(super::NAR_CHUNK) {
                        stream.write_bytes(chunk).await?;
                    }
                    stream.flush().await?;
                }
            }
        }
    }

    /// What to answer `request` with: a plan to carry out, or an answer that says no. `turn`
    /// is given back once the daemon has been asked, before waiting for a NAR slot.
    async fn plan(
        &self,
        peer: PeerId,
        origin: Origin,
        request: &FetchRequest,
        turn: Turn,
    ) -> Result<Plan, FetchResponse> {
        let failed = |message: String| FetchResponse::Failed { message };
        match *request {
            FetchRequest::NarInfo { hash } => {
                let narinfo = self.narinfo_for(&peer, hash).await;
                let narinfo = narinfo.map_err(|e| failed(e.to_string()))?;
                debug!(%hash, found = narinfo.is_some(), "narinfo asked");
                Ok(Plan::NarInfo(narinfo.ok_or(FetchResponse::NotFound)?.to_string()))
            }
            FetchRequest::Nar { hash, nar_hash, offset } => {
                let asked = nar_plan::NarAsked { hash, nar_hash, offset, zstd: false };
                self.plan_nar(peer, origin, asked, turn).await
            }
            FetchRequest::NarCoded { hash, nar_hash, offset, zstd } => {
                let asked = nar_plan::NarAsked { hash, nar_hash, offset, zstd };
                self.plan_nar(peer, origin, asked, turn).await
            }
            FetchRequest::UpstreamNarInfo { hash } => {
                // Not `NotFound`: the asker remembers a claimer's "not here" as the mesh's
                // upstreams' answer, and a node with no upstreams cannot give that; the asker
                // asks its own upstreams instead.
                let Some(flights) = self.flights.clone() else {
                    return Err(failed("this node has no upstream caches".to_owned()));
                };
                match flights.narinfo(hash).await {
                    Ok(Some(text)) => Ok(Plan::NarInfo(text)),
                    Ok(None) => Err(FetchResponse::NotFound),
                    Err(e) => Err(failed(e.to_string())),
                }
            }
            FetchRequest::Listing { hash, nar_hash } => {
                self.plan_listing(peer, origin, hash, nar_hash, turn).await
            }
            FetchRequest::BuildLog { ref drv } => self.plan_build_log(peer, drv).await,
            FetchRequest::UpstreamNar { hash, nar_hash, offset } => {
                let flights = self.flights.clone().ok_or(FetchResponse::NotFound)?;
                // A relay is a NAR transfer like any other: it takes a slot within the peer's
                // and its host's share before anything is downloaded for it.
                drop(turn);
                let Some(slot) = self.nar_transfers.take(peer, origin).await else {
                    let wait = NAR_TRANSFERS.max_wait;
                    return Err(failed(format!("busy: no NAR slot within {wait:?}")));
                };
                match flights.nar(hash, nar_hash, offset).await {
                    Ok(Some((nar_size, nar))) => {
                        debug!(%hash, offset, "relaying a NAR from upstream");
                        let slot = Box::new(slot);
                        Ok(Plan::Relay { nar, nar_size, offset, flights, slot })
                    }
                    Ok(None) => Err(FetchResponse::NotFound),
                    Err(e) => Err(failed(e.to_string())),
                }
            }
        }
    }
}

/// Path infos of the narinfos answered in the last [`RECENT_FOR`], for the NAR requests that
/// follow them; at most [`RECENT_MAX`]. Narinfo requests always ask the daemon, so a path
/// signed since is served with its new signatures.
///
/// Ten minutes, not seconds: the asker remembers a verified narinfo far longer and then asks
/// for the NAR alone, and a NAR request that misses here costs two daemon round trips, a
/// burst of them new daemon connections (a fork each; at 10 s, the first NARs of the bench's
/// burst, asked 5-15 s after their narinfos, waited up to 75 ms for them). A path rebuilt
/// since with other contents fails the asker's hash check and is fetched elsewhere; one
/// deleted since fails its dump.
#[derive(Default)]
struct RecentPathInfo(Mutex<HashMap<StorePathHash, (PathInfo, Instant)>>);

const RECENT_FOR: Duration = Duration::from_secs(600);
const RECENT_MAX: usize = 16_384;

impl RecentPathInfo {
    fn get(&self, hash: &StorePathHash) -> Option<PathInfo> {
        let recent = self.0.lock();
        recent.get(hash).filter(|(_, at)| at.elapsed() < RECENT_FOR).map(|(info, _)| info.clone())
    }

    fn insert(&self, hash: StorePathHash, info: PathInfo) {
        let mut recent = self.0.lock();
        if recent.len() >= RECENT_MAX {
            recent.retain(|_, (_, at)| at.elapsed() < RECENT_FOR);
            if recent.len() >= RECENT_MAX {
                recent.clear();
            }
        }
        recent.insert(hash, (info, Instant::now()));
    }
}

/// What the holder will send for a request it can serve.
enum Plan {
    NarInfo(String),
    /// An answer and the bytes that follow it whole (a listing, a build log).
    Document {
        answer: FetchResponse,
        body: Bytes,
    },
    /// The NAR's bytes (from the start), the part to send, and the transfer slot held while
    /// it is sent.
    Nar {
        nar: NarBytes,
        nar_size: u64,
        offset: u64,
        slot: Box<Turn>,
        /// As zstd blocks (`NarBlocks`), else raw.
        zstd: bool,
    },
    /// A NAR from upstream, from the offset asked for on, as this node downloads it, and the
    /// transfer slot held while it is sent.
    Relay {
        nar: RelayedBytes,
        nar_size: u64,
        offset: u64,
        flights: Arc<dyn UpstreamRelay>,
        slot: Box<Turn>,
    },
}

type NarBytes = Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;
