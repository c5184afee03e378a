//! Dialling: the peers the node keeps connected to (from `--peer`, mDNS, or told of by a
//! peer), each redialled with backoff while it is not connected, and the commands by which
//! the rest of the node asks for them.

use std::time::Duration;

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::DialTarget;
use super::driver::SwarmDriver;
use super::peers::MAX_ADDRESSES;

/// Redials of a wanted peer back off up to this.
const MAX_REDIAL_BACKOFF: Duration = Duration::from_secs(30);
pub(super) const FIRST_REDIAL_BACKOFF: Duration = Duration::from_secs(1);
/// The most peers the node dials on its own (mDNS could announce any number).
const MAX_WANTED_PEERS: usize = 1024;
/// How long a peer learned from another peer (peer exchange) is dialled without being told
/// of again: its tellers repeat it every minute while they are connected to it, so a peer
/// gone from the whole mesh is given up after this, not redialled for ever.
pub(super) const LEARNED_PEER_LIFETIME: Duration = Duration::from_secs(180);

/// What the [`super::Mesh`] handle asks of the swarm's task.
pub(super) enum Command {
    /// Keep connected to this target (redialling with backoff) until `Forget`.
    Want(DialTarget),
    /// Like `Want`, but given up [`LEARNED_PEER_LIFETIME`] after it was last learned, unless
    /// it is (or becomes) wanted for good.
    Learned(DialTarget),
    Forget(PeerId),
}

/// A peer the node keeps dialling while it is not connected.
pub(super) struct Wanted {
    pub(super) addresses: Vec<Multiaddr>,
    pub(super) next_attempt: Instant,
    pub(super) backoff: Duration,
    /// Failed dials since the last connection.
    pub(super) failures: u32,
    /// When a peer only learned of is given up (`None`: wanted for good).
    pub(super) expires: Option<Instant>,
}

impl Wanted {
    pub(super) fn new(addresses: Vec<Multiaddr>) -> Self {
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

impl SwarmDriver {
    /// Carries out `command`.
    pub(super) fn command(&mut self, command: Command) {
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

    /// Dials every wanted peer whose next attempt is due, and gives up learned peers not
    /// told of again in time.
    pub(super) fn dial_due(&mut self) {
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
}
