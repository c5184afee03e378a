//! The order in which Nix 2.8 asks for the NARs of a closure it has walked, so the prefetch
//! fetches what Nix asks next rather than what it asked last.
//!
//! `nix copy` (`copyPaths`, store-api.cc) asks `reverse(topoSortPaths(missing))`: Nix's
//! `topoSort` (topo-sort.hh) visits the paths of a `std::set<StorePath>` (by base name, so by
//! hash part) depth first, each path's references (in the walk) before it, and lists each path
//! after its references; reversed twice, that is the depth-first post-order itself. Substitution
//! goals (`nix-store -r`) also fetch references before referrers, but in another order
//! ([`goal_order`]): the prefetch keeps both and follows the one Nix's requests match.

use std::collections::HashMap;

use nixmesh_protocol::StorePathHash;

/// One path of a walk: its base name (Nix sorts by it) and its references' hashes (those
/// outside the walk are ignored).
pub struct Node {
    pub base_name: String,
    pub references: Vec<StorePathHash>,
}

/// The paths of `walk` in the order Nix asks for their NARs (see the module docs). Iterative,
/// so a chain of any depth is fine; each path appears exactly once; a reference cycle (which
/// a valid store cannot have) is broken where it is met.
pub fn nix_order(walk: &HashMap<StorePathHash, Node>) -> Vec<StorePathHash> {
    let by_name = |hashes: &mut Vec<StorePathHash>| {
        hashes.sort_by(|a, b| walk[a].base_name.cmp(&walk[b].base_name));
    };
    let mut roots: Vec<StorePathHash> = walk.keys().copied().collect();
    by_name(&mut roots);
    let mut visited = std::collections::HashSet::with_capacity(walk.len());
    let mut order = Vec::with_capacity(walk.len());
    // Each frame: a path and its references in the walk still to visit (reversed, so `pop`
    // gives them in base-name order).
    let mut stack: Vec<(StorePathHash, Vec<StorePathHash>)> = Vec::new();
    for root in roots {
        if !visited.insert(root) {
            continue;
        }
        stack.push((root, children(walk, &root, by_name)));
        while let Some((path, pending)) = stack.last_mut() {
            match pending.pop() {
                Some(next) if visited.insert(next) => {
                    let frame = (next, children(walk, &next, by_name));
                    stack.push(frame);
                }
                Some(_) => {}
                None => {
                    order.push(*path);
                    stack.pop();
                }
            }
        }
    }
    order
}

/// The paths of `walk` in the order Nix 2.8's substitution goals (`nix-store -r`, the daemon
/// substituting for a build) fetch them with one job: a path once its references in the walk
/// are done, the ready one with the least goal key first. A goal's key is its store path's
/// name, then the whole path (substitution-goal.hh `key()`: `"a$" + name + "$" + path`), and
/// the worker wakes its goals in key order (`GoalSet`, worker.cc).
pub fn goal_order(walk: &HashMap<StorePathHash, Node>) -> Vec<StorePathHash> {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    let key = |hash: &StorePathHash| {
        let base = &walk[hash].base_name;
        let name = base.get(33..).unwrap_or(base);
        (name.to_owned(), base.clone())
    };
    // For each path, how many of its references in the walk are not done; and who refers
    // to it.
    let mut waiting: HashMap<StorePathHash, usize> = HashMap::with_capacity(walk.len());
    let mut referrers: HashMap<StorePathHash, Vec<StorePathHash>> = HashMap::new();
    for (hash, node) in walk {
        let mut refs: Vec<&StorePathHash> =
            node.references.iter().filter(|r| *r != hash && walk.contains_key(r)).collect();
        refs.sort();
        refs.dedup();
        waiting.insert(*hash, refs.len());
        for r in refs {
            referrers.entry(*r).or_default().push(*hash);
        }
    }
    let mut ready: BinaryHeap<Reverse<((String, String), StorePathHash)>> =
        waiting.iter().filter(|(_, n)| **n == 0).map(|(h, _)| Reverse((key(h), *h))).collect();
    let mut order = Vec::with_capacity(walk.len());
    while let Some(Reverse((_, hash))) = ready.pop() {
        order.push(hash);
        for referrer in referrers.get(&hash).into_iter().flatten() {
            let left = waiting.get_mut(referrer).expect("every referrer is in the walk");
            *left -= 1;
            if *left == 0 {
                ready.push(Reverse((key(referrer), *referrer)));
            }
        }
    }
    // A cycle (which a valid store cannot have) leaves its paths out; they go last.
    if order.len() < walk.len() {
        let mut left: Vec<StorePathHash> =
            waiting.iter().filter(|(_, n)| **n > 0).map(|(h, _)| *h).collect();
        left.sort_by_key(|h| key(h));
        order.extend(left);
    }
    order
}

/// The references of `path` that are in `walk`, itself excluded, last-first.
fn children(
    walk: &HashMap<StorePathHash, Node>,
    path: &StorePathHash,
    by_name: impl Fn(&mut Vec<StorePathHash>),
) -> Vec<StorePathHash> {
    let mut refs: Vec<StorePathHash> = walk[path]
        .references
        .iter()
        .filter(|r| *r != path && walk.contains_key(r))
        .copied()
        .collect();
    by_name(&mut refs);
    refs.dedup();
    refs.reverse();
    refs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(n: u8) -> StorePathHash {
        StorePathHash([n; 20])
    }

    fn walk(paths: &[(u8, &str, &[u8])]) -> HashMap<StorePathHash, Node> {
        paths
            .iter()
            .map(|(n, name, refs)| {
                let references = refs.iter().map(|r| hash(*r)).collect();
                (hash(*n), Node { base_name: (*name).to_owned(), references })
            })
            .collect()
    }

    #[test]
    fn references_come_first_then_base_name_order() {
        // top refers to c, a and itself; c refers to b; d stands alone.
        let w = walk(&[
            (1, "9-top", &[3, 2, 1, 9]),
            (2, "a-lib", &[]),
            (3, "c-app", &[4]),
            (4, "b-dep", &[]),
            (5, "0-alone", &[]),
        ]);
        let names: Vec<&str> = nix_order(&w).iter().map(|h| w[h].base_name.as_str()).collect();
        assert_eq!(names, ["0-alone", "a-lib", "b-dep", "c-app", "9-top"]);
    }

    #[test]
    fn substitution_goals_take_ready_paths_by_name() {
        // Names sort apart from hashes: "0…-zlib" is last by name, first by base name.
        let w = walk(&[
            (1, "00000000000000000000000000000009-top", &[2, 3, 4]),
            (2, "00000000000000000000000000000001-zlib", &[]),
            (3, "00000000000000000000000000000002-app", &[5]),
            (4, "00000000000000000000000000000003-bash", &[]),
            (5, "00000000000000000000000000000004-lib", &[]),
        ]);
        let names: Vec<&str> = goal_order(&w).iter().map(|h| &w[h].base_name[33..]).collect();
        assert_eq!(names, ["bash", "lib", "app", "zlib", "top"]);
    }

    #[test]
    fn a_deep_chain_needs_no_deep_stack() {
        let mut w = HashMap::new();
        for i in 0..20_000u32 {
            let mut h = [0u8; 20];
            h[..4].copy_from_slice(&i.to_be_bytes());
            let mut r = [0u8; 20];
            r[..4].copy_from_slice(&(i + 1).to_be_bytes());
            let references = if i + 1 < 20_000 { vec![StorePathHash(r)] } else { vec![] };
            w.insert(StorePathHash(h), Node { base_name: format!("{i:08}"), references });
        }
        let order = nix_order(&w);
        assert_eq!(order.len(), 20_000);
        assert_eq!(w[&order[0]].base_name, "00019999", "the end of the chain first");
    }
}
