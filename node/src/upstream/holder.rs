//! Where a path may come from, as the substituter's failover and the single flight's peer
//! health both count it: a peer that advertises it, or the upstream caches. Its home is here,
//! below both [`crate::substituter`] and [`crate::upstream::flight`], so neither imports the
//! other for it.

use std::fmt;

use libp2p::PeerId;

/// Where a path may come from: a peer that advertises it, or the upstream caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Holder {
    Peer(PeerId),
    /// The upstream caches, by way of the NAR's claimer in the mesh.
    Upstream,
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Holder::Peer(peer) => peer.fmt(f),
            Holder::Upstream => f.write_str("upstream"),
        }
    }
}
