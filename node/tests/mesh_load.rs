//! The real client's load on whole nodes: a thousand small paths held by one holder, then by
//! three, asked for the way Nix asks (25 narinfo connections, then 16 NAR downloads at once),
//! round after round against a freshly started node so that every answer comes from the
//! mesh. Not one false miss, not one wrong byte; then the nix-daemon realises the closure
//! with the node as its only substituter, as `nixos-rebuild` would, most of its NARs answered
//! from the node's prefetch (on, as by default, throughout).

mod support;

use std::time::Duration;

use nixmesh_node::node::RunningNode;
use nixmesh_protocol::{NarInfo, Sha256};
use nixmesh_tests::http::{Fetched, get_all, get_one};
use nixmesh_tests::{CacheKey, Host, HostStore, narinfo_url_path, parse_narinfo, wait_until};
use support::{loopback_config as config, nix_available, status};

/// Paths in the closure besides its top (a NixOS system has one to three thousand).
const PATHS: usize = 1000;
/// Rounds per holder set: each round asks every narinfo and every NAR once, so five rounds
/// are 10,010 requests.
const ROUNDS: usize = 5;
/// Nix's own concurrency: `http-connections` (25) for narinfos, and the NAR downloads of its
/// substitution goals.
const NARINFO_CONNECTIONS: usize = 25;
const NAR_CONNECTIONS: usize = 16;
const DEADLINE: Duration = Duration::from_secs(60);

/// What went wrong with `fetched`, if anything, in a line a person can read.
fn complaint(fetched: &Fetched) -> Option<String> {
    (fetched.status != 200).then(|| {
        format!(
            "{} -> {} {:?} after {:?}",
            fetched.path, fetched.status, fetched.error, fetched.took
        )
    })
}

/// Every narinfo of `paths`, then every NAR they name, from `node`; panics at the first false
/// miss or wrong byte, naming every failed request.
fn one_round(node: &RunningNode, paths: &[String], round: &str) {
    let narinfo_urls: Vec<String> = paths.iter().map(|p| narinfo_url_path(p)).collect();
    let narinfos = get_all(node.http_address(), &narinfo_urls, NARINFO_CONNECTIONS);
    let failed: Vec<String> = narinfos.iter().filter_map(complaint).collect();
    assert!(
        failed.is_empty(),
        "{round}: {} of {} narinfos failed:\n{}",
        failed.len(),
        paths.len(),
        failed.join("\n")
    );
    let narinfos: Vec<NarInfo> = narinfos.iter().map(|f| parse_narinfo(&f.body)).collect();
    for (narinfo, path) in narinfos.iter().zip(paths) {
        assert_eq!(&narinfo.store_path.to_string(), path, "{round}: a narinfo of another path");
        assert_eq!(narinfo.compression.as_deref(), Some("none"), "{round}: {path}");
    }

    let nar_urls: Vec<String> = narinfos.iter().map(|n| format!("/{}", n.url)).collect();
    let nars = get_all(node.http_address(), &nar_urls, NAR_CONNECTIONS);
    let failed: Vec<String> = nars.iter().filter_map(complaint).collect();
    assert!(
        failed.is_empty(),
        "{round}: {} of {} NARs failed:\n{}",
        failed.len(),
        paths.len(),
        failed.join("\n")
    );
    for (nar, narinfo) in nars.iter().zip(&narinfos) {
        assert_eq!(nar.body.len() as u64, narinfo.nar_size, "{round}: {}: size", nar.path);
        assert!(
            Sha256::digest(&nar.body) == narinfo.nar_hash,
            "{round}: {}: wrong bytes",
            nar.path
        );
    }
}

/// NARs `node` served from its prefetch so far (`nixmesh_prefetch_nars_total{result="used"}`).
fn prefetched(node: &RunningNode) -> u64 {
    let (status, body) = get_one(node.http_address(), "/metrics");
    assert_eq!(status, 200, "/metrics");
    let line = "nixmesh_prefetch_nars_total{result=\"used\"} ";
    let text = String::from_utf8_lossy(&body);
    text.lines().find_map(|l| l.strip_prefix(line)?.trim().parse().ok()).unwrap_or(0)
}

#[test]
fn the_real_clients_concurrency_gets_no_false_miss_from_one_or_three_holders() {
    if !nix_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::generate(dir.path(), "load-1");
    let host = |name: &str| Host::local_in(dir.path(), name);
    let holder_stores: Vec<HostStore> =
        ["h1", "h2", "h3"].iter().map(|h| HostStore::start(&host(h))).collect();
    let client_store = HostStore::start(&host("client"));
    // The same expression gives the same paths and NARs in every holder's store.
    let marker = nixmesh_tests::unique_marker();
    let closures: Vec<_> = holder_stores.iter().map(|s| s.add_many_paths(PATHS, &marker)).collect();
    assert!(closures.iter().all(|c| c == &closures[0]));
    let closure = &closures[0];
    for store in &holder_stores {
        store.sign_closure(&key.secret_file, &closure.top);
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let holders: Vec<RunningNode> = holder_stores
        .iter()
        .enumerate()
        .map(|(i, store)| {
            let state = dir.path().join(format!("h{i}-state"));
            runtime
                .block_on(RunningNode::start(config(&state, store, &key.public, vec![])))
                .unwrap()
        })
        .collect();

    let mut last_client = None;
    for holder_count in [1, 3] {
        let peers: Vec<_> = holders[..holder_count]
            .iter()
            .flat_map(|h| runtime.block_on(h.p2p_addresses()))
            .collect();
        let state = dir.path().join(format!("client-of-{holder_count}"));
        for round in 0..ROUNDS {
            if let Some(client) = last_client.take() {
                runtime.block_on(RunningNode::stop(client)).unwrap();
            }
            // A new node each round: nothing remembered, so every answer comes from the mesh
            // (the index is kept, as after any restart).
            let config = config(&state, &client_store, &key.public, peers.clone());
            let client = runtime.block_on(RunningNode::start(config)).unwrap();
            let expected = (holder_count * (PATHS + 1)) as u64;
            wait_until(
                DEADLINE,
                "the client to be connected to every holder and know its paths",
                || {
                    let s = status(client.http_address());
                    s["peers_connected"] == holder_count as u64 && s["indexed_paths"] == expected
                },
            );
            let name = format!("{holder_count} holder(s), round {round}");
            one_round(&client, &closure.paths, &name);
            last_client = Some(client);
        }
    }

    // The nix-daemon substitutes the whole closure itself, through the node alone.
    let client = last_client.take().unwrap();
    let url = format!("http://{}", client.http_address());
    let used_before = prefetched(&client);
    let realised = client_store.realise_from(&url, &[&key.public], &closure.top);
    assert!(
        realised.status.success(),
        "nix-store -r failed: {}",
        String::from_utf8_lossy(&realised.stderr)
    );
    for path in closure.paths.iter().step_by(50).chain([&closure.top]) {
        assert!(client_store.is_valid(path), "{path} did not arrive");
        assert_eq!(client_store.dump(path), holder_stores[0].dump(path), "{path} differs");
    }
    // Nix substitutes one NAR at a time (max-jobs 1): the prefetch has it before it asks.
    let used = prefetched(&client) - used_before;
    assert!(used > PATHS as u64 / 2, "only {used} of {} NARs came from the prefetch", PATHS + 1);
    runtime.block_on(client.stop()).unwrap();
    for holder in holders {
        runtime.block_on(holder.stop()).unwrap();
    }
}
