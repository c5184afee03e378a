//! Peer health: a peer that gave a bad narinfo where another gave a good one, a NAR that failed
//! its checks, or that stalled mid-transfer, is demoted: for [`DEMOTED_FOR`] it is asked only
//! after every healthy holder, and a second fault in that time has it skipped (while another
//! holder has the path: a skipped peer that is the only holder is still asked, last, since a
//! miss would make Nix give up on the path for an hour) until the time is up.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// How long a fault counts against a peer.
pub const DEMOTED_FOR: Duration = Duration::from_secs(10 * 60);
/// The most peers with faults remembered (the oldest fault is forgotten first).
const MAX_REMEMBERED: usize = 4096;

/// Faults of peers, shared by the routes and the status pages.
pub struct PeerHealth<P> {
    faults: Mutex<HashMap<P, Faults>>,
}

#[derive(Debug, Clone)]
struct Faults {
    /// The last fault, for people.
    reason: String,
    /// Faults since `since`.
    count: u32,
    since: Instant,
}

/// How a peer stands, as the status pages show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demotion {
    pub reason: String,
    /// Skipped (a second fault), not only asked last.
    pub skipped: bool,
    /// Time left until the peer is healthy again.
    pub left: Duration,
}

impl<P: Clone + Eq + Hash> Default for PeerHealth<P> {
    fn default() -> Self {
        PeerHealth { faults: Mutex::new(HashMap::new()) }
    }
}

impl<P: Clone + Eq + Hash> PeerHealth<P> {
    /// Counts a fault of `peer`.
    pub fn fault(&self, peer: &P, reason: impl Into<String>) {
        let mut faults = self.faults.lock();
        faults.retain(|_, f| f.since.elapsed() < DEMOTED_FOR);
        if faults.len() >= MAX_REMEMBERED && !faults.contains_key(peer) {
            let oldest = faults.iter().min_by_key(|(_, f)| f.since).map(|(p, _)| p.clone());
            faults.remove(&oldest.expect("not empty"));
        }
        let entry = faults.entry(peer.clone()).or_insert(Faults {
            reason: String::new(),
            count: 0,
            since: Instant::now(),
        });
        entry.reason = reason.into();
        entry.count += 1;
    }

    /// How `peer` stands, if demoted.
    pub fn demotion(&self, peer: &P) -> Option<Demotion> {
        let faults = self.faults.lock();
        standing(faults.get(peer)?)
    }

    /// `holders` (best first) as they are to be asked: healthy ones in their order, then the
    /// demoted ones; skipped ones only when no other is left. On every request's path: one
    /// lock, and nothing more while no peer has a fault.
    pub fn order(&self, holders: Vec<P>) -> Vec<P> {
        let faults = self.faults.lock();
        if faults.is_empty() {
            return holders;
        }
        let mut healthy = Vec::new();
        let mut demoted = Vec::new();
        let mut skipped = Vec::new();
        for peer in holders {
            match faults.get(&peer).and_then(standing) {
                None => healthy.push(peer),
                Some(d) if d.skipped => skipped.push(peer),
                Some(_) => demoted.push(peer),
            }
        }
        healthy.append(&mut demoted);
        if healthy.is_empty() { skipped } else { healthy }
    }
}

/// How a peer with `faults` stands now: `None` once they are older than [`DEMOTED_FOR`].
fn standing(faults: &Faults) -> Option<Demotion> {
    let left = DEMOTED_FOR.checked_sub(faults.since.elapsed()).filter(|d| !d.is_zero())?;
    Some(Demotion { reason: faults.reason.clone(), skipped: faults.count > 1, left })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_fault_demotes_a_second_skips_and_time_heals() {
        let health = PeerHealth::default();
        let all = || vec!["a", "b", "c"];
        assert_eq!(health.order(all()), ["a", "b", "c"]);
        health.fault(&"a", "sent a NAR that failed its hash");
        assert_eq!(health.order(all()), ["b", "c", "a"]);
        let d = health.demotion(&"a").unwrap();
        assert_eq!((d.reason.as_str(), d.skipped), ("sent a NAR that failed its hash", false));
        health.fault(&"a", "stalled");
        assert_eq!(health.order(all()), ["b", "c"]);
        assert_eq!(health.order(vec!["a"]), ["a"], "the only holder is still asked");
        health.fault(&"b", "stalled");
        assert_eq!(health.order(all()), ["c", "b"]);
        tokio::time::advance(DEMOTED_FOR).await;
        assert_eq!(health.order(all()), ["a", "b", "c"]);
        assert_eq!(health.demotion(&"a"), None);
    }
}
