//! What the node's tests share: a node's settings on loopback, the tools they need, a thread in
//! a host's network namespace, and one fetch request on a stream of its own. Each test binary
//! uses a part of it.
#![allow(dead_code)]

use std::path::Path;

use std::os::fd::AsRawFd;

use nixmesh_node::config::ServeConfig;
use nixmesh_node::mesh::framed::{FrameLimits, MeshStream};
use nixmesh_protocol::wire::{FetchRequest, FetchResponse};
use nixmesh_tests::{Host, HostStore, require_root, require_tool};

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

/// Whether the tests on a LAN of network namespaces with Nix can run here (see
/// `nixmesh_tests::require_tool` for what happens when not).
pub fn namespaces_and_nix_ready() -> bool {
    let tools = ["ip", "curl", "nix-daemon", "nix-store", "nix-instantiate", "nix-build", "nix"];
    require_root() && tools.iter().all(|t| require_tool(t))
}

/// Runs `f` on a thread of its own inside `host`'s network namespace (threads it starts,
/// a tokio runtime's workers included, are in it too).
pub fn in_namespace<T: Send + 'static>(
    host: &Host,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let namespace = format!("/run/netns/{}", host.netns());
    std::thread::spawn(move || {
        let file = std::fs::File::open(&namespace).expect("the host's network namespace");
        // SAFETY: setns changes only this thread's network namespace.
        let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(entered, 0, "setns {namespace}: {}", std::io::Error::last_os_error());
        f()
    })
}

/// Sends `request` as the only one on `stream` (a new fetch stream); returns the answer and
/// the bytes that follow it up to the stream's end.
pub async fn ask_once(
    stream: libp2p::Stream,
    limits: FrameLimits,
    request: &FetchRequest,
) -> (FetchResponse, Vec<u8>) {
    let mut stream = MeshStream::mesh(stream, limits);
    stream.write(request).await.unwrap();
    // One request only: closing our side ends the session after the answer.
    stream.close().await.unwrap();
    let response = stream.read().await.unwrap();
    let mut rest = Vec::new();
    loop {
        let bytes = stream.read_bytes(64 * 1024).await.unwrap();
        if bytes.is_empty() {
            break (response, rest);
        }
        rest.extend(bytes);
    }
}

/// Raises this process's soft open-file limit to its hard one, which must be at least `needed`:
/// for tests that hold thousands of connections.
pub fn raise_open_file_limit(needed: u64) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct handed to them.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
    assert!(limit.rlim_cur >= needed, "the test needs {needed} open files, has {}", limit.rlim_cur);
}
