//! Which security a connection runs on: TLS 1.3 ([`super::tls`]) or noise, offered in the
//! node's order of preference (`mesh_security`), so that a node offering TLS first still
//! connects with one that speaks only noise.
//!
//! multistream-select does the choosing: a dialer proposes its protocols one by one, each
//! after the listener answered `na` to the last, and a listener takes the first it knows. So
//! a new dialer reaching an old listener pays one more round trip before noise; an old dialer
//! proposes `/noise` alone and a new listener takes it. In a private mesh this runs over pnet,
//! after the key check ([`super::private`]): a node without the key never gets this far.
//!
//! The outcome of each connection (which protocol, which cipher) is left in [`Negotiated`]
//! for the peer table: libp2p's connection events do not carry it.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures::future::{self, BoxFuture};
use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt};
use libp2p::core::UpgradeInfo;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade};
use libp2p::{PeerId, identity, noise};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::tls::{self, TlsStream};

/// noise's protocol name, libp2p's.
const NOISE: &str = "/noise";
/// What noise encrypts with (libp2p's `Noise_XX_25519_ChaChaPoly_SHA256`).
const NOISE_CIPHER: &str = "ChaChaPoly";
/// The most outcomes waiting for their connection's event: a connection denied after its
/// handshake (the allow-list, the limits) never takes its outcome, so they are bounded.
const MAX_WAITING: usize = 1024;

/// A security protocol the mesh can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SecurityProtocol {
    /// libp2p's `/tls/1.0.0`: TLS 1.3, AES-GCM first on a CPU with AES instructions.
    Tls,
    /// libp2p's `/noise`: what every nixmesh node before TLS speaks.
    Noise,
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecurityProtocol::Tls => "tls",
            SecurityProtocol::Noise => "noise",
        })
    }
}

impl SecurityProtocol {
    fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Tls => tls::PROTOCOL,
            SecurityProtocol::Noise => NOISE,
        }
    }
}

/// The default order: TLS first, noise kept for nodes that speak only noise.
pub fn default_order() -> Vec<SecurityProtocol> {
    vec![SecurityProtocol::Tls, SecurityProtocol::Noise]
}

/// The stream a connection's security leaves: TLS's or noise's.
pub type Secured<C> = future::Either<TlsStream<C>, noise::Output<C>>;

/// Why the security upgrade failed, or could not be set up.
#[derive(Debug, Error)]
pub enum SecurityError {
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("noise: {0}")]
    Noise(#[from] noise::Error),
    #[error("no security protocol to offer (mesh_security is empty)")]
    NoneOffered,
    #[error("the peer chose {0}, which this node does not offer")]
    NotOffered(&'static str),
}

/// A connection's security as `nixmesh peers` shows it, e.g. `tls/TLS13_AES_128_GCM_SHA256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiation {
    pub protocol: SecurityProtocol,
    pub cipher: String,
}

impl fmt::Display for Negotiation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.cipher)
    }
}

/// The outcome of each peer's latest handshake, until its connection's event takes it.
#[derive(Debug, Default)]
pub struct Negotiated {
    waiting: Mutex<HashMap<PeerId, Negotiation>>,
}

impl Negotiated {
    fn record(&self, peer: PeerId, negotiation: Negotiation) {
        let mut waiting = self.waiting.lock();
        if waiting.len() >= MAX_WAITING && !waiting.contains_key(&peer) {
            // Only denied connections pile up here; forgetting them costs a label at most.
            waiting.clear();
        }
        waiting.insert(peer, negotiation);
    }

    /// The security `peer`'s latest connection negotiated, taken.
    pub fn take(&self, peer: &PeerId) -> Option<Negotiation> {
        self.waiting.lock().remove(peer)
    }
}

/// The security upgrade: the protocols of `mesh_security`, offered in its order.
#[derive(Clone)]
pub struct Security {
    order: Vec<SecurityProtocol>,
    tls: tls::Config,
    noise: noise::Config,
    negotiated: Arc<Negotiated>,
}

impl Security {
    /// `keypair`'s upgrade offering `order` (not empty; a protocol named twice counts once).
    pub fn new(
        keypair: &identity::Keypair,
        order: &[SecurityProtocol],
    ) -> Result<Self, SecurityError> {
        Security::with_ciphers(keypair, order, tls::CipherOrder::for_this_cpu())
    }

    /// [`Security::new`] with TLS offering its cipher suites in `ciphers`' order (the
    /// transport bench measures each).
    pub fn with_ciphers(
        keypair: &identity::Keypair,
        order: &[SecurityProtocol],
        ciphers: tls::CipherOrder,
    ) -> Result<Self, SecurityError> {
        let mut unique = Vec::with_capacity(2);
        for protocol in order {
            if !unique.contains(protocol) {
                unique.push(*protocol);
            }
        }
        if unique.is_empty() {
            return Err(SecurityError::NoneOffered);
        }
        Ok(Security {
            order: unique,
            tls: tls::Config::with_order(keypair, ciphers)?,
            noise: noise::Config::new(keypair)?,
            negotiated: Arc::default(),
        })
    }

    /// Where each connection's outcome is left.
    pub fn negotiated(&self) -> Arc<Negotiated> {
        self.negotiated.clone()
    }

    fn offers(&self, name: &str) -> Option<SecurityProtocol> {
        self.order.iter().copied().find(|p| p.name() == name)
    }
}

impl UpgradeInfo for Security {
    type Info = &'static str;
    type InfoIter = std::vec::IntoIter<&'static str>;

    fn protocol_info(&self) -> Self::InfoIter {
        self.order.iter().map(|p| p.name()).collect::<Vec<_>>().into_iter()
    }
}

type Upgraded<C> = BoxFuture<'static, Result<(PeerId, Secured<C>), SecurityError>>;

impl Security {
    /// Runs the upgrade the peer chose, `inbound` or not, and records what it negotiated.
    fn upgrade<C>(self, socket: C, name: &'static str, inbound: bool) -> Upgraded<C>
    where
        C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let negotiated = self.negotiated.clone();
        let upgraded: Upgraded<C> = match self.offers(name) {
            Some(SecurityProtocol::Tls) => {
                let tls = self.tls;
                let secured = if inbound {
                    tls.upgrade_inbound(socket, tls::PROTOCOL)
                } else {
                    tls.upgrade_outbound(socket, tls::PROTOCOL)
                };
                secured.map_ok(|(peer, s)| (peer, future::Either::Left(s))).err_into().boxed()
            }
            Some(SecurityProtocol::Noise) => {
                let noise = self.noise;
                let secured = if inbound {
                    noise.upgrade_inbound(socket, NOISE).boxed()
                } else {
                    noise.upgrade_outbound(socket, NOISE).boxed()
                };
                secured.map_ok(|(peer, s)| (peer, future::Either::Right(s))).err_into().boxed()
            }
            None => future::ready(Err(SecurityError::NotOffered(name))).boxed(),
        };
        upgraded
            .inspect_ok(move |(peer, stream)| negotiated.record(*peer, negotiation(stream)))
            .boxed()
    }
}

/// What `stream` runs on.
fn negotiation<C>(stream: &Secured<C>) -> Negotiation {
    match stream {
        future::Either::Left(tls) => Negotiation {
            protocol: SecurityProtocol::Tls,
            cipher: tls::cipher_suite(tls).unwrap_or_else(|| "unknown".to_owned()),
        },
        future::Either::Right(_) => {
            Negotiation { protocol: SecurityProtocol::Noise, cipher: NOISE_CIPHER.to_owned() }
        }
    }
}

impl<C> InboundConnectionUpgrade<C> for Security
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = Upgraded<C>;

    fn upgrade_inbound(self, socket: C, name: Self::Info) -> Self::Future {
        self.upgrade(socket, name, true)
    }
}

impl<C> OutboundConnectionUpgrade<C> for Security
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = (PeerId, Secured<C>);
    type Error = SecurityError;
    type Future = Upgraded<C>;

    fn upgrade_outbound(self, socket: C, name: Self::Info) -> Self::Future {
        self.upgrade(socket, name, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SecurityProtocol::{Noise, Tls};

    #[test]
    fn protocols_are_offered_in_the_configured_order_once_each() {
        let key = identity::Keypair::generate_ed25519();
        let offered = |order: &[SecurityProtocol]| {
            Security::new(&key, order).unwrap().protocol_info().collect::<Vec<_>>()
        };
        assert_eq!(offered(&default_order()), ["/tls/1.0.0", "/noise"]);
        assert_eq!(offered(&[Noise]), ["/noise"]);
        assert_eq!(offered(&[Noise, Tls, Noise]), ["/noise", "/tls/1.0.0"]);
        assert!(matches!(Security::new(&key, &[]), Err(SecurityError::NoneOffered)));
    }

    #[test]
    fn the_setting_reads_as_lowercase_names() {
        let order: Vec<SecurityProtocol> = serde_json::from_str(r#"["tls", "noise"]"#).unwrap();
        assert_eq!(order, default_order());
        assert!(serde_json::from_str::<Vec<SecurityProtocol>>(r#"["ssl"]"#).is_err());
    }
}
