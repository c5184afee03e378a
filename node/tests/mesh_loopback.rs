//! Two whole nodes in one process on loopback (static peers, no mDNS), each on its own chroot
//! Nix store, and the real `nix copy` substituting a closure from one store to the other
//! through them. The fast, namespace-free cousin of the LAN tests in `tests/`.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{loopback_config as config, nix_available};
use nixmesh_node::node::RunningNode;
use nixmesh_protocol::{Sha256, nar};
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::{
    CacheKey, Closure, Host, HostStore, narinfo_url_path, test_closure_expr, unique_marker,
    wait_until,
};

const DEADLINE: Duration = Duration::from_secs(30);

/// Two hosts on this machine, each with its store, a signing key, and a runtime for their
/// nodes: host 1 holds, host 2 asks.
struct Pair {
    dir: tempfile::TempDir,
    key: CacheKey,
    s1: HostStore,
    s2: HostStore,
    runtime: tokio::runtime::Runtime,
}

impl Pair {
    fn new() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::generate(dir.path(), "loopback-1");
        let s1 = HostStore::start(&Host::local_in(dir.path(), "h1"));
        let s2 = HostStore::start(&Host::local_in(dir.path(), "h2"));
        Pair { dir, key, s1, s2, runtime: tokio::runtime::Runtime::new().unwrap() }
    }

    /// A node named `name` (its state dir) on `store`, with `peers`.
    fn start(&self, name: &str, store: &HostStore, peers: Vec<libp2p::Multiaddr>) -> RunningNode {
        let config = config(&self.dir.path().join(name), store, &self.key.public, peers);
        self.runtime.block_on(RunningNode::start(config)).unwrap()
    }

    /// Node 1 on host 1, and node 2 on host 2 with node 1 as its peer.
    fn start_both(&self) -> (RunningNode, RunningNode) {
        let n1 = self.start("n1", &self.s1, vec![]);
        let n2 = self.start("n2", &self.s2, self.runtime.block_on(n1.p2p_addresses()));
        (n1, n2)
    }

    fn stop(&self, node: RunningNode) {
        self.runtime.block_on(node.stop()).unwrap();
    }
}

#[test]
fn nix_copy_substitutes_a_closure_through_two_nodes() {
    if !nix_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::generate(dir.path(), "loopback-1");
    let hosts = [Host::local_in(dir.path(), "h1"), Host::local_in(dir.path(), "h2")];
    let stores: Vec<HostStore> = hosts.iter().map(HostStore::start).collect();
    let (s1, s2) = (&stores[0], &stores[1]);
    let closure: Closure = s1.build_closure(&test_closure_expr(&unique_marker()));
    s1.sign_closure(&key.secret_file, &closure.top);
    let unsigned = s1.build_closure(&test_closure_expr(&unique_marker()));

    // The nodes run on a runtime of their own; this thread does the blocking work of a
    // client (HTTP, Nix commands) freely.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let start = |name: &str, store, peers| {
        let config = config(&dir.path().join(name), store, &key.public, peers);
        runtime.block_on(RunningNode::start(config)).unwrap()
    };
    let n1 = start("n1", s1, vec![]);
    let n2 = start("n2", s2, runtime.block_on(n1.p2p_addresses()));
    let http = n2.http_address();

    // Node 2 learns what node 1 holds; then every narinfo of the closure is served.
    let narinfos: Vec<String> = closure.paths.iter().map(|p| narinfo_url_path(p)).collect();
    wait_until(DEADLINE, "node 2 to serve the closure's narinfos", || {
        narinfos.iter().all(|n| get(http, n).0 == 200)
    });
    let (_, text) = get(http, &narinfos[0]);
    let text = String::from_utf8(text).unwrap();
    assert!(text.contains("Compression: none") && text.contains("Sig: loopback-1:"), "{text}");

    // The real client substitutes the whole closure from node 2, byte for byte.
    let url = format!("http://{http}");
    let copy = s2.copy_from(&url, &[&key.public], &closure.top);
    assert!(copy.status.success(), "nix copy failed: {}", String::from_utf8_lossy(&copy.stderr));
    for path in &closure.paths {
        assert!(s2.is_valid(path), "{path} did not arrive");
        assert_eq!(s2.dump(path), s1.dump(path), "{path} differs");
    }

    // Unsigned paths are held by node 1 but never served; a path nobody holds is a miss.
    let status = |address| -> serde_json::Value {
        serde_json::from_slice(&get(address, "/_nixmesh/status").1).unwrap()
    };
    wait_until(DEADLINE, "node 2 to index everything node 1 holds", || {
        status(http)["indexed_paths"] == status(n1.http_address())["local_paths"]
    });
    assert_eq!(get(http, &narinfo_url_path(&unsigned.top)).0, 404);
    assert_eq!(get(http, "/00000000000000000000000000000000.narinfo").0, 404);

    // Node 2's peer list names node 1, connected.
    let (status, peers) = get(http, "/_nixmesh/peers");
    assert_eq!(status, 200);
    let peers: serde_json::Value = serde_json::from_slice(&peers).unwrap();
    let n1_id = n1.peer_id().to_string();
    assert!(
        peers
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["id"] == n1_id.as_str() && p["connected"] == true),
        "{peers}"
    );

    runtime.block_on(n2.stop()).unwrap();
    runtime.block_on(n1.stop()).unwrap();
}

/// Bytes of the NAR a slow client reads before its node is told to stop.
const READ_BEFORE_STOP: usize = 1 << 20;

#[test]
fn stopping_a_node_lets_a_nar_in_flight_finish() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    // 64 MiB: more than the sockets and the mesh's windows buffer, so the holder is still
    // sending when the stop comes.
    let contents: Vec<u8> =
        (0..64u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let path = pair.s1.add_file("big", &contents);
    pair.s1.sign_closure(&pair.key.secret_file, &path);
    let (n1, n2) = pair.start_both();
    let http = n2.http_address();
    let narinfo = narinfo_url_path(&path);
    wait_until(DEADLINE, "node 2 to serve the narinfo", || get(http, &narinfo).0 == 200);
    let narinfo =
        nixmesh_protocol::NarInfo::parse(std::str::from_utf8(&get(http, &narinfo).1).unwrap())
            .unwrap();

    // A client that reads the NAR slowly (about 32 MiB/s), on a thread of its own.
    let (started_tx, started) = std::sync::mpsc::channel();
    let url = format!("/{}", narinfo.url);
    let reader = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(http).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(stream, "GET {url} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut told = false;
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if !told && response.len() > READ_BEFORE_STOP {
                started_tx.send(()).unwrap();
                told = true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        response
    });
    started.recv_timeout(DEADLINE).expect("the NAR started");

    // The stop drains the download while the mesh still serves it; every task then ends.
    let stopping = std::time::Instant::now();
    pair.runtime.block_on(n2.stop()).expect("node 2 stops with every task ended");
    let took = stopping.elapsed();
    let response = reader.join().unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header");
    assert_eq!(&response[9..12], b"200");
    let body = &response[split + 4..];
    assert_eq!(body.len() as u64, narinfo.nar_size, "the whole NAR arrived");
    assert!(nixmesh_protocol::Sha256::digest(body) == narinfo.nar_hash, "the NAR verifies");
    assert!(
        took < nixmesh_localhttp::SHUTDOWN_GRACE + Duration::from_secs(6),
        "stop took {took:?}"
    );
    pair.stop(n1);
}

#[test]
fn a_node_with_a_damaged_index_starts_and_serves_again() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    let path = pair.s1.add_file("held", b"a path held by node 1");
    pair.s1.sign_closure(&pair.key.secret_file, &path);
    let narinfo = narinfo_url_path(&path);
    let (n1, n2) = pair.start_both();
    wait_until(DEADLINE, "node 2 to serve node 1's path", || {
        get(n2.http_address(), &narinfo).0 == 200
    });
    pair.stop(n2);

    // Garbage where the index was: the node starts anyway, sets the file aside, and serves
    // once node 1's snapshot has arrived again.
    let state = pair.dir.path().join("n2");
    let index = state.join(nixmesh_node::node::INDEX_FILE);
    let len = std::fs::metadata(&index).unwrap().len() as usize;
    std::fs::write(&index, (0..len).map(|i| (i * 131 % 251) as u8).collect::<Vec<u8>>()).unwrap();
    let n2 = pair.start("n2", &pair.s2, pair.runtime.block_on(n1.p2p_addresses()));
    wait_until(DEADLINE, "node 2 to serve node 1's path again", || {
        get(n2.http_address(), &narinfo).0 == 200
    });
    let set_aside = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("index.redb.damaged-"))
        .count();
    assert_eq!(set_aside, 1, "the damaged file is kept beside the new index");
    pair.stop(n2);
    pair.stop(n1);
}

/// A stand-in for a slow daemon: a socket that accepts the node's daemon connections and
/// joins them to the real daemon's only once `release` has been sent; `first` gets a message
/// when the first one is held.
fn held_daemon(
    at: &std::path::Path,
    daemon: std::path::PathBuf,
) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    use std::os::unix::net::{UnixListener, UnixStream};
    let listener = UnixListener::bind(at).unwrap();
    let (first_tx, first) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut waiting = Some((first_tx, released));
        // The node opens a few daemon connections, all within the test's first seconds.
        let until = std::time::Instant::now() + DEADLINE;
        let mut joined = 0;
        while std::time::Instant::now() < until && joined < 64 {
            let client = match listener.accept() {
                Ok((client, _)) => client,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => return,
            };
            joined += 1;
            client.set_nonblocking(false).unwrap();
            if let Some((first_tx, released)) = waiting.take() {
                let _ = first_tx.send(());
                if released.recv_timeout(DEADLINE).is_err() {
                    return;
                }
            }
            let Ok(daemon) = UnixStream::connect(&daemon) else { return };
            let (mut c2, mut d2) = (client.try_clone().unwrap(), daemon.try_clone().unwrap());
            let (mut c, mut d) = (client, daemon);
            std::thread::spawn(move || std::io::copy(&mut c, &mut d));
            std::thread::spawn(move || std::io::copy(&mut d2, &mut c2));
        }
    });
    (first, release)
}

#[test]
fn the_port_takes_connections_while_the_node_starts_and_answers_them_once_it_serves() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    let held = pair.dir.path().join("held-daemon.sock");
    let (first, release) = held_daemon(&held, pair.s1.socket());
    let mut config = config(&pair.dir.path().join("n1"), &pair.s1, &pair.key.public, vec![]);
    config.store = format!("unix://{}", held.display());
    // A free port, known before the node starts.
    config.http_listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let starting = pair.runtime.spawn(RunningNode::start(config.clone()));

    // The node waits for the daemon's handshake: the port must take a request all the same.
    first.recv_timeout(DEADLINE).expect("the node to connect to its daemon");
    let mut client = TcpStream::connect(config.http_listen)
        .expect("the port takes connections while the node starts");
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client
        .write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(!starting.is_finished(), "the node is still starting while its daemon is held");

    release.send(()).unwrap();
    let node = pair.runtime.block_on(starting).unwrap().unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "the request waited and got: {answer}");
    assert!(answer.contains("StoreDir: /nix/store"), "{answer}");
    pair.stop(node);
}

#[test]
fn a_peer_that_left_is_forgotten_after_the_configured_time() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    pair.s1.add_file("held", b"a path held by node 1");
    let n1 = pair.start("n1", &pair.s1, vec![]);
    let forget_after = Duration::from_secs(3);
    let peers = pair.runtime.block_on(n1.p2p_addresses());
    let n2_config = nixmesh_node::config::ServeConfig {
        forget_peers_after: forget_after,
        ..config(&pair.dir.path().join("n2"), &pair.s2, &pair.key.public, peers)
    };
    let n2 = pair.runtime.block_on(RunningNode::start(n2_config)).unwrap();
    let status = |node: &RunningNode| -> serde_json::Value {
        serde_json::from_slice(&get(node.http_address(), "/_nixmesh/status").1).unwrap()
    };
    let held = nixmesh_tests::wait_for(DEADLINE, "node 1 to list its store", || {
        status(&n1)["local_paths"].as_u64().filter(|&n| n > 0)
    });
    wait_until(DEADLINE, "node 2 to index node 1's paths", || status(&n2)["indexed_paths"] == held);

    pair.stop(n1);
    let left = std::time::Instant::now();
    wait_until(DEADLINE, "node 2 to see node 1 gone", || status(&n2)["peers_connected"] == 0);
    // Kept while away, then forgotten once the time has passed.
    assert_eq!(status(&n2)["indexed_paths"], held, "kept at first, for a return");
    wait_until(DEADLINE, "node 2 to forget node 1", || status(&n2)["indexed_paths"] == 0);
    // Forgotten the configured time after it was last heard from: at most one ping interval
    // (a second) before it stopped.
    let heard_last = Duration::from_secs(1);
    assert!(left.elapsed() + heard_last >= forget_after, "forgotten after {:?}", left.elapsed());
    pair.stop(n2);
}

/// A fixed-output derivation, as `fetchurl` makes one: its output, `echo fixed MARKER` into
/// `$out` (`flat`) or into `$out/f` (`recursive`), is declared by hash, so its store path
/// follows from that hash alone and the path is content-addressed.
fn fixed_output_expr(marker: &str, mode: &str) -> String {
    let contents = format!("fixed {marker}\n");
    let (hash, script) = match mode {
        "flat" => (Sha256::digest(contents.as_bytes()), "echo fixed $marker > $out"),
        _ => {
            let mut nar = Vec::new();
            let mut root = nar::writer::open(&mut nar).unwrap().directory().unwrap();
            let mut file = contents.as_bytes();
            root.entry(b"f").unwrap().file(false, contents.len() as u64, &mut file).unwrap();
            root.close().unwrap();
            (Sha256::digest(&nar), "mkdir $out; echo fixed $marker > $out/f")
        }
    };
    format!(
        r#"derivation {{
  name = "nixmesh-fod-{mode}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "{script}" ];
  PATH = "/usr/bin:/bin";
  marker = "{marker}";
  outputHashMode = "{mode}";
  outputHashAlgo = "sha256";
  outputHash = "{hash}";
}}"#,
        hash = hash.to_nixbase32()
    )
}

#[test]
fn content_addressed_paths_are_shared_with_no_signing_key_anywhere() {
    if !nix_available() {
        return;
    }
    // Nothing is signed: the key the nodes and the client trust signs nothing here, the nodes
    // have no signing key, and the stores none either.
    let pair = Pair::new();
    let marker = unique_marker();
    let flat = pair.s1.build_closure(&fixed_output_expr(&marker, "flat"));
    let recursive = pair.s1.build_closure(&fixed_output_expr(&marker, "recursive"));
    let text = pair.s1.add_many_paths(3, &marker);
    let (n1, n2) = pair.start_both();
    let http = n2.http_address();

    let paths: Vec<&String> = [&flat.top, &recursive.top].into_iter().chain(&text.paths).collect();
    wait_until(DEADLINE, "node 2 to serve every content-addressed narinfo", || {
        paths.iter().all(|p| get(http, &narinfo_url_path(p)).0 == 200)
    });
    for (path, ca) in [(&flat.top, "CA: fixed:sha256:"), (&recursive.top, "CA: fixed:r:sha256:")] {
        let text = String::from_utf8(get(http, &narinfo_url_path(path)).1).unwrap();
        assert!(text.contains(ca) && !text.contains("Sig:"), "{text}");
    }

    // The real client takes them unsigned, as Nix does content-addressed paths, byte for byte.
    let url = format!("http://{http}");
    for top in [&flat.top, &recursive.top] {
        let copy = pair.s2.copy_from(&url, &[&pair.key.public], top);
        let stderr = String::from_utf8_lossy(&copy.stderr);
        assert!(copy.status.success(), "nix copy of {top} failed: {stderr}");
    }
    let realise = pair.s2.realise_from(&url, &[&pair.key.public], &text.top);
    let stderr = String::from_utf8_lossy(&realise.stderr);
    assert!(realise.status.success(), "nix-store -r of {} failed: {stderr}", text.top);
    for path in &paths {
        assert!(pair.s2.is_valid(path), "{path} did not arrive");
        assert_eq!(pair.s2.dump(path), pair.s1.dump(path), "{path} differs");
    }
    pair.stop(n2);
    pair.stop(n1);
}

/// Three hosts on this machine: `good` and `damaged` hold the same signed closure, the damaged
/// one with one byte of `c`'s 300 kB blob changed behind Nix's back (small enough to be checked
/// whole before it is sent); `client` holds nothing. No node runs until [`DamagedCopy::start`].
struct DamagedCopy {
    dir: tempfile::TempDir,
    key: CacheKey,
    stores: Vec<HostStore>,
    closure: Closure,
    runtime: tokio::runtime::Runtime,
}

impl DamagedCopy {
    fn new() -> DamagedCopy {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::generate(dir.path(), "loopback-1");
        let stores: Vec<HostStore> = ["good", "damaged", "client"]
            .map(|h| HostStore::start(&Host::local_in(dir.path(), h)))
            .into();
        let closure = stores[0].build_closure(&test_closure_expr(&unique_marker()));
        stores[0].sign_closure(&key.secret_file, &closure.top);
        let cache = format!("file://{}?compression=none", dir.path().join("cache").display());
        stores[0].copy_to(&cache, &[&closure.top]);
        let copied = stores[1].copy_from(&cache, &[&key.public], &closure.top);
        assert!(copied.status.success(), "{}", String::from_utf8_lossy(&copied.stderr));
        let c = closure.paths.iter().find(|p| p.ends_with("-nixmesh-test-c")).unwrap();
        stores[1].damage(c, "blob");
        let runtime = tokio::runtime::Runtime::new().unwrap();
        DamagedCopy { dir, key, stores, closure, runtime }
    }

    fn good(&self) -> &HostStore {
        &self.stores[0]
    }

    fn damaged(&self) -> &HostStore {
        &self.stores[1]
    }

    fn client(&self) -> &HostStore {
        &self.stores[2]
    }

    /// A node named `name` (its state dir) on `store`, with `peers`.
    fn start(&self, name: &str, store: &HostStore, peers: Vec<libp2p::Multiaddr>) -> RunningNode {
        let config = config(&self.dir.path().join(name), store, &self.key.public, peers);
        self.runtime.block_on(RunningNode::start(config)).unwrap()
    }

    /// The path whose copy on `damaged` is damaged.
    fn damaged_path(&self) -> String {
        self.closure.paths.iter().find(|p| p.ends_with("-nixmesh-test-c")).unwrap().clone()
    }
}

#[test]
fn with_a_damaged_and_a_good_copy_on_the_mesh_the_client_gets_the_good_one() {
    if !nix_available() {
        return;
    }
    let hosts = DamagedCopy::new();
    let (good, damaged, client, closure) =
        (hosts.good(), hosts.damaged(), hosts.client(), &hosts.closure);
    let (runtime, key) = (&hosts.runtime, &hosts.key);
    let start = |name: &str, store, peers| hosts.start(name, store, peers);
    let n_good = start("n-good", good, vec![]);
    let n_damaged = start("n-damaged", damaged, vec![]);
    let mut peers = runtime.block_on(n_good.p2p_addresses());
    peers.extend(runtime.block_on(n_damaged.p2p_addresses()));
    let n_client = start("n-client", client, peers);
    let http = n_client.http_address();
    wait_until(DEADLINE, "the client's node to index both holders", || {
        let peers: serde_json::Value =
            serde_json::from_slice(&get(http, "/_nixmesh/peers").1).unwrap();
        let indexed = |id: String| {
            peers.as_array().unwrap().iter().any(|p| p["id"] == id.as_str() && p["paths"] != 0)
        };
        indexed(n_good.peer_id().to_string()) && indexed(n_damaged.peer_id().to_string())
    });

    // Whichever holder is asked first, the damaged copy of `c` is checked whole before a
    // byte of it goes out, and the good holder gives the client the right one.
    let copy = client.copy_from(&format!("http://{http}"), &[&key.public], &closure.top);
    let stderr = String::from_utf8_lossy(&copy.stderr);
    assert!(copy.status.success(), "nix copy failed with a good holder present: {stderr}");
    for path in &closure.paths {
        assert_eq!(client.dump(path), good.dump(path), "{path} differs");
    }
    for node in [n_client, n_damaged, n_good] {
        runtime.block_on(node.stop()).unwrap();
    }
}

#[test]
fn a_holder_with_a_damaged_copy_is_demoted_and_asked_last() {
    if !nix_available() {
        return;
    }
    let hosts = DamagedCopy::new();
    let (good, damaged, client, closure) =
        (hosts.good(), hosts.damaged(), hosts.client(), &hosts.closure);
    let (runtime, key) = (&hosts.runtime, &hosts.key);
    let start = |name: &str, store, peers| hosts.start(name, store, peers);
    let n_damaged = start("n-damaged", damaged, vec![]);
    let n_client = start("n-client", client, runtime.block_on(n_damaged.p2p_addresses()));
    let http = n_client.http_address();
    let url = format!("http://{http}");
    let damaged_id = n_damaged.peer_id().to_string();
    let demotion = || -> Option<String> {
        let peers: serde_json::Value =
            serde_json::from_slice(&get(http, "/_nixmesh/peers").1).unwrap();
        let entry = peers.as_array().unwrap().iter().find(|p| p["id"] == damaged_id.as_str())?;
        entry["demoted"].as_str().map(String::from)
    };
    wait_until(DEADLINE, "the client's node to offer the closure", || {
        closure.paths.iter().all(|p| get(http, &narinfo_url_path(p)).0 == 200)
    });

    // The only copy is damaged: nothing wrong reaches the client, and its holder is demoted.
    let copy = client.copy_from(&url, &[&key.public], &closure.top);
    assert!(!copy.status.success(), "nix copy took a damaged path");
    assert!(!client.is_valid(&hosts.damaged_path()));
    let why = demotion().expect("the holder of the damaged copy is demoted");
    assert!(why.contains("asked last") && why.contains("hashes to"), "{why}");

    // A good copy appears on another host (its node starts): the client gets it, and the
    // damaged holder is not asked again (a second fault would have it skipped, not asked last).
    let n_good = start("n-good", good, vec![runtime.block_on(n_client.p2p_addresses())[0].clone()]);
    let good_id = n_good.peer_id().to_string();
    wait_until(DEADLINE, "the client's node to index the good holder", || {
        let peers: serde_json::Value =
            serde_json::from_slice(&get(http, "/_nixmesh/peers").1).unwrap();
        peers.as_array().unwrap().iter().any(|p| p["id"] == good_id.as_str() && p["paths"] != 0)
    });
    let copy = client.copy_from(&url, &[&key.public], &closure.top);
    let stderr = String::from_utf8_lossy(&copy.stderr);
    assert!(copy.status.success(), "nix copy failed with a good holder present: {stderr}");
    for path in &closure.paths {
        assert_eq!(client.dump(path), good.dump(path), "{path} differs");
    }
    let why = demotion().expect("still demoted");
    assert!(why.contains("asked last"), "the damaged holder was asked again: {why}");
    for node in [n_good, n_client, n_damaged] {
        runtime.block_on(node.stop()).unwrap();
    }
}

/// The series of a `/metrics` scrape, each line's name and labels to its value.
fn scrape(address: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = get(address, "/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_owned(), value.parse().unwrap()))
        .collect()
}

/// How much `series` moved between two scrapes (a series not there yet is 0).
fn moved(before: &std::collections::HashMap<String, f64>, after_: f64, series: &str) -> u64 {
    (after_ - before.get(series).copied().unwrap_or(0.0)) as u64
}

/// `nixmesh ARGS` against a node; its standard output.
fn nixmesh(args: &[&str]) -> String {
    use nixmesh_tests::CommandExt;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nixmesh"))
        .args(args)
        .output_within(DEADLINE);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nixmesh {args:?} failed: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn metrics_status_and_peers_count_a_substitution_on_both_sides() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    let closure = pair.s1.build_closure(&test_closure_expr(&unique_marker()));
    pair.s1.sign_closure(&pair.key.secret_file, &closure.top);
    let (n1, n2) = pair.start_both();
    let (h1, h2) = (n1.http_address(), n2.http_address());
    let status = |address| -> serde_json::Value {
        serde_json::from_slice(&get(address, "/_nixmesh/status").1).unwrap()
    };
    // Waiting on the status page alone: no narinfo is asked before the scrape.
    wait_until(DEADLINE, "node 2 to index everything node 1 holds", || {
        let held = status(h1)["local_paths"].as_u64().unwrap_or(0);
        held > 0 && status(h2)["indexed_paths"] == held
    });
    let (before1, before2) = (scrape(h1), scrape(h2));

    let url = format!("http://{h2}");
    let copy = pair.s2.copy_from(&url, &[&pair.key.public], &closure.top);
    assert!(copy.status.success(), "nix copy failed: {}", String::from_utf8_lossy(&copy.stderr));

    let paths = closure.paths.len() as u64;
    let nar_bytes: u64 = closure.paths.iter().map(|p| pair.s1.dump(p).len() as u64).sum();
    let hits = r#"nixmesh_requests_total{kind="narinfo",result="hit"}"#;
    let nars = r#"nixmesh_requests_total{kind="nar",result="ok"}"#;
    let received = "nixmesh_nar_received_bytes_total";
    let served = "nixmesh_nar_served_bytes_total";
    // Each side counts as its transfers end, which may be just after the client has it all.
    let (after1, after2) = nixmesh_tests::wait_for(DEADLINE, "the counters to settle", || {
        let (after1, after2) = (scrape(h1), scrape(h2));
        let done = moved(&before2, after2[nars], nars) >= paths
            && moved(&before1, after1[served], served) >= nar_bytes;
        done.then_some((after1, after2))
    });
    // Nix asks for some narinfos more than once in one copy (the top path's, to find the
    // closure and again to copy it), so the hits are at least one per path, the misses none.
    let hit_count = moved(&before2, after2[hits], hits);
    assert!(hit_count >= paths, "{hit_count} narinfo hits for {paths} paths");
    for other in ["miss", "refused", "error"] {
        let series = format!(r#"nixmesh_requests_total{{kind="narinfo",result="{other}"}}"#);
        assert_eq!(after2.get(&series).copied().unwrap_or(0.0), 0.0, "{series}");
    }
    assert_eq!(moved(&before2, after2[nars], nars), paths, "a NAR per path");
    assert_eq!(moved(&before2, after2[received], received), nar_bytes, "NAR bytes received");
    assert_eq!(moved(&before1, after1[served], served), nar_bytes, "NAR bytes served");
    assert_eq!(after1.get(received).copied().unwrap_or(0.0), 0.0, "node 1 received nothing");
    let timed = r#"nixmesh_fetch_seconds_count{stage="nar_first_byte"}"#;
    assert_eq!(moved(&before2, after2[timed], timed), paths, "a first-byte time per NAR");
    let timed = r#"nixmesh_fetch_seconds_count{stage="narinfo"}"#;
    assert_eq!(moved(&before2, after2[timed], timed), hit_count, "a narinfo time per hit");
    assert_eq!(after2["nixmesh_peers_connected"], 1.0);
    assert_eq!(after2["nixmesh_indexed_paths"], status(h1)["local_paths"].as_u64().unwrap() as f64);

    // `nixmesh status` and `nixmesh peers` show a person the same, and --json the numbers.
    let node = ["--node", &url];
    let json: serde_json::Value =
        serde_json::from_str(&nixmesh(&[&["status", "--json"][..], &node].concat())).unwrap();
    assert_eq!(json["bytes_received"], nar_bytes);
    assert_eq!(json["requests"]["narinfo_hits"], hit_count);
    assert_eq!(json["requests"]["nars_sent"], paths);
    assert_eq!(json["peers_connected"], 1);
    let text = nixmesh(&[&["status"][..], &node].concat());
    let name = nixmesh_node::peer_name::local().expect("this machine has a hostname");
    for line in [
        format!("name:           {name}"),
        format!("peer id:        {}", n2.peer_id()),
        "peers:          1 connected, 1 known".to_owned(),
        "hit rate:       100%".to_owned(),
        format!("narinfos:       {hit_count} hits, 0 misses, 0 refused"),
        format!("NARs to Nix:    {paths} sent, 0 aborted"),
        "served:         0 B to peers".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(text.contains("received:       ") && text.contains(" from peers\n"), "{text}");
    let served_text = nixmesh(&["status", "--node", &format!("http://{h1}")]);
    let bytes_line = format!("served:         {} to peers", human(nar_bytes));
    assert!(served_text.lines().any(|l| l == bytes_line), "no {bytes_line:?} in:\n{served_text}");

    // Node 1 is named by the hostname it announced, with the bytes each way.
    let peers = nixmesh(&[&["peers"][..], &node].concat());
    let lines: Vec<Vec<&str>> = peers
        .lines()
        .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "STATE", "PATHS", "RTT", "RECEIVED", "SERVED", "LAST SEEN", "PEER"]
    );
    assert_eq!(lines.len(), 2, "{peers}");
    let row = &lines[1];
    assert_eq!((row[0], row[1]), (name.as_str(), "connected"), "{peers}");
    assert_eq!(row[2], status(h1)["local_paths"].to_string(), "{peers}");
    assert!(row[3].ends_with(" ms"), "{peers}");
    assert_eq!((row[4], row[5]), (human(nar_bytes).as_str(), "0 B"), "{peers}");
    let n1_id = n1.peer_id().to_string();
    assert!(n1_id.ends_with(row[7].trim_start_matches('…')), "{peers}");
    let json: serde_json::Value =
        serde_json::from_str(&nixmesh(&[&["peers", "--json"][..], &node].concat())).unwrap();
    let peer = &json[0];
    assert_eq!(peer["id"], n1_id.as_str());
    assert_eq!(peer["name"], name.as_str());
    assert_eq!(peer["bytes_received"], nar_bytes);
    assert_eq!(peer["bytes_served"], 0);
    assert_eq!(peer["connected"], true);
    pair.stop(n2);
    pair.stop(n1);
}

/// Bytes as `nixmesh` prints them for a person.
fn human(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let units = ["KiB", "MiB", "GiB"];
    let (mut value, mut unit) = (bytes as f64 / 1024.0, 0);
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[test]
fn why_says_what_would_be_served_and_why_not() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    let signed = pair.s1.build_closure(&test_closure_expr(&unique_marker()));
    pair.s1.sign_closure(&pair.key.secret_file, &signed.top);
    let unsigned = pair.s1.build_closure(&test_closure_expr(&unique_marker()));
    let added = pair.s1.add_file("added", unique_marker().as_bytes());
    let (n1, n2) = pair.start_both();
    let url = format!("http://{}", n2.http_address());
    let why = |path: &str| -> serde_json::Value {
        serde_json::from_str(&nixmesh(&["why", path, "--json", "--node", &url])).unwrap()
    };
    wait_until(DEADLINE, "node 2 to index node 1's paths", || why(&signed.top)["served"] == true);
    let name = nixmesh_node::peer_name::local().expect("this machine has a hostname");

    // A signed path: served, and why.
    let report = why(&signed.top);
    assert_eq!(report["verdict"], "served");
    assert_eq!(report["advertisers"], 1);
    let holder = &report["holders"][0];
    assert_eq!(holder["peer"]["id"], n1.peer_id().to_string().as_str());
    assert_eq!(holder["narinfo"]["store_path"], signed.top.as_str());
    assert_eq!(holder["narinfo"]["signatures"], serde_json::json!(["loopback-1"]));
    assert_eq!(holder["accepted_by"], "signed by loopback-1");
    let text = nixmesh(&["why", &signed.top, "--node", &url]);
    let head = format!(
        "{}\nserved:   yes\nwhy:      this node would serve it to Nix (signed by loopback-1)\ntrusting: loopback-1\nholders:  1 advertise it\n  {name} (",
        signed.top
    );
    assert!(text.starts_with(&head), "{text}");
    assert!(
        text.contains("    signed by: loopback-1\n    accepted (signed by loopback-1)\n"),
        "{text}"
    );

    // Unsigned and input-addressed: held, but its holder does not serve it to peers (no key
    // vouches for it, and the holder has no signing key).
    let report = why(&unsigned.top);
    assert_eq!(
        (report["served"].clone(), report["verdict"].clone()),
        (false.into(), "holder_declines".into())
    );
    assert_eq!(report["holders"][0]["narinfo"], serde_json::Value::Null);
    let text = nixmesh(&["why", &unsigned.top, "--node", &url]);
    assert!(text.contains("served:   no\n") && text.contains("do not serve it"), "{text}");
    assert!(text.contains("    not used: it does not serve it to peers"), "{text}");

    // Content-addressed: served with no signature, by the hash alone.
    let base = added.strip_prefix("/nix/store/").unwrap();
    let report = why(&base[..32]);
    assert_eq!(report["verdict"], "served");
    assert_eq!(report["holders"][0]["accepted_by"], "content-addressed");
    assert!(report["holders"][0]["narinfo"]["ca"].as_str().unwrap().starts_with("fixed:"));

    // Nobody has it.
    let nobody = "/nix/store/00000000000000000000000000000000-nothing";
    let report = why(nobody);
    assert_eq!(
        (report["verdict"].clone(), report["advertisers"].clone()),
        ("no_holder".into(), 0.into())
    );
    let text = nixmesh(&["why", nobody, "--node", &url]);
    assert!(
        text.starts_with(&format!(
            "{nobody}\nserved:   no\nwhy:      not served: no peer advertises it"
        )),
        "{text}"
    );

    // Its holder gone (the index keeps what it advertised until it is forgotten).
    pair.stop(n1);
    wait_until(DEADLINE, "node 2 to see node 1 gone", || {
        why(&signed.top)["verdict"] == "holder_unreachable"
    });
    let text = nixmesh(&["why", &signed.top, "--node", &url]);
    assert!(
        text.contains("served:   no\n") && text.contains("offline)\n    not used: not connected\n"),
        "{text}"
    );
    pair.stop(n2);
}
