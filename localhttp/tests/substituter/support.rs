//! A `PathSource` whose peers behave as each test says, the real router on 127.0.0.1:0, and a
//! raw HTTP/1.1 client that shows exactly what a client receives, aborted transfers included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::{self, StreamExt};
use nixmesh_localhttp::health::PeerHealth;
use nixmesh_localhttp::{
    Config, NarStream, NodeStatus, NodeView, PathSource, PeerSummary, SourceError, router, serve,
};
use nixmesh_protocol::signature::{SigningKey, TrustedKeys};
use nixmesh_protocol::{NarInfo, Sha256, StorePath, StorePathHash};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const PATH: &str = "/nix/store/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-hello-2.12";
pub const OTHER_PATH: &str = "/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-bash-5.1";
pub const CHUNK: usize = 4096;

/// The path every test serves: its NAR, and its narinfo as a cache signed it.
pub struct Fixture {
    pub nar: Vec<u8>,
    pub narinfo: NarInfo,
    pub key: SigningKey,
}

impl Fixture {
    pub fn new() -> Self {
        // Not a real NAR: the substituter checks size and hash, never the format. The size is
        // not a multiple of CHUNK, so an over-long NAR's last chunk straddles the end.
        let nar: Vec<u8> = (0..100_003u32).map(|i| (i * 31 + i / 7) as u8).collect();
        let key = SigningKey::from_seed("cache-a-1", [7; 32]);
        let narinfo = narinfo_for(PATH, &nar, &key);
        Fixture { nar, narinfo, key }
    }

    pub fn hash(&self) -> StorePathHash {
        self.narinfo.store_path.hash()
    }

    pub fn trusted(&self) -> TrustedKeys {
        TrustedKeys::new(vec![self.key.verifying_key()])
    }

    pub fn nar_url(&self) -> String {
        format!("/nar/{}-{}.nar", self.hash(), self.narinfo.nar_hash.to_nixbase32())
    }

    pub fn narinfo_url(&self) -> String {
        format!("/{}.narinfo", self.hash())
    }

    pub fn chunks(&self) -> Vec<Bytes> {
        chunked(&self.nar)
    }
}

/// A narinfo as a compressing cache writes it, signed by `key`.
pub fn narinfo_for(path: &str, nar: &[u8], key: &SigningKey) -> NarInfo {
    let mut narinfo = NarInfo {
        store_path: StorePath::parse(path).unwrap(),
        url: "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz".to_owned(),
        compression: Some("xz".to_owned()),
        file_hash: Some(Sha256([9; 32])),
        file_size: Some(4321),
        nar_hash: Sha256::digest(nar),
        nar_size: nar.len() as u64,
        references: vec![StorePath::parse(OTHER_PATH).unwrap()],
        deriver: None,
        system: None,
        signatures: vec![],
        ca: None,
        extra: vec![],
    };
    narinfo.sign(key);
    narinfo
}

pub fn chunked(bytes: &[u8]) -> Vec<Bytes> {
    bytes.chunks(CHUNK).map(Bytes::copy_from_slice).collect()
}

/// What a test peer answers to a narinfo request.
#[derive(Clone)]
pub enum NarInfoReply {
    Text(String),
    NotHeld,
    Fails,
    NeverAnswers,
}

/// What a test peer answers to a NAR request.
#[derive(Clone)]
pub enum NarReply {
    Chunks(Vec<Bytes>),
    /// These chunks, then nothing, forever.
    ChunksThenStall(Vec<Bytes>),
    /// These chunks, then an error.
    ChunksThenFails(Vec<Bytes>),
    /// These chunks, one after each pause: a holder sending, but slowly.
    Trickle(Vec<Bytes>, Duration),
    NeverAnswers,
}

pub struct TestPeer {
    pub name: &'static str,
    pub narinfo: NarInfoReply,
    pub nar: NarReply,
}

/// Peers that all hold [`PATH`] while `connected`, and nothing else.
pub struct TestSource {
    hash: StorePathHash,
    peers: Vec<TestPeer>,
    pub connected: AtomicBool,
    pub narinfo_calls: AtomicUsize,
    /// Every NAR request, as (peer, offset).
    pub nar_calls: Mutex<Vec<(String, u64)>>,
    /// NAR chunks the peers' streams have given so far (all requests).
    pub nar_chunks_sent: Arc<AtomicUsize>,
    /// What each peer has besides: listings and build logs.
    pub documents: Mutex<Documents>,
}

/// The listings and build logs test peers give, by peer, and what was asked of them.
#[derive(Default)]
pub struct Documents {
    /// A peer's listing of [`PATH`], whatever NAR hash is asked for.
    pub listings: HashMap<String, Bytes>,
    /// A peer's build logs, by the derivation's base name.
    pub logs: HashMap<(String, String), Bytes>,
    /// Every listing request, as (peer, NAR hash).
    pub listing_calls: Vec<(String, Sha256)>,
    /// Every build log request, by peer.
    pub log_calls: Vec<String>,
}

impl TestSource {
    pub fn new(fixture: &Fixture, peers: Vec<TestPeer>) -> Arc<Self> {
        Arc::new(TestSource {
            hash: fixture.hash(),
            peers,
            connected: AtomicBool::new(true),
            narinfo_calls: AtomicUsize::new(0),
            nar_calls: Mutex::new(Vec::new()),
            nar_chunks_sent: Arc::default(),
            documents: Mutex::default(),
        })
    }

    /// One peer that answers everything correctly.
    pub fn honest(fixture: &Fixture) -> Arc<Self> {
        Self::new(fixture, vec![honest_peer("honest", fixture)])
    }

    pub fn narinfo_calls(&self) -> usize {
        self.narinfo_calls.load(Ordering::SeqCst)
    }

    pub fn nar_calls(&self) -> Vec<(String, u64)> {
        self.nar_calls.lock().unwrap().clone()
    }

    fn peer(&self, name: &str) -> &TestPeer {
        self.peers
            .iter()
            .find(|p| p.name == name)
            .expect("the router asked a peer it was not given")
    }
}

/// A peer that answers nothing at all.
pub fn silent_peer(name: &'static str) -> TestPeer {
    TestPeer { name, narinfo: NarInfoReply::NeverAnswers, nar: NarReply::NeverAnswers }
}

pub fn honest_peer(name: &'static str, fixture: &Fixture) -> TestPeer {
    TestPeer {
        name,
        narinfo: NarInfoReply::Text(fixture.narinfo.to_string()),
        nar: NarReply::Chunks(fixture.chunks()),
    }
}

impl PathSource for TestSource {
    type Peer = String;

    fn holders(&self, hash: &StorePathHash) -> Vec<String> {
        if *hash != self.hash || !self.connected.load(Ordering::SeqCst) {
            return Vec::new();
        }
        self.peers.iter().map(|p| p.name.to_owned()).collect()
    }

    async fn fetch_narinfo(
        &self,
        peer: &String,
        _hash: StorePathHash,
    ) -> Result<Option<String>, SourceError> {
        self.narinfo_calls.fetch_add(1, Ordering::SeqCst);
        match self.peer(peer).narinfo.clone() {
            NarInfoReply::Text(text) => Ok(Some(text)),
            NarInfoReply::NotHeld => Ok(None),
            NarInfoReply::Fails => Err(failed(peer, "narinfo")),
            NarInfoReply::NeverAnswers => std::future::pending().await,
        }
    }

    async fn fetch_nar(
        &self,
        peer: &String,
        _hash: StorePathHash,
        _nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        self.nar_calls.lock().unwrap().push((peer.clone(), offset));
        // The bytes from `offset` on, as a holder resuming a transfer sends them.
        let sent = self.nar_chunks_sent.clone();
        let ok = |c: Vec<Bytes>| {
            let mut skip = offset as usize;
            let from_offset = c.into_iter().filter_map(move |mut chunk| {
                let cut = skip.min(chunk.len());
                skip -= cut;
                let _ = chunk.split_to(cut);
                (!chunk.is_empty()).then_some(chunk)
            });
            let from_offset = from_offset.inspect(move |_| {
                sent.fetch_add(1, Ordering::SeqCst);
            });
            stream::iter(from_offset.map(Ok::<_, SourceError>))
        };
        let stream: NarStream = match self.peer(peer).nar.clone() {
            NarReply::Chunks(c) => Box::pin(ok(c)),
            NarReply::ChunksThenStall(c) => Box::pin(ok(c).chain(stream::pending())),
            NarReply::ChunksThenFails(c) => {
                Box::pin(ok(c).chain(stream::once(std::future::ready(Err(failed(peer, "nar"))))))
            }
            NarReply::Trickle(c, pause) => Box::pin(ok(c).then(move |chunk| async move {
                tokio::time::sleep(pause).await;
                chunk
            })),
            NarReply::NeverAnswers => std::future::pending().await,
        };
        Ok(Some(stream))
    }

    async fn fetch_listing(
        &self,
        peer: &String,
        _hash: StorePathHash,
        nar_hash: Sha256,
    ) -> Result<Option<Bytes>, SourceError> {
        let mut documents = self.documents.lock().unwrap();
        documents.listing_calls.push((peer.clone(), nar_hash));
        Ok(documents.listings.get(peer).cloned())
    }

    fn log_holders(&self) -> Vec<String> {
        self.peers.iter().map(|p| p.name.to_owned()).collect()
    }

    async fn fetch_build_log(
        &self,
        peer: &String,
        drv: &StorePath,
    ) -> Result<Option<Bytes>, SourceError> {
        let mut documents = self.documents.lock().unwrap();
        documents.log_calls.push(peer.clone());
        Ok(documents.logs.get(&(peer.clone(), drv.base_name())).cloned())
    }
}

impl NodeView for TestSource {
    fn peers(&self) -> Vec<PeerSummary> {
        self.peers
            .iter()
            .map(|p| PeerSummary {
                id: p.name.to_owned(),
                addresses: vec!["/ip4/127.0.0.1/tcp/4001".to_owned()],
                paths: 1,
                connected: true,
                last_seen_secs_ago: Some(3),
                rtt: Some(Duration::from_millis(2)),
                ..PeerSummary::default()
            })
            .collect()
    }

    fn status(&self) -> NodeStatus {
        NodeStatus {
            degraded: None,
            peer_id: "12D3KooWtest".to_owned(),
            listen_addresses: vec!["/ip4/127.0.0.1/tcp/4001".to_owned()],
            local_paths: 0,
            peers_connected: self.peers.len() as u64,
            peers_known: self.peers.len() as u64,
            indexed_paths: self.peers.len() as u64,
            trusted_keys: vec!["cache-a-1:...".to_owned()],
            signing_key: None,
            ..NodeStatus::default()
        }
    }

    /// Every peer, for the path they hold.
    fn advertisers(&self, hash: &StorePathHash) -> Vec<PeerSummary> {
        if *hash != self.hash {
            return Vec::new();
        }
        self.peers()
    }
}

fn failed(peer: &str, operation: &'static str) -> SourceError {
    SourceError::Failed { peer: peer.to_owned(), operation, reason: "test peer fails".to_owned() }
}

/// Short limits, so that the time-limit tests run quickly; every NAR streamed (none verified
/// whole first), so that the fixture's small NAR shows what a large one does.
pub fn test_config(fixture: &Fixture) -> Config {
    Config {
        trusted_keys: fixture.trusted(),
        narinfo_peer_timeout: Duration::from_millis(300),
        narinfo_deadline: Duration::from_millis(800),
        nar_first_byte_timeout: Duration::from_millis(300),
        nar_start_deadline: Duration::from_secs(3),
        nar_idle_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(5),
        nar_verified_whole_up_to: 0,
        ..Config::default()
    }
}

/// The router over `source`, served on a fresh loopback port for the rest of the test.
pub async fn start(source: Arc<TestSource>, config: Config) -> SocketAddr {
    start_with_health(source, config, Default::default()).await
}

/// [`start`], counting peers' faults in `health`.
pub async fn start_with_health(
    source: Arc<TestSource>,
    config: Config,
    health: Arc<PeerHealth<String>>,
) -> SocketAddr {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stall = config.client_stall_timeout;
    tokio::spawn(serve(
        listener,
        router(source.clone(), source, health, config, Default::default()),
        stall,
        std::future::pending(),
    ));
    addr
}

/// A response as it arrived on the socket.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub elapsed: Duration,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length").map(|v| v.parse().unwrap())
    }

    /// Whether the body arrived whole: as many bytes as `Content-Length` said.
    pub fn complete(&self) -> bool {
        self.content_length() == Some(self.body.len())
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path).await
}

/// Sends one request with `Connection: close` and reads until the server closes the
/// connection, cleanly or not; a reset ends the body where it stands.
pub async fn request(addr: SocketAddr, method: &str, target: &str) -> Reply {
    let head =
        format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    send_raw(addr, head.as_bytes()).await.expect("the server closed without a response")
}

/// `raw` as the request bytes; `None` when the server closed without a status line.
pub async fn send_raw(addr: SocketAddr, raw: &[u8]) -> Option<Reply> {
    let started = Instant::now();
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(raw).await.unwrap();
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let read_all = async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the server neither finished nor aborted the response within 20 s");
    let elapsed = started.elapsed();
    let end = received.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&received[..end]).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect::<HashMap<_, _>>();
    assert_ne!(
        headers.get("transfer-encoding").map(String::as_str),
        Some("chunked"),
        "every response here has a known length"
    );
    Some(Reply { status, headers, body: received[end + 4..].to_vec(), elapsed })
}
