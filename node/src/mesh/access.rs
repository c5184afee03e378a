//! Who the node let in: the private mesh's access rules, which failed connections were
//! refusals (by those rules or a limit), and the log of connections refused.
//!
//! A refusal is logged once a minute at most per remote host and reason (a keyless node
//! redials every few seconds, and a hostile one as fast as it likes); the line says how many
//! were held back since. The hosts remembered are bounded.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use libp2p::allow_block_list::NotAllowed;
use libp2p::core::transport::TransportError;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{ConnectionDenied, DialError, ListenError};
use libp2p::{Multiaddr, PeerId, connection_limits};
use tokio::time::Instant;

use super::key::MeshKey;
use super::private;
use super::security::{self, SecurityProtocol};

/// The least time between two lines about refusals from one host.
const LOG_EVERY: Duration = Duration::from_secs(60);
/// The most hosts whose refusals are counted at once.
const MAX_HOSTS: usize = 1024;

/// Who may connect, and how: the mesh key peers must hold, the peers allowed (any, when
/// empty), and the security protocols offered.
#[derive(Debug, Clone)]
pub struct Access {
    /// With a key, a connection that fails pnet's handshake under it is refused.
    pub key: Option<MeshKey>,
    /// When not empty, connections with any other peer are closed at once.
    pub allow_peers: HashSet<PeerId>,
    /// The security protocols offered, most preferred first (`mesh_security`); not empty.
    pub security: Vec<SecurityProtocol>,
}

impl Default for Access {
    /// Open to any peer, TLS offered first and noise kept.
    fn default() -> Self {
        Access { key: None, allow_peers: HashSet::new(), security: security::default_order() }
    }
}

impl Access {
    /// Whether `peer` may connect (by its id; the key is checked by the transport).
    pub fn allows(&self, peer: &PeerId) -> bool {
        self.allow_peers.is_empty() || self.allow_peers.contains(peer)
    }
}

/// How often refusals from each host were logged.
#[derive(Debug, Default)]
pub(super) struct RefusalLog {
    hosts: HashMap<String, Recent>,
}

#[derive(Debug)]
struct Recent {
    logged_at: Instant,
    held_back: u32,
}

impl RefusalLog {
    /// Whether to log a refusal of `remote` for `why` now: `Some(n)`, `n` the refusals of its
    /// host for the same reason held back since its last line; `None` to hold this one back.
    pub(super) fn admit(&mut self, remote: &Multiaddr, why: &str, now: Instant) -> Option<u32> {
        let host = format!("{} {why}", host_of(remote));
        if let Some(recent) = self.hosts.get_mut(&host) {
            if now.duration_since(recent.logged_at) < LOG_EVERY {
                recent.held_back = recent.held_back.saturating_add(1);
                return None;
            }
            let held_back = recent.held_back;
            *recent = Recent { logged_at: now, held_back: 0 };
            return Some(held_back);
        }
        if self.hosts.len() >= MAX_HOSTS {
            self.hosts.retain(|_, r| now.duration_since(r.logged_at) < LOG_EVERY);
            if self.hosts.len() >= MAX_HOSTS {
                // Too many hosts at once to count: log more rather than remember more.
                self.hosts.clear();
            }
        }
        self.hosts.insert(host, Recent { logged_at: now, held_back: 0 });
        Some(0)
    }
}

/// The address's host (its IP, or its name); the whole address when it has neither.
fn host_of(address: &Multiaddr) -> String {
    address
        .iter()
        .find_map(|p| match p {
            Protocol::Ip4(ip) => Some(ip.to_string()),
            Protocol::Ip6(ip) => Some(ip.to_string()),
            Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name) => {
                Some(name.to_string())
            }
            _ => None,
        })
        .unwrap_or_else(|| address.to_string())
}

/// Why an incoming connection was refused by the private mesh's rules or by a limit, if it
/// was.
pub(super) fn refused_incoming(error: &ListenError) -> Option<String> {
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
pub(super) fn refused_outgoing(
    error: &DialError,
    peer: Option<PeerId>,
) -> Option<(Multiaddr, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Multiaddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_line_a_minute_per_host_counting_the_rest() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        assert_eq!(log.admit(&at("/ip4/192.0.2.1/tcp/40000"), "k", t0), Some(0));
        // Another port of the same host is the same host.
        assert_eq!(
            log.admit(&at("/ip4/192.0.2.1/tcp/40001"), "k", t0 + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            log.admit(&at("/ip4/192.0.2.1/tcp/40002"), "k", t0 + Duration::from_secs(2)),
            None
        );
        // Another host is not held back.
        assert_eq!(log.admit(&at("/ip4/192.0.2.2/tcp/40000"), "k", t0), Some(0));
        assert_eq!(log.admit(&at("/ip4/192.0.2.1/tcp/40003"), "k", t0 + LOG_EVERY), Some(2));
        assert_eq!(log.admit(&at("/ip4/192.0.2.1/tcp/40004"), "k", t0 + LOG_EVERY), None);
        // Another reason from the same host is news.
        assert_eq!(log.admit(&at("/ip4/192.0.2.1/tcp/40005"), "j", t0 + LOG_EVERY), Some(0));
    }

    #[test]
    fn the_hosts_remembered_are_bounded() {
        let mut log = RefusalLog::default();
        let t0 = Instant::now();
        for i in 0..(MAX_HOSTS as u32 * 3) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let address = Multiaddr::from(ip).with(Protocol::Tcp(1));
            assert_eq!(log.admit(&address, "k", t0), Some(0));
            assert!(log.hosts.len() <= MAX_HOSTS);
        }
    }

    #[test]
    fn an_empty_allow_list_allows_everyone() {
        let (a, b) = (PeerId::random(), PeerId::random());
        assert!(Access::default().allows(&a));
        let only_a = Access { allow_peers: HashSet::from([a]), ..Access::default() };
        assert!(only_a.allows(&a));
        assert!(!only_a.allows(&b));
    }
}
