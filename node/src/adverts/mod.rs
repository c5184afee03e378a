//! Advertisements: telling peers which store paths this node holds, and learning theirs.
//!
//! - [`AdvertLog`] is this node's side: the set of its store paths, a generation number that
//!   grows with every change, and the last few changes, so that a subscriber that was briefly
//!   away gets only what changed.
//! - [`publish`] rescans the local store and answers subscribers.
//! - [`subscribe`] follows each connected peer's advertisements into the index.
//!
//! [`start`] wires both sides for a node (and for the tests, which start the same).

pub mod forget;
pub mod publish;
pub mod store_watch;
pub mod subscribe;

use std::collections::VecDeque;
use std::sync::Arc;

use nixmesh_protocol::StorePathHash;
use nixmesh_protocol::mesh_messages::AdvertPosition;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use crate::index::Index;
use crate::mesh::{Mesh, MeshEvent};
use crate::node::shutdown::Shutdown;

/// Starts advertising both ways, until `shutdown`: peers' subscriptions are answered from the
/// log returned (empty, of a new epoch; the caller keeps it current, as
/// [`publish::start_rescans`] does from the store), and each peer `events` reports connected is
/// followed into `index` until it disconnects. `events` must be the mesh's own, so that no
/// peer's coming or going is missed.
pub fn start(
    mesh: &Mesh,
    index: Arc<Index>,
    events: mpsc::Receiver<MeshEvent>,
    shutdown: &Shutdown,
) -> Arc<AdvertLog> {
    let log = Arc::new(AdvertLog::new(rand::random()));
    shutdown.spawn(publish::serve(mesh.clone(), log.clone(), shutdown.clone()));
    subscribe::follow_peers(mesh, index, events, shutdown);
    log
}

/// How many past changes are kept for catching subscribers up.
const LOG_CAPACITY: usize = 256;

/// One change of the advertised set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub from: u64,
    pub to: u64,
    pub added: Vec<StorePathHash>,
    pub removed: Vec<StorePathHash>,
}

/// What a subscriber at some position needs to be current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatchUp {
    /// Nothing new.
    Current,
    /// These changes, in order.
    Changes(Vec<Change>),
    /// The whole set: the position is unknown, from another epoch, or older than the log.
    Snapshot { position: AdvertPosition, hashes: Vec<StorePathHash> },
}

struct LogState {
    position: AdvertPosition,
    /// Sorted, each once.
    paths: Vec<StorePathHash>,
    changes: VecDeque<Change>,
}

/// This node's advertised store paths, with a short history of changes.
pub struct AdvertLog {
    state: Mutex<LogState>,
    generation: watch::Sender<u64>,
    /// Whether the store has been listed once (an empty store's listing changes nothing).
    listed: std::sync::atomic::AtomicBool,
}

impl AdvertLog {
    /// An empty log for a new epoch (a random number, so that subscribers who knew an earlier
    /// run of this node start from a snapshot).
    pub fn new(epoch: u64) -> Self {
        let position = AdvertPosition { epoch, generation: 0 };
        AdvertLog {
            state: Mutex::new(LogState { position, paths: Vec::new(), changes: VecDeque::new() }),
            generation: watch::channel(0).0,
            listed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut LogState) -> R) -> R {
        f(&mut self.state.lock())
    }

    /// Replaces the advertised set with `current` (any order, duplicates ignored); records
    /// the change if there is one. The two sets are compared as sorted lists, one walk
    /// through both: a node does this for its whole store each time the store changes.
    pub fn update(&self, mut current: Vec<StorePathHash>) -> Option<Change> {
        current.sort_unstable();
        current.dedup();
        self.listed.store(true, std::sync::atomic::Ordering::SeqCst);
        let change = self.with(|state| {
            let (added, removed) = differences(&current, &state.paths);
            if added.is_empty() && removed.is_empty() {
                return None;
            }
            let from = state.position.generation;
            state.position.generation += 1;
            let change = Change { from, to: state.position.generation, added, removed };
            state.paths = current;
            if state.changes.len() == LOG_CAPACITY {
                state.changes.pop_front();
            }
            state.changes.push_back(change.clone());
            Some(change)
        })?;
        self.generation.send_replace(change.to);
        Some(change)
    }

    /// The current position.
    pub fn position(&self) -> AdvertPosition {
        self.with(|state| state.position)
    }

    /// How many paths are advertised.
    pub fn len(&self) -> usize {
        self.with(|state| state.paths.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the store has been listed since the start.
    pub fn listed(&self) -> bool {
        self.listed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `hash` is advertised: the local store held it at the last listing.
    pub fn contains(&self, hash: &StorePathHash) -> bool {
        self.with(|state| state.paths.binary_search(hash).is_ok())
    }

    /// What a subscriber at `known` needs to become current.
    pub fn catch_up(&self, known: Option<AdvertPosition>) -> CatchUp {
        self.with(|state| {
            let snapshot =
                || CatchUp::Snapshot { position: state.position, hashes: state.paths.clone() };
            let Some(known) = known.filter(|k| k.epoch == state.position.epoch) else {
                return snapshot();
            };
            if known.generation == state.position.generation {
                return CatchUp::Current;
            }
            if known.generation > state.position.generation {
                return snapshot();
            }
            match state.changes.iter().position(|c| c.from == known.generation) {
                Some(start) => CatchUp::Changes(state.changes.range(start..).cloned().collect()),
                None => snapshot(),
            }
        })
    }

    /// Wakes when the generation changes.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// What `new` has that `old` lacks, and what `old` has that `new` lacks; both sorted and
/// without duplicates, and so are the answers.
fn differences(
    new: &[StorePathHash],
    old: &[StorePathHash],
) -> (Vec<StorePathHash>, Vec<StorePathHash>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut n, mut o) = (new.iter().peekable(), old.iter().peekable());
    loop {
        match (n.peek(), o.peek()) {
            (Some(a), Some(b)) if a == b => {
                n.next();
                o.next();
            }
            (Some(a), Some(b)) if a < b => added.extend(n.next()),
            (Some(_), Some(_)) => removed.extend(o.next()),
            (Some(_), None) => added.extend(n.by_ref()),
            (None, Some(_)) => removed.extend(o.by_ref()),
            (None, None) => return (added, removed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ns: &[u8]) -> Vec<StorePathHash> {
        ns.iter().map(|&n| StorePathHash([n; 20])).collect()
    }

    #[test]
    fn the_difference_of_sorted_lists_is_the_difference_of_sets() {
        use std::collections::BTreeSet;
        let mut seed = 7u64;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 59) as u8
        };
        for _ in 0..500 {
            let a: BTreeSet<u8> = (0..next()).map(|_| next()).collect();
            let b: BTreeSet<u8> = (0..next()).map(|_| next()).collect();
            let list = |s: &BTreeSet<u8>| set(&s.iter().copied().collect::<Vec<_>>());
            let (added, removed) = differences(&list(&a), &list(&b));
            assert_eq!(added, list(&a.difference(&b).copied().collect()));
            assert_eq!(removed, list(&b.difference(&a).copied().collect()));
        }
    }

    #[test]
    fn an_update_in_any_order_with_duplicates_is_the_set() {
        let log = AdvertLog::new(1);
        let c = log.update(set(&[3, 1, 3, 2])).unwrap();
        assert_eq!(c.added, set(&[1, 2, 3]));
        assert!(log.update(set(&[2, 1, 3, 1])).is_none());
        assert_eq!(log.len(), 3);
    }

    #[test]
    fn changes_and_catch_up() {
        let log = AdvertLog::new(7);
        assert!(
            matches!(log.catch_up(None), CatchUp::Snapshot { hashes, .. } if hashes.is_empty())
        );
        let c1 = log.update(set(&[1, 2])).unwrap();
        assert_eq!((c1.from, c1.to, c1.added.len()), (0, 1, 2));
        assert!(log.update(set(&[1, 2])).is_none(), "no change, no generation");
        let c2 = log.update(set(&[2, 3])).unwrap();
        assert_eq!(c2.added, vec![StorePathHash([3; 20])]);
        assert_eq!(c2.removed, vec![StorePathHash([1; 20])]);

        let at = |generation| Some(AdvertPosition { epoch: 7, generation });
        assert_eq!(log.catch_up(at(2)), CatchUp::Current);
        assert_eq!(log.catch_up(at(1)), CatchUp::Changes(vec![c2.clone()]));
        assert_eq!(log.catch_up(at(0)), CatchUp::Changes(vec![c1, c2]));
        // Another epoch, or a generation from the future: start over.
        let other_epoch = Some(AdvertPosition { epoch: 8, generation: 2 });
        assert!(matches!(log.catch_up(other_epoch), CatchUp::Snapshot { .. }));
        assert!(matches!(log.catch_up(at(9)), CatchUp::Snapshot { .. }));
    }

    #[test]
    fn an_old_position_falls_back_to_a_snapshot() {
        let log = AdvertLog::new(1);
        for n in 0..LOG_CAPACITY + 2 {
            let mut hash = [0u8; 20];
            hash[..8].copy_from_slice(&(n as u64).to_be_bytes());
            log.update(vec![StorePathHash(hash)]);
        }
        let old = Some(AdvertPosition { epoch: 1, generation: 0 });
        match log.catch_up(old) {
            CatchUp::Snapshot { position, hashes } => {
                assert_eq!(position.generation, LOG_CAPACITY as u64 + 2);
                assert_eq!(hashes.len(), 1);
            }
            other => panic!("expected a snapshot, got {other:?}"),
        }
    }
}
