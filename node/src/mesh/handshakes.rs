//! Handshakes coming in, shared per host: at most [`PENDING_PER_HOST`] under way from one
//! host and [`PENDING_TOTAL`] in all, and when all the places are taken, a connection from a
//! host with fewer handshakes under way than the busiest host takes the place of that host's
//! oldest. So a flood of half-open connections from one host, or from many addresses (64 at
//! 8 each fill 512), keeps nobody else out: a restarted peer's handshake always finds a
//! place, and finishes in milliseconds on a LAN, long before the flood's connections would
//! be closed to make room. Each pending handshake ends by the swarm's connection time-out
//! ([`super::HANDSHAKE_TIMEOUT`]) at the latest.
//!
//! This is a transport wrapped around the node's ([`Gated`]), not a `NetworkBehaviour`: a
//! behaviour may refuse a new pending connection, but libp2p gives it no way to close one
//! already pending (`Swarm::close_connection` finds established connections only), and that
//! is what making room needs. Refusals end the connection's upgrade with a [`Refused`], and
//! are logged here, at most a line a minute per host and reason (as the swarm's owner logs
//! the other refusals on the peer port): the swarm reports them as an
//! `IncomingConnectionError` whose cause its boxed transports hide.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures::FutureExt;
use futures::future::BoxFuture;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::TransportEvent;
use libp2p::core::transport::{Boxed, DialOpts, ListenerId, Transport, TransportError};
use libp2p::{Multiaddr, PeerId};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::access::RefusalLog;
use super::host_ip;

/// Handshakes one host may have under way with us at once.
pub const PENDING_PER_HOST: usize = 8;
/// Handshakes under way at once in all (a LAN's restart of a thousand machines spreads over
/// seconds; each handshake takes milliseconds).
pub const PENDING_TOTAL: usize = 512;

/// Why an incoming connection was refused, or closed before its handshake ended.
#[derive(Debug, Error)]
pub enum Refused {
    #[error("{host} already has {PENDING_PER_HOST} handshakes under way")]
    HostFull { host: IpAddr },
    #[error("{PENDING_TOTAL} handshakes under way and none from a host with more than {host}")]
    AllFull { host: IpAddr },
    #[error("{PENDING_TOTAL} handshakes under way; {host} had the most, closed its oldest")]
    MadeRoom { host: IpAddr },
}

impl Refused {
    /// The kind of refusal, which the log counts apart per host.
    fn kind(&self) -> &'static str {
        match self {
            Refused::HostFull { .. } => "host full",
            Refused::AllFull { .. } => "all full",
            Refused::MadeRoom { .. } => "made room",
        }
    }

    /// Logs this refusal of a connection from `remote`, unless `log` holds it back.
    fn log(&self, log: &Mutex<RefusalLog>, remote: &Multiaddr) {
        let mut log = log.lock();
        if let Some(held_back) = log.admit(remote, self.kind(), Instant::now()) {
            warn!(held_back, "refused a connection from {remote}: {self}");
        }
    }
}

type Output = (PeerId, StreamMuxerBox);

/// The node's transport, with its incoming handshakes counted and limited (see the module
/// docs).
pub struct Gated {
    inner: Boxed<Output>,
    pending: Arc<Mutex<Pending>>,
    refusals: Arc<Mutex<RefusalLog>>,
}

impl Gated {
    pub fn new(inner: Boxed<Output>) -> Self {
        Gated { inner, pending: Arc::default(), refusals: Arc::default() }
    }

    /// `upgrade` from `remote`, within the limits: ended with a [`Refused`] now, or when it
    /// is closed to make room.
    fn gate(
        &self,
        remote: &Multiaddr,
        upgrade: BoxFuture<'static, io::Result<Output>>,
    ) -> BoxFuture<'static, io::Result<Output>> {
        let Some(host) = host_ip(remote) else {
            return upgrade;
        };
        let admitted = self.pending.lock().admit(host);
        let (id, made_room) = match admitted {
            Ok(admitted) => admitted,
            Err(refused) => {
                refused.log(&self.refusals, remote);
                return futures::future::ready(Err(io::Error::other(refused))).boxed();
            }
        };
        let ticket = Ticket { pending: self.pending.clone(), host, id };
        let (refusals, remote) = (self.refusals.clone(), remote.clone());
        async move {
            let _ticket = ticket;
            tokio::select! {
                output = upgrade => output,
                () = made_room.cancelled() => {
                    let closed = Refused::MadeRoom { host };
                    closed.log(&refusals, &remote);
                    Err(io::Error::other(closed))
                }
            }
        }
        .boxed()
    }
}

impl Transport for Gated {
    type Output = Output;
    type Error = io::Error;
    type ListenerUpgrade = BoxFuture<'static, io::Result<Output>>;
    type Dial = <Boxed<Output> as Transport>::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<io::Error>> {
        self.inner.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.inner.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<io::Error>> {
        self.inner.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, io::Error>> {
        Poll::Ready(match ready!(Pin::new(&mut self.inner).poll(cx)) {
            TransportEvent::Incoming { listener_id, upgrade, local_addr, send_back_addr } => {
                let upgrade = self.gate(&send_back_addr, upgrade);
                TransportEvent::Incoming { listener_id, upgrade, local_addr, send_back_addr }
            }
            other => other,
        })
    }
}

/// The handshakes under way, per host, oldest first, each with the token that closes it.
#[derive(Default)]
struct Pending {
    per_host: HashMap<IpAddr, VecDeque<(u64, CancellationToken)>>,
    total: usize,
    next: u64,
}

impl Pending {
    /// A place for a handshake from `host`: its id and the token cancelled when it is closed
    /// to make room; or why not.
    fn admit(&mut self, host: IpAddr) -> Result<(u64, CancellationToken), Refused> {
        let count = self.per_host.get(&host).map_or(0, VecDeque::len);
        if count >= PENDING_PER_HOST {
            return Err(Refused::HostFull { host });
        }
        if self.total >= PENDING_TOTAL {
            // The busiest host's oldest handshake makes room, if that host has more under way
            // than this one: among the busiest, the one whose oldest is oldest.
            let busiest = self
                .per_host
                .iter()
                .filter_map(|(h, queue)| {
                    Some((queue.len(), std::cmp::Reverse(queue.front()?.0), *h))
                })
                .max();
            match busiest {
                Some((most, _, busiest)) if most > count => self.close_oldest(busiest),
                _ => return Err(Refused::AllFull { host }),
            }
        }
        let id = self.next;
        self.next += 1;
        let token = CancellationToken::new();
        self.per_host.entry(host).or_default().push_back((id, token.clone()));
        self.total += 1;
        Ok((id, token))
    }

    fn close_oldest(&mut self, host: IpAddr) {
        let queue = self.per_host.get_mut(&host).expect("a host with handshakes");
        let (_, token) = queue.pop_front().expect("a host with handshakes");
        token.cancel();
        if queue.is_empty() {
            self.per_host.remove(&host);
        }
        self.total -= 1;
    }

    /// The handshake `id` of `host`'s ended (or was closed already to make room).
    fn ended(&mut self, host: IpAddr, id: u64) {
        let Some(queue) = self.per_host.get_mut(&host) else {
            return;
        };
        let Some(at) = queue.iter().position(|(i, _)| *i == id) else {
            return;
        };
        queue.remove(at);
        if queue.is_empty() {
            self.per_host.remove(&host);
        }
        self.total -= 1;
    }
}

/// A place among the pending handshakes; given back on drop (the handshake ended, failed,
/// timed out or was closed).
struct Ticket {
    pending: Arc<Mutex<Pending>>,
    host: IpAddr,
    id: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.pending.lock().ended(self.host, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: u32) -> IpAddr {
        std::net::Ipv4Addr::from(0x0a00_0000 + n).into()
    }

    #[test]
    fn one_host_holds_at_most_its_part_of_the_pending_handshakes() {
        let mut pending = Pending::default();
        let held: Vec<_> = (0..PENDING_PER_HOST).map(|_| pending.admit(host(1)).unwrap()).collect();
        assert!(matches!(pending.admit(host(1)), Err(Refused::HostFull { .. })));
        assert!(pending.admit(host(2)).is_ok(), "another host is not held up");
        // A handshake that ends makes room for the next.
        pending.ended(host(1), held[0].0);
        assert!(pending.admit(host(1)).is_ok());
    }

    #[test]
    fn when_all_places_are_taken_a_quieter_host_takes_the_busiest_hosts_oldest() {
        let mut pending = Pending::default();
        let hosts = (PENDING_TOTAL / PENDING_PER_HOST) as u32;
        let mut flood = Vec::new();
        for h in 0..hosts {
            for _ in 0..PENDING_PER_HOST {
                flood.push(pending.admit(host(h)).unwrap());
            }
        }
        assert_eq!(pending.total, PENDING_TOTAL);
        // A flooding host with as many as any other gets no more.
        assert!(matches!(pending.admit(host(0)), Err(Refused::HostFull { .. })));
        // A newcomer gets in, in place of the oldest handshake of a busiest host.
        let (id, newcomer) = pending.admit(host(1000)).unwrap();
        assert!(flood[0].1.is_cancelled(), "the oldest of the busiest host was closed");
        assert_eq!(flood.iter().filter(|(_, t)| t.is_cancelled()).count(), 1);
        assert_eq!(pending.total, PENDING_TOTAL);
        // The one closed gives its place back once only.
        pending.ended(host(0), flood[0].0);
        assert_eq!(pending.total, PENDING_TOTAL);
        // Newcomers keep getting in while some host has more than they do.
        for n in 1..hosts {
            assert!(pending.admit(host(1000 + n)).is_ok());
        }
        assert!(!newcomer.is_cancelled(), "the newest handshakes are not the ones closed");
        pending.ended(host(1000), id);
        assert_eq!(pending.total, PENDING_TOTAL - 1);
    }

    #[test]
    fn when_every_host_has_as_many_as_the_newcomer_it_is_refused() {
        let mut pending = Pending::default();
        for h in 0..PENDING_TOTAL as u32 {
            pending.admit(host(h)).unwrap();
        }
        // Each has one: a newcomer with none takes one's place, one with one already does not.
        assert!(pending.admit(host(100_000)).is_ok());
        assert!(matches!(pending.admit(host(100_000)), Err(Refused::AllFull { .. })));
    }
}
