//! Peer exchange: past one link. Each node asks each peer it connects to, and then every
//! [`ASK_EVERY`], which other nodes that peer is connected to and where they listen
//! ([`PEERS_PROTOCOL`]), and dials the ones it is not connected to. mDNS ends at the router;
//! with this, one `--peer` across it joins the nodes of both sides.
//!
//! What is told, and to whom ([`told_to`]): the answering node's connected peers but the
//! asker (a node never tells a peer about itself or the peer), at most [`MAX_TOLD_PEERS`]
//! (the nearest by ping) with [`MAX_TOLD_ADDRESSES`] addresses each, only addresses another
//! host can dial (no loopback unless the asker is on this machine, no link-local). With an
//! allow-list, only allowed askers are told, and only of allowed peers; with a mesh key,
//! only nodes holding the key ever connect, so a keyless node learns nothing.
//!
//! What is learned ([`learned_from`]) is checked the same way and dialled as a learned peer
//! ([`Mesh::want_learned`]): given up a few minutes after the last peer told of it, so a node
//! gone from the mesh is not redialled for ever.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use nixmesh_protocol::mesh_messages::peers::{
    MAX_PEER_LIST_FRAME_LEN, MAX_TOLD_ADDRESSES, MAX_TOLD_BYTES, MAX_TOLD_PEERS, PEERS_PROTOCOL,
    PeerList, PeersRequest, ToldPeer,
};
use nixmesh_protocol::mesh_messages::{MAX_REQUEST_FRAME_LEN, WireError};
use thiserror::Error;
use tokio::time::Instant;
use tracing::{debug, debug_span};

use crate::mesh::framed::{FrameError, FrameLimits, MeshStream};
use crate::mesh::share::Origin;
use crate::mesh::streams::OpenStreamError;
use crate::mesh::{DialTarget, Mesh, StreamLimits, serve_streams};
use crate::node::shutdown::Shutdown;

/// How often each connected peer is asked again (a new peer is asked at once).
pub const ASK_EVERY: Duration = Duration::from_secs(60);
/// How often the asker looks for peers due.
const TICK: Duration = Duration::from_secs(1);
/// How long one question and its answer may take, all told.
const ASK_LIMIT: Duration = Duration::from_secs(5);
/// Peers asked at once.
const ASKS_AT_ONCE: usize = 8;
const ASKER_LIMITS: FrameLimits = FrameLimits {
    idle: ASK_LIMIT,
    read: ASK_LIMIT,
    write: ASK_LIMIT,
    max_frame: MAX_PEER_LIST_FRAME_LEN,
};
const SERVER_LIMITS: FrameLimits = FrameLimits {
    idle: ASK_LIMIT,
    read: ASK_LIMIT,
    write: ASK_LIMIT,
    max_frame: MAX_REQUEST_FRAME_LEN,
};
/// Questions answered at once: one per peer (a node asks once a minute), a few per host; none
/// wait.
const ANSWERS: StreamLimits = StreamLimits {
    concurrent: 32,
    waiting: 0,
    max_wait: Duration::ZERO,
    per_peer: 1,
    per_origin: 4,
};

/// Asking a peer for its peers failed.
#[derive(Debug, Error)]
pub enum ExchangeError {
    #[error("cannot open a {PEERS_PROTOCOL} stream: {0}")]
    Open(#[from] OpenStreamError),
    #[error("{PEERS_PROTOCOL} stream: {0}")]
    Frame(#[from] FrameError),
    #[error("refused its answer: {0}")]
    Answer(#[from] WireError),
    #[error("no answer within {ASK_LIMIT:?}")]
    TimedOut,
}

/// Answers peers' questions on [`PEERS_PROTOCOL`] until `shutdown`.
pub async fn serve(mesh: Mesh, shutdown: Shutdown) {
    let span = |peer| debug_span!("peer-exchange", %peer);
    serve_streams(&mesh, PEERS_PROTOCOL, ANSWERS, shutdown, span, |peer, stream| {
        let answer = answer_for(&mesh, peer);
        async move {
            let mut stream = MeshStream::mesh(stream, SERVER_LIMITS);
            let answered = async {
                let PeersRequest::List = stream.read().await?;
                stream.write(&answer).await?;
                stream.close().await
            };
            if let Err(e) = answered.await {
                debug!("peer exchange: answering: {e}");
            }
        }
    })
    .await
}

/// Asks every newly connected peer, and each again every [`ASK_EVERY`], for its peers, and
/// dials those it told of, until `shutdown`.
pub async fn run(mesh: Mesh, shutdown: Shutdown) {
    let mut asked: HashMap<PeerId, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.signalled() => return,
            _ = tick.tick() => {}
        }
        let due = due_peers(&mut asked, mesh.peers().connected_ids(), Instant::now());
        let asking = futures::stream::iter(due)
            .map(|peer| ask(&mesh, peer))
            .buffer_unordered(ASKS_AT_ONCE)
            .collect::<Vec<_>>();
        let learned = tokio::select! {
            () = shutdown.signalled() => return,
            learned = asking => learned,
        };
        for target in learned.into_iter().flatten() {
            mesh.want_learned(target).await;
        }
    }
}

/// The peers to ask now: connected, and not asked within [`ASK_EVERY`] (or since they last
/// connected); marks them asked. Forgets peers no longer connected, so that one coming back
/// is asked at once.
fn due_peers(
    asked: &mut HashMap<PeerId, Instant>,
    connected: Vec<PeerId>,
    now: Instant,
) -> Vec<PeerId> {
    let live: HashSet<PeerId> = connected.iter().copied().collect();
    asked.retain(|peer, _| live.contains(peer));
    let due: Vec<PeerId> = connected
        .into_iter()
        .filter(|peer| asked.get(peer).is_none_or(|at| now.duration_since(*at) >= ASK_EVERY))
        .collect();
    for peer in &due {
        asked.insert(*peer, now);
    }
    due
}

/// What `peer` tells of, as dial targets (nothing, logged, if asking failed).
async fn ask(mesh: &Mesh, peer: PeerId) -> Vec<DialTarget> {
    let answer = tokio::time::timeout(ASK_LIMIT, list_of(mesh, peer)).await;
    match answer.unwrap_or(Err(ExchangeError::TimedOut)) {
        Ok(list) => {
            let local = is_local(mesh, &peer);
            let me = mesh.local_peer_id();
            let learned = learned_from(&list, peer, local, me, |p| mesh.allows(p));
            debug!(%peer, told = list.peers.len(), dialable = learned.len(), "peer exchange");
            learned
        }
        Err(e) => {
            debug!(%peer, "peer exchange: asking the peer for its peers: {e}");
            Vec::new()
        }
    }
}

async fn list_of(mesh: &Mesh, peer: PeerId) -> Result<PeerList, ExchangeError> {
    let stream = mesh.control().open_stream(peer, Mesh::protocol(PEERS_PROTOCOL)).await?;
    let mut stream = MeshStream::mesh(stream, ASKER_LIMITS);
    stream.write(&PeersRequest::List).await?;
    let list: PeerList = stream.read().await?;
    list.check()?;
    Ok(list)
}

/// What this node tells `asker`, from the peer table as it is now.
fn answer_for(mesh: &Mesh, asker: PeerId) -> PeerList {
    let mut connected: Vec<_> =
        mesh.peers().snapshot().into_iter().filter(|(_, s)| s.connections > 0).collect();
    // The nearest first: when there are more than can be told, those are the likeliest to
    // be reachable from the asker too.
    connected.sort_by_key(|(_, s)| s.rtt.unwrap_or(Duration::MAX));
    let connected = connected.into_iter().map(|(p, s)| (p, s.addresses.into_iter().collect()));
    let me = mesh.local_peer_id();
    told_to(asker, is_local(mesh, &asker), me, connected, |p| mesh.allows(p))
}

/// Whether `peer` connects from this machine (then loopback addresses are worth telling).
fn is_local(mesh: &Mesh, peer: &PeerId) -> bool {
    matches!(mesh.peers().origin(peer), Origin::Host(host) if host.is_loopback())
}

/// What to tell `asker` of `connected` (in the order given), as this node `me`; see the
/// module docs. Nothing at all to an asker `allows` refuses.
pub fn told_to(
    asker: PeerId,
    asker_is_local: bool,
    me: PeerId,
    connected: impl IntoIterator<Item = (PeerId, Vec<Multiaddr>)>,
    allows: impl Fn(&PeerId) -> bool,
) -> PeerList {
    if !allows(&asker) {
        return PeerList::default();
    }
    let peers = connected
        .into_iter()
        .filter(|(peer, _)| *peer != asker && *peer != me && allows(peer))
        .filter_map(|(peer, addresses)| {
            let mut told: Vec<Vec<u8>> = Vec::new();
            for address in addresses.iter().filter_map(|a| dialable(a, asker_is_local)) {
                let bytes = address.to_vec();
                if bytes.len() <= MAX_TOLD_BYTES
                    && !told.contains(&bytes)
                    && told.len() < MAX_TOLD_ADDRESSES
                {
                    told.push(bytes);
                }
            }
            (!told.is_empty()).then(|| ToldPeer { id: peer.to_bytes(), addresses: told })
        })
        .take(MAX_TOLD_PEERS)
        .collect();
    PeerList { peers }
}

/// The peers `list` (from `responder`) tells of that this node `me` should dial: valid ids,
/// neither `me` nor `responder`, allowed, with at least one dialable address.
pub fn learned_from(
    list: &PeerList,
    responder: PeerId,
    responder_is_local: bool,
    me: PeerId,
    allows: impl Fn(&PeerId) -> bool,
) -> Vec<DialTarget> {
    let learned = list.peers.iter().filter_map(|told| {
        let peer = PeerId::from_bytes(&told.id).ok()?;
        if peer == me || peer == responder || !allows(&peer) {
            return None;
        }
        let addresses: Vec<Multiaddr> = told
            .addresses
            .iter()
            .filter_map(|bytes| Multiaddr::try_from(bytes.clone()).ok())
            .filter_map(|a| dialable(&a, responder_is_local))
            .map(|a| a.with(Protocol::P2p(peer)))
            .collect();
        (!addresses.is_empty()).then_some(DialTarget { peer: Some(peer), addresses })
    });
    learned.collect()
}

/// `address` without its `/p2p/<id>`, if it is an IP and TCP address another host could
/// dial (loopback only when `local`): not unspecified, link-local, multicast or broadcast.
fn dialable(address: &Multiaddr, local: bool) -> Option<Multiaddr> {
    let mut ip = None;
    let mut tcp = false;
    let mut bare = Multiaddr::empty();
    for part in address.iter() {
        match part {
            Protocol::Ip4(v4) if ip.is_none() => ip = Some(IpAddr::V4(v4)),
            Protocol::Ip6(v6) if ip.is_none() => ip = Some(IpAddr::V6(v6)),
            Protocol::Tcp(_) if ip.is_some() && !tcp => tcp = true,
            Protocol::P2p(_) => continue,
            _ => return None,
        }
        bare.push(part);
    }
    let usable = match ip? {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_link_local() || v4.is_multicast() || v4.is_broadcast())
                && (local || !v4.is_loopback())
        }
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_unicast_link_local() || v6.is_multicast())
                && (local || !v6.is_loopback())
        }
    };
    (usable && tcp).then_some(bare)
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
