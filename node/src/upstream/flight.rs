//! LAN-wide single flight: one node of the mesh downloads each NAR from upstream, and every
//! other node that wants it streams it from that node as it arrives (see docs/upstream.md).
//!
//! Who downloads a NAR is decided without asking anyone: rendezvous hashing of its `NarHash`
//! over the live nodes (this one and its connected peers). (Keyed by the NAR, not the path:
//! two paths with the same contents share one NAR file upstream.) Every node with the same
//! view of the mesh picks the same one, the *claimer*; when the claimer leaves, the next in
//! the order takes over, and so on. A node asks the claimer with the fetch protocol's
//! `UpstreamNar` request; the claimer answers from its [`Spool`], starting the download if it
//! is the first to ask, and readers follow it as it is written. A claimer that breaks off
//! mid-NAR is replaced by the next node in the order, asked from the offset reached, so the
//! client's NAR goes on (its hash running on in the substituter). A claimer with no upstream
//! (or whose upstreams lack the path) says so, and the next is asked; this node comes in its
//! turn, like any other.
//!
//! Narinfos have claimers too, by the same hashing of the store path's hash: the path's
//! claimer asks its upstreams for the narinfo for the whole mesh (`UpstreamNarInfo`) and
//! remembers it, so the mesh asks upstream for each narinfo once and shares a "not here",
//! which the asker remembers as if its own upstreams had said it. The narinfo comes with its
//! `URL` made absolute, so that the NAR's claimer can download it from the text alone.
//!
//! Views of the mesh differ for a moment when a node joins or leaves, and two nodes may then
//! download the same NAR: a cost, never a fault. The bounds: one download per claimer asked,
//! at most [`MAX_CLAIMERS`] claimers per NAR request.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use libp2p::PeerId;
use nixmesh_localhttp::health::PeerHealth;
use nixmesh_localhttp::{NarStream, Rejection, SourceError, accept};
use nixmesh_protocol::signature::TrustedKeys;
use nixmesh_protocol::{Sha256, StorePathHash};
use parking_lot::Mutex;
use sha2::Digest;
use thiserror::Error;
use tracing::{debug, info, warn};

use super::Holder;
use super::checked::checked_from;
use super::spool::{DownloadError, FailedDownload, Spool, SpoolError};
use super::{Found, UpstreamError, Upstreams};
use crate::fetch::FetchClient;
use crate::fetch::server::{RelayError, RelayedBytes, UpstreamRelay};
use crate::fetch::traffic::Traffic;
use crate::mesh::Mesh;

/// How many claimers one NAR request tries before it gives up.
pub const MAX_CLAIMERS: usize = 6;

/// What a claimer sends: the NAR's size, and its bytes from the offset asked for.
pub type Relay = (u64, RelayedBytes);

/// Why a narinfo from upstream (or passed on by a path's claimer) is not used to download a
/// NAR.
#[derive(Debug, Error)]
pub enum Unusable {
    /// It does not pass the trust rule every narinfo passes (see
    /// [`nixmesh_localhttp::accept`]), or names another path.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// Its `URL` is not a file under one of this node's upstreams.
    #[error("its URL {0} is not under any of this node's upstreams")]
    Elsewhere(String),
}

/// What [`Flights`] is given.
pub struct FlightsConfig {
    pub mesh: Mesh,
    pub fetch: FetchClient,
    pub upstreams: Arc<Upstreams>,
    pub spool: Spool,
    /// Where the NAR bytes relayed to peers are counted.
    pub traffic: Arc<Traffic>,
    /// The keys a narinfo must be signed by (unless it certifies itself) before its NAR is
    /// downloaded.
    pub trusted: TrustedKeys,
    /// Where a claimer that passed on an unusable narinfo is counted against.
    pub health: Arc<PeerHealth<Holder>>,
}

/// This node's part in the mesh's downloads from upstream.
pub struct Flights {
    mesh: Mesh,
    fetch: FetchClient,
    upstreams: Arc<Upstreams>,
    spool: Spool,
    traffic: Arc<Traffic>,
    trusted: TrustedKeys,
    health: Arc<PeerHealth<Holder>>,
    /// NARs downloaded for one reader (too large for the spool, or the spool full) now: at
    /// most one download of a NAR at a time.
    direct: Arc<Mutex<HashSet<Sha256>>>,
}

impl Flights {
    pub fn new(config: FlightsConfig) -> Self {
        let FlightsConfig { mesh, fetch, upstreams, spool, traffic, trusted, health } = config;
        let direct = Arc::default();
        Flights { mesh, fetch, upstreams, spool, traffic, trusted, health, direct }
    }

    /// `text` as a narinfo of `hash` this node may download the NAR of: it passes the trust
    /// rule (a trusted signature, or a `CA:` that recomputes to the path), names the path
    /// asked for, and its `URL` is a file under one of this node's upstreams.
    fn usable(&self, text: String, hash: StorePathHash) -> Result<Found, Unusable> {
        let accepted = accept(&text, hash, &self.trusted)?;
        let url = &accepted.narinfo.url;
        if !self.upstreams.serves(url) {
            return Err(Unusable::Elsewhere(url.clone()));
        }
        Ok(Found { narinfo: accepted.narinfo, text })
    }

    /// The upstreams this node asks.
    pub fn upstreams(&self) -> &Arc<Upstreams> {
        &self.upstreams
    }

    /// The live nodes in the order they claim `key` (a NarHash for a NAR, a store path's
    /// hash for its narinfo): highest rendezvous score first.
    fn claimers(&self, key: &[u8]) -> Vec<PeerId> {
        let mut nodes = self.mesh.peers().connected_ids();
        nodes.push(self.mesh.local_peer_id());
        nodes.sort_by_cached_key(|node| std::cmp::Reverse(score(node, key)));
        nodes
    }

    /// For this node's substituter: the narinfo of `hash` from upstream, asked by way of the
    /// path's claimer, so that the mesh asks its upstreams once and shares the answer, a "not
    /// here" included; within the upstream deadline in all. A claimer that does not answer in
    /// three quarters of it is passed over for this node's own upstreams.
    pub async fn narinfo(&self, hash: StorePathHash) -> Result<Option<String>, UpstreamError> {
        let local = self.mesh.local_peer_id();
        let claimer = self.claimers(hash.as_bytes())[0];
        if claimer != local {
            let limit = self.upstreams.deadline() * 3 / 4;
            let asked = self.fetch.upstream_narinfo(claimer, hash);
            match tokio::time::timeout(limit, asked).await {
                Ok(Ok(Some(text))) => match self.usable(text.clone(), hash) {
                    Ok(_) => return Ok(Some(text)),
                    Err(e) => {
                        // Asked in the node's own name: its own upstreams answer instead.
                        warn!(%hash, %claimer, "the path's claimer passed on a narinfo not used: {e}");
                        let reason = format!("passed on an unusable upstream narinfo: {e}");
                        self.health.fault(&Holder::Peer(claimer), reason);
                    }
                },
                Ok(Ok(None)) => {
                    self.upstreams.absent(hash);
                    return Ok(None);
                }
                Ok(Err(e)) => {
                    debug!(%hash, %claimer, "narinfo from upstream by way of the claimer: {e}")
                }
                Err(_) => debug!(%hash, %claimer, "the claimer did not answer within {limit:?}"),
            }
            let left = self.upstreams.deadline() - limit;
            return match tokio::time::timeout(left, self.upstreams.narinfo(hash)).await {
                Ok(found) => Ok(found?.map(|f| f.text)),
                Err(_) => Err(UpstreamError::NoAnswer { limit: self.upstreams.deadline() }),
            };
        }
        Ok(self.upstreams.narinfo(hash).await?.map(|f| f.text))
    }

    /// For this node's substituter: the NAR with `nar_hash` of the path `hash`, from byte
    /// `offset`, by way of its claimer; `None` when no claimer (this node included) could
    /// start it. A claimer breaking off mid-NAR is replaced by the next.
    pub async fn nar(
        self: &Arc<Self>,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        let mut tried = HashSet::new();
        let Some(first) = self.open(hash, nar_hash, offset, &mut tried).await? else {
            return Ok(None);
        };
        // On a break: the next claimer from the offset reached, until one finishes or none
        // is left.
        let state = (Some(first), offset, tried, self.clone());
        let resumed = futures::stream::unfold(
            state,
            move |(current, at, mut tried, flights)| async move {
                let mut current = current?;
                match current.next().await {
                    Some(Ok(chunk)) => {
                        let at = at + chunk.len() as u64;
                        Some((Ok(chunk), (Some(current), at, tried, flights)))
                    }
                    None => None,
                    Some(Err(e)) => {
                        info!(%hash, offset = at, "NAR from upstream broke off ({e}); asking the next claimer");
                        match flights.open(hash, nar_hash, at, &mut tried).await {
                            Ok(Some(mut next)) => match next.next().await {
                                Some(Ok(chunk)) => {
                                    let at = at + chunk.len() as u64;
                                    Some((Ok(chunk), (Some(next), at, tried, flights)))
                                }
                                Some(Err(e)) => Some((Err(e), (None, at, tried, flights))),
                                None => None,
                            },
                            Ok(None) => Some((Err(e), (None, at, tried, flights))),
                            Err(e) => Some((Err(e), (None, at, tried, flights))),
                        }
                    }
                }
            },
        );
        Ok(Some(Box::pin(resumed)))
    }

    /// The first claimer not in `tried` (added to it) that starts sending the NAR.
    async fn open(
        &self,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
        tried: &mut HashSet<PeerId>,
    ) -> Result<Option<NarStream>, SourceError> {
        let local = self.mesh.local_peer_id();
        let mut last_error = None;
        for claimer in self.claimers(&nar_hash.0) {
            if tried.len() >= MAX_CLAIMERS {
                break;
            }
            if !tried.insert(claimer) {
                continue;
            }
            if claimer == local {
                match self.relay(hash, nar_hash, offset).await {
                    Ok(Some((_, nar))) => {
                        debug!(%hash, offset, "NAR from upstream, downloaded here");
                        let failed = |e: std::io::Error| upstream_failure("NAR", &e);
                        return Ok(Some(Box::pin(nar.map_err(failed))));
                    }
                    Ok(None) => {}
                    Err(e) => {
                        warn!(%hash, "NAR from upstream: {e}");
                        last_error = Some(upstream_failure("NAR", &e));
                    }
                }
                continue;
            }
            match self.fetch.upstream_nar(claimer, hash, nar_hash, offset).await {
                Ok(Some(body)) => {
                    debug!(%hash, %claimer, offset, "NAR from upstream, by way of its claimer");
                    return Ok(Some(Box::pin(body.map_err(SourceError::from))));
                }
                Ok(None) => debug!(%hash, %claimer, "the claimer cannot download it"),
                Err(e) => {
                    info!(%hash, %claimer, "claimer not used: {e}");
                    last_error = Some(e.into());
                }
            }
        }
        match last_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// What this node sends for the NAR as its claimer: from its spool (the download started
    /// if needed), or, for a NAR the spool cannot take, straight from upstream. `None` when
    /// no upstream has the path, or has another build of it.
    pub async fn relay(
        &self,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<Relay>, RelayError> {
        if self.upstreams.is_empty() {
            return Ok(None);
        }
        // The narinfo by way of its own claimer, which remembers it: the mesh asks upstream
        // for each narinfo once.
        let Some(text) = self.narinfo(hash).await.map_err(upstream_cause)? else {
            return Ok(None);
        };
        // Whoever wrote the text chose its URL: only what this node would trust, of the path
        // asked for, from its own upstreams.
        let found = match self.usable(text, hash) {
            Ok(found) => found,
            Err(e) => {
                info!(%hash, "not downloading a NAR from upstream: the narinfo {e}");
                return Ok(None);
            }
        };
        if found.narinfo.nar_hash != nar_hash {
            debug!(%hash, "upstream has another build of the path");
            return Ok(None);
        }
        let nar_size = found.narinfo.nar_size;
        if offset > nar_size {
            return Err(RelayError::PastEnd { offset, nar_size });
        }
        let (upstreams, download_found) = (self.upstreams.clone(), found.clone());
        let download: super::spool::Download =
            Box::new(move || Box::pin(async move { upstreams.nar(&download_found).await }));
        match self.spool.read(nar_hash, nar_size, offset, download) {
            Ok(nar) => Ok(Some((nar_size, Box::pin(nar)))),
            Err(e @ (SpoolError::TooLarge { .. } | SpoolError::Full { .. })) => {
                info!(%hash, "not spooled ({e}): downloading it for this reader alone");
                let nar = self.direct(&found, offset).await?;
                Ok(Some((nar_size, nar)))
            }
            Err(e) => Err(RelayError::Upstream(Box::new(e))),
        }
    }

    /// `found`'s NAR from `offset`, downloaded for one reader, checked as it passes (its last
    /// bytes held back until its size and hash are right); refused while another reader's
    /// download of the same NAR is under way here. The download stops when the reader
    /// drops the stream.
    async fn direct(&self, found: &Found, offset: u64) -> Result<RelayedBytes, RelayError> {
        let nar_hash = found.narinfo.nar_hash;
        let under_way =
            DirectDownload::start(&self.direct, nar_hash).ok_or(RelayError::Busy { nar_hash })?;
        let nar = self.upstreams.nar(found).await.map_err(upstream_cause)?;
        let nar = nar.map_err(std::io::Error::other);
        let checked = checked_from(nar, nar_hash, found.narinfo.nar_size, offset);
        // The mark goes with the stream: dropped with it, when the download ends or its
        // reader goes.
        Ok(Box::pin(checked.map(move |chunk| {
            let _ = &under_way;
            chunk
        })))
    }
}

impl UpstreamRelay for Flights {
    fn narinfo(&self, hash: StorePathHash) -> BoxFuture<'_, Result<Option<String>, RelayError>> {
        Box::pin(async move {
            let found = self.upstreams.narinfo(hash).await.map_err(upstream_cause)?;
            Ok(found.map(|f| f.text))
        })
    }

    fn nar(
        &self,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> BoxFuture<'_, Result<Option<Relay>, RelayError>> {
        Box::pin(self.relay(hash, nar_hash, offset))
    }

    fn relayed(&self, len: u64) {
        self.traffic.relayed(len);
    }
}

/// A NAR downloaded for one reader, marked as under way until dropped.
struct DirectDownload {
    nar_hash: Sha256,
    under_way: Arc<Mutex<HashSet<Sha256>>>,
}

impl DirectDownload {
    /// The mark for `nar_hash`, unless another is under way.
    fn start(under_way: &Arc<Mutex<HashSet<Sha256>>>, nar_hash: Sha256) -> Option<Self> {
        let fresh = under_way.lock().insert(nar_hash);
        fresh.then(|| DirectDownload { nar_hash, under_way: under_way.clone() })
    }
}

impl Drop for DirectDownload {
    fn drop(&mut self) {
        self.under_way.lock().remove(&self.nar_hash);
    }
}

fn upstream_cause(e: UpstreamError) -> RelayError {
    RelayError::Upstream(Box::new(e))
}

/// `e`, from the upstreams by way of this node, as the substituter sees it: a time-out stays
/// one (`TimedOut`), the rest become their text here, at the edge.
pub(crate) fn upstream_failure(
    operation: &'static str,
    e: &(dyn std::error::Error + 'static),
) -> SourceError {
    let peer = Holder::Upstream.to_string();
    if timed_out(e) {
        SourceError::TimedOut { peer, operation }
    } else {
        SourceError::Failed { peer, operation, reason: e.to_string() }
    }
}

/// Whether `e`, or the upstream error it carries (inside a relay's error, a spool reader's
/// or a checked download's `io::Error`), is a time-out.
fn timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    if let Some(e) = e.downcast_ref::<UpstreamError>() {
        return e.is_timeout();
    }
    if let Some(RelayError::Upstream(cause)) = e.downcast_ref::<RelayError>() {
        return timed_out(cause.as_ref());
    }
    if let Some(FailedDownload(e)) = e.downcast_ref::<FailedDownload>() {
        return matches!(e.as_ref(), DownloadError::Upstream(e) if e.is_timeout());
    }
    if let Some(e) = e.downcast_ref::<std::io::Error>() {
        let inner = e.get_ref().map(|inner| inner as &(dyn std::error::Error + 'static));
        return e.kind() == std::io::ErrorKind::TimedOut || inner.is_some_and(timed_out);
    }
    false
}

/// `node`'s rendezvous score for `key`: the first 8 bytes of SHA-256(peer id, key).
fn score(node: &PeerId, key: &[u8]) -> u64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(node.to_bytes());
    hasher.update(key);
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_ranks_the_claimers_alike_and_a_departure_moves_only_its_own_nars() {
        let nodes: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let nars: Vec<[u8; 4]> = (0..200u32).map(u32::to_le_bytes).collect();
        let first = |among: &[PeerId], nar: &[u8; 4]| {
            *among.iter().max_by_key(|n| score(n, nar)).expect("some node")
        };
        let mut counts = std::collections::HashMap::new();
        for nar in &nars {
            *counts.entry(first(&nodes, nar)).or_insert(0) += 1;
            // Without the first claimer, the others keep their order.
            let gone = first(&nodes, nar);
            let rest: Vec<PeerId> = nodes.iter().copied().filter(|n| *n != gone).collect();
            let mut reversed = rest.clone();
            reversed.reverse();
            assert_eq!(
                first(&rest, nar),
                first(&reversed, nar),
                "order of the list does not matter"
            );
        }
        assert_eq!(counts.len(), 5, "every node claims some: {counts:?}");
        assert!(counts.values().all(|&n| n > 10), "spread: {counts:?}");
    }

    #[test]
    fn a_time_out_upstream_stays_one_through_the_relay_and_the_spool() {
        let limit = std::time::Duration::from_secs(2);
        let timed_out = UpstreamError::TimedOut { url: "http://cache".into(), limit };
        let spooled = DownloadError::Upstream(timed_out.clone());
        let reader = std::io::Error::other(FailedDownload(Arc::new(spooled)));
        let relayed = RelayError::Upstream(Box::new(timed_out.clone()));
        let checked = std::io::Error::other(timed_out);
        let deadline = UpstreamError::NoAnswer { limit };
        let errors: [&(dyn std::error::Error + 'static); 4] =
            [&reader, &relayed, &checked, &deadline];
        for e in errors {
            let source = upstream_failure("NAR", e);
            assert!(matches!(source, SourceError::TimedOut { operation: "NAR", .. }), "{e}");
        }
        let past = RelayError::PastEnd { offset: 9, nar_size: 4 };
        let source = upstream_failure("NAR", &past);
        assert!(
            matches!(&source, SourceError::Failed { reason, .. } if reason.contains("past the NAR's end")),
            "{source:?}"
        );
    }
}
