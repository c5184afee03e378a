//! The acceptance tests: hosts on a LAN of network namespaces, each with its own Nix store
//! and its own `nixmesh serve` finding the others by mDNS, and the real `nix copy` as the
//! client. Each test makes its own LAN, so they can run in parallel.
//!
//! The first two tests check the harness itself (multicast on the LAN; Nix copying a signed
//! closure between hosts through a `file://` cache), so that a failure of the others points
//! at nixmesh.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use nixmesh_tests::multicast;

use nixmesh_tests::{
    CacheKey, Closure, CommandExt, Host, HostStore, Lan, NODE_URL, Node, NodeOptions,
    TEST_CLOSURE_LEN, keygen, narinfo_url_path, nixmesh_bin, poll_every, require_root,
    require_tool, test_closure_expr, unique_marker, wait_until,
};

/// How long nodes may take to find each other and learn what the others hold.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How soon a path that appears in a host's store must be known to the other nodes.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(10);
/// How soon a client must see a NAR download fail once its holder is gone (it may first
/// read what was already on its way).
const ABORT_LIMIT: Duration = Duration::from_secs(30);
/// How soon after its only holder is killed a path must be a miss elsewhere.
const DEPARTURE_LIMIT: Duration = Duration::from_secs(1);
/// How soon after its only holder freezes (no answer, connection open) a path must be a miss
/// elsewhere: the documented 5.5 s of missed pings, and the polling.
const FROZEN_LIMIT: Duration = Duration::from_secs(7);

/// Whether this machine can run these tests; see `require_tool`.
fn e2e_ready() -> bool {
    require_root() && require_tool("ip") && require_tool("nix-daemon") && require_tool("curl")
}

fn start_stores(lan: &Lan) -> Vec<HostStore> {
    lan.hosts().iter().map(HostStore::start).collect()
}

fn start_nodes(stores: &[HostStore], options: impl Fn(&Host) -> NodeOptions) -> Vec<Node> {
    stores.iter().map(|s| Node::start(s.host(), s, &options(s.host()))).collect()
}

/// A LAN whose host 1 built `closure` and signed it with `key`, every node trusting that key,
/// and host 2's node already offering the closure. (Taken apart, bind `lan` first and
/// `nodes` last: they drop in the reverse order.)
struct SignedLan {
    nodes: Vec<Node>,
    stores: Vec<HostStore>,
    key: CacheKey,
    closure: Closure,
    lan: Lan,
}

impl SignedLan {
    fn new(hosts: usize, expr: &str) -> SignedLan {
        let lan = Lan::new(hosts);
        let stores = start_stores(&lan);
        let key = CacheKey::generate(lan.dir(), "test-1");
        let closure = stores[0].build_closure(expr);
        stores[0].sign_closure(&key.secret_file, &closure.top);
        let trusted = NodeOptions { trusted_keys: vec![key.public.clone()], ..Default::default() };
        let nodes = start_nodes(&stores, |_| trusted.clone());
        wait_for_closure(&nodes[1], &closure, "host 2's node to offer host 1's closure");
        SignedLan { nodes, stores, key, closure, lan }
    }
}

/// Waits until `node` answers 200 for the narinfo of every path of `closure`.
fn wait_for_closure(node: &Node, closure: &Closure, what: &str) {
    wait_until(DISCOVERY_LIMIT, what, || {
        node.narinfo_statuses(&closure.paths).iter().all(|&s| s == 200)
    });
}

/// Checks that `copy` (a `nix copy` run) worked and that every path of `closure` is now in
/// `to`, byte for byte as in `from`.
fn assert_copied(copy: &Output, closure: &Closure, to: &HostStore, from: &HostStore) {
    assert!(
        copy.status.success(),
        "nix copy to {} failed: {}",
        to.host().name(),
        String::from_utf8_lossy(&copy.stderr)
    );
    for path in &closure.paths {
        assert!(to.is_valid(path), "{path} is not valid on {}", to.host().name());
        let (got, want) = (to.dump(path), from.dump(path));
        assert!(got == want, "{path} differs: NAR of {} bytes, not {}", got.len(), want.len());
    }
}

/// Whether `nixmesh peers --json` output lists `id` as connected.
fn lists_connected(peers: &serde_json::Value, id: &str) -> bool {
    peers.as_array().is_some_and(|all| all.iter().any(|p| p["id"] == id && p["connected"] == true))
}

/// How many paths `nixmesh peers --json` output says `id` advertises, if it lists `id`.
fn advertised_paths(peers: &serde_json::Value, id: &str) -> Option<u64> {
    peers.as_array()?.iter().find(|p| p["id"] == id)?["paths"].as_u64()
}

/// A store path hash no store holds.
fn random_hash() -> String {
    use std::hash::{BuildHasher, RandomState};
    const NIXBASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let state = RandomState::new();
    (0..32u64).map(|i| NIXBASE32[(state.hash_one(i) % 32) as usize] as char).collect()
}

#[test]
fn lan_multicast_reaches_other_hosts() {
    if !require_root() || !require_tool("ip") {
        return;
    }
    let lan = Lan::new(3);
    let [h1, others @ ..] = lan.hosts() else { unreachable!() };
    let probe = Path::new(env!("CARGO_BIN_EXE_nixmesh-mcast-probe"));
    let message = format!("hello-{}", unique_marker());
    let receivers: Vec<_> =
        others.iter().map(|host| (host, multicast::Receiver::start(probe, host, 5000))).collect();
    multicast::send(probe, h1, &message);
    for (host, receiver) in receivers {
        assert_eq!(
            receiver.next(Duration::from_secs(10)),
            Ok(format!("{} {message}", h1.address())),
            "{} did not get host 1's multicast datagram",
            host.name()
        );
    }
}

#[test]
fn harness_copies_a_signed_closure_between_hosts_through_a_file_cache() {
    if !e2e_ready() {
        return;
    }
    let lan = Lan::new(2);
    let stores = start_stores(&lan);
    let (s1, s2) = (&stores[0], &stores[1]);
    let key = CacheKey::generate(lan.dir(), "test-1");
    let other_key = CacheKey::generate(lan.dir(), "other");
    let closure = s1.build_closure(&test_closure_expr(&unique_marker()));
    assert_eq!(closure.paths.len(), TEST_CLOSURE_LEN, "{closure:?}");
    s1.sign_closure(&key.secret_file, &closure.top);
    assert!(s1.signatures(&closure.top).iter().any(|s| s.starts_with("test-1:")));

    let cache = format!("file://{}?compression=none", lan.dir().join("cache").display());
    s1.copy_to(&cache, &[&closure.top]);

    let untrusted = s2.copy_from(&cache, &[&other_key.public], &closure.top);
    assert!(!untrusted.status.success(), "Nix took paths signed by a key it does not trust");
    assert!(closure.paths.iter().all(|p| !s2.is_valid(p)), "a path arrived unverified");

    let copy = s2.copy_from(&cache, &[&key.public], &closure.top);
    assert_copied(&copy, &closure, s2, s1);
}

#[test]
fn nix_copy_gets_a_signed_closure_from_a_peer_and_then_from_a_copy_once_its_origin_leaves() {
    if !e2e_ready() {
        return;
    }
    // Bound in this order so that they drop in the reverse: nodes, stores, then the LAN.
    let SignedLan { lan: _lan, closure, key, stores, mut nodes } =
        SignedLan::new(3, &test_closure_expr(&unique_marker()));
    let copy = stores[1].copy_from(NODE_URL, &[&key.public], &closure.top);
    assert_copied(&copy, &closure, &stores[1], &stores[0]);

    // Host 2's store had nothing; now its copy must reach host 3's index within a few
    // seconds (the node's default store rescan, then one advertisement).
    let copied = Instant::now();
    let host2 = nodes[1].peer_id();
    wait_until(PROPAGATION_LIMIT, "host 3's node to learn of host 2's copy", || {
        advertised_paths(&nodes[2].peers(), &host2) == Some(TEST_CLOSURE_LEN as u64)
    });
    eprintln!("host 3 learnt of host 2's copy {:?} after it was made", copied.elapsed());

    let origin = nodes[0].peer_id();
    nodes[0].stop();
    wait_until(DISCOVERY_LIMIT, "host 3's node to see host 1's leave", || {
        !lists_connected(&nodes[2].peers(), &origin)
    });
    wait_for_closure(&nodes[2], &closure, "host 3's node to offer host 2's copy");
    let copy = stores[2].copy_from(NODE_URL, &[&key.public], &closure.top);
    assert_copied(&copy, &closure, &stores[2], &stores[0]);
}

#[test]
fn a_node_signs_its_own_unsigned_paths_and_unsigned_paths_of_a_keyless_node_are_refused() {
    if !e2e_ready() {
        return;
    }
    let lan = Lan::new(3);
    let stores = start_stores(&lan);
    let h1 = &lan.hosts()[0];
    let node_key_file = h1.dir().join("node-1.secret");
    let node_key = keygen("node-1", &node_key_file);
    // Host 1's node signs with its key; host 3's has none. Both closures are unsigned.
    let signed_by_node = stores[0].build_closure(&test_closure_expr(&unique_marker()));
    let unsigned = stores[2].build_closure(&test_closure_expr(&unique_marker()));
    assert!(stores[0].signatures(&signed_by_node.top).is_empty());
    assert!(stores[2].signatures(&unsigned.top).is_empty());
    // Host 3 also holds one path signed with the trusted key, added after the unsigned
    // closure: once host 2 serves it, host 2 knows of the unsigned closure too, so a 404 for
    // that means refused, not unknown.
    let signed_on_3 = stores[2].add_file("signed-on-3", unique_marker().as_bytes());
    let node_key_path = node_key_file.to_str().expect("a UTF-8 path");
    stores[2].nix(&["store", "sign", "--key-file", node_key_path, &signed_on_3]);
    let nodes = start_nodes(&stores, |host| NodeOptions {
        trusted_keys: vec![node_key.clone()],
        sign_key_file: (host.number() == 1).then(|| node_key_file.clone()),
        ..Default::default()
    });

    wait_for_closure(&nodes[1], &signed_by_node, "host 2's node to offer host 1's closure");
    let copy = stores[1].copy_from(NODE_URL, &[&node_key], &signed_by_node.top);
    assert_copied(&copy, &signed_by_node, &stores[1], &stores[0]);

    wait_until(DISCOVERY_LIMIT, "host 2's node to offer host 3's signed path", || {
        nodes[1].narinfo_statuses(std::slice::from_ref(&signed_on_3)) == [200]
    });
    let copy = stores[1].copy_from(NODE_URL, &[&node_key], &unsigned.top);
    assert!(!copy.status.success(), "nix copy of an unsigned closure from host 3 succeeded");
    for path in &unsigned.paths {
        assert!(!stores[1].is_valid(path), "unsigned {path} was installed on host 2");
    }
    let statuses = nodes[1].narinfo_statuses(&unsigned.paths);
    assert!(statuses.iter().all(|&s| s == 404), "narinfos of unsigned paths: {statuses:?}");
    // Host 3's node, with no signing key, does not serve its unsigned builds to peers at all
    // (the default serving policy), and says so.
    let refusal = "not served: it has no signature from a key this node trusts";
    assert!(
        std::fs::read_to_string(nodes[2].log_path()).unwrap_or_default().contains(refusal),
        "host 3's node did not log that it would not serve its unsigned paths ({refusal:?})"
    );
}

#[test]
fn narinfo_misses_and_paths_of_a_killed_holder_answer_404_within_a_second() {
    if !e2e_ready() {
        return;
    }
    let SignedLan { lan: _lan, closure, key: _, stores: _stores, mut nodes } =
        SignedLan::new(3, &test_closure_expr(&unique_marker()));

    let asked = Instant::now();
    let (status, _) = nodes[1].http_get(&format!("/{}.narinfo", random_hash()));
    assert_eq!(status, 404, "a narinfo nobody has");
    assert!(asked.elapsed() < DEPARTURE_LIMIT, "a miss took {:?}", asked.elapsed());

    let killed = nodes[0].kill();
    let ((), all_404) = poll_every(
        Duration::from_millis(20),
        Duration::from_secs(10),
        "host 2's node to answer 404 for the killed host 1's paths",
        || nodes[1].narinfo_statuses(&closure.paths).iter().all(|&s| s == 404).then_some(()),
    );
    let took = all_404 - killed;
    assert!(took <= DEPARTURE_LIMIT, "404 for the departed holder's paths after {took:?}");
    eprintln!("404 for every path {took:?} after host 1's node was killed");
}

#[test]
fn a_restarted_node_waits_for_a_holder_still_reconnecting_instead_of_a_false_miss() {
    if !e2e_ready() {
        return;
    }
    let SignedLan { lan: _lan, closure, key, stores, mut nodes } =
        SignedLan::new(2, &test_closure_expr(&unique_marker()));
    let holder = format!("/ip4/{}/tcp/7374/p2p/{}", stores[0].host().address(), nodes[0].peer_id());
    // Host 2's node restarts while host 1's is frozen: its stored index names host 1 as the
    // holder at once, but host 1 cannot finish a handshake until it thaws, a second later.
    let state = nodes[1].state_dir().to_owned();
    nodes[1].stop();
    nodes[0].freeze();
    let options = NodeOptions {
        trusted_keys: vec![key.public.clone()],
        peers: vec![holder],
        state_dir: Some(state),
        ..Default::default()
    };
    nodes[1] = Node::start(stores[1].host(), &stores[1], &options);
    let (statuses, took) = std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_secs(1));
            nodes[0].thaw();
        });
        let asked = Instant::now();
        // One request at a time, each allowed 10 s (Nix allows more): the first waits.
        let statuses: Vec<u16> =
            closure.paths.iter().map(|p| nodes[1].http_get(&narinfo_url_path(p)).0).collect();
        (statuses, asked.elapsed())
    });
    assert!(statuses.iter().all(|&s| s == 200), "while the holder reconnected: {statuses:?}");
    eprintln!("every narinfo answered 200 in {took:?}, the holder thawed after 1 s");
    // Within the same grace, a path nobody holds is still a miss at once.
    let asked = Instant::now();
    assert_eq!(nodes[1].http_get(&format!("/{}.narinfo", random_hash())).0, 404);
    assert!(asked.elapsed() < DEPARTURE_LIMIT, "a miss took {:?}", asked.elapsed());
}

#[test]
fn paths_of_a_frozen_holder_answer_404_within_the_liveness_limit() {
    if !e2e_ready() {
        return;
    }
    let SignedLan { lan: _lan, closure, key: _, stores: _stores, nodes } =
        SignedLan::new(2, &test_closure_expr(&unique_marker()));
    let frozen = nodes[0].freeze();
    // One path per poll: while the holder still counts as connected, each narinfo asked of it
    // waits out the peer time-out, and a poll of every path would take seconds.
    let top = [closure.top.clone()];
    let ((), top_404) = poll_every(
        Duration::from_millis(50),
        Duration::from_secs(30),
        "host 2's node to answer 404 for the frozen host 1's path",
        || (nodes[1].narinfo_statuses(&top)[0] == 404).then_some(()),
    );
    let took = top_404 - frozen;
    assert!(took <= FROZEN_LIMIT, "404 for the frozen holder's path after {took:?}");
    eprintln!("404 {took:?} after host 1's node was frozen");
    let statuses = nodes[1].narinfo_statuses(&closure.paths);
    nodes[0].thaw();
    assert!(statuses.iter().all(|&s| s == 404), "every path of the frozen holder: {statuses:?}");
    // Misses stay immediate meanwhile and after.
    let asked = Instant::now();
    assert_eq!(nodes[1].http_get(&format!("/{}.narinfo", random_hash())).0, 404);
    assert!(asked.elapsed() < DEPARTURE_LIMIT, "a miss took {:?}", asked.elapsed());
}

#[test]
fn a_holder_killed_mid_nar_leaves_the_client_a_failed_download() {
    if !e2e_ready() {
        return;
    }
    let SignedLan { lan, closure: big, key: _, stores: _stores, mut nodes } =
        SignedLan::new(2, &big_path_expr(&unique_marker()));

    let (status, narinfo) = nodes[1].http_get(&narinfo_url_path(&big.top));
    assert_eq!(status, 200, "the big path's narinfo");
    let narinfo = String::from_utf8(narinfo).expect("a UTF-8 narinfo");
    let field = |name: &str| {
        let prefix = format!("{name}: ");
        let line = narinfo.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        line.unwrap_or_else(|| panic!("no {name} in the narinfo:\n{narinfo}")).to_owned()
    };
    let nar_size: u64 = field("NarSize").parse().expect("a number");

    // A slow client on host 2, so that most of the NAR is still on host 1 when it dies.
    let partial = lan.dir().join("partial.nar");
    let mut curl = nodes[1]
        .host()
        .command("curl")
        .args(["--silent", "--show-error", "--limit-rate", "1M", "--max-time", "120"])
        .arg("--output")
        .arg(&partial)
        .arg(format!("{NODE_URL}/{}", field("URL")))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting curl");
    let received = || std::fs::metadata(&partial).map_or(0, |m| m.len());
    wait_until(DISCOVERY_LIMIT, "the NAR's first MiB to reach the client", || {
        received() >= 1 << 20
    });

    let killed = nodes[0].kill();
    let (exit, ended) =
        poll_every(Duration::from_millis(20), ABORT_LIMIT, "curl to end after the kill", || {
            curl.try_wait().expect("waiting for curl")
        });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut curl.stderr.take().expect("piped"), &mut stderr)
        .expect("reading curl's errors");
    assert!(!exit.success(), "curl got a whole NAR from a killed holder ({} bytes)", received());
    assert!(received() < nar_size, "{} of {nar_size} bytes arrived", received());
    eprintln!(
        "curl ended {:?} after the kill with {} of {nar_size} bytes: {exit}, {}",
        ended - killed,
        received(),
        stderr.trim()
    );
    assert_eq!(nodes[1].http_get("/nix-cache-info").0, 200, "host 2's node stopped serving");
}

/// How the holder sending a NAR is taken away in the middle of it.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Killed,
    Frozen,
}

#[test]
fn a_holder_killed_or_frozen_mid_nar_is_replaced_and_nix_copy_gets_the_whole_path() {
    if !e2e_ready() {
        return;
    }
    for fault in [Fault::Killed, Fault::Frozen] {
        failover_mid_nar(fault);
    }
}

/// Hosts 1 and 2 hold a 256 MiB path; host 3's `nix copy` gets it through its node while the
/// holder sending it is taken away halfway (the links of both holders shaped, so that the
/// transfer takes seconds): the copy must still succeed, byte for byte.
fn failover_mid_nar(fault: Fault) {
    const SIZE: u64 = 256 << 20;
    let lan = Lan::new(3);
    let stores = start_stores(&lan);
    let key = CacheKey::generate(lan.dir(), "test-1");
    let big = stores[0].build_closure(&big_path_expr_of(&unique_marker(), SIZE));
    stores[0].sign_closure(&key.secret_file, &big.top);
    let cache = format!("file://{}?compression=none", lan.dir().join("cache").display());
    stores[0].copy_to(&cache, &[&big.top]);
    let copied = stores[1].copy_from(&cache, &[&key.public], &big.top);
    assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));
    let options = NodeOptions {
        trusted_keys: vec![key.public.clone()],
        log_filter: "info,nixmesh_node::fetch=debug".to_owned(),
        ..Default::default()
    };
    let mut nodes = start_nodes(&stores, |_| options.clone());
    let holders: Vec<(String, u64)> = nodes[..2]
        .iter()
        .map(|n| {
            wait_until(DISCOVERY_LIMIT, "a holder to scan its store", || {
                n.status()["local_paths"].as_u64() > Some(0)
            });
            (n.peer_id(), n.status()["local_paths"].as_u64().unwrap())
        })
        .collect();
    wait_until(DISCOVERY_LIMIT, "host 3's node to index both holders' paths", || {
        let peers = nodes[2].peers();
        holders.iter().all(|(id, held)| advertised_paths(&peers, id) == Some(*held))
    });
    wait_for_closure(&nodes[2], &big, "host 3's node to offer the big path");
    for host in &lan.hosts()[..2] {
        lan.shape_egress(host, 400);
    }

    let sent_before: Vec<u64> = lan.hosts()[..2].iter().map(|h| lan.sent_bytes(h)).collect();
    let mut copy = stores[2].spawn_copy_from(NODE_URL, &[&key.public], &big.top);
    let sending = |n: usize| lan.sent_bytes(&lan.hosts()[n]) - sent_before[n];
    let mut still_running = || match copy.try_wait().expect("waiting for nix copy") {
        None => true,
        Some(exit) => {
            let mut stderr = String::new();
            let _ = std::io::Read::read_to_string(copy.stderr.as_mut().unwrap(), &mut stderr);
            panic!("{fault:?}: nix copy ended before the fault ({exit}): {stderr}");
        }
    };
    let (sender, _) =
        poll_every(Duration::from_millis(20), DISCOVERY_LIMIT, "a holder to send", || {
            still_running();
            (0..2).find(|&n| sending(n) > 16 << 20)
        });
    wait_until(DISCOVERY_LIMIT, "half the NAR to leave its holder", || {
        still_running() && sending(sender) > SIZE / 2
    });
    let at = sending(sender);
    match fault {
        Fault::Killed => drop(nodes[sender].kill()),
        Fault::Frozen => drop(nodes[sender].freeze()),
    }
    eprintln!("{fault:?} host {}'s node after it sent {} MiB", sender + 1, at >> 20);

    let (exit, _) =
        poll_every(Duration::from_millis(50), Duration::from_secs(120), "nix copy", || {
            copy.try_wait().expect("waiting for nix copy")
        });
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut copy.stderr.take().expect("piped"), &mut stderr)
        .expect("reading nix copy's errors");
    assert!(exit.success(), "{fault:?}: nix copy failed: {stderr}");
    assert_eq!(stores[2].dump(&big.top), stores[0].dump(&big.top), "{fault:?}: the path differs");
    let other = 1 - sender;
    assert!(sending(other) > 16 << 20, "{fault:?}: the other holder sent the rest");
    let log = std::fs::read_to_string(nodes[2].log_path()).expect("host 3's log");
    assert!(log.contains("NAR transfer resumed"), "{fault:?}: no failover in host 3's log");
    if let Fault::Frozen = fault {
        nodes[sender].thaw();
    }
}

/// A Nix expression for one path of 64 MiB of random bytes, new for each `marker`.
fn big_path_expr(marker: &str) -> String {
    big_path_expr_of(marker, 64 << 20)
}

/// A Nix expression for one path of `size` random bytes, new for each `marker`.
fn big_path_expr_of(marker: &str, size: u64) -> String {
    format!(
        r#"derivation {{
  name = "nixmesh-test-big";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "head -c {size} /dev/urandom > $out" ];
  PATH = "/usr/bin:/bin";
  marker = "{marker}";
}}"#
    )
}

#[test]
fn malformed_requests_get_4xx_and_the_node_keeps_serving() {
    if !e2e_ready() {
        return;
    }
    let lan = Lan::new(1);
    let store = HostStore::start(&lan.hosts()[0]);
    let node = Node::start(store.host(), &store, &NodeOptions::default());
    let valid_hash = narinfo_url_path(&format!("/nix/store/{}-x", random_hash()));

    let malformed = [
        "/abc.narinfo".to_owned(),
        format!("/{}x.narinfo", &valid_hash[1..33]),
        "/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo".to_owned(),
        "/nar/../../etc/passwd".to_owned(),
        "/nar/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        "/nar/..%2f..%2fetc%2fpasswd".to_owned(),
        format!("/{}.narinfo", "a".repeat(100_000)),
    ];
    for path in &malformed {
        let (status, body) = node.http_get(path);
        let shown: String = path.chars().take(60).collect();
        assert!((400..500).contains(&status), "GET {shown} answered {status}");
        assert!(!String::from_utf8_lossy(&body).contains("root:"), "GET {shown} leaked a file");
        assert_eq!(node.http_get("/nix-cache-info").0, 200, "the node stopped serving");
    }
}

#[test]
fn nixmesh_peers_lists_the_other_hosts_found_by_mdns() {
    if !e2e_ready() {
        return;
    }
    let lan = Lan::new(3);
    let stores = start_stores(&lan);
    // Hosts 1 and 3 hold a closure each (with its derivations); host 2 holds nothing.
    for store in [&stores[0], &stores[2]] {
        store.build_closure(&test_closure_expr(&unique_marker()));
    }
    let nodes = start_nodes(&stores, |_| NodeOptions::default());
    let others = [(&nodes[0], &stores[0]), (&nodes[2], &stores[2])]
        .map(|(node, store)| (node, node.peer_id(), store.path_count() as u64));

    wait_until(DISCOVERY_LIMIT, "host 2's `nixmesh peers` to list hosts 1 and 3 in full", || {
        let peers = nodes[1].peers();
        others.iter().all(|(_, id, held)| {
            lists_connected(&peers, id)
                && advertised_paths(&peers, id) == Some(*held)
                && entry(&peers, id)["rtt_ms"].is_number()
        })
    });
    let peers = nodes[1].peers();
    for (node, id, _) in &others {
        let entry = entry(&peers, id);
        let on_lan = format!("/ip4/{}/", node.host().address());
        let addresses = entry["addresses"].as_array().expect("addresses is a list");
        assert!(
            addresses.iter().any(|a| a.as_str().is_some_and(|a| a.starts_with(&on_lan))),
            "{}'s entry has no address on the LAN: {entry}",
            node.host().name()
        );
        let seen = entry["last_seen_secs_ago"].as_u64();
        assert!(seen.is_some_and(|s| s < 60), "{}'s entry: {entry}", node.host().name());
    }
    let own = nodes[1].peer_id();
    assert!(!peers.as_array().unwrap().iter().any(|p| p["id"] == own.as_str()), "lists itself");

    // The table a person reads: a header, then a line a peer (named by the hostname it
    // announced, ending in the tail of its id), with its state and path count.
    let mut cli = nodes[1].host().command(nixmesh_bin());
    cli.args(["peers", "--node", NODE_URL]);
    let table = String::from_utf8(cli.stdout_within(DISCOVERY_LIMIT)).expect("UTF-8 output");
    let columns = |line: &str| -> Vec<String> {
        line.split("  ").map(str::trim).filter(|c| !c.is_empty()).map(str::to_owned).collect()
    };
    let header = table.lines().next().map(columns).unwrap_or_default();
    assert_eq!(
        header,
        ["NAME", "STATE", "PATHS", "RTT", "RECEIVED", "SERVED", "LAST SEEN", "PEER"]
    );
    for (node, id, held) in &others {
        let tail = &id[id.len() - 8..];
        let line = table.lines().find(|l| l.ends_with(tail));
        let line = line.unwrap_or_else(|| panic!("no line for {id} in:\n{table}"));
        let row = columns(line);
        let name = entry(&peers, id)["name"].as_str().map(str::to_owned);
        assert_eq!(Some(&row[0]), name.as_ref(), "{}'s line: {line}", node.host().name());
        assert_eq!((row[1].as_str(), row[2].as_str()), ("connected", held.to_string().as_str()));
    }
}

/// The entry for `id` in `nixmesh peers --json` output; panics if there is none.
fn entry<'a>(peers: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    let all = peers.as_array().expect("a list of peers");
    all.iter().find(|p| p["id"] == id).unwrap_or_else(|| panic!("{id} not in {peers}"))
}
