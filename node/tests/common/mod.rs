//! What the in-process node tests share: a node's settings on loopback, and the tools they
//! need.

use std::path::Path;

use nixmesh_node::config::ServeConfig;
use nixmesh_tests::{HostStore, require_tool};

/// Whether Nix's tools run here (see `nixmesh_tests::require_tool` for what happens when not).
pub fn nix_available() -> bool {
    ["nix-daemon", "nix-build", "nix-instantiate", "nix-store", "nix"]
        .iter()
        .all(|t| require_tool(t))
}

/// A node on loopback over `store` (its NARs read from the store's files, its changes
/// watched), state in `state`, trusting `trusted`, with `peers` as static peers, no mDNS and
/// no upstream cache.
pub fn loopback_config(
    state: &Path,
    store: &HostStore,
    trusted: &str,
    peers: Vec<libp2p::Multiaddr>,
) -> ServeConfig {
    ServeConfig {
        store: store.daemon_url(),
        state_dir: state.to_owned(),
        http_listen: "127.0.0.1:0".parse().expect("an address"),
        p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".parse().expect("a multiaddr")],
        trusted_public_keys: vec![trusted.to_owned()],
        peers,
        mdns: false,
        real_store_dir: Some(store.real_store_dir()),
        upstreams: Some(Vec::new()),
        ..ServeConfig::default()
    }
}
