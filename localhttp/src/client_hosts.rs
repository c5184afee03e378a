//! The substituter's clients as hosts, for a listener open to the LAN (`lan_listen`): who may
//! ask at all (an allow-list of networks; a private mesh's node requires one, so a host that
//! cannot join the mesh does not get its paths over HTTP either), and a share of the listener
//! per client host, so that one machine asking flat out leaves room for the others.
//!
//! A request from outside the allow-list is a `403`. Each host has at most
//! [`ClientHosts::per_host`] requests in flight; more wait (at most the request time limit,
//! then a `503`, which Nix retries) while the other hosts' go on. With the listener's own
//! limits behind it (its substituter's permits and NAR slots, apart from the localhost
//! listener's), a host's share is what is left when the others have theirs.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::debug;

use crate::connection::ClientConnection;

/// A network: an address and how many of its leading bits are the network's
/// (`192.0.2.0/24`, `fd00::/8`; an address alone is one host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    address: IpAddr,
    prefix: u8,
}

/// A network that does not parse; the text says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{text:?} is not a network such as 192.0.2.0/24 or fd00::/8: {reason}")]
pub struct CidrError {
    text: String,
    reason: &'static str,
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(text: &str) -> Result<Cidr, CidrError> {
        let bad = |reason| CidrError { text: text.to_owned(), reason };
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad("not an IP address"))?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => {
                prefix.parse::<u8>().ok().filter(|p| *p <= bits).ok_or_else(|| {
                    bad("the prefix length is not a number of bits of the address")
                })?
            }
        };
        Ok(Cidr { address, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Cidr {
    /// Whether `ip` is in the network (an IPv4 client seen as an IPv4-mapped IPv6 address
    /// counts as the IPv4 one).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                leading_bits_equal(&net.octets(), &ip.octets(), self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                leading_bits_equal(&net.octets(), &ip.octets(), self.prefix)
            }
            _ => false,
        }
    }
}

fn leading_bits_equal(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (whole, rest) = ((bits / 8) as usize, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// Who may use a LAN listener, and each host's share of it.
pub struct ClientHosts {
    /// `None`: every host.
    allow: Option<Vec<Cidr>>,
    /// Requests one host may have in flight.
    pub per_host: usize,
    /// How long a request waits for its host's turn.
    wait: Duration,
    hosts: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

impl ClientHosts {
    /// Hosts in `allow` (every one when `None`), each with at most `per_host` requests in
    /// flight, a request waiting at most `wait` for its turn.
    pub fn new(allow: Option<Vec<Cidr>>, per_host: usize, wait: Duration) -> Arc<Self> {
        Arc::new(ClientHosts { allow, per_host, wait, hosts: Mutex::default() })
    }

    fn allows(&self, ip: IpAddr) -> bool {
        self.allow.as_ref().is_none_or(|networks| networks.iter().any(|n| n.contains(ip)))
    }

    /// A turn for a request of `host`, within the wait.
    async fn turn(&self, host: IpAddr) -> Option<HostTurn<'_>> {
        let semaphore = {
            let mut hosts = self.hosts.lock();
            hosts.entry(host).or_insert_with(|| Arc::new(Semaphore::new(self.per_host))).clone()
        };
        let permit = tokio::time::timeout(self.wait, semaphore.acquire_owned()).await.ok()?.ok()?;
        Some(HostTurn { hosts: self, host, permit: Some(permit) })
    }
}

/// A request's turn; the host's entry goes once it has no request in flight.
struct HostTurn<'a> {
    hosts: &'a ClientHosts,
    host: IpAddr,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for HostTurn<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        let mut hosts = self.hosts.hosts.lock();
        // Only this map holds the semaphore when no turn of the host is out.
        if hosts.get(&self.host).is_some_and(|s| Arc::strong_count(s) == 1) {
            hosts.remove(&self.host);
        }
    }
}

/// `router` (see [`crate::router`]) behind [`admit`]: for a listener open to the LAN.
pub fn admitting(router: Router, hosts: Arc<ClientHosts>) -> Router {
    router.layer(from_fn_with_state(hosts, admit))
}

/// The layer of a LAN listener's router: `403` outside the allow-list, then a turn within the
/// client host's share, held until the response has been produced (a NAR's body is bounded by
/// the listener's NAR slots, not by this).
pub async fn admit(
    State(hosts): State<Arc<ClientHosts>>,
    ConnectInfo(client): ConnectInfo<ClientConnection>,
    request: Request,
    next: Next,
) -> Response {
    let host = client.remote().ip();
    if !hosts.allows(host) {
        debug!(%host, "a LAN client outside lan_allow: 403");
        return (StatusCode::FORBIDDEN, "this host is not in the substituter's lan_allow\n")
            .into_response();
    }
    let Some(_turn) = hosts.turn(host).await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "busy: this host's share is in use\n")
            .into_response();
    };
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain_their_hosts() {
        let lan: Cidr = "192.0.2.0/24".parse().unwrap();
        assert!(lan.contains(ip("192.0.2.7")) && lan.contains(ip("192.0.2.255")));
        assert!(!lan.contains(ip("192.0.3.1")) && !lan.contains(ip("fd00::1")));
        assert!(lan.contains(ip("::ffff:192.0.2.9")), "IPv4-mapped");
        let odd: Cidr = "10.0.0.0/9".parse().unwrap();
        assert!(odd.contains(ip("10.127.255.255")) && !odd.contains(ip("10.128.0.0")));
        let one: Cidr = "192.0.2.7".parse().unwrap();
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")) && !one.contains(ip("192.0.2.8")));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")));
        for bad in ["", "192.0.2.0/33", "fd00::/129", "lan", "192.0.2.0/x", "192.0.2/24"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn each_host_has_its_share_and_its_entry_goes_with_its_last_turn() {
        let hosts = ClientHosts::new(None, 2, Duration::from_millis(50));
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        let first = hosts.turn(a).await.unwrap();
        let second = hosts.turn(a).await.unwrap();
        assert!(hosts.turn(a).await.is_none(), "a third of a's waits, then gives up");
        assert!(hosts.turn(b).await.is_some(), "b is not held up by a");
        drop((first, second));
        assert!(hosts.hosts.lock().is_empty(), "no entry for hosts with no turn");
        assert!(hosts.allows(a));
        let only = ClientHosts::new(Some(vec!["192.0.2.2/32".parse().unwrap()]), 1, Duration::ZERO);
        assert!(!only.allows(a) && only.allows(b));
    }
}
