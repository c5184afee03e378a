//! The node's configuration: one struct, [`ServeConfig`], whose `Default` holds every default,
//! filled in three layers, each over the one before: the defaults, the config file (TOML,
//! `/etc/nixmesh/config.toml` unless `--config` names another), and the flags of `nixmesh
//! serve`. Every flag is a key of the file with the same name in snake_case
//! (`--http-listen` is `http_listen`; the repeatable `--peer` and `--trusted-public-key` are
//! the lists `peers` and `trusted_public_keys`, and a list given by flags replaces the
//! file's). `nixmesh config show` prints the result and which layer each key came from.
//!
//! - [`file`]: reading the file, strictly (an unknown key is an error naming it and the file);
//! - [`flags`]: the flags, whose help shows the defaults of [`ServeConfig::default`];
//! - [`effective`]: the layers merged, each key with its [`Source`], and `config show`.

pub mod effective;
pub mod file;
pub mod flags;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
pub use nixmesh_localhttp::client_hosts::Cidr;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use crate::mesh::security::SecurityProtocol;

pub use crate::fetch::link::MeshCompression;
pub use effective::EffectiveConfig;
pub use flags::ServeFlags;

/// Where `nixmesh serve` looks for its config file when `--config` is not given. A file
/// missing there is no error: the defaults and flags are enough.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/nixmesh/config.toml";
/// The substituter's default address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:7373";
/// The mesh's default TCP port.
pub const DEFAULT_P2P_PORT: u16 = 7374;
/// The LAN substituter's port where the docs and the NixOS module give one (`lan_listen` has
/// no default: it is off unless set).
pub const DEFAULT_LAN_PORT: u16 = 7375;

/// Everything `nixmesh serve` needs. The field names are the config file's keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// A pre-shared mesh key (libp2p's pnet key file, made by `nixmesh mesh-key`): only nodes
    /// with the same key can connect, and mDNS announces the node only to them.
    pub mesh_key_file: Option<PathBuf>,
    /// Serve peers every path, not only those signed by a trusted key, signed by this node,
    /// or content-addressed (see `fetch::policy`).
    pub serve_unsigned: bool,
    /// Store-path name patterns (`*`, `?`) never served to peers, signed or not.
    pub serve_exclude: Vec<String>,
    /// Give peers the store's build logs (`nix log`), failed builds' included: off by
    /// default, since a log can hold what a private build printed. Read from the log
    /// directory beside `real_store_dir` (`/nix/var/log/nix` for `/nix/store`).
    pub serve_logs: bool,
    /// When not empty, the only peers (by peer id) the node connects with and serves.
    #[serde(with = "peer_ids")]
    pub allow_peers: Vec<PeerId>,
    /// The security protocols the mesh offers, most preferred first: `tls` (TLS 1.3, AES-GCM
    /// on a CPU with AES instructions) and `noise`. `["noise"]` is a node from before TLS;
    /// keep `noise` in the list while such nodes are in the mesh.
    pub mesh_security: Vec<SecurityProtocol>,
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
    /// The most paths the index holds, a path counted once per peer that holds it (about
    /// 4.5 bytes of memory and 3.5 of disk each). At the bound, peers over their fair share
    /// get no more (see `index::bound`), and the node logs it.
    pub index_max_paths: u64,
    /// How the node writes its logs (to stderr): `plain` text, or `json`, one object a line.
    pub log_format: LogFormat,
    /// Binary caches (`http://` or `https://`) to fetch from what no peer holds, asked in
    /// order, trusted by the same keys as peers; the mesh downloads each NAR from them once
    /// (see docs/upstream.md). Unset: the `substituters` of nix.conf other than this node
    /// (else Nix's default, `https://cache.nixos.org`); empty: none.
    pub upstreams: Option<Vec<String>>,
    /// How long asking the upstreams for a narinfo may take, in all: what an unreachable
    /// upstream costs a path no peer holds.
    #[serde(with = "secs")]
    pub upstream_timeout: Duration,
    /// The most disk the NARs being downloaded from upstream (and kept a while for the
    /// mesh) take under `state_dir/spool`; a larger NAR is not shared as it arrives.
    pub spool_max_bytes: u64,
    /// A second substituter, for machines of the LAN that run no node (an installer, a
    /// container), e.g. `0.0.0.0:7375`: read-only, serving what this node would serve its
    /// peers, with limits apart from the localhost one's and a share per client host.
    /// Unset: none.
    pub lan_listen: Option<SocketAddr>,
    /// The networks (`192.0.2.0/24`, `fd00::/8`, an address) the LAN substituter answers;
    /// others get `403`. Empty: every host, which a node with a mesh key refuses (the mesh's
    /// paths would go to hosts the mesh keeps out).
    pub lan_allow: Vec<Cidr>,
    /// Fetch the NARs of small paths (up to 1 MiB) of a closure Nix has walked ahead of its
    /// requests for them, verified as any NAR, so most are answered from memory.
    pub prefetch: bool,
    /// The most memory, in bytes, the prefetched NARs take (and reserve for transfers under
    /// way), for each substituter (the localhost one and `lan_listen`'s).
    pub prefetch_memory: u64,
    /// NARs between nodes: `auto` asks a peer for zstd blocks where the link to it is slower
    /// than compressing, and gives them to peers that ask while this node's CPU has room;
    /// `always` asks every peer that speaks it; `off` neither asks nor gives (see
    /// docs/wire-protocol.md).
    pub mesh_compression: MeshCompression,
}

/// How the node writes its logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Text, one event a line; coloured only when stderr is a terminal.
    #[default]
    Plain,
    /// One JSON object a line, for log collectors.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Plain => "plain",
            LogFormat::Json => "json",
        })
    }
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

    /// What no type can say: the rules a value must also follow, as (key, reason).
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.rescan_interval.is_zero() {
            return Err(("rescan_interval", "must be a positive number of seconds"));
        }
        if self.upstream_timeout.is_zero() {
            return Err(("upstream_timeout", "must be a positive number of seconds"));
        }
        let not_http = |url: &String| !(url.starts_with("http://") || url.starts_with("https://"));
        if self.upstreams.iter().flatten().any(not_http) {
            return Err(("upstreams", "each must be an http:// or https:// URL"));
        }
        if self.mesh_security.is_empty() {
            return Err(("mesh_security", "must name at least one of tls, noise"));
        }
        if self.index_max_paths == 0 {
            return Err(("index_max_paths", "must be at least 1"));
        }
        if self.mesh_key_file.is_some() && self.lan_listen.is_some() && self.lan_allow.is_empty() {
            return Err((
                "lan_allow",
                "must name the networks the LAN substituter answers when the mesh is private \
                 (mesh_key_file and lan_listen are set): a host that cannot join the mesh must \
                 not get its paths over HTTP",
            ));
        }
        Ok(())
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
            serve_unsigned: false,
            serve_exclude: Vec::new(),
            serve_logs: false,
            mesh_key_file: None,
            allow_peers: Vec::new(),
            mesh_security: crate::mesh::security::default_order(),
            rescan_interval: Duration::from_secs(2),
            priority: 10,
            real_store_dir: None,
            forget_peers_after: Duration::from_secs(7 * 24 * 3600),
            index_max_paths: crate::index::DEFAULT_MAX_PATHS,
            log_format: LogFormat::Plain,
            upstreams: None,
            upstream_timeout: Duration::from_secs(2),
            spool_max_bytes: 4 << 30,
            lan_listen: None,
            lan_allow: Vec::new(),
            prefetch: true,
            prefetch_memory: 64 << 20,
            mesh_compression: MeshCompression::Auto,
        }
    }
}

/// Which layer a setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// [`ServeConfig::default`].
    Default,
    /// The config file at this path.
    File(PathBuf),
    /// A flag on the command line.
    Flag,
}

impl Source {
    /// The layer's name alone: `default`, `file` or `flag`.
    pub fn kind(&self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File(_) => "file",
            Source::Flag => "flag",
        }
    }
}

impl fmt::Display for Source {
    /// `default`, `file PATH` or `flag`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::File(path) => write!(f, "file {}", path.display()),
            other => f.write_str(other.kind()),
        }
    }
}

/// The settings cannot be made. Each says which file, key or flag to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {path} (given with --config): {source}")]
    MissingFile { path: PathBuf, source: std::io::Error },
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key} (from {from}): {reason}")]
    Invalid { key: String, from: Source, reason: String },
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(|_| {
            serde::de::Error::custom(format!(
                "{secs} is not a number of seconds (0 or more, finite)"
            ))
        })
    }
}

/// Peer ids as the strings libp2p prints (`12D3Koo…`).
pub(crate) mod peer_ids {
    use libp2p::PeerId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(peers: &[PeerId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(peers.iter().map(PeerId::to_string))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PeerId>, D::Error> {
        Vec::<String>::deserialize(d)?
            .into_iter()
            .map(|text| {
                text.parse().map_err(|e| {
                    serde::de::Error::custom(format!("{text:?} is not a peer id ({e})"))
                })
            })
            .collect()
    }
}
