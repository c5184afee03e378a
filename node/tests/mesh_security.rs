//! The mesh's security protocols on loopback: TLS 1.3 offered before noise, noise kept. A node
//! speaking only noise (`mesh_security = ["noise"]`, the node before TLS) and a new one reach
//! each other whichever dials, and a fetch succeeds; two new nodes run TLS with AES-GCM on a
//! CPU with AES; a stock libp2p-tls peer interoperates; a certificate for another peer id than
//! the one dialled is refused.

mod support;

use std::time::Duration;

use SecurityProtocol::{Noise, Tls};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::{DialError, NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity, ping, tcp, yamux};
use nixmesh_node::mesh::security::{Security, SecurityProtocol};
use nixmesh_node::mesh::streams;
use nixmesh_node::mesh::tls::cpu_has_aes;
use nixmesh_node::mesh::{Access, Mesh};
use nixmesh_node::node::RunningNode;
use nixmesh_node::node::shutdown::Shutdown;
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::{CacheKey, Host, HostStore};
use support::{dial_address, loopback_config, mesh_without_events, narinfo_and_nar, nix_available};

const DEADLINE: Duration = Duration::from_secs(30);
const NOISE: &str = "noise/ChaChaPoly";

/// What two new nodes negotiate on this CPU.
fn tls_here() -> &'static str {
    if cpu_has_aes() {
        "tls/TLS13_AES_128_GCM_SHA256"
    } else {
        "tls/TLS13_CHACHA20_POLY1305_SHA256"
    }
}

/// A holder offering `holder` and a client offering `client` that dials it, whole nodes on
/// real stores: the client fetches a signed path's narinfo and NAR through the mesh. Returns
/// the security each shows for the other in `/_nixmesh/peers` (holder's view, client's view).
fn fetch_between(holder: &[SecurityProtocol], client: &[SecurityProtocol]) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let cache_key = CacheKey::generate(dir.path(), "security-1");
    let stores: Vec<HostStore> = ["holder", "client"]
        .iter()
        .map(|n| HostStore::start(&Host::local_in(dir.path(), n)))
        .collect();
    let path = stores[0].add_file("secured-file", &vec![7u8; 256 * 1024]);
    stores[0].sign_closure(&cache_key.secret_file, &path);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let start = |i: usize, security: &[SecurityProtocol], peers: Vec<Multiaddr>| {
        let state = dir.path().join(["holder-state", "client-state"][i]);
        let mut config = loopback_config(&state, &stores[i], &cache_key.public, peers);
        config.mesh_security = security.to_vec();
        runtime.block_on(RunningNode::start(config)).unwrap()
    };
    let holder_node = start(0, holder, vec![]);
    let client_node = start(1, client, runtime.block_on(holder_node.p2p_addresses()));
    nixmesh_tests::wait_until(DEADLINE, "the client to index the holder's paths", || {
        support::status(client_node.http_address())["indexed_paths"].as_u64() > Some(0)
    });
    narinfo_and_nar("client", client_node.http_address(), &path, DEADLINE);
    let seen = (
        connected_security(&holder_node).unwrap_or_default(),
        connected_security(&client_node).unwrap_or_default(),
    );
    for node in [client_node, holder_node] {
        runtime.block_on(node.stop()).unwrap();
    }
    seen
}

/// The security of the one connected peer in `node`'s `/_nixmesh/peers`.
fn connected_security(node: &RunningNode) -> Option<String> {
    let (code, body) = get(node.http_address(), "/_nixmesh/peers");
    assert_eq!(code, 200);
    let peers: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let peer = peers.as_array()?.iter().find(|p| p["connected"] == true)?;
    peer["security"].as_str().map(str::to_owned)
}

#[test]
fn an_old_dialer_reaches_a_new_listener_and_fetches() {
    if !nix_available() {
        return;
    }
    let (holder_saw, client_saw) = fetch_between(&[Tls, Noise], &[Noise]);
    assert_eq!((holder_saw.as_str(), client_saw.as_str()), (NOISE, NOISE));
}

#[test]
fn a_new_dialer_reaches_an_old_listener_and_fetches() {
    if !nix_available() {
        return;
    }
    let (holder_saw, client_saw) = fetch_between(&[Noise], &[Tls, Noise]);
    assert_eq!((holder_saw.as_str(), client_saw.as_str()), (NOISE, NOISE));
}

#[test]
fn two_new_nodes_use_tls_with_aes_gcm_and_fetch() {
    if !nix_available() {
        return;
    }
    let (holder_saw, client_saw) = fetch_between(&[Tls, Noise], &[Tls, Noise]);
    assert_eq!((holder_saw.as_str(), client_saw.as_str()), (tls_here(), tls_here()));
}

/// A peer built as libp2p's own examples build one: TCP, stock libp2p-tls, yamux, and ping
/// (the mesh drops a peer that does not answer pings) beside the mesh's stream behaviour.
#[derive(NetworkBehaviour)]
struct StockPeer {
    ping: ping::Behaviour,
    stream: streams::Behaviour,
}

fn stock_tls_swarm() -> libp2p::Swarm<StockPeer> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default(), libp2p::tls::Config::new, yamux::Config::default)
        .expect("tcp")
        .with_behaviour(|_| StockPeer {
            ping: ping::Behaviour::new(ping::Config::new().with_interval(Duration::from_secs(1))),
            stream: streams::Behaviour::default(),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

fn listening_mesh(shutdown: &Shutdown) -> Mesh {
    let listen: Multiaddr = "/ip4/127.0.0.1/tcp/0".parse().unwrap();
    mesh_without_events(
        identity::Keypair::generate_ed25519(),
        &[listen],
        Access::default(),
        shutdown,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_libp2p_tls_peer_interoperates() {
    const PROTOCOL: StreamProtocol = StreamProtocol::new("/nixmesh-test/security/1");
    let shutdown = Shutdown::new();
    let mesh = listening_mesh(&shutdown);
    let mut stock = stock_tls_swarm();
    let stock_id = *stock.local_peer_id();
    let mut incoming = stock.behaviour().stream.new_control().accept(PROTOCOL).unwrap();
    stock.dial(dial_address(&mesh).await).unwrap();
    let driver = tokio::spawn(async move {
        loop {
            stock.select_next_some().await;
        }
    });
    support::until("the mesh sees the stock peer", DEADLINE, || {
        mesh.peers().is_connected(&stock_id)
    })
    .await;
    // The node opens a stream to it, as it does to fetch, and the bytes arrive.
    let mut stream = mesh.control().open_stream(stock_id, PROTOCOL).await.unwrap();
    stream.write_all(b"over stock TLS").await.unwrap();
    stream.close().await.unwrap();
    let (_, mut theirs) = tokio::time::timeout(DEADLINE, incoming.next()).await.unwrap().unwrap();
    let mut got = Vec::new();
    theirs.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"over stock TLS");
    // Stock libp2p-tls asks for ChaCha20 first, and the node's server follows the client.
    let security = mesh.peers().snapshot().into_iter().find(|(p, _)| *p == stock_id).unwrap();
    assert_eq!(security.1.security.as_deref(), Some("tls/TLS13_CHACHA20_POLY1305_SHA256"));
    driver.abort();
    assert!(shutdown.stop(Duration::from_secs(10)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_another_peer_id_is_refused() {
    let shutdown = Shutdown::new();
    let mesh = listening_mesh(&shutdown);
    let address = dial_address(&mesh).await;
    let other = PeerId::random();
    let dialled: Multiaddr = address
        .iter()
        .map(|p| match p {
            libp2p::multiaddr::Protocol::P2p(_) => libp2p::multiaddr::Protocol::P2p(other),
            p => p,
        })
        .collect();
    // A dialer on the mesh's own transport offering TLS alone: the node answers with its own
    // certificate, which names another peer than the one dialled.
    let mut dialer = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| {
            let security = Security::new(key, &[Tls]).expect("security");
            nixmesh_node::mesh::open_transport(security, tcp::Config::default())
        })
        .expect("transport")
        .with_behaviour(|_| streams::Behaviour::default())
        .expect("behaviour")
        .build();
    dialer.dial(dialled).unwrap();
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            match dialer.select_next_some().await {
                SwarmEvent::OutgoingConnectionError { error, .. } => break error,
                SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                    panic!("connected to {peer_id}, not the peer dialled")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the dial fails in time");
    match refused {
        DialError::WrongPeerId { obtained, .. } => assert_eq!(obtained, mesh.local_peer_id()),
        other => panic!("refused for another reason: {other}"),
    }
    assert!(!dialer.is_connected(&mesh.local_peer_id()));
    assert!(shutdown.stop(Duration::from_secs(10)).await);
}
