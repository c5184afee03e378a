//! Peer exchange ([`PEERS_PROTOCOL`]): a node asks a peer which other nodes it is connected
//! to, and where they listen, so that one link into a mesh is enough to join all of it.
//!
//! The asker opens a stream and sends one [`PeersRequest`]; the peer answers with one
//! [`PeerList`] and closes the stream. Peer ids and addresses travel as their binary
//! encodings (libp2p's `PeerId::to_bytes` and `Multiaddr::to_vec`): this crate knows
//! nothing of libp2p, and the node parses them, skipping what does not parse. The answer is
//! bounded ([`MAX_TOLD_PEERS`] peers of [`MAX_TOLD_ADDRESSES`] addresses each, every one of
//! at most [`MAX_TOLD_BYTES`]), so its whole frame fits in [`MAX_PEER_LIST_FRAME_LEN`].

use serde::{Deserialize, Serialize};

use super::WireError;

/// Peer exchange, version 1.
pub const PEERS_PROTOCOL: &str = "/nixmesh/peers/1";
/// The most peers one answer tells of.
pub const MAX_TOLD_PEERS: usize = 64;
/// The most addresses told per peer.
pub const MAX_TOLD_ADDRESSES: usize = 4;
/// The longest peer id or address told, in bytes (an Ed25519 peer id takes 38; an IPv6 TCP
/// address 21).
pub const MAX_TOLD_BYTES: usize = 64;
/// The largest [`PeerList`] frame body a node reads: the bounds above, with room for
/// postcard's length prefixes.
pub const MAX_PEER_LIST_FRAME_LEN: usize = 32 * 1024;
const _: () = assert!(
    MAX_PEER_LIST_FRAME_LEN
        >= 2 + MAX_TOLD_PEERS
            * (2 + MAX_TOLD_BYTES + 1 + MAX_TOLD_ADDRESSES * (2 + MAX_TOLD_BYTES))
);

/// The asker's one message on a peers stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeersRequest {
    /// Tell me the other peers you are connected to.
    List,
}

/// One peer told of: its id and addresses to dial it at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToldPeer {
    /// `PeerId::to_bytes`.
    pub id: Vec<u8>,
    /// `Multiaddr::to_vec` each, without `/p2p/<id>`.
    pub addresses: Vec<Vec<u8>>,
}

/// The answer on a peers stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerList {
    pub peers: Vec<ToldPeer>,
}

impl PeerList {
    /// Checks the bounds a sender must keep; a list beyond them is refused whole, since only a
    /// faulty or hostile peer sends one.
    pub fn check(&self) -> Result<(), WireError> {
        let too_many = |len, limit| Err(WireError::TooMany { len, limit });
        if self.peers.len() > MAX_TOLD_PEERS {
            return too_many(self.peers.len(), MAX_TOLD_PEERS);
        }
        for peer in &self.peers {
            if peer.addresses.len() > MAX_TOLD_ADDRESSES {
                return too_many(peer.addresses.len(), MAX_TOLD_ADDRESSES);
            }
            let longest = peer.addresses.iter().map(Vec::len).chain([peer.id.len()]).max();
            if let Some(len) = longest.filter(|len| *len > MAX_TOLD_BYTES) {
                return too_many(len, MAX_TOLD_BYTES);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MAX_REQUEST_FRAME_LEN, decode_frame, encode_frame};
    use super::*;

    fn full_list() -> PeerList {
        let peer = ToldPeer {
            id: vec![0xff; MAX_TOLD_BYTES],
            addresses: vec![vec![0xff; MAX_TOLD_BYTES]; MAX_TOLD_ADDRESSES],
        };
        PeerList { peers: vec![peer; MAX_TOLD_PEERS] }
    }

    #[test]
    fn the_fullest_list_fits_its_frame_and_round_trips() {
        let list = full_list();
        assert!(list.check().is_ok());
        let frame = encode_frame(&list).unwrap();
        assert!(frame.len() <= 4 + MAX_PEER_LIST_FRAME_LEN, "{}", frame.len());
        let (decoded, _) =
            decode_frame::<PeerList>(&frame, MAX_PEER_LIST_FRAME_LEN).unwrap().unwrap();
        assert_eq!(decoded, list);
        let request = encode_frame(&PeersRequest::List).unwrap();
        assert!(request.len() <= 4 + MAX_REQUEST_FRAME_LEN);
    }

    #[test]
    fn lists_beyond_the_bounds_are_refused() {
        let mut more_peers = full_list();
        more_peers.peers.push(more_peers.peers[0].clone());
        let mut more_addresses = full_list();
        more_addresses.peers[3].addresses.push(vec![1]);
        let mut long_id = full_list();
        long_id.peers[5].id.push(0);
        let mut long_address = full_list();
        long_address.peers[7].addresses[1].push(0);
        for list in [more_peers, more_addresses, long_id, long_address] {
            assert!(matches!(list.check(), Err(WireError::TooMany { .. })));
        }
    }

    #[test]
    fn an_empty_list_is_valid() {
        assert!(PeerList::default().check().is_ok());
    }
}
