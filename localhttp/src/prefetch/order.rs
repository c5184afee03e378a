//! The order in which Nix 2.8 asks for the NARs of a closure it has walked, so the prefetch
//! fetches what Nix asks next rather than what it asked last.
//!
//! `nix copy` (`copyPaths`, store-api.cc) asks `reverse(topoSortPaths(missing))`: Nix's
//! `topoSort` (topo-sort.hh) visits the paths of a `std::set<StorePath>` (by base name, so by
//! hash part) depth first, each path's references (in the walk) before it, and lists each path
//! after its references; reversed twice, that is the depth-first post-order itself. Substitution
//! goals (`nix-store -r`) also fetch references before referrers. So: post-order over the
//! walk, roots and references both taken in base-name order.

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
