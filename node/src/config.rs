//! The node's configuration: one struct, with the defaults a single-user LAN needs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::Multiaddr;
use serde::{Deserialize, Serialize};

/// The substituter's default address. Documented in README.md; keep them in step.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7373";
/// The mesh's default TCP port.
pub const DEFAULT_P2P_PORT: u16 = 7374;

/// Everything `nixmesh serve` needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServeConfig {
    /// `daemon` (the local nix-daemon) or `unix:///path/to/socket`.
    pub store: String,
    /// Where the identity and the index live.
    pub state_dir: PathBuf,
    /// The substituter's address; loopback unless you mean to share it.
    pub http_listen: SocketAddr,
    /// The mesh's listen addresses.
    pub p2p_listen: Vec<Multiaddr>,
    /// Keys whose signatures make a narinfo acceptable; empty means "those nix.conf trusts".
    pub trusted_public_keys: Vec<String>,
    /// A secret key to sign this node's paths with, for peers that trust it.
    pub sign_key_file: Option<PathBuf>,
    /// Peers to stay connected to without discovery.
    pub peers: Vec<Multiaddr>,
    /// Discover peers on the local link with mDNS.
    pub mdns: bool,
    /// How often the local store is rescanned for new and removed paths where its database
    /// cannot be watched (see `real_store_dir`); a watched store is rescanned on each change.
    #[serde(with = "secs")]
    pub rescan_interval: Duration,
    /// The `Priority` in `/nix-cache-info` (lower is preferred by Nix; cache.nixos.org is 40).
    pub priority: u32,
    /// Where the store's files are on disk (Nix's `real` store setting), for making NARs
    /// without the daemon. Unset: `/nix/store` for the local daemon (`store = "daemon"`),
    /// none for another socket (its NARs come from its daemon).
    pub real_store_dir: Option<PathBuf>,
    /// A peer unseen for this long is forgotten: what it advertised leaves the index.
    #[serde(with = "secs")]
    pub forget_peers_after: Duration,
}

impl ServeConfig {
    /// Where NARs are read from disk, if anywhere: [`ServeConfig::real_store_dir`] with its
    /// default applied.
    pub fn real_store_dir(&self) -> Option<PathBuf> {
        match &self.real_store_dir {
            Some(dir) => Some(dir.clone()),
            None if self.store == "daemon" => {
                Some(PathBuf::from(nixmesh_protocol::store_path::STORE_DIR))
            }
            None => None,
        }
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            store: "daemon".to_owned(),
            state_dir: PathBuf::from("/var/lib/nixmesh"),
            http_listen: DEFAULT_HTTP_LISTEN.parse().expect("valid default"),
            p2p_listen: vec![
                format!("/ip4/0.0.0.0/tcp/{DEFAULT_P2P_PORT}").parse().expect("valid default"),
            ],
            trusted_public_keys: Vec::new(),
            sign_key_file: None,
            peers: Vec::new(),
            mdns: true,
            rescan_interval: Duration::from_secs(2),
            priority: 10,
            real_store_dir: None,
            forget_peers_after: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}
