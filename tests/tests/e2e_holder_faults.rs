//! A holder taken away on a LAN of network namespaces, each host with its own Nix store and
//! its own `nixmesh serve`, and the real `nix copy` as the client: a holder killed, frozen or
//! restarted makes its paths a miss within a bound (never a false miss while it reconnects),
//! and a holder taken away in the middle of a NAR is replaced by another without the client
//! noticing, or leaves it a failed download when it was the only one.

use std::process::Stdio;
use std::time::{Duration, Instant};

use nixmesh_tests::signed_lan::{
    DISCOVERY_LIMIT, SignedLan, advertised_paths, start_nodes, start_stores, wait_for_closure,
};
use nixmesh_tests::{
    CacheKey, Lan, NODE_URL, Node, NodeOptions, narinfo_url_path, poll_every, random_hash,
    require_lan, test_closure_expr, unique_marker, wait_until,
};

/// How soon a client must see a NAR download fail once its holder is gone (it may first
/// read what was already on its way).
const ABORT_LIMIT: Duration = Duration::from_secs(30);
/// How soon after its only holder is killed a path must be a miss elsewhere.
const DEPARTURE_LIMIT: Duration = Duration::from_secs(1);
/// How soon after its only holder freezes (no answer, connection open) a path must be a miss
/// elsewhere: the documented 5.5 s of missed pings, and the polling.
const FROZEN_LIMIT: Duration = Duration::from_secs(7);

#[test]
fn narinfo_misses_and_paths_of_a_killed_holder_answer_404_within_a_second() {
    if !require_lan(&[]) {
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
    if !require_lan(&[]) {
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
    if !require_lan(&[]) {
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
    if !require_lan(&[]) {
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
    if !require_lan(&[]) {
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
