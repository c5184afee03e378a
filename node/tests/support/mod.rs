//! What the node's tests share, each defined here once: a node's settings on loopback, the
//! tools they need, a thread in a host's network namespace, a bare mesh client and one fetch
//! request on a stream of its own, a mesh that advertises into an index, a LAN whose host 1
//! holds signed paths, the node's status and
//! its binary's output, waiting in a tokio test, and store path hashes made up for the index. Each test binary uses a part of it. What the end-to-end harness already has (hosts,
//! stores, HTTP clients, waiting) is in `nixmesh_tests`, and is used from there.
#![allow(dead_code)]

pub mod holder_lan;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, identity};
use nixmesh_node::adverts::{self, AdvertLog};
use nixmesh_node::config::ServeConfig;
use nixmesh_node::index::Index;
use nixmesh_node::mesh::framed::{FrameLimits, MeshStream};
use nixmesh_node::mesh::{Access, DialTarget, Mesh};
use nixmesh_node::node::shutdown::Shutdown;
use nixmesh_protocol::StorePathHash;
use nixmesh_protocol::mesh_messages::{FETCH_PROTOCOL, FetchRequest, FetchResponse};
use nixmesh_tests::http::get_all;
use nixmesh_tests::{
    CacheKey, Closure, CommandExt, Host, HostStore, narinfo_url_path, parse_narinfo, require_lan,
    unique_marker,
};

/// Whether Nix's tools run here (`nixmesh_tests::require_nix`: see there for what happens when
/// not).
pub fn nix_available() -> bool {
    nixmesh_tests::require_nix()
}

/// A node on loopback over `store` (its NARs read from the store's files, its changes
/// watched), state in `state`, trusting `trusted`, with `peers` as static peers, no mDNS and
/// no upstream cache.
pub fn loopback_config(
    state: &Path,
    store: &HostStore,
    trusted: &str,
    peers: Vec<Multiaddr>,
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
    require_lan(&["nix-store", "nix-instantiate", "nix-build", "nix"])
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

/// The node's `/_nixmesh/status` JSON from its HTTP listener at `address`; `Null` when no
/// complete JSON answer came (a caller waiting for a value asks again; one comparing it finds
/// nothing equal).
pub fn status(address: SocketAddr) -> serde_json::Value {
    let fetched = get_all(address, &["/_nixmesh/status".to_owned()], 1);
    serde_json::from_slice(&fetched[0].body).unwrap_or_default()
}

/// One `GET` of `path` from `address` on a connection of its own: its status, how long it
/// took, and its body (status 0 when no complete answer came).
pub fn timed_get(address: SocketAddr, path: &str) -> (u16, Duration, Vec<u8>) {
    let started = Instant::now();
    let fetched = get_all(address, &[path.to_owned()], 1).remove(0);
    (fetched.status, started.elapsed(), fetched.body)
}

/// The narinfo of `path` (not asked for before, so it goes to a holder) and its NAR, from
/// `node` at `address`; panics unless both came whole within `within`.
pub fn narinfo_and_nar(node: &str, address: SocketAddr, path: &str, within: Duration) {
    let (status, took, body) = timed_get(address, &narinfo_url_path(path));
    assert_eq!(status, 200, "{node}: narinfo of {path}");
    assert!(took < within, "{node}: the narinfo of {path} took {took:?}");
    let narinfo = parse_narinfo(&body);
    let (status, took, body) = timed_get(address, &format!("/{}", narinfo.url));
    assert_eq!(status, 200, "{node}: NAR of {path}");
    assert_eq!(body.len() as u64, narinfo.nar_size, "{node}: NAR of {path}");
    assert!(took < within, "{node}: the NAR of {path} took {took:?}");
}

/// Fills a holder's `store` with `paths` paths (one closure) and a file `name` of `bytes`
/// patterned bytes, each signed with `key`; the closure, and the file's store path.
pub fn fill_holder(
    store: &HostStore,
    key: &CacheKey,
    paths: usize,
    name: &str,
    bytes: u32,
) -> (Closure, String) {
    let probes = store.add_many_paths(paths, &unique_marker());
    store.sign_closure(&key.secret_file, &probes.top);
    let big: Vec<u8> = (0..bytes).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let big_path = store.add_file(name, &big);
    store.sign_closure(&key.secret_file, &big_path);
    (probes, big_path)
}

/// Waits, in a tokio test, until `condition` holds; fails naming `what` after `limit`.
pub async fn until(what: &str, limit: Duration, condition: impl FnMut() -> bool) {
    until_explained(what, limit, condition, String::new).await;
}

/// [`until`], its failure message followed by what `explain` says then (say, the log lines
/// that tell why).
pub async fn until_explained(
    what: &str,
    limit: Duration,
    mut condition: impl FnMut() -> bool,
    explain: impl FnOnce() -> String,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out waiting until {what}{}", explain());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A mesh whose peer events nobody needs: they are drained (a channel nobody reads would fill
/// up and hold the mesh), until `shutdown` is signalled. Call within a tokio runtime.
pub fn mesh_without_events(
    keypair: identity::Keypair,
    listen: &[Multiaddr],
    access: Access,
    shutdown: &Shutdown,
) -> Mesh {
    let (events_tx, mut events) = tokio::sync::mpsc::channel(64);
    shutdown.spawn_until_stopped(async move { while events.recv().await.is_some() {} });
    Mesh::start_with(keypair, listen, access, events_tx, shutdown.clone()).expect("the mesh starts")
}

/// A bare libp2p client of a node: the node's own `Mesh` under a new identity, listening
/// nowhere, its events drained ([`mesh_without_events`]). Call within a tokio runtime.
pub fn client_mesh(shutdown: &Shutdown) -> Mesh {
    let keypair = identity::Keypair::generate_ed25519();
    mesh_without_events(keypair, &[], Access::default(), shutdown)
}

/// A new fetch stream from `mesh` to `peer` (connected already).
pub async fn open_fetch(mesh: &Mesh, peer: PeerId) -> libp2p::Stream {
    let protocol = Mesh::protocol(FETCH_PROTOCOL);
    mesh.control().open_stream(peer, protocol).await.expect("a fetch stream")
}

/// `mesh`'s first listen address, once it has one, with its `/p2p/<id>`: what another mesh
/// dials.
pub async fn dial_address(mesh: &Mesh) -> Multiaddr {
    let mut addresses = mesh.listen_addresses();
    let address = addresses.wait_for(|a| !a.is_empty()).await.unwrap()[0].clone();
    address.with(Protocol::P2p(mesh.local_peer_id()))
}

/// A mesh on loopback with what advertising needs and no more, wired by the node's own
/// `adverts::start`: an advert log, and subscriptions into an index in its state dir.
pub struct AdvertNode {
    pub mesh: Mesh,
    pub log: Arc<AdvertLog>,
    pub index: Arc<Index>,
    shutdown: Shutdown,
}

impl AdvertNode {
    /// Starts on `state` (its identity and index, kept from an earlier start), open to the
    /// peers `access` lets in.
    pub async fn start(state: &Path, access: Access) -> AdvertNode {
        let shutdown = Shutdown::new();
        let (events_tx, events) = tokio::sync::mpsc::channel(64);
        let keypair = nixmesh_node::local::identity::load_or_create(state).unwrap();
        let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
        let mesh = Mesh::start_with(keypair, &[listen], access, events_tx, shutdown.clone())
            .expect("the mesh starts");
        let index = Arc::new(Index::open(&state.join("index.redb")).unwrap());
        let log = adverts::start(&mesh, index.clone(), events, &shutdown);
        AdvertNode { mesh, log, index, shutdown }
    }

    pub fn id(&self) -> PeerId {
        self.mesh.local_peer_id()
    }

    pub async fn address(&self) -> Multiaddr {
        dial_address(&self.mesh).await
    }

    /// Keeps dialling `other`.
    pub async fn dial(&self, other: &AdvertNode) {
        self.mesh.want(DialTarget::from_multiaddr(other.address().await)).await;
    }

    pub fn holders(&self, hash: &StorePathHash) -> Vec<PeerId> {
        self.index.holders(hash).unwrap()
    }

    /// Stops the node and checks that its index is closed, so the state dir can be reused.
    pub async fn stop(self) {
        assert!(self.shutdown.stop(Duration::from_secs(10)).await, "every task ended");
        let AdvertNode { index, .. } = self;
        assert_eq!(Arc::strong_count(&index), 1, "nothing else holds the index");
    }
}

/// Store path hashes made up for the index, one a number of `range`, in order.
pub fn hashes(range: std::ops::Range<u32>) -> Vec<StorePathHash> {
    range
        .map(|n| {
            let mut bytes = [0u8; 20];
            bytes[..4].copy_from_slice(&n.to_be_bytes());
            StorePathHash(bytes)
        })
        .collect()
}

/// How long one run of the `nixmesh` binary may take.
const CLI_LIMIT: Duration = Duration::from_secs(30);

/// `nixmesh ARGS`, the binary this package builds, run to its end (within 30 s).
pub fn nixmesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nixmesh")).args(args).output_within(CLI_LIMIT)
}

/// `nixmesh ARGS`'s standard output; fails unless it succeeded.
pub fn stdout_of(args: &[&str]) -> String {
    let out = nixmesh(args);
    assert!(out.status.success(), "nixmesh {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}
