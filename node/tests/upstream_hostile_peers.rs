//! What a peer can make a node download from upstream: nothing but what the node itself would
//! trust, from its own upstreams, once (issue 19, items 1 and 2). A real node on loopback with
//! nginx as its one upstream; a hostile peer (the node crate's own `Mesh`, with an identity
//! chosen so that it is the narinfo claimer of the paths it asks about) passes on narinfos of
//! its choosing and asks the node to relay their NARs.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;
use nixmesh_node::mesh::framed::{FrameLimits, MeshStream};
use nixmesh_node::mesh::{DialTarget, Mesh};
use nixmesh_node::node::RunningNode;
use nixmesh_node::node::shutdown::Shutdown;
use nixmesh_protocol::mesh_messages::{FETCH_PROTOCOL, FetchRequest, FetchResponse, MAX_FRAME_LEN};
use nixmesh_protocol::signature::SigningKey;
use nixmesh_protocol::{NarInfo, Sha256, StorePath, StorePathHash};
use nixmesh_tests::nginx::Nginx;
use nixmesh_tests::{
    CacheKey, Host, HostStore, free_loopback_port, require_tool, unique_marker, wait_until,
};
use sha2::Digest;
use support::{ask_once, client_mesh, loopback_config, nix_available, open_fetch};
use tokio::runtime::Runtime;

const DEADLINE: Duration = Duration::from_secs(30);
const LIMITS: FrameLimits =
    FrameLimits { idle: DEADLINE, read: DEADLINE, write: DEADLINE, max_frame: MAX_FRAME_LEN };

/// The narinfo texts the hostile peer passes on as the claimer, by path.
type Answers = Arc<Mutex<HashMap<StorePathHash, String>>>;

/// A node with nginx as its upstream, and a peer connected to it that answers the node's
/// `UpstreamNarInfo` requests from [`Answers`].
struct Setup {
    runtime: Runtime,
    node: Option<RunningNode>,
    upstream: Nginx,
    /// The cache nginx serves (made by `nix copy --to file://`).
    cache: std::path::PathBuf,
    key: CacheKey,
    source: HostStore,
    peer: Mesh,
    peer_id: PeerId,
    answers: Answers,
    _stop_peer: Shutdown,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// `rate`: nginx's `limit_rate` for the cache's files, if any.
    fn new(rate: Option<&str>) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let key = CacheKey::generate(dir.path(), "upstream-1");
        let source = HostStore::start(&Host::local_in(dir.path(), "source"));
        let cache = dir.path().join("cache");
        let upstream_host = Host::local_in(dir.path(), "upstream");
        std::fs::create_dir_all(&cache).unwrap();
        let upstream = match rate {
            Some(rate) => {
                Nginx::start_rate_limited(&upstream_host, &cache, free_loopback_port(), rate)
            }
            None => Nginx::start(&upstream_host, &cache, free_loopback_port()),
        };

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let store = HostStore::start(&Host::local_in(dir.path(), "node"));
        let mut config = loopback_config(&dir.path().join("state"), &store, &key.public, vec![]);
        config.upstreams = Some(vec![upstream.url().to_owned()]);
        let node = runtime.block_on(RunningNode::start(config)).unwrap();
        let address = runtime.block_on(node.p2p_addresses())[0].clone();

        let answers = Answers::default();
        let stop_peer = Shutdown::new();
        let peer = runtime.block_on(async {
            // An identity of the peer's own; the paths are chosen so that it claims them.
            let mesh = client_mesh(&stop_peer);
            serve_answers(&mesh, answers.clone());
            mesh.want(DialTarget::from_multiaddr(address)).await;
            mesh
        });
        let node_id = node.peer_id();
        wait_until(DEADLINE, "the peer to connect to the node", || {
            peer.peers().is_connected(&node_id)
        });
        let peer_id = peer.local_peer_id();
        Setup {
            runtime,
            node: Some(node),
            upstream,
            cache,
            key,
            source,
            peer,
            peer_id,
            answers,
            _stop_peer: stop_peer,
            _dir: dir,
        }
    }

    fn node_id(&self) -> PeerId {
        self.node.as_ref().unwrap().peer_id()
    }

    /// A made-up store path whose narinfo claimer, between the node and the peer, is the peer.
    fn claimed_path(&self, name: &str) -> StorePath {
        let hash = (0..64)
            .map(|_| StorePathHash(rand::random()))
            .find(|hash| self.peer_claims(hash))
            .expect("a path the peer claims, one time in two");
        StorePath::from_parts(hash, name).unwrap()
    }

    /// Whether the peer ranks before the node for `hash`'s narinfo (rendezvous hashing, as
    /// the node ranks its claimers).
    fn peer_claims(&self, hash: &StorePathHash) -> bool {
        score(&self.peer_id, hash.as_bytes()) > score(&self.node_id(), hash.as_bytes())
    }

    /// The node's answer to the peer's `UpstreamNar` for `narinfo`'s NAR, and the bytes that
    /// follow it.
    fn relay(&self, narinfo: &NarInfo) -> (FetchResponse, Vec<u8>) {
        let request = FetchRequest::UpstreamNar {
            hash: narinfo.store_path.hash(),
            nar_hash: narinfo.nar_hash,
            offset: 0,
        };
        self.runtime.block_on(async {
            ask_once(open_fetch(&self.peer, self.node_id()).await, LIMITS, &request).await
        })
    }

    /// A path of the source's store holding `contents` (and a marker), whose narinfo the
    /// peer claims, signed and copied to the cache uncompressed; its narinfo as the cache has
    /// it.
    fn cached_path(&self, contents: &[u8]) -> NarInfo {
        let path = (0..64)
            .find_map(|n| {
                let mut file = contents.to_vec();
                file.extend_from_slice(format!(" {n} {}", unique_marker()).as_bytes());
                let path = self.source.add_file("blob", &file);
                self.peer_claims(&StorePath::parse(&path).unwrap().hash()).then_some(path)
            })
            .expect("a path the peer claims, one time in two");
        self.source.sign_closure(&self.key.secret_file, &path);
        let url = format!("file://{}?compression=none", self.cache.display());
        self.source.copy_to(&url, &[&path]);
        let hash = StorePath::parse(&path).unwrap().hash();
        let text = std::fs::read_to_string(self.cache.join(format!("{hash}.narinfo"))).unwrap();
        NarInfo::parse(&text).unwrap()
    }

    fn nar_requests(&self) -> Vec<nixmesh_tests::nginx::Request> {
        self.upstream.requests().into_iter().filter(|r| r.path.starts_with("/nar/")).collect()
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            let _ = self.runtime.block_on(node.stop());
        }
    }
}

/// Answers every fetch request on the peer's streams: `UpstreamNarInfo` from `answers`,
/// anything else `NotFound`.
fn serve_answers(mesh: &Mesh, answers: Answers) {
    let mut incoming = mesh.control().accept(Mesh::protocol(FETCH_PROTOCOL)).unwrap();
    tokio::spawn(async move {
        while let Some((_, stream)) = incoming.next().await {
            let answers = answers.clone();
            tokio::spawn(async move {
                let mut stream = MeshStream::mesh(stream, LIMITS);
                while let Ok(request) = stream.read::<FetchRequest>().await {
                    let text = match request {
                        FetchRequest::UpstreamNarInfo { hash } => {
                            answers.lock().unwrap().get(&hash).cloned()
                        }
                        _ => None,
                    };
                    let answer = match text {
                        Some(text) => FetchResponse::NarInfo { text },
                        None => FetchResponse::NotFound,
                    };
                    if stream.write(&answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// `node`'s rendezvous score for `key`: the first 8 bytes of SHA-256(peer id, key), as the
/// node computes it (docs/upstream.md).
fn score(node: &PeerId, key: &[u8]) -> u64 {
    let mut hasher = sha2::Sha256::new();
    hasher.update(node.to_bytes());
    hasher.update(key);
    u64::from_be_bytes(hasher.finalize()[..8].try_into().unwrap())
}

/// A listener that records nothing but whether anything connected to it.
struct Bystander(std::net::TcpListener);

impl Bystander {
    fn new() -> Bystander {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        Bystander(listener)
    }

    fn url(&self, file: &str) -> String {
        format!("http://{}/{file}", self.0.local_addr().unwrap())
    }

    /// Whether a connection was made to it (the kernel queues it, accepted or not).
    fn was_asked(&self) -> bool {
        self.0.accept().is_ok()
    }
}

#[test]
fn a_peer_cannot_make_a_node_download_a_url_outside_its_upstreams() {
    if !nix_available() || !require_tool("nginx") {
        return;
    }
    let setup = Setup::new(None);
    let secret = Bystander::new();
    let contents = format!("a secret on the node's loopback {}", unique_marker()).into_bytes();
    let trusted =
        SigningKey::parse(std::fs::read_to_string(&setup.key.secret_file).unwrap().trim()).unwrap();
    let stranger = SigningKey::from_seed("stranger-1", [2; 32]);
    let narinfo = |path: StorePath, url: String, key: Option<&SigningKey>| {
        let mut narinfo = NarInfo {
            store_path: path,
            url,
            compression: Some("none".to_owned()),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256::digest(&contents),
            nar_size: contents.len() as u64,
            references: vec![],
            deriver: None,
            system: None,
            signatures: vec![],
            ca: None,
            extra: vec![],
        };
        if let Some(key) = key {
            narinfo.sign(key);
        }
        narinfo
    };
    let cases = [
        ("unsigned", narinfo(setup.claimed_path("a"), secret.url("big_secret.txt"), None)),
        ("signed by an untrusted key", {
            narinfo(setup.claimed_path("b"), secret.url("big_secret.txt"), Some(&stranger))
        }),
        ("signed by a trusted key, its URL elsewhere", {
            narinfo(setup.claimed_path("c"), secret.url("big_secret.txt"), Some(&trusted))
        }),
        ("signed by a trusted key, its URL climbing out of the cache", {
            let url = format!("{}/nar/../../big_secret.txt", setup.upstream.url());
            narinfo(setup.claimed_path("d"), url, Some(&trusted))
        }),
    ];
    for (what, narinfo) in &cases {
        let hash = narinfo.store_path.hash();
        setup.answers.lock().unwrap().insert(hash, narinfo.to_string());
        let (answer, bytes) = setup.relay(narinfo);
        assert_eq!(answer, FetchResponse::NotFound, "{what}: {bytes:?}");
        assert!(bytes.is_empty(), "{what}: nothing relayed");
    }
    assert!(!secret.was_asked(), "a narinfo's URL took the node outside its upstreams");
    assert!(setup.nar_requests().is_empty(), "nothing downloaded: {:?}", setup.nar_requests());

    // The same, honest: a narinfo from the node's own upstream, trusted, as a claimer passes
    // it on (its URL made absolute). Downloaded and relayed as before.
    let cached = setup.cached_path(&contents);
    let mut passed_on = cached.clone();
    passed_on.url = format!("{}/{}", setup.upstream.url(), cached.url);
    setup.answers.lock().unwrap().insert(cached.store_path.hash(), passed_on.to_string());
    let (answer, bytes) = setup.relay(&cached);
    let nar_size = cached.nar_size;
    assert_eq!(answer, FetchResponse::Nar { nar_size, offset: 0 });
    assert_eq!(bytes, setup.source.dump(&cached.store_path.to_string()), "the NAR relayed");
    assert_eq!(setup.nar_requests().len(), 1, "{:?}", setup.nar_requests());
    assert!(!secret.was_asked());
}

#[test]
fn forty_relays_dropped_at_once_cost_one_download_that_stops() {
    if !nix_available() || !require_tool("nginx") {
        return;
    }
    // 8 MiB at 512 KiB/s: 16 s of download, if nothing stopped it.
    let setup = Setup::new(Some("512k"));
    let contents: Vec<u8> =
        (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    let cached = setup.cached_path(&contents);
    let mut passed_on = cached.clone();
    passed_on.url = format!("{}/{}", setup.upstream.url(), cached.url);
    setup.answers.lock().unwrap().insert(cached.store_path.hash(), passed_on.to_string());
    let request = FetchRequest::UpstreamNar {
        hash: cached.store_path.hash(),
        nar_hash: cached.nar_hash,
        offset: 0,
    };
    setup.runtime.block_on(async {
        for _ in 0..40 {
            let mut stream =
                MeshStream::mesh(open_fetch(&setup.peer, setup.node_id()).await, LIMITS);
            stream.write(&request).await.unwrap();
            // Dropped at once: reset.
        }
    });
    let file = setup.cache.join(&cached.url);
    let size = std::fs::metadata(&file).unwrap().len();
    wait_until(DEADLINE, "the node's download to end", || !setup.nar_requests().is_empty());
    let requests = setup.nar_requests();
    assert_eq!(requests.len(), 1, "one download for forty requests: {requests:?}");
    assert!(
        requests[0].body_bytes < size && !requests[0].completed,
        "the download stopped when nobody read it: {requests:?} of {size} bytes"
    );
}
