//! The mesh: a libp2p swarm (TCP, TLS or noise, yamux) and the node's view of its peers.
//!
//! One task owns the [`Swarm`](libp2p::Swarm): it dials, tracks connections and pings, and reports peers
//! coming and going on [`MeshEvent`]s. Everything else talks to peers through
//! [`streams::Control`], which opens streams from any task, so a slow NAR transfer never
//! stalls the swarm loop, and hands each protocol's inbound streams to its accept loop.
//!
//! The swarm is built in [`swarm`] (transport and behaviours), driven by one task in
//! [`driver`] (events, the peer table, silence), which dials the wanted peers ([`dial`]).
//!
//! A private mesh ([`Access`]) runs on pnet with the mesh key ([`private`]); with an allow-list
//! of peer ids, connections with any other peer are denied as soon as the security handshake
//! (TLS or noise, [`security`]) names the peer.

mod access;
mod dial;
mod driver;
pub mod framed;
mod handshakes;
pub mod key;
pub mod peer_name;
pub mod peers;
pub mod private;
mod read_ahead;
pub mod security;
mod serve;
pub mod share;
pub mod streams;
mod swarm;
pub mod tls;

use std::collections::HashMap;
use std::sync::Arc;

use libp2p::{Multiaddr, PeerId, StreamProtocol, identity};
use thiserror::Error;
use tokio::sync::{mpsc, watch};

use crate::node::shutdown::Shutdown;

pub use access::Access;
use access::RefusalLog;
use dial::Command;
use driver::SwarmDriver;
pub use peers::{PeerState, PeerTable};
pub use serve::{StreamLimits, Turn, TurnLimits, Turns, serve_stream_versions, serve_streams};
pub use swarm::open_transport;

/// The mesh could not start.
#[derive(Debug, Error)]
pub enum MeshError {
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot listen on {address}: {reason}")]
    Listen { address: Multiaddr, reason: String },
}

/// A peer came or went (its first connection opened, or its last one closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeshEvent {
    Connected(PeerId),
    Disconnected(PeerId),
}

/// Where to reach a peer the node should stay connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialTarget {
    /// Known when the address carries `/p2p/<id>` or discovery told us.
    pub peer: Option<PeerId>,
    pub addresses: Vec<Multiaddr>,
}

impl DialTarget {
    /// A target from one multiaddr; a trailing `/p2p/<id>` names the peer.
    pub fn from_multiaddr(address: Multiaddr) -> Self {
        let peer = address.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(id) => Some(id),
            _ => None,
        });
        DialTarget { peer, addresses: vec![address] }
    }
}

/// A handle on the running mesh. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    local_peer_id: PeerId,
    control: streams::Control,
    peers: Arc<PeerTable>,
    commands: mpsc::Sender<Command>,
    listen_addresses: watch::Receiver<Vec<Multiaddr>>,
    access: Arc<Access>,
}

impl Mesh {
    /// Starts the swarm on `listen` addresses, open to any peer. Peer events go to `events`;
    /// the swarm stops at `shutdown`'s signal.
    pub fn start(
        keypair: identity::Keypair,
        listen: &[Multiaddr],
        events: mpsc::Sender<MeshEvent>,
        shutdown: Shutdown,
    ) -> Result<Mesh, MeshError> {
        Mesh::start_with(keypair, listen, Access::default(), events, shutdown)
    }

    /// [`Mesh::start`], open only to the peers `access` lets in.
    pub fn start_with(
        keypair: identity::Keypair,
        listen: &[Multiaddr],
        access: Access,
        events: mpsc::Sender<MeshEvent>,
        shutdown: Shutdown,
    ) -> Result<Mesh, MeshError> {
        let (swarm, negotiated) = swarm::build(keypair, listen, &access)?;
        let local_peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        let peers = Arc::new(PeerTable::default());
        let (commands, command_rx) = mpsc::channel(64);
        let (listen_tx, listen_addresses) = watch::channel(Vec::new());
        let access = Arc::new(access);
        let driver = SwarmDriver {
            swarm,
            peers: peers.clone(),
            events,
            listen_tx,
            wanted: HashMap::new(),
            anonymous: Vec::new(),
            access: access.clone(),
            refusals: RefusalLog::default(),
            negotiated,
        };
        shutdown.spawn(driver.run(command_rx, shutdown.clone()));
        Ok(Mesh { local_peer_id, control, peers, commands, listen_addresses, access })
    }

    /// The mesh key, in a private mesh.
    pub fn mesh_key(&self) -> Option<&key::MeshKey> {
        self.access.key.as_ref()
    }

    /// Whether the mesh is private: a mesh key, or an allow-list of peers.
    pub fn is_private(&self) -> bool {
        self.access.key.is_some() || !self.access.allow_peers.is_empty()
    }

    /// Whether `peer` may connect under the allow-list (any peer, without one).
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.access.allows(peer)
    }

    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    /// The live peer table.
    pub fn peers(&self) -> &Arc<PeerTable> {
        &self.peers
    }

    /// A stream-opening handle; clone one per concurrent stream.
    pub fn control(&self) -> streams::Control {
        self.control.clone()
    }

    /// The addresses the swarm listens on (filled in as listeners come up).
    pub fn listen_addresses(&self) -> watch::Receiver<Vec<Multiaddr>> {
        self.listen_addresses.clone()
    }

    /// Asks the mesh to stay connected to `target`, redialling with backoff.
    pub async fn want(&self, target: DialTarget) {
        let _ = self.commands.send(Command::Want(target)).await;
    }

    /// Asks the mesh to dial `target`, a peer another peer told of, for a while: see
    /// [`dial::LEARNED_PEER_LIFETIME`]. A peer wanted for good stays so.
    pub async fn want_learned(&self, target: DialTarget) {
        let _ = self.commands.send(Command::Learned(target)).await;
    }

    /// Stops redialling `peer` (discovery saw it leave); open connections stay.
    pub async fn forget(&self, peer: PeerId) {
        let _ = self.commands.send(Command::Forget(peer)).await;
    }

    /// A protocol name as libp2p wants it.
    pub fn protocol(name: &'static str) -> StreamProtocol {
        StreamProtocol::new(name)
    }
}

/// The IP address in `address`, if it has one.
pub fn host_ip(address: &Multiaddr) -> Option<std::net::IpAddr> {
    use libp2p::multiaddr::Protocol;
    address.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(ip.into()),
        Protocol::Ip6(ip) => Some(ip.into()),
        _ => None,
    })
}

/// Whether another host could dial `address` (not loopback, not unspecified).
pub fn is_reachable_address(address: &Multiaddr) -> bool {
    use libp2p::multiaddr::Protocol;
    address.iter().all(|p| match p {
        Protocol::Ip4(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        Protocol::Ip6(ip) => !ip.is_loopback() && !ip.is_unspecified(),
        _ => true,
    })
}
