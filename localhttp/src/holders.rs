//! Trying the holders of a path one after another: each within a time limit of its own, all
//! within one deadline, the first that gives what is wanted ending the search. The narinfo
//! and the NAR routes both go through here; failover mid-NAR is to extend it.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use nixmesh_protocol::StorePathHash;
use tokio::time::{Instant, timeout};
use tracing::warn;

/// How one holder's try ended when it gave nothing.
pub enum Miss<E> {
    /// A reason worth a warning.
    Because(E),
    /// Already logged where it happened.
    Logged,
}

/// The first `Ok` of `attempt(holder, the holders after it)` over `holders` in order, each
/// try cut off after `per_holder` (but the last, which has no one after it to leave time for,
/// gets whatever is left), all of them after `deadline`; `None` when none gave one. A holder
/// slow under load is then not taken for a miss while time is left: Nix would remember it
/// for an hour.
/// Each failure is logged with the holder, `hash` and `what` was asked for.
pub async fn first_of<P, T, E, F, Fut>(
    holders: &[P],
    hash: StorePathHash,
    what: &'static str,
    per_holder: Duration,
    deadline: Duration,
    mut attempt: F,
) -> Option<(P, T)>
where
    P: Clone + Display,
    E: Display,
    F: FnMut(&P, &[P]) -> Fut,
    Fut: Future<Output = Result<T, Miss<E>>>,
{
    let end = Instant::now() + deadline;
    for (tried, holder) in holders.iter().enumerate() {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let untried = holders.len() - tried;
            warn!(%hash, untried, ?deadline, "{what}: the deadline passed before every holder was tried");
            break;
        }
        let last = tried + 1 == holders.len();
        let limit = if last { left } else { per_holder.min(left) };
        match timeout(limit, attempt(holder, &holders[tried + 1..])).await {
            Ok(Ok(found)) => return Some((holder.clone(), found)),
            Ok(Err(Miss::Logged)) => {}
            Ok(Err(Miss::Because(why))) => {
                warn!(peer = %holder, %hash, "{what} from peer not used: {why}")
            }
            Err(_) => {
                warn!(peer = %holder, %hash, "{what} from peer not used: no answer within {limit:?}")
            }
        }
    }
    None
}
