//! The mesh as the local substituter sees it: [`MeshSource`] implements
//! [`nixmesh_localhttp::PathSource`] with the index for "who holds it" and the fetch client
//! ([`crate::fetch::client`]) for the rest, and the upstream caches after every peer: a path
//! no peer holds comes from upstream by way of the mesh's single flight
//! ([`crate::upstream::flight`]). (What the status pages show is [`crate::substituter::status_view`].)

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use nixmesh_localhttp::{NarStream, PathSource, SourceError};
use nixmesh_protocol::{Sha256, StorePath, StorePathHash};
use tokio::time::Instant;
use tracing::debug;

use crate::fetch::FetchClient;
use crate::fetch::client::{FetchError, FetchFailure};
use crate::fetch::traffic::Traffic;
use crate::index::Index;
use crate::mesh::Mesh;
use crate::upstream::Holder;
use crate::upstream::flight::{Flights, upstream_failure};

/// The mesh behind the substituter.
pub struct MeshSource {
    mesh: Mesh,
    fetch: FetchClient,
    index: Arc<Index>,
    /// Where the NAR bytes received are counted.
    traffic: Arc<Traffic>,
    /// The upstream caches; `None` without any.
    flights: Option<Arc<Flights>>,
    /// Until when a path whose holders are all away waits for one to reconnect
    /// ([`STARTUP_GRACE`] after the node started).
    settling_until: Instant,
}

/// How long after the node starts a request for a path that only absent peers hold waits
/// for one of them to connect, instead of a miss that Nix would remember for an hour: a
/// restarted node serves from its stored index at once, but its peers take a moment to
/// reconnect (a static peer within milliseconds, one found by mDNS within a couple of
/// seconds). Below the substituter's request time limit (10 s), so the wait ends in an
/// answer; and only for paths the index names a holder of that has not connected since the
/// start (one that came and went is gone, and its paths are misses at once).
pub const STARTUP_GRACE: Duration = Duration::from_secs(8);
/// How often a waiting request looks again.
const RECONNECT_POLL: Duration = Duration::from_millis(25);

impl MeshSource {
    pub fn new(
        mesh: Mesh,
        fetch: FetchClient,
        index: Arc<Index>,
        traffic: Arc<Traffic>,
        flights: Option<Arc<Flights>>,
    ) -> Self {
        let settling_until = Instant::now() + STARTUP_GRACE;
        MeshSource { mesh, fetch, index, traffic, flights, settling_until }
    }
}

/// The substituter's view of a failed fetch: a time-out stays one (`TimedOut`, for the
/// substituter's health and metrics to tell apart), every other kind becomes its text here,
/// at the edge.
impl From<FetchError> for SourceError {
    fn from(e: FetchError) -> Self {
        let (peer, operation) = (e.peer.to_string(), e.operation);
        match e.failure {
            FetchFailure::TimedOut(_) => SourceError::TimedOut { peer, operation },
            failure => SourceError::Failed { peer, operation, reason: failure.to_string() },
        }
    }
}

/// How many of a path's connected holders a request may ask, at most: enough to ride out
/// several failing in a row, few enough that a path held by hundreds of peers is looked up
/// as fast as one held by a few ([`Index::holders_among`]).
pub const HOLDERS_ASKED: usize = 8;
/// How many connected peers a build log is asked of at once, at most (the nearest): logs are
/// not advertised, so any may have one.
pub const LOG_PEERS_ASKED: usize = 16;

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

    /// Within [`STARTUP_GRACE`] of the start, when the index names a holder of `hash` that
    /// has not connected since: waits (looking every 25 ms) until a holder is connected or
    /// the grace is over. Otherwise (a holder that came and went since is gone, not coming
    /// back) none, at once.
    async fn holders_reconnecting(&self, hash: &StorePathHash) -> Vec<Holder> {
        let table = self.mesh.peers();
        if Instant::now() >= self.settling_until
            || self.index.holders_among(hash, 1, |p| !table.ever_connected(p)).is_empty()
        {
            return Vec::new();
        }
        debug!(%hash, "only absent peers hold this path; waiting for one to reconnect");
        loop {
            tokio::time::sleep(RECONNECT_POLL).await;
            let holders = self.holders(hash);
            let peers = holders.iter().any(|h| matches!(h, Holder::Peer(_)));
            if peers || Instant::now() >= self.settling_until {
                return holders;
            }
        }
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
                flights.narinfo(hash).await.map_err(|e| upstream_failure("narinfo", &e))
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

    async fn fetch_listing(
        &self,
        holder: &Holder,
        hash: StorePathHash,
        nar_hash: Sha256,
    ) -> Result<Option<bytes::Bytes>, SourceError> {
        match holder {
            Holder::Peer(peer) => Ok(self.fetch.listing(*peer, hash, nar_hash).await?),
            // Upstream caches' own `.ls` files, where they have them, are not asked for.
            Holder::Upstream => Ok(None),
        }
    }

    /// The nearest [`LOG_PEERS_ASKED`] connected peers.
    fn log_holders(&self) -> Vec<Holder> {
        let table = self.mesh.peers();
        let mut peers = table.connected_by_rtt(table.connected_ids());
        peers.truncate(LOG_PEERS_ASKED);
        peers.into_iter().map(Holder::Peer).collect()
    }

    async fn fetch_build_log(
        &self,
        holder: &Holder,
        drv: &StorePath,
    ) -> Result<Option<bytes::Bytes>, SourceError> {
        match holder {
            Holder::Peer(peer) => Ok(self.fetch.build_log(*peer, &drv.base_name()).await?),
            Holder::Upstream => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use libp2p::PeerId;

    use super::*;
    use crate::fetch::client::Violation;

    #[test]
    fn a_fetch_that_timed_out_is_a_source_time_out_and_the_rest_keep_their_words() {
        let peer = PeerId::random();
        let timed_out = FetchError {
            peer,
            operation: "NAR",
            failure: FetchFailure::TimedOut(Duration::from_secs(30)),
        };
        let source = SourceError::from(timed_out);
        assert!(
            matches!(&source, SourceError::TimedOut { peer: p, operation: "NAR" } if *p == peer.to_string()),
            "{source:?}"
        );
        let early = Violation::EndedEarly { got: 3, expected: 10 };
        let broken = FetchError { peer, operation: "NAR", failure: early.into() };
        let source = SourceError::from(broken);
        assert!(
            matches!(&source, SourceError::Failed { reason, .. } if reason == "the stream ended after 3 of 10 bytes"),
            "{source:?}"
        );
    }
}
