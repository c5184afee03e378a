//! Building the swarm: the transport (open, or pnet in a private mesh), behind the gate on
//! handshakes coming in, and the behaviours every connection runs (the allow-list, connection
//! limits, ping, identify, the node's streams), listening on the addresses asked for.

use std::sync::Arc;
use std::time::Duration;

use libp2p::allow_block_list::{self, AllowedPeers};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::upgrade::Version;
use libp2p::core::{Transport, transport::Boxed};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{Multiaddr, PeerId, Swarm, connection_limits, identify, identity, ping, tcp, yamux};
use tracing::info;

use super::security::{Negotiated, Security};
use super::{Access, MeshError, handshakes, private, read_ahead, streams};

/// Identify's protocol name; it tells peers our listen addresses.
const IDENTIFY_PROTOCOL: &str = "/nixmesh/id/1";
/// How often peers are pinged (the RTT `nixmesh peers` shows, and liveness).
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// Connections at once: in all (a LAN of a thousand machines fits), and per peer (one each
/// way at most; more is a peer wasting our resources). Half-open ones coming in are limited
/// per host and in all by the transport ([`handshakes`]), so that neither one host nor many
/// addresses opening connections they never finish can lock real peers out.
const MAX_CONNECTIONS: u32 = 2048;
/// How long a connection may take from its TCP connect to a working yamux session (pnet, TLS
/// or noise); on a LAN it takes milliseconds. A half-open connection holds its pending place
/// at most this long. Longer than the pnet exchange's own limit, so that a peer without the
/// mesh key is refused (and logged) as such, not as a time-out.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(8);
const _: () = assert!(HANDSHAKE_TIMEOUT.as_secs() > private::HANDSHAKE_LIMIT.as_secs());
const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// A ping unanswered for this long fails (and the connection is closed).
const PING_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    /// On only with an allow-list.
    allow: Toggle<allow_block_list::Behaviour<AllowedPeers>>,
    limits: connection_limits::Behaviour,
    pub(super) ping: ping::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) stream: streams::Behaviour,
}

/// The swarm of `keypair`'s identity, open only to the peers `access` lets in, listening on
/// `listen` (each address's listener comes up in the swarm's own time; an address that cannot
/// be listened on at all is an error here), and where its connections' security is left.
pub(super) fn build(
    keypair: identity::Keypair,
    listen: &[Multiaddr],
    access: &Access,
) -> Result<(Swarm<Behaviour>, Arc<Negotiated>), MeshError> {
    let transport_err = |e: &dyn std::fmt::Display| MeshError::Transport(e.to_string());
    let tcp_config = tcp::Config::default().nodelay(true);
    let security = Security::new(&keypair, &access.security).map_err(|e| transport_err(&e))?;
    let negotiated = security.negotiated();
    let transport = match &access.key {
        Some(key) => {
            info!(fingerprint = key.fingerprint(), "private mesh: only peers with this key");
            private::transport(security, key.pre_shared_key(), tcp_config)
        }
        None => open_transport(security, tcp_config),
    };
    let transport = handshakes::Gated::new(transport);
    let swarm_config =
        |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(60));
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|_| transport)
        .map_err(|e| transport_err(&e))?
        .with_behaviour(|key| behaviour(key, access))
        .map_err(|e| transport_err(&e))?
        .with_swarm_config(swarm_config)
        .with_connection_timeout(HANDSHAKE_TIMEOUT)
        .build();
    for address in listen {
        swarm
            .listen_on(address.clone())
            .map_err(|e| MeshError::Listen { address: address.clone(), reason: e.to_string() })?;
    }
    Ok((swarm, negotiated))
}

/// The behaviours of `key`'s swarm under `access`, with the mesh's limits.
fn behaviour(key: &identity::Keypair, access: &Access) -> Behaviour {
    let allow = (!access.allow_peers.is_empty()).then(|| {
        let mut allow = allow_block_list::Behaviour::<AllowedPeers>::default();
        for peer in &access.allow_peers {
            allow.allow_peer(*peer);
        }
        allow
    });
    Behaviour {
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
                .with_agent_version(crate::mesh::peer_name::agent_version()),
        ),
        stream: streams::Behaviour::default(),
    }
}

/// TCP (read through [`read_ahead::ReadAhead`]), `security` (TLS or noise, see
/// [`super::security`]), yamux: what the swarm runs on in an open mesh. The same as libp2p's
/// own TCP stack but for the large reads (15 % faster and 14 % less CPU on one stream under
/// noise; `cargo bench -p nixmesh-node --bench transport`).
pub fn open_transport(
    security: Security,
    tcp_config: tcp::Config,
) -> Boxed<(PeerId, StreamMuxerBox)> {
    tcp::tokio::Transport::new(tcp_config)
        .map(|socket, _| read_ahead::ReadAhead::new(socket))
        .upgrade(Version::V1Lazy)
        .authenticate(security)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed()
}
