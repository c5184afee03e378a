//! What a node puts in its mDNS records, and how it reads other nodes' records.
//!
//! In an open mesh the records say it all: service `_nixmesh._tcp`, the peer id as the
//! instance name and in TXT `id=`, a host name made from it.
//!
//! In a private mesh everything is derived from the mesh key, so that a node without the key
//! sees nothing it could use, and learns nothing it does not already see (that some host on
//! the link listens on some TCP port):
//! - the service type is `_nm-<12 hex digits>._tcp`, from a hash of the key: nodes without the
//!   key (or with another) browse another service and never see these records at all;
//! - the instance name (also the host name) is 16 hex digits hashed from the key and the peer
//!   id: stable, unique per node, and opaque;
//! - TXT `id=` carries the peer id sealed with ChaCha20-Poly1305 under a key derived from the
//!   mesh key, with a random nonce, bound to the instance name: `base64url(nonce ‖ sealed)`.
//!   A keyed node opens it and dials the peer by id; a record that does not open is ignored.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use data_encoding::BASE64URL_NOPAD;
use libp2p::PeerId;
use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::mesh::key::MeshKey;

/// An open mesh's DNS-SD service type.
pub const OPEN_SERVICE_TYPE: &str = "_nixmesh._tcp.local.";
/// The TXT key that carries the peer id.
pub const ID_KEY: &str = "id";
/// The length of the AEAD's nonce.
const NONCE_LEN: usize = 12;
/// The longest `id=` value read (a sealed ed25519 peer id is about 90 characters).
const MAX_ID_LEN: usize = 200;

/// How this node names itself in mDNS, and reads the names of others.
#[derive(Clone)]
pub enum Records {
    Open,
    Private {
        service_type: String,
        /// Hashed with a peer id into its instance name.
        instance_key: [u8; 32],
        /// Seals and opens peer ids.
        id_key: [u8; 32],
    },
}

/// One node's announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    pub instance: String,
    /// The host name of its A/AAAA records (`name.local.`): per node, so that two nodes'
    /// addresses never merge.
    pub host: String,
    /// The value of TXT `id=`.
    pub id: String,
}

impl Records {
    /// The records for a mesh with `key`, or an open one.
    pub fn new(key: Option<&MeshKey>) -> Records {
        let Some(key) = key else {
            return Records::Open;
        };
        let tag = key.derive("mdns service type");
        Records::Private {
            service_type: format!("_nm-{}._tcp.local.", hex(&tag[..6])),
            instance_key: key.derive("mdns instance name"),
            id_key: key.derive("mdns peer id"),
        }
    }

    /// The DNS-SD service type announced and browsed.
    pub fn service_type(&self) -> &str {
        match self {
            Records::Open => OPEN_SERVICE_TYPE,
            Records::Private { service_type, .. } => service_type,
        }
    }

    /// What `peer` announces.
    pub fn announcement(&self, peer: &PeerId) -> Announcement {
        match self {
            Records::Open => {
                let id = peer.to_string();
                let host = format!("nixmesh-{}.local.", &id[id.len() - 12..]);
                Announcement { instance: id.clone(), host, id }
            }
            Records::Private { instance_key, id_key, .. } => {
                let instance = instance_name(instance_key, peer);
                let mut nonce = [0u8; NONCE_LEN];
                rand::rngs::OsRng.fill_bytes(&mut nonce);
                let payload = Payload { msg: &peer.to_bytes(), aad: instance.as_bytes() };
                let sealed = ChaCha20Poly1305::new(id_key.into())
                    .encrypt(Nonce::from_slice(&nonce), payload)
                    .expect("sealing a short message cannot fail");
                let id = BASE64URL_NOPAD.encode(&[&nonce[..], &sealed].concat());
                Announcement { host: format!("{instance}.local."), instance, id }
            }
        }
    }

    /// The peer a resolved record names: its instance name (the first label of its full name)
    /// and its TXT `id=`. `None` for a record that is not one of this mesh's.
    pub fn peer_of(&self, instance: &str, id: &str) -> Option<PeerId> {
        match self {
            Records::Open => id.parse().ok(),
            Records::Private { instance_key, id_key, .. } => {
                if id.len() > MAX_ID_LEN {
                    return None;
                }
                let bytes = BASE64URL_NOPAD.decode(id.as_bytes()).ok()?;
                let (nonce, sealed) = bytes.split_at_checked(NONCE_LEN)?;
                let payload = Payload { msg: sealed, aad: instance.as_bytes() };
                let opened = ChaCha20Poly1305::new(id_key.into())
                    .decrypt(Nonce::from_slice(nonce), payload)
                    .ok()?;
                let peer = PeerId::from_bytes(&opened).ok()?;
                // A record copied under another instance name does not open (the name is
                // bound in); one whose name is not its peer's is not ours either.
                (instance_name(instance_key, &peer) == instance).then_some(peer)
            }
        }
    }
}

/// A private mesh's instance name for `peer`.
fn instance_name(instance_key: &[u8; 32], peer: &PeerId) -> String {
    let mut hash = Sha256::new();
    hash.update(instance_key);
    hash.update(peer.to_bytes());
    hex(&hash.finalize()[..8])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_records_name_the_peer() {
        let peer = PeerId::random();
        let records = Records::new(None);
        assert_eq!(records.service_type(), OPEN_SERVICE_TYPE);
        let a = records.announcement(&peer);
        assert_eq!(a.instance, peer.to_string());
        assert_eq!(a.id, peer.to_string());
        assert!(a.host.starts_with("nixmesh-") && a.host.ends_with(".local."));
        assert_eq!(records.peer_of(&a.instance, &a.id), Some(peer));
    }

    #[test]
    fn private_records_are_opaque_and_read_only_with_the_key() {
        let key = MeshKey::generate();
        let peer = libp2p::identity::Keypair::generate_ed25519().public().to_peer_id();
        let records = Records::new(Some(&key));
        let service = records.service_type();
        // A valid DNS-SD service name: `_`, at most 15 characters, then the domain.
        let name = service.strip_suffix("._tcp.local.").unwrap().strip_prefix('_').unwrap();
        assert!(name.len() <= 15 && name.starts_with("nm-"), "{service}");
        assert_eq!(Records::new(Some(&key)).service_type(), service, "stable for a key");
        assert_ne!(Records::new(Some(&MeshKey::generate())).service_type(), service);

        let a = records.announcement(&peer);
        let shown = format!("{service} {} {} {}", a.instance, a.host, a.id);
        let id = peer.to_string();
        assert!(!shown.contains(&id[id.len() - 8..]), "the peer id shows: {shown}");
        assert!(!shown.contains("nixmesh"), "{shown}");
        assert_eq!(a.instance.len(), 16);
        assert_eq!(a.host, format!("{}.local.", a.instance));
        assert_eq!(records.announcement(&peer).instance, a.instance, "stable for a node");
        assert_ne!(records.announcement(&peer).id, a.id, "sealed with a new nonce each time");
        assert!(a.id.len() <= MAX_ID_LEN);

        // Opened with the key; not with another, nor under another name, nor tampered with.
        assert_eq!(records.peer_of(&a.instance, &a.id), Some(peer));
        let other = Records::new(Some(&MeshKey::generate()));
        assert_eq!(other.peer_of(&a.instance, &a.id), None);
        assert_eq!(Records::Open.peer_of(&a.instance, &a.id), None);
        let someone_else = records.announcement(&PeerId::random());
        assert_eq!(records.peer_of(&someone_else.instance, &a.id), None);
        let mut tampered = a.id.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(records.peer_of(&a.instance, std::str::from_utf8(&tampered).unwrap()), None);
        assert_eq!(records.peer_of(&a.instance, ""), None);
        assert_eq!(records.peer_of(&a.instance, "not base64!"), None);
        assert_eq!(records.peer_of(&a.instance, &"A".repeat(MAX_ID_LEN + 1)), None);
    }
}
