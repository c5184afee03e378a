//! Peer exchange across a router (issue 20, item 5): two segments of hosts, each its own
//! switch and subnet, joined by a router that multicast does not cross ([`Lan::two_segments`]).
//! mDNS runs on each side; one `--peer` from one side to the other, and nodes telling each
//! other of their peers, connect every node to every other. In a private mesh, a node without
//! the key is told of no one and connected to no one.

use std::path::Path;
use std::time::{Duration, Instant};

use nixmesh_tests::multicast;

use nixmesh_tests::{
    HostStore, Lan, Node, NodeOptions, mesh_key, require_lan, require_root, require_tool,
    wait_until,
};

/// How long every node may take to be connected to every other (the acceptance point), from
/// the moment the last node is up.
const MESH_LIMIT: Duration = Duration::from_secs(10);
/// How long the keyless node is watched for a peer it should not have.
const KEYLESS_WATCH: Duration = Duration::from_secs(5);

fn peer_address(node: &Node) -> String {
    format!("/ip4/{}/tcp/7374/p2p/{}", node.host().address(), node.peer_id())
}

/// The peer ids `node` lists as connected now.
fn connected_ids(node: &Node) -> Vec<String> {
    let peers = node.peers();
    let all = peers.as_array().cloned().unwrap_or_default();
    all.iter()
        .filter(|p| p["connected"] == true)
        .filter_map(|p| p["id"].as_str().map(str::to_owned))
        .collect()
}

/// Starts a node on each of `stores` in order, with `options(i, started)` for the `i`-th
/// (`started`: the nodes before it, to name one as a `--peer`).
fn start_nodes_in_turn(
    stores: &[HostStore],
    options: impl Fn(usize, &[Node]) -> NodeOptions,
) -> Vec<Node> {
    let mut nodes = Vec::new();
    for (i, store) in stores.iter().enumerate() {
        let node = Node::start(store.host(), store, &options(i, &nodes));
        nodes.push(node);
    }
    nodes
}

/// Waits until each of `nodes` is connected to every other.
fn wait_for_full_mesh(nodes: &[&Node]) {
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id()).collect();
    wait_until(MESH_LIMIT, "every node to be connected to every other", || {
        nodes.iter().zip(&ids).all(|(node, own)| {
            let connected = connected_ids(node);
            ids.iter().filter(|id| *id != own).all(|id| connected.contains(id))
        })
    });
}

#[test]
fn multicast_stays_on_its_segment() {
    if !require_root() || !require_tool("ip") {
        return;
    }
    let lan = Lan::two_segments(2, 1);
    let [a1, a2, b1] = lan.hosts() else { unreachable!() };
    let probe = Path::new(env!("CARGO_BIN_EXE_nixmesh-mcast-probe"));
    let (same_side, other_side) =
        (multicast::Receiver::start(probe, a2, 3000), multicast::Receiver::start(probe, b1, 3000));
    multicast::send(probe, a1, "across");
    let got = same_side.next(Duration::from_secs(5));
    assert_eq!(got, Ok(format!("{} across", a1.address())), "the same segment got nothing");
    // The receiver on the other side gives up after 3 s; it must not have got the datagram.
    let crossed = other_side.next(Duration::from_secs(5));
    assert!(crossed.is_err(), "multicast crossed the router: {crossed:?}");
    // That unicast crosses, both ways, the tests below show: the nodes connect across.
}

#[test]
fn one_peer_across_the_router_connects_every_node_to_every_other() {
    if !require_lan(&[]) {
        return;
    }
    let lan = Lan::two_segments(2, 2);
    let stores: Vec<HostStore> = lan.hosts().iter().map(HostStore::start).collect();
    // Host 3 (second segment) is given host 1 (first segment); mDNS does the rest on each
    // side, and peer exchange across.
    let nodes = start_nodes_in_turn(&stores, |i, started| NodeOptions {
        peers: if i == 2 { vec![peer_address(&started[0])] } else { Vec::new() },
        ..NodeOptions::default()
    });
    let started = Instant::now();
    wait_for_full_mesh(&nodes.iter().collect::<Vec<_>>());
    eprintln!("full mesh of 4 across the router within {:?}", started.elapsed());
}

#[test]
fn in_a_private_mesh_across_the_router_a_keyless_node_learns_of_no_one() {
    if !require_lan(&[]) {
        return;
    }
    // Hosts 1 and 2 on the first segment, 3 to 5 on the second; host 5 has no key, and is
    // given host 1 as a peer (the address, as someone who knows it would).
    let lan = Lan::two_segments(2, 3);
    let stores: Vec<HostStore> = lan.hosts().iter().map(HostStore::start).collect();
    let key_file = lan.dir().join("mesh.key");
    mesh_key(&key_file);
    let nodes = start_nodes_in_turn(&stores, |i, started| NodeOptions {
        mesh_key_file: (i < 4).then(|| key_file.clone()),
        peers: match i {
            2 | 4 => vec![peer_address(&started[0])],
            _ => Vec::new(),
        },
        ..NodeOptions::default()
    });
    let (keyed, keyless) = nodes.split_at(4);
    let keyless = &keyless[0];
    let started = Instant::now();
    wait_for_full_mesh(&keyed.iter().collect::<Vec<_>>());
    eprintln!("private full mesh of 4 across the router within {:?}", started.elapsed());

    let keyless_id = keyless.peer_id();
    let deadline = Instant::now() + KEYLESS_WATCH;
    while Instant::now() < deadline {
        let peers = keyless.peers();
        let all = peers.as_array().cloned().unwrap_or_default();
        assert!(all.iter().all(|p| p["connected"] != true), "the keyless node has a peer: {peers}");
        for node in keyed {
            let peers = node.peers();
            let listed = peers.as_array().cloned().unwrap_or_default();
            let knows = listed.iter().any(|p| p["id"] == keyless_id.as_str());
            assert!(!knows, "{} knows of the keyless node: {peers}", node.host().name());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = keyless.status();
    assert_eq!(status["peers_known"], 0, "{status}");
}
