//! Handshakes coming in, shared per host: a machine that opens connections and never
//! finishes their handshakes (or finishes them slowly) holds at most
//! [`PENDING_PER_HOST`] of the pending places, so the rest stay open to real peers. Each
//! pending handshake ends by the transport's time-out ([`super::HANDSHAKE_TIMEOUT`]) at the
//! latest.
//!
//! A refused connection surfaces as an `IncomingConnectionError` with
//! [`TooManyHandshakes`] as its cause, which the swarm's owner logs (rate-limited).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use thiserror::Error;

use super::host_ip;

/// Handshakes one host may have under way with us at once.
pub const PENDING_PER_HOST: usize = 8;

/// A connection refused because its host has too many handshakes under way.
#[derive(Debug, Error)]
#[error("{host} already has {PENDING_PER_HOST} handshakes under way")]
pub struct TooManyHandshakes {
    pub host: IpAddr,
}

/// Counts incoming handshakes per host and refuses one beyond [`PENDING_PER_HOST`].
#[derive(Default)]
pub struct PendingPerHost {
    pending: HashMap<ConnectionId, IpAddr>,
    per_host: HashMap<IpAddr, usize>,
}

impl PendingPerHost {
    fn ended(&mut self, connection: ConnectionId) {
        let Some(host) = self.pending.remove(&connection) else {
            return;
        };
        if let Some(count) = self.per_host.get_mut(&host) {
            *count -= 1;
            if *count == 0 {
                self.per_host.remove(&host);
            }
        }
    }
}

impl NetworkBehaviour for PendingPerHost {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(host) = host_ip(remote) else {
            return Ok(());
        };
        let count = self.per_host.entry(host).or_default();
        if *count >= PENDING_PER_HOST {
            return Err(ConnectionDenied::new(TooManyHandshakes { host }));
        }
        *count += 1;
        self.pending.insert(connection, host);
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.ended(connection);
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _connection: ConnectionId,
        _peer: PeerId,
        _address: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ListenFailure(failure) => self.ended(failure.connection_id),
            FromSwarm::ConnectionEstablished(established) => self.ended(established.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _connection: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host_holds_at_most_its_part_of_the_pending_handshakes() {
        let mut limits = PendingPerHost::default();
        let local: Multiaddr = "/ip4/10.0.0.1/tcp/4001".parse().unwrap();
        let (greedy, other): (Multiaddr, Multiaddr) =
            ("/ip4/10.0.0.66/tcp/5000".parse().unwrap(), "/ip4/10.0.0.7/tcp/5000".parse().unwrap());
        let mut held = Vec::new();
        for _ in 0..PENDING_PER_HOST {
            let id = ConnectionId::new_unchecked(held.len());
            assert!(limits.handle_pending_inbound_connection(id, &local, &greedy).is_ok());
            held.push(id);
        }
        let next = ConnectionId::new_unchecked(1000);
        assert!(limits.handle_pending_inbound_connection(next, &local, &greedy).is_err());
        let another = ConnectionId::new_unchecked(1001);
        assert!(limits.handle_pending_inbound_connection(another, &local, &other).is_ok());
        // A handshake that ends (here: established) makes room for the next.
        let peer = PeerId::random();
        let _ = limits.handle_established_inbound_connection(held[0], peer, &local, &greedy);
        assert!(limits.handle_pending_inbound_connection(next, &local, &greedy).is_ok());
    }
}
