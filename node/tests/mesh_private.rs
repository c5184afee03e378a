//! A private mesh in one process on loopback (static peers, no mDNS): nodes with the mesh key
//! share their paths; a node without it, or with another key, never connects, learns nothing
//! and gets nothing, and the keyed node logs that it refused it. The allow-list keeps an
//! unlisted peer out even when it holds the key. A keyed node speaking only noise joins keyed
//! nodes that offer TLS first.
//!
//! The nodes' logs are captured in this process (one subscriber for the test binary), so a
//! test looks for the lines of its own nodes by their addresses and peer ids.

mod support;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::multiaddr::Protocol;
use nixmesh_node::mesh::Access;
use nixmesh_node::mesh::key::MeshKey;
use nixmesh_node::mesh::security::SecurityProtocol;
use nixmesh_node::node::RunningNode;
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::{CacheKey, Host, HostStore, narinfo_url_path, wait_until};
use support::{AdvertNode, hashes, loopback_config, nix_available, status, until_explained};
use tokio::time::Instant;

const DEADLINE: Duration = Duration::from_secs(30);

/// Everything the nodes of this test binary logged.
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        struct Capture;
        impl Write for Capture {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                logs().lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let _ = tracing_subscriber::fmt()
            .with_env_filter("nixmesh_node=info")
            .with_writer(|| Capture)
            .with_ansi(false)
            .try_init();
        Mutex::new(Vec::new())
    })
}

/// The captured log lines that contain every one of `parts`.
fn log_lines_with(parts: &[&str]) -> Vec<String> {
    let logs = String::from_utf8_lossy(&logs().lock().unwrap()).into_owned();
    logs.lines().filter(|l| parts.iter().all(|p| l.contains(p))).map(str::to_owned).collect()
}

/// Starts capturing logs (before any node starts, so that none of its lines is lost).
fn capture_logs() {
    let _ = logs();
}

fn keyed(key: &MeshKey) -> Access {
    Access { key: Some(key.clone()), ..Access::default() }
}

/// What the nodes logged of the connections they refused, for a failure's message.
fn refusals() -> String {
    format!("; the refusals logged:\n{}", log_lines_with(&["refused"]).join("\n"))
}

/// Checks `condition` every 20 ms for `watch`: it must hold each time.
async fn stays(what: &str, watch: Duration, mut condition: impl FnMut() -> bool) {
    let end = Instant::now() + watch;
    while Instant::now() < end {
        assert!(condition(), "not so: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether some line says `node` refused a connection from loopback for `reason`. The lines
/// name the address refused and the node's own: `refused a connection from /ip4/127.0.0.1/tcp/
/// PORT on /ip4/127.0.0.1/tcp/OURS: …`.
fn refused_on(node: &Multiaddr, reason: &str) -> bool {
    let local = format!(" on {}:", without_peer(node));
    !log_lines_with(&["refused a connection from /ip4/127.0.0.1/tcp/", &local, reason]).is_empty()
}

/// `address` without its `/p2p/<id>`.
fn without_peer(address: &Multiaddr) -> Multiaddr {
    address.iter().filter(|p| !matches!(p, Protocol::P2p(_))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_without_the_mesh_key_never_connect_and_are_logged_as_refused() {
    capture_logs();
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let key = MeshKey::generate();
    let holder = AdvertNode::start(dirs[0].path(), keyed(&key)).await;
    let member = AdvertNode::start(dirs[1].path(), keyed(&key)).await;
    let keyless = AdvertNode::start(dirs[2].path(), Access::default()).await;
    let other_key = AdvertNode::start(dirs[3].path(), keyed(&MeshKey::generate())).await;
    assert!(holder.mesh.is_private() && !keyless.mesh.is_private());
    holder.log.update(hashes(0..100));
    for node in [&member, &keyless, &other_key] {
        node.dial(&holder).await;
    }
    // The holder dials the keyless node too: refused the other way round.
    holder.dial(&keyless).await;

    let holder_id = holder.id();
    until_explained(
        "the member indexes the holder's paths",
        DEADLINE,
        || member.index.path_count(&holder_id) == 100,
        refusals,
    )
    .await;
    let holder_address = holder.address().await;
    until_explained(
        "the holder logs the keyless node refused",
        DEADLINE,
        || refused_on(&holder_address, "pnet handshake: the peer has no mesh key"),
        refusals,
    )
    .await;
    until_explained(
        "the holder logs the other key refused",
        DEADLINE,
        || refused_on(&holder_address, "pnet handshake: the peer has another mesh key"),
        refusals,
    )
    .await;
    let to_keyless = format!("refused a connection to {}", without_peer(&keyless.address().await));
    until_explained(
        "the holder logs its own dial of the keyless node refused",
        DEADLINE,
        || !log_lines_with(&[&to_keyless, "pnet handshake"]).is_empty(),
        refusals,
    )
    .await;

    // Those refused never connected, so they know nothing of the holder's paths.
    for node in [&keyless, &other_key] {
        assert!(!node.mesh.peers().is_connected(&holder_id));
        assert_eq!(node.mesh.peers().connected_count(), 0);
        assert_eq!(node.index.path_count(&holder_id), 0);
        assert!(node.index.holders(&hashes(0..1)[0]).unwrap().is_empty());
    }
    assert!(!holder.mesh.peers().is_connected(&keyless.id()));
    assert!(!holder.mesh.peers().is_connected(&other_key.id()));
    assert!(holder.mesh.peers().is_connected(&member.id()));

    for node in [holder, member, keyless, other_key] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_keeps_an_unlisted_peer_out_even_with_the_key() {
    capture_logs();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let key = MeshKey::generate();
    // The ids first: the holder's allow-list names the member.
    let member_id = nixmesh_node::local::identity::load_or_create(dirs[1].path())
        .unwrap()
        .public()
        .to_peer_id();
    let unlisted_id = nixmesh_node::local::identity::load_or_create(dirs[2].path())
        .unwrap()
        .public()
        .to_peer_id();
    let access = Access {
        key: Some(key.clone()),
        allow_peers: HashSet::from([member_id]),
        ..Access::default()
    };
    let holder = AdvertNode::start(dirs[0].path(), access).await;
    let member = AdvertNode::start(dirs[1].path(), keyed(&key)).await;
    let unlisted = AdvertNode::start(dirs[2].path(), keyed(&key)).await;
    assert_eq!(unlisted.id(), unlisted_id);
    holder.log.update(hashes(0..50));
    member.dial(&holder).await;
    unlisted.dial(&holder).await;
    // Asked to dial the unlisted peer, the holder does not.
    holder.dial(&unlisted).await;

    let holder_id = holder.id();
    until_explained(
        "the member indexes the holder's paths",
        DEADLINE,
        || member.index.path_count(&holder_id) == 50,
        refusals,
    )
    .await;
    let holder_address = holder.address().await;
    let not_allowed = format!("peer {unlisted_id} is not in the allow list");
    until_explained(
        "the holder logs the unlisted peer refused",
        DEADLINE,
        || refused_on(&holder_address, &not_allowed),
        refusals,
    )
    .await;
    // Watched a while on top, for any advert that could slip through.
    stays("the unlisted peer knows none of the holder's paths", Duration::from_secs(1), || {
        unlisted.index.path_count(&holder_id) == 0
    })
    .await;
    assert!(!holder.mesh.peers().is_connected(&unlisted_id));
    assert!(holder.mesh.peers().is_connected(&member_id));

    for node in [holder, member, unlisted] {
        node.stop().await;
    }
}

/// A node from before TLS (`mesh_security = ["noise"]`) with the key joins a private mesh of
/// nodes offering TLS first: pnet and the key check run below either security protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noise_only_private_node_joins_a_tls_private_mesh() {
    capture_logs();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let key = MeshKey::generate();
    let holder = AdvertNode::start(dirs[0].path(), keyed(&key)).await;
    let member = AdvertNode::start(dirs[1].path(), keyed(&key)).await;
    let noise_only = Access { security: vec![SecurityProtocol::Noise], ..keyed(&key) };
    let old = AdvertNode::start(dirs[2].path(), noise_only).await;
    holder.log.update(hashes(0..20));
    member.dial(&holder).await;
    old.dial(&holder).await;

    let holder_id = holder.id();
    for (name, node) in [("the TLS member", &member), ("the noise-only node", &old)] {
        until_explained(
            &format!("{name} indexes the holder's paths"),
            DEADLINE,
            || node.index.path_count(&holder_id) == 20,
            refusals,
        )
        .await;
    }
    let security_of = |peer| {
        let snapshot = holder.mesh.peers().snapshot();
        snapshot.into_iter().find(|(p, _)| *p == peer).and_then(|(_, s)| s.security)
    };
    assert_eq!(security_of(old.id()).as_deref(), Some("noise/ChaChaPoly"));
    assert!(security_of(member.id()).is_some_and(|s| s.starts_with("tls/")));

    for node in [holder, member, old] {
        node.stop().await;
    }
}

/// The acceptance test of the issue, with whole nodes on real stores: a node without the mesh
/// key cannot list or fetch anything from a keyed mesh, and keyed nodes log that they refused
/// it.
#[test]
fn a_node_without_the_mesh_key_gets_nothing_from_a_keyed_mesh() {
    if !nix_available() {
        return;
    }
    capture_logs();
    let dir = tempfile::tempdir().unwrap();
    let cache_key = CacheKey::generate(dir.path(), "private-1");
    let mesh_key_file = dir.path().join("mesh.key");
    MeshKey::generate().write_new(&mesh_key_file).unwrap();
    let other_key_file = dir.path().join("other.key");
    MeshKey::generate().write_new(&other_key_file).unwrap();
    let names = ["holder", "member", "keyless", "other-key"];
    let stores: HashMap<&str, HostStore> =
        names.iter().map(|n| (*n, HostStore::start(&Host::local_in(dir.path(), n)))).collect();
    let path = stores["holder"].add_file("private-file", b"not for the whole LAN\n");
    stores["holder"].sign_closure(&cache_key.secret_file, &path);
    let narinfo = narinfo_url_path(&path);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let start = |name: &str, key_file: Option<&Path>, peers: Vec<Multiaddr>| {
        let mut config =
            loopback_config(&dir.path().join(name), &stores[name], &cache_key.public, peers);
        config.mesh_key_file = key_file.map(Path::to_owned);
        runtime.block_on(RunningNode::start(config)).unwrap()
    };
    let holder = start("holder", Some(&mesh_key_file), vec![]);
    let holder_addresses = runtime.block_on(holder.p2p_addresses());
    let member = start("member", Some(&mesh_key_file), holder_addresses.clone());
    let keyless = start("keyless", None, holder_addresses.clone());
    let other_key = start("other-key", Some(&other_key_file), holder_addresses);

    // The keyed member gets the path through the mesh.
    wait_until(DEADLINE, "the member to serve the holder's path", || {
        get(member.http_address(), &narinfo).0 == 200
    });
    assert_eq!(status(holder.http_address())["private_mesh"], true);
    assert_eq!(status(keyless.http_address())["private_mesh"], false);

    // The holder says plainly that it refused both.
    let holder_listens = runtime.block_on(holder.p2p_addresses())[0].clone();
    for reason in ["the peer has no mesh key", "the peer has another mesh key"] {
        wait_until(DEADLINE, &format!("the holder to log {reason:?}"), || {
            refused_on(&holder_listens, reason)
        });
    }
    // Neither connected, indexed anything, or serves the path.
    for node in [&keyless, &other_key] {
        let s = status(node.http_address());
        assert_eq!(s["peers_connected"], 0, "{s}");
        assert_eq!(s["indexed_paths"], 0, "{s}");
        assert_eq!(get(node.http_address(), &narinfo).0, 404);
        let (code, peers) = get(node.http_address(), "/_nixmesh/peers");
        assert_eq!(code, 200);
        let peers: serde_json::Value = serde_json::from_slice(&peers).unwrap();
        let connected = peers.as_array().unwrap().iter().filter(|p| p["connected"] == true).count();
        assert_eq!(connected, 0, "{peers}");
    }
    assert_eq!(status(holder.http_address())["peers_connected"], 1);

    for node in [other_key, keyless, member, holder] {
        runtime.block_on(node.stop()).unwrap();
    }
}
