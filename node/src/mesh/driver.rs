//! The swarm's task: the one owner of the [`Swarm`]. It carries out the [`Mesh`]'s commands
//! ([`super::dial`]), keeps the peer table current from the swarm's events, reports peers
//! coming and going, and drops peers gone silent.
//!
//! [`Mesh`]: super::Mesh

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::swarm::{ConnectionError, DialError, ListenError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, ping};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::access::{RefusalLog, refused_incoming, refused_outgoing};
use super::dial::{Command, FIRST_REDIAL_BACKOFF, Wanted};
use super::security::Negotiated;
use super::swarm::{Behaviour, BehaviourEvent};
use super::{Access, MeshEvent, PeerTable, host_ip, is_reachable_address};
use crate::node::shutdown::Shutdown;

/// How often silent peers are looked for and due redials made.
const TICK: Duration = Duration::from_millis(500);
/// A connected peer not heard from for this long (no ping answered) is disconnected: the peer
/// is gone (its machine asleep or hung, its cable out) even if TCP has not noticed, and its
/// paths must stop being offered. Checked every [`TICK`], so a frozen peer is dropped
/// within 5.5 s. A ping travels beside any transfer on its own stream, so even a saturated
/// LAN link answers well within this.
const SILENCE_LIMIT: Duration = Duration::from_secs(5);
/// Failed dials of a wanted peer in a row before each one is logged as a warning.
const DIAL_FAILURES_BEFORE_WARNING: u32 = 3;

pub(super) struct SwarmDriver {
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) peers: Arc<PeerTable>,
    pub(super) events: mpsc::Sender<MeshEvent>,
    pub(super) listen_tx: watch::Sender<Vec<Multiaddr>>,
    /// Peers with known ids to keep connected to.
    pub(super) wanted: HashMap<PeerId, Wanted>,
    /// Static peers given without `/p2p/<id>`, dialled by address until one answers.
    pub(super) anonymous: Vec<Wanted>,
    pub(super) access: Arc<Access>,
    pub(super) refusals: RefusalLog,
    /// What each connection's security handshake negotiated, taken when it is established.
    pub(super) negotiated: Arc<Negotiated>,
}

impl SwarmDriver {
    /// Drives the swarm until `shutdown`'s signal.
    pub(super) async fn run(mut self, mut commands: mpsc::Receiver<Command>, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(TICK);
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
                self.connection_established(peer_id, &endpoint).await;
            }
            SwarmEvent::ConnectionClosed { peer_id, num_established, cause, .. } => {
                self.connection_closed(peer_id, num_established, cause).await;
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                local_addr,
                error,
                peer_id,
                ..
            } => self.incoming_failed(&send_back_addr, &local_addr, peer_id, &error),
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.outgoing_failed(peer_id, &error);
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
                let name = crate::mesh::peer_name::from_agent_version(&info.agent_version);
                self.peers.named(peer_id, name);
            }
            _ => {}
        }
    }

    /// A connection with `peer` opened: the peer table learns of it, and a peer's first
    /// connection is reported as [`MeshEvent::Connected`].
    async fn connection_established(&mut self, peer: PeerId, endpoint: &ConnectedPoint) {
        let remote = endpoint.get_remote_address().clone();
        if let Some(host) = host_ip(&remote) {
            self.peers.at_host(peer, host);
        }
        let security = self.negotiated.take(&peer);
        if let Some(security) = &security {
            self.peers.secured(peer, security.to_string());
        }
        // A static peer given by address alone is now known by its id: keep it
        // connected the same way as any other.
        if endpoint.is_dialer()
            && let Some(i) = self.anonymous.iter().position(|w| w.addresses.contains(&remote))
        {
            let w = self.anonymous.swap_remove(i);
            self.wanted.entry(peer).or_insert_with(|| Wanted::new(w.addresses));
        }
        if let Some(w) = self.wanted.get_mut(&peer) {
            w.backoff = FIRST_REDIAL_BACKOFF;
            w.failures = 0;
        }
        // The address we dialled is one to reach the peer at; an inbound connection's
        // source port is not (identify tells us where it listens).
        let reachable = endpoint.is_dialer().then(|| remote.clone());
        if self.peers.connected(peer, reachable) {
            let security = security.map(|s| s.to_string()).unwrap_or_default();
            info!(%peer, %remote, %security, "peer connected");
            let _ = self.events.send(MeshEvent::Connected(peer)).await;
        }
    }

    /// A connection with `peer` closed, `remaining` still open: its last one closing is
    /// reported as [`MeshEvent::Disconnected`], and a wanted peer is redialled soon.
    async fn connection_closed(
        &mut self,
        peer: PeerId,
        remaining: u32,
        cause: Option<ConnectionError>,
    ) {
        if !self.peers.disconnected(peer, remaining) {
            return;
        }
        info!(%peer, cause = ?cause, "peer disconnected");
        if let Some(w) = self.wanted.get_mut(&peer) {
            w.next_attempt = Instant::now() + FIRST_REDIAL_BACKOFF;
        }
        let _ = self.events.send(MeshEvent::Disconnected(peer)).await;
    }

    fn incoming_failed(
        &mut self,
        remote: &Multiaddr,
        local: &Multiaddr,
        peer: Option<PeerId>,
        error: &ListenError,
    ) {
        match refused_incoming(error) {
            Some(why) => {
                let what = format!("from {remote} on {local}");
                self.log_refusal(remote, &what, peer, &why);
            }
            None => debug!(%remote, "incoming connection failed: {error}"),
        }
    }

    /// A dial failed: counted against the wanted peer, and logged as a warning once it has
    /// failed [`DIAL_FAILURES_BEFORE_WARNING`] times in a row.
    fn outgoing_failed(&mut self, peer: Option<PeerId>, error: &DialError) {
        if let Some((address, why)) = refused_outgoing(error, peer) {
            self.log_refusal(&address, &format!("to {address}"), peer, &why);
            if let Some(w) = peer.and_then(|p| self.wanted.get_mut(&p)) {
                w.failures += 1;
            }
            return;
        }
        let failures = match peer.and_then(|p| self.wanted.get_mut(&p)) {
            Some(w) => {
                w.failures += 1;
                w.failures
            }
            None => 0,
        };
        if failures >= DIAL_FAILURES_BEFORE_WARNING {
            warn!(?peer, failures, "cannot reach a wanted peer: {error}");
        } else {
            debug!(?peer, "dial failed: {error}");
        }
    }

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
