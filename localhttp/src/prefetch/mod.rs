//! Closure-aware NAR prefetch: once Nix has walked a closure's narinfos, the NARs of its small
//! paths are fetched ahead of Nix's requests, in the order Nix asks for them ([`order`]), so
//! that most of Nix's sequential NAR requests are answered from memory.
//!
//! Invariants:
//! - Nothing unverified is held: a NAR is kept only once [`VerifiedNar`] has read it whole and
//!   checked it against its verified narinfo (NarHash, NarSize, the CA check), exactly as a NAR
//!   Nix asks for itself is checked.
//! - The prefetch never answers a miss and never fails a request: a hit is served from memory,
//!   anything else (not fetched yet, failed, expired) goes the normal way. A failure is a
//!   metric and a debug log.
//! - Bounded: bytes held and reserved for transfers under way stay within `memory`; entries
//!   expire after `ttl`; at most `window_nars` and `window_bytes` ahead of Nix's last NAR
//!   request; at most `per_holder` prefetch transfers per holder at once (a holder serves 16
//!   NAR transfers per peer, so Nix's own requests always find room), `in_flight` in all.
//!
//! Walks are kept per client host (the connection's address; the machine's own Nix is one):
//! the verified narinfos it asked in the last `walk_ttl`, at most `walk_paths` of them.

mod fetch;
mod metrics;
pub mod order;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nixmesh_protocol::StorePathHash;
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::Verified;
use crate::health::PeerHealth;
use crate::nar_slots::NarSlots;
use crate::source::PathSource;
use crate::target::NarFile;

pub use metrics::PrefetchMetrics;

/// The prefetch's bounds (see the module docs).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of NARs held and reserved for transfers under way, at most.
    pub memory: u64,
    /// Only NARs of at most this size are prefetched (they are read whole to be verified).
    pub nar_size_max: u64,
    pub window_nars: usize,
    pub window_bytes: u64,
    pub per_holder: usize,
    pub in_flight: usize,
    /// How long a prefetched NAR is kept unasked.
    pub ttl: Duration,
    /// How long a walk is kept after its client's last request.
    pub walk_ttl: Duration,
    pub walk_paths: usize,
    /// No prefetch transfer starts while Nix's own NAR downloads from this substituter are
    /// this many or more: a client that many at once needs none fetched ahead, and the
    /// holders' 16 transfers per peer stay Nix's.
    pub busy_nars: usize,
    /// Client hosts whose walks are kept at once; the quietest is dropped first.
    pub walks: usize,
    /// What one prefetch transfer may take, from the request to its last byte.
    pub transfer_timeout: Duration,
    /// How long Nix's request for a NAR whose prefetch is under way waits for it, before it
    /// goes the normal way.
    pub wait_in_flight: Duration,
}

impl Limits {
    /// The defaults, with `memory` bytes at most.
    pub fn with_memory(memory: u64) -> Self {
        Limits {
            memory,
            nar_size_max: 1 << 20,
            window_nars: 32,
            window_bytes: 16 << 20,
            per_holder: 4,
            in_flight: 8,
            ttl: Duration::from_secs(30),
            walk_ttl: Duration::from_secs(60),
            walk_paths: 16_384,
            busy_nars: 12,
            walks: 64,
            transfer_timeout: Duration::from_secs(10),
            wait_in_flight: Duration::from_secs(2),
        }
    }
}

/// Which client a walk is of: its host's address (`None` when the server was not given one).
pub type Client = Option<IpAddr>;

/// The prefetch of one substituter (one listener). Cheap to share: clones share the state.
pub struct Prefetch<S: PathSource> {
    inner: Arc<Inner<S>>,
}

impl<S: PathSource> Clone for Prefetch<S> {
    fn clone(&self) -> Self {
        Prefetch { inner: self.inner.clone() }
    }
}

struct Inner<S: PathSource> {
    source: Arc<S>,
    health: Arc<PeerHealth<S::Peer>>,
    limits: Limits,
    /// `None`: prefetch off; every call is then a no-op.
    state: Option<Mutex<State<S::Peer>>>,
    metrics: PrefetchMetrics,
    idle_timeout: Duration,
    /// Nix's own NAR downloads (see [`Limits::busy_nars`]).
    nix_nars: Arc<NarSlots>,
}

struct State<P> {
    walks: HashMap<Client, Walk<P>>,
    nars: HashMap<StorePathHash, Held>,
    /// Sum of `size` over `nars` (held and in flight): what the memory bound limits.
    bytes: u64,
    in_flight: HashMap<P, usize>,
    in_flight_total: usize,
    /// The most `bytes` has been.
    peak: u64,
    sweeper_started: bool,
}

/// A NAR prefetched, or under way (`bytes` still `None`), for Nix's next requests.
struct Held {
    file: NarFile,
    size: u64,
    at: Instant,
    bytes: Option<Bytes>,
    /// Becomes true when the transfer has ended, either way.
    done: watch::Receiver<bool>,
}

/// The verified narinfos a client asked, and where its NAR requests have got to.
struct Walk<P> {
    paths: HashMap<StorePathHash, Arc<Verified<P>>>,
    seen: Instant,
    /// Nix's orders over `paths` (`nix copy`'s, then the substitution goals'), made again
    /// after the walk grows.
    orders: Option<[Order; 2]>,
    /// Which of `orders` Nix's requests follow (the last that foretold one).
    follows: usize,
    /// The NAR Nix asked last.
    last: Option<StorePathHash>,
    /// NARs the client asked for itself.
    asked: HashSet<StorePathHash>,
    /// How far into the order Nix's requests have gone: the paths before are passed.
    passed: usize,
}

impl<P> Walk<P> {
    fn new(now: Instant) -> Self {
        Walk {
            paths: HashMap::new(),
            seen: now,
            orders: None,
            follows: 0,
            last: None,
            asked: HashSet::new(),
            passed: 0,
        }
    }
}

impl<S: PathSource> Prefetch<S> {
    /// A prefetch over `source` within `limits`, or one that does nothing when `enabled` is
    /// false. Transfers are checked against the idle timeout of NAR transfers; none starts
    /// while `nix_nars` has `busy_nars` downloads under way.
    pub fn new(
        source: Arc<S>,
        health: Arc<PeerHealth<S::Peer>>,
        limits: Limits,
        enabled: bool,
        idle_timeout: Duration,
        nix_nars: Arc<NarSlots>,
    ) -> Self {
        let state = enabled.then(|| {
            Mutex::new(State {
                walks: HashMap::new(),
                nars: HashMap::new(),
                bytes: 0,
                in_flight: HashMap::new(),
                in_flight_total: 0,
                peak: 0,
                sweeper_started: false,
            })
        });
        let metrics = PrefetchMetrics::default();
        let inner = Inner { source, health, limits, state, metrics, idle_timeout, nix_nars };
        Prefetch { inner: Arc::new(inner) }
    }

    /// Its counters and gauge, to register with the node's metrics.
    pub fn metrics(&self) -> &PrefetchMetrics {
        &self.inner.metrics
    }

    /// Bytes held and reserved for transfers under way; never above the memory bound.
    pub fn bytes(&self) -> u64 {
        self.inner.state.as_ref().map_or(0, |s| s.lock().bytes)
    }

    /// The most bytes held and reserved at any moment so far (taken at every insert).
    pub fn peak_bytes(&self) -> u64 {
        self.inner.state.as_ref().map_or(0, |s| s.lock().peak)
    }

    /// NARs held or under way.
    pub fn entries(&self) -> usize {
        self.inner.state.as_ref().map_or(0, |s| s.lock().nars.len())
    }

    /// Records that `client` was served `verified`: part of its walk.
    pub fn narinfo_asked(&self, client: Client, verified: &Arc<Verified<S::Peer>>) {
        let Some(state) = &self.inner.state else { return };
        let now = Instant::now();
        let mut state = state.lock();
        let limits = &self.inner.limits;
        if !state.walks.contains_key(&client) && state.walks.len() >= limits.walks {
            let quietest = state.walks.iter().min_by_key(|(_, w)| w.seen).map(|(c, _)| *c);
            state.walks.retain(|c, _| Some(*c) != quietest);
        }
        let walk = state.walks.entry(client).or_insert_with(|| Walk::new(now));
        if now.duration_since(walk.seen) > limits.walk_ttl {
            *walk = Walk::new(now);
        }
        walk.seen = now;
        let hash = verified.narinfo.store_path.hash();
        // Its narinfo asked again: a new copy of it (into another store, or after a delete)
        // will ask its NAR again, so it is ahead of Nix once more.
        if walk.asked.remove(&hash) {
            walk.passed = 0;
        }
        if walk.paths.len() < limits.walk_paths
            && walk.paths.insert(hash, verified.clone()).is_none()
        {
            walk.orders = None;
            walk.passed = 0;
        }
    }

    /// The prefetched NAR `file`, if it is held whole and verified: taken (each is served
    /// once). One under way is waited for, `wait_in_flight` at most.
    pub async fn take(&self, file: &NarFile) -> Option<Bytes> {
        let state = self.inner.state.as_ref()?;
        let mut done = {
            let held = state.lock().nars.get(&file.store_hash).map(|h| (h.file, h.done.clone()));
            match held {
                Some((held, done)) if held == *file => done,
                _ => return None,
            }
        };
        let wait = done.wait_for(|ended| *ended);
        let _ = tokio::time::timeout(self.inner.limits.wait_in_flight, wait).await;
        let mut state = state.lock();
        let held = state.nars.get(&file.store_hash)?;
        if held.file != *file || held.bytes.is_none() {
            return None;
        }
        let held = state.nars.remove(&file.store_hash)?;
        state.bytes -= held.size;
        self.inner.metrics.used(state.bytes);
        held.bytes
    }

    /// Records that `client` asked for the NAR of `verified`, and starts prefetching the next
    /// ones of its walk in Nix's order, within the bounds.
    pub fn nar_asked(&self, client: Client, verified: &Arc<Verified<S::Peer>>) {
        let Some(state) = &self.inner.state else { return };
        let now = Instant::now();
        let mut state = state.lock();
        self.sweep(&mut state, now);
        let hash = verified.narinfo.store_path.hash();
        let Some(next) = self.window(&mut state, client, hash, now) else { return };
        for verified in next {
            if !self.start(&mut state, verified) {
                break;
            }
        }
        if !state.sweeper_started {
            state.sweeper_started = true;
            tokio::spawn(sweeper(Arc::downgrade(&self.inner)));
        }
    }

    /// The paths of `client`'s walk to prefetch after `hash`, best first; held entries Nix
    /// went past are dropped (evicted).
    fn window(
        &self,
        state: &mut State<S::Peer>,
        client: Client,
        hash: StorePathHash,
        now: Instant,
    ) -> Option<Vec<Arc<Verified<S::Peer>>>> {
        let limits = &self.inner.limits;
        let walk = state.walks.get_mut(&client)?;
        walk.seen = now;
        let orders = walk.orders.get_or_insert_with(|| orders_of(&walk.paths));
        let foretold = |k: usize| {
            walk.last.is_some_and(|last| orders[k].next_after(&last, &walk.asked) == Some(hash))
        };
        let foretold = [foretold(0), foretold(1)];
        if !foretold[walk.follows] && foretold[1 - walk.follows] {
            walk.follows = 1 - walk.follows;
            walk.passed = 0;
        }
        walk.asked.insert(hash);
        walk.last = Some(hash);
        let Order { list: order, at } = &orders[walk.follows];
        let position = *at.get(&hash)?;
        // Held NARs Nix went past are dropped only while it follows the order: what it skips
        // then, it will not ask.
        let mut passed = Vec::new();
        if foretold[walk.follows] {
            for behind in order.get(walk.passed..position).unwrap_or_default() {
                if !walk.asked.contains(behind) {
                    passed.push(*behind);
                }
            }
        }
        walk.passed = walk.passed.max(position);
        let (mut next, mut bytes) = (Vec::new(), 0);
        for ahead in &order[position + 1..] {
            if next.len() >= limits.window_nars || bytes >= limits.window_bytes {
                break;
            }
            let verified = &walk.paths[ahead];
            let size = verified.narinfo.nar_size;
            if walk.asked.contains(ahead) || size > limits.nar_size_max {
                continue;
            }
            bytes += size;
            next.push(verified.clone());
        }
        for behind in passed {
            if let Some(held) = state.nars.get(&behind)
                && held.bytes.is_some()
            {
                state.bytes -= held.size;
                state.nars.remove(&behind);
                self.inner.metrics.evicted(state.bytes);
            }
        }
        Some(next)
    }

    /// Starts prefetching `verified`'s NAR unless it is held already; false when the bounds
    /// leave no room (nothing further in the window is started then).
    fn start(&self, state: &mut State<S::Peer>, verified: Arc<Verified<S::Peer>>) -> bool {
        let limits = &self.inner.limits;
        let narinfo = &verified.narinfo;
        let hash = narinfo.store_path.hash();
        if state.nars.contains_key(&hash) {
            return true;
        }
        if state.bytes + narinfo.nar_size > limits.memory
            || state.in_flight_total >= limits.in_flight
            || self.inner.nix_nars.in_use() >= limits.busy_nars
        {
            return false;
        }
        let holders = self.inner.source.holders(&hash);
        let mut holders = self.inner.health.order(holders);
        if let Some(at) = holders.iter().position(|p| *p == verified.peer) {
            holders[..=at].rotate_right(1);
        }
        let Some(peer) = holders.into_iter().next() else { return true };
        let busy = state.in_flight.get(&peer).copied().unwrap_or(0);
        if busy >= limits.per_holder {
            return true;
        }
        *state.in_flight.entry(peer.clone()).or_default() += 1;
        state.in_flight_total += 1;
        let file = NarFile { store_hash: hash, nar_hash: narinfo.nar_hash };
        let (ended, done) = watch::channel(false);
        let (at, size) = (Instant::now(), narinfo.nar_size);
        state.nars.insert(hash, Held { file, size, at, bytes: None, done });
        state.bytes += size;
        state.peak = state.peak.max(state.bytes);
        self.inner.metrics.held(state.bytes);
        tokio::spawn(fetch::run(self.inner.clone(), verified, peer, ended));
        true
    }

    /// Drops prefetched NARs unasked for `ttl`, and walks quiet for `walk_ttl`.
    fn sweep(&self, state: &mut State<S::Peer>, now: Instant) {
        sweep(&self.inner, state, now);
    }
}

fn sweep<S: PathSource>(inner: &Inner<S>, state: &mut State<S::Peer>, now: Instant) {
    let (ttl, walk_ttl) = (inner.limits.ttl, inner.limits.walk_ttl);
    let mut dropped = 0;
    state.nars.retain(|_, held| {
        let keep = held.bytes.is_none() || now.duration_since(held.at) <= ttl;
        if !keep {
            dropped += held.size;
            inner.metrics.expired();
        }
        keep
    });
    state.bytes -= dropped;
    inner.metrics.held(state.bytes);
    state.walks.retain(|_, walk| now.duration_since(walk.seen) <= walk_ttl);
}

/// Sweeps every second while the prefetch lives, so that memory is given back after a walk
/// even when no request follows.
async fn sweeper<S: PathSource>(inner: std::sync::Weak<Inner<S>>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let Some(state) = &inner.state else { return };
        let mut state = state.lock();
        sweep(&inner, &mut state, Instant::now());
    }
}

/// One of Nix's orders over a walk, and each path's place in it.
struct Order {
    list: Vec<StorePathHash>,
    at: HashMap<StorePathHash, usize>,
}

impl Order {
    fn new(list: Vec<StorePathHash>) -> Self {
        let at = list.iter().enumerate().map(|(i, h)| (*h, i)).collect();
        Order { list, at }
    }

    /// The first path after `last` not yet `asked`, looking at most 64 ahead.
    fn next_after(
        &self,
        last: &StorePathHash,
        asked: &HashSet<StorePathHash>,
    ) -> Option<StorePathHash> {
        let from = self.at.get(last)? + 1;
        let ahead = self.list.get(from..)?.iter().take(64);
        ahead.copied().find(|h| !asked.contains(h))
    }
}

/// `nix copy`'s order and the substitution goals' over a walk.
fn orders_of<P>(paths: &HashMap<StorePathHash, Arc<Verified<P>>>) -> [Order; 2] {
    let nodes = paths
        .iter()
        .map(|(hash, v)| {
            let references = v.narinfo.references.iter().map(|r| r.hash()).collect();
            (*hash, order::Node { base_name: v.narinfo.store_path.base_name(), references })
        })
        .collect();
    [Order::new(order::nix_order(&nodes)), Order::new(order::goal_order(&nodes))]
}

#[cfg(test)]
mod tests;
