//! The NAR prefetch: after Nix has walked a closure's narinfos, the NARs of its small paths
//! are fetched ahead of Nix's requests in Nix's order, verified as any NAR, and a wrong one is
//! never served. The stand-in mesh here holds a whole closure, on honest or hostile peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use nixmesh_localhttp::{
    Config, NarStream, NodeStatus, NodeView, PathSource, PeerSummary, SourceError, router, serve,
};
use nixmesh_protocol::signature::{SigningKey, TrustedKeys};
use nixmesh_protocol::{Sha256, StorePath, StorePathHash};
use tokio::net::TcpListener;

use crate::support::{get, narinfo_for};

/// One path of the closure: its narinfo as peers send it, its NAR.
struct Path {
    store_path: StorePath,
    narinfo: String,
    nar: Bytes,
}

/// Peers that all hold every path of a closure; a `hostile` one sends each NAR with one byte
/// flipped.
struct ClosureSource {
    paths: HashMap<StorePathHash, Path>,
    peers: Vec<(&'static str, bool)>,
    /// Every NAR request, as (peer, path), in the order they arrived.
    nar_calls: Mutex<Vec<(String, StorePathHash)>>,
}

impl PathSource for ClosureSource {
    type Peer = String;

    fn holders(&self, hash: &StorePathHash) -> Vec<String> {
        if !self.paths.contains_key(hash) {
            return Vec::new();
        }
        self.peers.iter().map(|(name, _)| (*name).to_owned()).collect()
    }

    async fn fetch_narinfo(
        &self,
        _peer: &String,
        hash: StorePathHash,
    ) -> Result<Option<String>, SourceError> {
        Ok(self.paths.get(&hash).map(|p| p.narinfo.clone()))
    }

    async fn fetch_nar(
        &self,
        peer: &String,
        hash: StorePathHash,
        _nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        self.nar_calls.lock().unwrap().push((peer.clone(), hash));
        let Some(path) = self.paths.get(&hash) else { return Ok(None) };
        let hostile = self.peers.iter().any(|(name, bad)| name == peer && *bad);
        let mut nar = path.nar.to_vec();
        if hostile {
            let middle = nar.len() / 2;
            nar[middle] ^= 1;
        }
        let chunk = Bytes::from(nar).slice(offset as usize..);
        Ok(Some(Box::pin(stream::iter([Ok(chunk)]))))
    }
}

impl NodeView for ClosureSource {
    fn peers(&self) -> Vec<PeerSummary> {
        Vec::new()
    }

    fn status(&self) -> NodeStatus {
        NodeStatus::default()
    }

    fn advertisers(&self, _hash: &StorePathHash) -> Vec<PeerSummary> {
        Vec::new()
    }
}

/// A closure of `leaves` paths of `nar_size` bytes and a top referring to them all, signed by
/// `key`, on `peers`.
fn closure(
    leaves: usize,
    nar_size: usize,
    key: &SigningKey,
    peers: Vec<(&'static str, bool)>,
) -> ClosureSource {
    let mut paths = HashMap::new();
    let mut made = |n: usize, references: Vec<StorePath>| {
        let mut hash = [0u8; 20];
        hash[..8].copy_from_slice(&(n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
        let store_path = StorePath::from_parts(StorePathHash(hash), &format!("p-{n}")).unwrap();
        let nar: Vec<u8> = (0..nar_size).map(|i| (i.wrapping_mul(7) + n) as u8).collect();
        let mut narinfo = narinfo_for(&store_path.to_string(), &nar, key);
        narinfo.references = references;
        narinfo.signatures.clear();
        narinfo.sign(key);
        let path =
            Path { store_path: store_path.clone(), narinfo: narinfo.to_string(), nar: nar.into() };
        paths.insert(store_path.hash(), path);
        store_path
    };
    let leaves: Vec<StorePath> = (1..=leaves).map(|n| made(n, Vec::new())).collect();
    made(0, leaves);
    ClosureSource { paths, peers, nar_calls: Mutex::new(Vec::new()) }
}

fn config(key: &SigningKey) -> Config {
    Config {
        trusted_keys: TrustedKeys::new(vec![key.verifying_key()]),
        nar_first_byte_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

async fn start(source: Arc<ClosureSource>, config: Config) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stall = config.client_stall_timeout;
    let app = router(source.clone(), source, Default::default(), config, Default::default());
    tokio::spawn(serve(listener, app, stall, std::future::pending()));
    addr
}

/// Nix's order for the closure: the leaves by base name, then the top.
fn nix_order(source: &ClosureSource) -> Vec<&Path> {
    let mut leaves: Vec<&Path> =
        source.paths.values().filter(|p| !p.store_path.name().eq("p-0")).collect();
    leaves.sort_by_key(|p| p.store_path.base_name());
    let top = source.paths.values().find(|p| p.store_path.name() == "p-0").unwrap();
    leaves.push(top);
    leaves
}

/// The NAR URL the narinfo served for `path` names.
async fn walk(addr: SocketAddr, source: &ClosureSource) -> HashMap<StorePathHash, String> {
    let mut urls = HashMap::new();
    for (hash, _) in source.paths.iter() {
        let reply = get(addr, &format!("/{hash}.narinfo")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let url = reply.text().lines().find_map(|l| l.strip_prefix("URL: ").map(String::from));
        urls.insert(*hash, format!("/{}", url.unwrap()));
    }
    urls
}

/// `nixmesh_prefetch_nars_total{result}` as `/metrics` gives it.
async fn prefetched(addr: SocketAddr, result: &str) -> u64 {
    let text = get(addr, "/metrics").await.text();
    let line = format!("nixmesh_prefetch_nars_total{{result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&line)?.parse().ok()).unwrap_or(0)
}

/// Waits until no prefetch transfer is under way (the source's NAR requests stop growing).
async fn settled(source: &ClosureSource) {
    let mut seen = usize::MAX;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = source.nar_calls.lock().unwrap().len();
        if now == seen {
            return;
        }
        seen = now;
    }
}

#[tokio::test]
async fn prefetched_nars_follow_nix_copys_order_and_answer_nix() {
    let key = SigningKey::from_seed("cache-a-1", [7; 32]);
    let source = Arc::new(closure(40, 3000, &key, vec![("holder", false)]));
    let addr = start(source.clone(), config(&key)).await;
    let order = nix_order(&source);
    copy(addr, &source).await;
    let calls = source.nar_calls.lock().unwrap().clone();
    assert_eq!(calls.len(), order.len(), "each NAR fetched once: {calls:?}");
    assert_eq!(prefetched(addr, "used").await, order.len() as u64 - 1);
    // Copied again within the minute, as into a second store: ahead of Nix again.
    copy(addr, &source).await;
    assert_eq!(source.nar_calls.lock().unwrap().len(), 2 * order.len());
    assert_eq!(prefetched(addr, "used").await, 2 * (order.len() as u64 - 1));
}

/// What `nix copy` asks of the closure: every narinfo, then every NAR in Nix's order, one
/// after the other; checks the first prefetches and every NAR's bytes.
async fn copy(addr: SocketAddr, source: &ClosureSource) {
    let urls = walk(addr, source).await;
    let order = nix_order(source);
    let before = source.nar_calls.lock().unwrap().len();
    let first = get(addr, &urls[&order[0].store_path.hash()]).await;
    assert_eq!(first.body, order[0].nar);
    settled(source).await;
    // Ahead of Nix: the next ones in Nix's order, as many as one holder gives the prefetch
    // at once (4).
    let calls = source.nar_calls.lock().unwrap().clone();
    let asked: Vec<StorePathHash> = calls[before..].iter().map(|c| c.1).collect();
    let expected: Vec<StorePathHash> = order.iter().take(5).map(|p| p.store_path.hash()).collect();
    let mut ahead = asked[1..].to_vec();
    ahead.sort_by_key(|h| expected.iter().position(|e| e == h));
    assert_eq!(ahead, expected[1..5], "prefetched the next 4 in Nix's order");
    for path in &order[1..] {
        let reply = get(addr, &urls[&path.store_path.hash()]).await;
        assert_eq!(reply.status, 200);
        assert!(reply.body == path.nar, "{} arrived changed", path.store_path);
        settled(source).await;
    }
}

#[tokio::test]
async fn a_wrong_prefetched_nar_is_never_served() {
    let key = SigningKey::from_seed("cache-a-1", [7; 32]);
    // The hostile holder is asked first, by the prefetch and by Nix's own request alike.
    let peers = vec![("hostile", true), ("good", false)];
    let source = Arc::new(closure(12, 5000, &key, peers));
    let addr = start(source.clone(), config(&key)).await;
    let urls = walk(addr, &source).await;
    for path in nix_order(&source) {
        let reply = get(addr, &urls[&path.store_path.hash()]).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.body == path.nar, "{}: a wrong byte reached Nix", path.store_path);
        settled(&source).await;
    }
    assert!(prefetched(addr, "failed").await > 0, "the hostile holder's NARs were dropped");
    let calls = source.nar_calls.lock().unwrap().clone();
    assert!(calls.iter().any(|(peer, _)| peer == "good"), "{calls:?}");
}

#[tokio::test]
async fn with_prefetch_off_every_nar_is_fetched_when_asked() {
    let key = SigningKey::from_seed("cache-a-1", [7; 32]);
    let source = Arc::new(closure(10, 2000, &key, vec![("holder", false)]));
    let addr = start(source.clone(), Config { prefetch: false, ..config(&key) }).await;
    let urls = walk(addr, &source).await;
    for (n, path) in nix_order(&source).into_iter().enumerate() {
        let reply = get(addr, &urls[&path.store_path.hash()]).await;
        assert!(reply.body == path.nar);
        assert_eq!(source.nar_calls.lock().unwrap().len(), n + 1, "none fetched ahead");
    }
    assert_eq!(prefetched(addr, "used").await, 0);
}
