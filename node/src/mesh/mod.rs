//! The mesh: a libp2p swarm (TCP, noise, yamux) and the node's view of its peers.
//!
//! One task owns the [`Swarm`]: it dials, tracks connections and pings, and reports peers
//! coming and going on [`MeshEvent`]s. Everything else talks to peers through
//! [`streams::Control`], which opens streams from any task, so a slow NAR transfer never
//! stalls the swarm loop, and hands each protocol's inbound streams to its accept loop.
//!
//! A private mesh ([`Access`]) runs on pnet with the mesh key ([`private`]); with an allow-list
//! of peer ids, connections with any other peer are denied as soon as noise names the peer.

mod access;
pub mod framed;
mod handshakes;
pub mod key;
pub mod peers;
pub mod private;
mod read_ahead;
mod serve;
pub mod share;
pub mod streams;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::allow_block_list::{self, AllowedPeers, NotAllowed};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::TransportError;
use libp2p::core::upgrade::Version;
use libp2p::core::{Transport, transport::Boxed};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionDenied, DialError, ListenError, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, identify, identity, noise, ping,
    tcp, yamux,
};
use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;

pub use access::Access;
use access::RefusalLog;
use peers::MAX_ADDRESSES;
pub use peers::{PeerState, PeerTable};
pub use serve::{StreamLimits, Turn, TurnLimits, Turns, serve_streams};

/// Identify's protocol name; it tells peers our listen addresses.
const IDENTIFY_PROTOCOL: &str = "/nixmesh/id/1";
/// How often peers are pinged (the RTT `nixmesh peers` shows, and liveness).
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Redials of a wanted peer back off up to this.
const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_REDIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The most peers the node dials on its own (mDNS could announce any number).
const MAX_WANTED_PEERS: usize = 1024;
/// Connections at once: in all (a LAN of a thousand machines fits), and per peer (one each
/// way at most; more is a peer wasting our resources). Half-open ones coming in are limited
/// per host and in all by the transport ([`handshakes`]), so that neither one host nor many
/// addresses opening connections they never finish can lock real peers out.
const MAX_CONNECTIONS: u32 = 2048;
/// How long a connection may take from its TCP connect to a working yamux session (pnet,
/// noise); on a LAN it takes milliseconds. A half-open connection holds its pending place at
/// most this long. Longer than the pnet exchange's own limit, so that a peer without the
/// mesh key is refused (and logged) as such, not as a time-out.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(8);
const _: () = assert!(HANDSHAKE_TIMEOUT.as_secs() > private::HANDSHAKE_LIMIT.as_secs());
const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// A ping unanswered for this long fails (and the connection is closed).
const PING_TIMEOUT: Duration = Duration::from_secs(4);
/// A connected peer not heard from for this long (no ping answered) is disconnected: the peer
/// is gone (its machine asleep or hung, its cable out) even if TCP has not noticed, and its
/// paths must stop being offered. Checked every half second, so a frozen peer is dropped
/// within 5.5 s. A ping travels beside any transfer on its own stream, so even a saturated
/// LAN link answers well within this.
const SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// Failed dials of a wanted peer in a row before each one is logged as a warning.
const DIAL_FAILURES_BEFORE_WARNING: u32 = 3;
/// How long a peer learned from another peer (peer exchange) is dialled without being told
/// of again: its tellers repeat it every minute while they are connected to it, so a peer
/// gone from the whole mesh is given up after this, not redialled for ever.
const LEARNED_PEER_LIFETIME: Duration = Duration::from_secs(180);

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

enum Command {
    /// Keep connected to this target (redialling with backoff) until `Forget`.
    Want(DialTarget),
    /// Like `Want`, but given up [`LEARNED_PEER_LIFETIME`] after it was last learned, unless
    /// it is (or becomes) wanted for good.
    Learned(DialTarget),
    Forget(PeerId),
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    /// On only with an allow-list.
    allow: Toggle<allow_block_list::Behaviour<AllowedPeers>>,
    limits: connection_limits::Behaviour,
    ping: ping::Behaviour,
    identify: identify::Behaviour,
    stream: streams::Behaviour,
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
        let transport_err = |e: &dyn std::fmt::Display| MeshError::Transport(e.to_string());
        let tcp_config = tcp::Config::default().nodelay(true);
        let allow = (!access.allow_peers.is_empty()).then(|| {
            let mut allow = allow_block_list::Behaviour::<AllowedPeers>::default();
            for peer in &access.allow_peers {
                allow.allow_peer(*peer);
            }
            allow
        });
        let behaviour = |key: &identity::Keypair| Behaviour {
            allow: allow.into(),
            limits: connection_limits::Behaviour::new(
                connection_limits::ConnectionLimits::default()
                    .with_max_established(Some(MAX_CONNECTIONS))
                    .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER)),
            ),
            ping: ping::Behaviour::new(
                ping::Config::new().with_interval(PING_INTERVAL).with_timeout(PING_TIMEOUT),
            ),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                    .with_agent_version(crate::peer_name::agent_version()),
            ),
            stream: streams::Behaviour::default(),
        };
        let swarm_config =
            |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
        let transport = match &access.key {
            Some(key) => {
                info!(fingerprint = key.fingerprint(), "private mesh: only peers with this key");
                private::transport(&keypair, key.pre_shared_key(), tcp_config)
            }
            None => open_transport(&keypair, tcp_config),
        }
        .map_err(|e| transport_err(&e))?;
        let transport = handshakes::Gated::new(transport);
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|_| transport)
            .map_err(|e| transport_err(&e))?
            .with_behaviour(behaviour)
            .map_err(|e| transport_err(&e))?
            .with_swarm_config(swarm_config)
            .with_connection_timeout(HANDSHAKE_TIMEOUT)
            .build();
        for address in listen {
            swarm.listen_on(address.clone()).map_err(|e| MeshError::Listen {
                address: address.clone(),
                reason: e.to_string(),
            })?;
        }
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
    /// [`LEARNED_PEER_LIFETIME`]. A peer wanted for good stays so.
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

/// A peer the node keeps dialling while it is not connected.
struct Wanted {
    addresses: Vec<Multiaddr>,
    next_attempt: Instant,
    backoff: Duration,
    /// Failed dials since the last connection.
    failures: u32,
    /// When a peer only learned of is given up (`None`: wanted for good).
    expires: Option<Instant>,
}

impl Wanted {
    fn new(addresses: Vec<Multiaddr>) -> Self {
        Wanted {
            addresses,
            next_attempt: Instant::now(),
            backoff: FIRST_REDIAL_BACKOFF,
            failures: 0,
            expires: None,
        }
    }

    fn attempted(&mut self) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_REDIAL_BACKOFF);
    }
}

struct SwarmDriver {
    swarm: Swarm<Behaviour>,
    peers: Arc<PeerTable>,
    events: mpsc::Sender<MeshEvent>,
    listen_tx: watch::Sender<Vec<Multiaddr>>,
    /// Peers with known ids to keep connected to.
    wanted: HashMap<PeerId, Wanted>,
    /// Static peers given without `/p2p/<id>`, dialled by address until one answers.
    anonymous: Vec<Wanted>,
    access: Arc<Access>,
    refusals: RefusalLog,
}

impl SwarmDriver {
    async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.signalled() => break,
                Some(command) = commands.recv() => self.command(command),
                _ = tick.tick() => {
                    self.drop_silent();
                    self.dial_due();
                }
                event = self.swarm.select_next_some() => self.event(event).await,
            }
        }
        debug!("swarm stopped");
    }

    fn command(&mut self, command: Command) {
        match command {
            Command::Want(DialTarget { peer: Some(peer), addresses }) => {
                if let Some(wanted) = self.want(peer, addresses) {
                    wanted.expires = None;
                }
            }
            Command::Learned(DialTarget { peer: Some(peer), addresses }) => {
                let is_new = !self.wanted.contains_key(&peer);
                if let Some(wanted) = self.want(peer, addresses)
                    && (is_new || wanted.expires.is_some())
                {
                    wanted.expires = Some(Instant::now() + LEARNED_PEER_LIFETIME);
                }
            }
            Command::Want(DialTarget { peer: None, addresses }) => {
                self.anonymous.push(Wanted::new(addresses));
            }
            Command::Learned(DialTarget { peer: None, .. }) => {}
            Command::Forget(peer) => {
                self.wanted.remove(&peer);
            }
        }
    }

    /// Adds `peer` and `addresses` to the wanted peers, to be dialled now; its entry, unless
    /// it is this node, not allowed, or one too many.
    fn want(&mut self, peer: PeerId, addresses: Vec<Multiaddr>) -> Option<&mut Wanted> {
        if peer == *self.swarm.local_peer_id() {
            return None;
        }
        if !self.access.allows(&peer) {
            debug!(%peer, "not dialling: not in allow_peers");
            return None;
        }
        if !self.wanted.contains_key(&peer) && self.wanted.len() >= MAX_WANTED_PEERS {
            warn!(%peer, "not dialling: already {MAX_WANTED_PEERS} peers wanted");
            return None;
        }
        let wanted = self.wanted.entry(peer).or_insert_with(|| Wanted::new(Vec::new()));
        for a in addresses {
            if !wanted.addresses.contains(&a) && wanted.addresses.len() < MAX_ADDRESSES {
                wanted.addresses.push(a);
            }
        }
        // News from discovery: try now rather than at the end of a long backoff.
        wanted.next_attempt = Instant::now();
        wanted.backoff = FIRST_REDIAL_BACKOFF;
        Some(wanted)
    }

    /// Disconnects peers whose pings have gone unanswered for [`SILENCE_LIMIT`]: a frozen
    /// or vanished machine keeps its TCP connection open, and libp2p's own ping failure can
    /// take the stream negotiation time-out (10 s) on top.
    fn drop_silent(&mut self) {
        for peer in self.peers.silent_for(SILENCE_LIMIT) {
            warn!(%peer, "no answer to pings for {SILENCE_LIMIT:?}; disconnecting");
            self.peers.dropping(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    fn dial_due(&mut self) {
        let now = Instant::now();
        self.wanted.retain(|_, w| w.expires.is_none_or(|at| at > now));
        for (peer, wanted) in &mut self.wanted {
            if wanted.next_attempt > now || self.peers.is_connected(peer) {
                continue;
            }
            wanted.attempted();
            let opts = DialOpts::peer_id(*peer)
                .addresses(wanted.addresses.clone())
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            if let Err(e) = self.swarm.dial(opts) {
                debug!(%peer, "dial not started: {e}");
            }
        }
        for wanted in &mut self.anonymous {
            if wanted.next_attempt > now {
                continue;
            }
            wanted.attempted();
            for address in &wanted.addresses {
                debug!(%address, "dialling static peer");
                if let Err(e) = self.swarm.dial(address.clone()) {
                    debug!(%address, "dial not started: {e}");
                }
            }
        }
    }

    async fn event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(%address, "listening");
                self.listen_tx.send_modify(|addrs| addrs.push(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.listen_tx.send_modify(|addrs| addrs.retain(|a| a != &address));
            }
            SwarmEvent::ConnectionEstablished { peer_id, endpoint, .. } => {
                let remote = endpoint.get_remote_address().clone();
                if let Some(host) = host_ip(&remote) {
                    self.peers.at_host(peer_id, host);
                }
                // A static peer given by address alone is now known by its id: keep it
                // connected the same way as any other.
                if endpoint.is_dialer()
                    && let Some(i) =
                        self.anonymous.iter().position(|w| w.addresses.contains(&remote))
                {
                    let w = self.anonymous.swap_remove(i);
                    self.wanted.entry(peer_id).or_insert_with(|| Wanted::new(w.addresses));
                }
                if let Some(w) = self.wanted.get_mut(&peer_id) {
                    w.backoff = FIRST_REDIAL_BACKOFF;
                    w.failures = 0;
                }
                // The address we dialled is one to reach the peer at; an inbound connection's
                // source port is not (identify tells us where it listens).
                let reachable = endpoint.is_dialer().then(|| remote.clone());
                if self.peers.connected(peer_id, reachable) {
                    info!(peer = %peer_id, %remote, "peer connected");
                    let _ = self.events.send(MeshEvent::Connected(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. }
                if self.peers.disconnected(peer_id, num_established) =>
            {
                info!(peer = %peer_id, cause = ?cause, "peer disconnected");
                if let Some(w) = self.wanted.get_mut(&peer_id) {
                    w.next_attempt = Instant::now() + FIRST_REDIAL_BACKOFF;
                }
                let _ = self.events.send(MeshEvent::Disconnected(peer_id)).await;
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                local_addr,
                error,
                peer_id,
                ..
            } => match refused_incoming(&error) {
                Some(why) => {
                    let what = format!("from {send_back_addr} on {local_addr}");
                    self.log_refusal(&send_back_addr, &what, peer_id, &why);
                }
                None => debug!(remote = %send_back_addr, "incoming connection failed: {error}"),
            },
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                if let Some((address, why)) = refused_outgoing(&error, peer_id) {
                    self.log_refusal(&address, &format!("to {address}"), peer_id, &why);
                    if let Some(w) = peer_id.and_then(|p| self.wanted.get_mut(&p)) {
                        w.failures += 1;
                    }
                    return;
                }
                let failures = match peer_id.and_then(|p| self.wanted.get_mut(&p)) {
                    Some(w) => {
                        w.failures += 1;
                        w.failures
                    }
                    None => 0,
                };
                if failures >= DIAL_FAILURES_BEFORE_WARNING {
                    warn!(peer = ?peer_id, failures, "cannot reach a wanted peer: {error}");
                } else {
                    debug!(peer = ?peer_id, "dial failed: {error}");
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, .. })) => {
                match result {
                    Ok(rtt) => self.peers.pinged(peer, rtt),
                    Err(e) => {
                        // libp2p leaves the connection open; a peer that does not answer
                        // must not keep being offered as a holder.
                        warn!(%peer, "ping failed ({e}); disconnecting");
                        self.peers.dropping(&peer);
                        let _ = self.swarm.disconnect_peer_id(peer);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                let usable = info.listen_addrs.into_iter().filter(is_reachable_address);
                self.peers.learned_addresses(peer_id, usable);
                let name = crate::peer_name::from_agent_version(&info.agent_version);
                self.peers.named(peer_id, name);
            }
            _ => {}
        }
    }
}

impl SwarmDriver {
    /// Logs a connection refused by the private mesh's rules or a limit, at most once a minute
    /// per host, direction and reason.
    /// `what` says which connection: `from ADDRESS on OUR ADDRESS`, or `to ADDRESS`.
    fn log_refusal(&mut self, remote: &Multiaddr, what: &str, peer: Option<PeerId>, why: &str) {
        // Counted apart by direction: a host refused both ways (it dials us, we dial it) gets
        // a line for each.
        let direction = if what.starts_with("to ") { "outgoing" } else { "incoming" };
        let reason = format!("{direction}: {why}");
        let Some(held_back) = self.refusals.admit(remote, &reason, Instant::now()) else {
            return;
        };
        let peer = peer.map_or_else(|| "not known yet".to_owned(), |p| p.to_string());
        warn!(%peer, held_back, "refused a connection {what}: {why}");
    }
}

/// TCP (read through [`read_ahead::ReadAhead`]), noise, yamux: what the swarm runs on in an
/// open mesh. The same as libp2p's own TCP stack but for the large reads (15 % faster and
/// 14 % less CPU on one stream; `cargo bench -p nixmesh-node --bench transport`).
pub fn open_transport(
    keypair: &identity::Keypair,
    tcp_config: tcp::Config,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error> {
    let noise = noise::Config::new(keypair)?;
    Ok(tcp::tokio::Transport::new(tcp_config)
        .map(|socket, _| read_ahead::ReadAhead::new(socket))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// Why an incoming connection was refused by the private mesh's rules or by a limit, if it
/// was.
fn refused_incoming(error: &ListenError) -> Option<String> {
    match error {
        ListenError::Transport(TransportError::Other(e)) => private::refusal_in(e)
            .map(|r| format!("it failed the private mesh's pnet handshake: {r}")),
        ListenError::Denied { cause } => not_allowed(cause).or_else(|| {
            let exceeded = cause.downcast_ref::<connection_limits::Exceeded>()?;
            Some(format!("connection limit reached: {exceeded}"))
        }),
        _ => None,
    }
}

/// The address and the reason an outgoing connection was refused by the private mesh's rules,
/// if it was.
fn refused_outgoing(error: &DialError, peer: Option<PeerId>) -> Option<(Multiaddr, String)> {
    use libp2p::multiaddr::Protocol::P2p;
    match error {
        DialError::Transport(attempts) => attempts.iter().find_map(|(address, e)| match e {
            TransportError::Other(e) => private::refusal_in(e).map(|r| {
                (address.clone(), format!("it failed the private mesh's pnet handshake: {r}"))
            }),
            TransportError::MultiaddrNotSupported(_) => None,
        }),
        // The address is not told; the peer stands for it.
        DialError::Denied { cause } => {
            let address = peer.map_or_else(Multiaddr::empty, |p| Multiaddr::empty().with(P2p(p)));
            not_allowed(cause).map(|why| (address, why))
        }
        _ => None,
    }
}

fn not_allowed(cause: &ConnectionDenied) -> Option<String> {
    cause.downcast_ref::<NotAllowed>().map(|e| format!("{e} (allow_peers)"))
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
