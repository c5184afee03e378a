//! The harness for nixmesh's end-to-end tests: the real Nix, real nodes, network namespaces.
//!
//! Tests that need something this machine may lack (the `nix` tools, root for namespaces)
//! call [`require_tool`] or [`require_root`] first. Outside CI a missing piece skips the test
//! with a message; in CI (`CI` set, as `.ci/run` runs) it fails the test, so nothing is
//! skipped silently there.
//!
//! The pieces, each in its own module:
//! - [`netns`]: a [`Lan`] of [`Host`]s, network namespaces on one bridge, each host with a
//!   `/nix` of its own;
//! - [`nixstore`]: a host's nix-daemon ([`HostStore`]), the test closure, signing keys;
//! - [`node`]: the `nixmesh` binary, built once, running on a host ([`Node`]);
//! - [`wait`]: polling with a deadline, the only way tests wait;
//! - [`command`]: running a tool with a time limit;
//! - [`nixos`]: NixOS modules evaluated with the real Nix and nixpkgs' `lib`;
//! - [`nginx`]: nginx serving a static binary cache, the baseline and upstream stand-in;
//! - [`mountns`]: a program in a mount namespace of its own on a host (`/lib` hidden, files
//!   of another machine's bound in), as the installer's tests run the node;
//! - [`signed_lan`]: a store and a node on each host, and a closure signed on host 1 that
//!   host 2's node offers: what the LAN tests start from;
//! - [`http`]: many GETs at once over kept-alive connections, as Nix's client sends them;
//! - [`library_bytes`]: bytes as compressible as a closure's, from the machine's libraries.

pub mod command;
pub mod http;
pub mod library_bytes;
pub mod mountns;
pub mod multicast;
pub mod netns;
pub mod nginx;
pub mod nixos;
pub mod nixstore;
pub mod node;
pub mod signed_lan;
pub mod wait;

pub use command::CommandExt;
pub use netns::{Host, Lan};
pub use nixstore::{
    CacheKey, Closure, HostStore, TEST_CLOSURE_LEN, many_paths_expr, random_hash,
    test_closure_expr, unique_marker,
};
pub use node::{
    NODE_URL, Node, NodeOptions, get_from, keygen, mesh_key, narinfo_url_path, nixmesh_bin,
    parse_narinfo,
};
pub use wait::{poll_every, wait_for, wait_until};

use std::process::Command;

/// A loopback port free when asked (the caller binds it right after: a server started as
/// its own process, nginx).
pub fn free_loopback_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
    listener.local_addr().expect("a bound address").port()
}

/// True when every end-to-end test must run: in CI, or with `NIXMESH_E2E=1`.
pub fn must_run() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false")
        || std::env::var_os("NIXMESH_E2E").is_some_and(|v| v == "1")
}

fn unavailable(what: &str) -> bool {
    if must_run() {
        panic!("{what}, and this run must not skip end-to-end tests (CI or NIXMESH_E2E=1)");
    }
    eprintln!("SKIPPED: {what}");
    false
}

/// Whether `tool` runs here; see the module docs for what happens when it does not.
pub fn require_tool(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    found || unavailable(&format!("`{tool}` is not installed"))
}

/// Whether Nix's tools run here (`nix-daemon`, `nix-build`, `nix-instantiate`, `nix-store`,
/// `nix`): what a test with a chroot store and the real Nix as its client needs; see the
/// module docs for what happens when they do not.
pub fn require_nix() -> bool {
    ["nix-daemon", "nix-build", "nix-instantiate", "nix-store", "nix"]
        .iter()
        .all(|t| require_tool(t))
}

/// Whether `path` exists: `what` (say, "nixpkgs' lib") is needed from there; see the module
/// docs for what happens when it is not.
pub fn require_path(path: &std::path::Path, what: &str) -> bool {
    path.exists() || unavailable(&format!("{what} is not at {}", path.display()))
}

/// Whether the tests on a LAN of network namespaces can run here: root, `ip`, `nix-daemon`,
/// `curl`, and the `more` tools a test needs besides; see the module docs for what happens
/// when not.
pub fn require_lan(more: &[&str]) -> bool {
    require_root() && ["ip", "nix-daemon", "curl"].iter().chain(more).all(|t| require_tool(t))
}

/// Whether this process is root (network namespaces need it).
pub fn require_root() -> bool {
    let uid = Command::new("id").arg("-u").output().map(|o| o.stdout).unwrap_or_default();
    uid.trim_ascii() == b"0" || unavailable("not running as root")
}
