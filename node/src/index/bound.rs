//! The index's size bound: at most `max` entries (a path counted once per peer holding it),
//! which bounds its memory and its file alike (about 4.3 and 3.5 bytes an entry).
//!
//! What happens at the bound is decided here, so that no peer can take all of it: a peer's
//! fair share is `max` divided by the number of peers indexed. While the entries fit, anyone
//! may grow. When a snapshot or delta would take the total past `max`:
//! - a peer that would hold more than its share is refused (its snapshot or delta is not
//!   applied; what the index had for it stays, at its old position);
//! - a peer within its share gets room: the peers holding the most, each over its share, are
//!   dropped from the index, largest first, until the entries fit. Since every peer within
//!   its share fits by definition, this always makes room.
//!
//! So a flood of identities each advertising millions of paths (or one peer advertising
//! the most it may) fills the index only until ordinary peers need the room. A refused or
//! dropped peer asks again later (`adverts::subscribe` waits a while after a refusal).
//! Refusals and drops are logged at `warn`, at most once a [`REPORT_EVERY`] per kind, with how
//! many were not logged since.

use std::time::Duration;

use libp2p::PeerId;

/// The default bound: 1,000 peers of 50,000 paths each, about 215 MB of memory.
pub const DEFAULT_MAX_PATHS: u64 = 50_000_000;

pub(super) const REPORT_EVERY: Duration = Duration::from_secs(60);

/// What the bound says of a peer going from `now` to `after` entries.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Room {
    /// It fits as things are.
    Fits,
    /// It fits once these peers (each over its share, largest first) are dropped.
    Evict(Vec<PeerId>),
    /// The peer would hold more than its `share`; refused.
    Refuse { share: u64 },
}

/// The decision described in the module docs, for a peer going from `now` to `after` of the
/// `total` entries; `others` are every other indexed peer with its entries.
pub(super) fn room(max: u64, total: u64, now: u64, after: u64, others: &[(PeerId, u64)]) -> Room {
    let total_after = (total - now).saturating_add(after);
    if after <= now || total_after <= max {
        return Room::Fits;
    }
    let share = max / (others.len() as u64 + 1);
    if after > share {
        return Room::Refuse { share };
    }
    let mut largest: Vec<&(PeerId, u64)> = others.iter().filter(|(_, n)| *n > share).collect();
    largest.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut excess = total_after - max;
    let mut evict = Vec::new();
    for (peer, entries) in largest {
        if excess == 0 {
            break;
        }
        evict.push(*peer);
        excess = excess.saturating_sub(*entries);
    }
    if excess > 0 {
        // Unreachable by the arithmetic above (peers within their share fit); refusing is
        // the safe answer if it ever is reached.
        return Room::Refuse { share };
    }
    Room::Evict(evict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(counts: &[u64]) -> Vec<(PeerId, u64)> {
        counts.iter().map(|&n| (PeerId::random(), n)).collect()
    }

    #[test]
    fn within_the_bound_anything_fits() {
        let others = peers(&[10, 20]);
        assert_eq!(room(100, 30, 0, 70, &others), Room::Fits);
        assert_eq!(room(100, 100, 50, 40, &others), Room::Fits, "shrinking fits");
    }

    #[test]
    fn a_peer_over_its_share_is_refused_at_the_bound() {
        let others = peers(&[50, 40]);
        // Three peers: a share of 33.
        assert_eq!(room(100, 90, 0, 34, &others), Room::Refuse { share: 33 });
    }

    #[test]
    fn a_peer_within_its_share_evicts_the_largest_over_theirs() {
        let others = peers(&[60, 35, 5]);
        // Four peers: a share of 25; 100 + 20 is 20 too many; the 60 goes.
        assert_eq!(room(100, 100, 0, 20, &others), Room::Evict(vec![others[0].0]));
        // The asker indexed already (5 -> 25): three peers, a share of 33; the 60 goes.
        let known = peers(&[60, 35]);
        assert_eq!(room(100, 100, 5, 25, &known), Room::Evict(vec![known[0].0]));
        // Needing more than the largest: the next over its share goes too.
        let two = peers(&[40, 38, 2]);
        assert_eq!(room(100, 80, 0, 25, &two), Room::Evict(vec![two[0].0]));
        let three = peers(&[30, 30, 30]);
        let Room::Evict(gone) = room(100, 90, 0, 25, &three) else { panic!() };
        assert_eq!(gone.len(), 1);
    }
}
