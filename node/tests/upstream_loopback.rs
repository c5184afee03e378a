//! Nodes on loopback pulling through from an upstream cache: nginx (from Debian) serving what
//! `nix copy --to file://DIR?compression=…` wrote, signed; three nodes on their own empty
//! chroot stores, each with nginx as its one upstream, and the real `nix copy` through each.
//! The network-namespace tests in `tests/` add a slow link, a cut-off upstream and a claimer
//! killed mid-download.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nixmesh_node::node::RunningNode;
use nixmesh_tests::free_loopback_port;
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::nginx::Nginx;
use nixmesh_tests::{
    CacheKey, Closure, Host, HostStore, narinfo_url_path, require_tool, test_closure_expr,
    unique_marker, wait_until,
};
use support::{loopback_config, nix_available, status};

const DEADLINE: Duration = Duration::from_secs(30);

/// The upstream: a store holding `closure`, copied signed to a binary cache served by nginx.
struct Upstream {
    nginx: Nginx,
    url: String,
}

impl Upstream {
    fn serve(dir: &Path, store: &HostStore, key: &CacheKey, top: &str, compression: &str) -> Self {
        store.sign_closure(&key.secret_file, top);
        let cache = dir.join(format!("cache-{compression}"));
        store.copy_to(&format!("file://{}?compression={compression}", cache.display()), &[top]);
        let host = Host::local_in(dir, &format!("upstream-{compression}"));
        let nginx = Nginx::start(&host, &cache, free_loopback_port());
        Upstream { url: nginx.url().to_owned(), nginx }
    }

    /// How many times each NAR file was asked for.
    fn nar_requests(&self) -> BTreeMap<String, usize> {
        self.requests("/nar/")
    }

    /// How many times each URL starting with `prefix` was asked for.
    fn requests(&self, prefix: &str) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for request in self.nginx.requests().into_iter().filter(|r| r.path.starts_with(prefix)) {
            *counts.entry(request.path).or_insert(0) += 1;
        }
        counts
    }
}

/// Logs to the test's output, as `RUST_LOG` says (nothing unless set).
fn log_as_rust_log_says() {
    let filter = tracing_subscriber::EnvFilter::from_default_env();
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
}

#[test]
fn three_nodes_copying_at_once_download_each_nar_from_upstream_once() {
    if !nix_available() || !require_tool("nginx") {
        return;
    }
    log_as_rust_log_says();
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::generate(dir.path(), "upstream-1");
    let source = HostStore::start(&Host::local_in(dir.path(), "source"));
    let closure: Closure = source.build_closure(&test_closure_expr(&unique_marker()));
    let many = source.add_many_paths(24, &unique_marker());
    let upstream = Upstream::serve(dir.path(), &source, &key, &closure.top, "xz");
    source.sign_closure(&key.secret_file, &many.top);
    let cache = dir.path().join("cache-xz");
    source.copy_to(&format!("file://{}?compression=xz", cache.display()), &[&many.top]);

    let stores: Vec<HostStore> =
        (1..=3).map(|n| HostStore::start(&Host::local_in(dir.path(), &format!("h{n}")))).collect();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut nodes: Vec<RunningNode> = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        let mut peers = Vec::new();
        for node in &nodes {
            peers.extend(runtime.block_on(node.p2p_addresses()));
        }
        let mut config =
            loopback_config(&dir.path().join(format!("n{n}")), store, &key.public, peers);
        config.upstreams = Some(vec![upstream.url.clone()]);
        nodes.push(runtime.block_on(RunningNode::start(config)).unwrap());
    }
    for node in &nodes {
        let http = node.http_address();
        wait_until(DEADLINE, "every node to see the two others", || {
            status(http)["peers_connected"] == 2
        });
    }

    // All three at the same moment, each through its own node, each node's only substituter.
    // (One `nix copy` at a time per host: two on one host race on its Nix's cache database.)
    std::thread::scope(|scope| {
        for (store, node) in stores.iter().zip(&nodes) {
            let url = format!("http://{}", node.http_address());
            let key = &key.public;
            let tops = [&closure.top, &many.top];
            scope.spawn(move || {
                for top in tops {
                    let out = store.copy_from(&url, &[key], top);
                    let stderr = String::from_utf8_lossy(&out.stderr);
                    assert!(out.status.success(), "nix copy failed: {stderr}");
                }
            });
        }
    });
    for store in &stores {
        for path in closure.paths.iter().chain(&many.paths) {
            assert!(store.is_valid(path), "{path} did not arrive");
        }
    }
    let top = &closure.paths[closure.paths.len() - 2];
    assert_eq!(stores[2].dump(top), source.dump(top));

    // Each NAR crossed the upstream link once; the others came by way of its claimer.
    let requests = upstream.nar_requests();
    let files = std::fs::read_dir(cache.join("nar")).unwrap().count();
    assert_eq!(requests.len(), files, "every NAR file was needed: {requests:#?}");
    assert!(requests.values().all(|&n| n == 1), "NARs fetched more than once: {requests:#?}");
    // And each narinfo was asked once, by the path's claimer, for the whole mesh.
    for path in closure.paths.iter().chain(&many.paths) {
        let url = narinfo_url_path(path);
        let asked = upstream.requests(&url).get(&url).copied().unwrap_or(0);
        assert_eq!(asked, 1, "{url} asked upstream {asked} times");
    }
    let statuses: Vec<serde_json::Value> = nodes.iter().map(|n| status(n.http_address())).collect();
    let downloaded: u64 = statuses.iter().map(|s| s["bytes_from_upstream"].as_u64().unwrap()).sum();
    let relayed: u64 = statuses.iter().map(|s| s["bytes_relayed"].as_u64().unwrap()).sum();
    assert!(downloaded > 0 && relayed > 0, "{statuses:#?}");
    assert_eq!(statuses[0]["upstreams"][0]["url"], upstream.url);

    // What no cache has is a miss, remembered: asking again costs no request upstream.
    // (nginx logs a request after answering it: a later one, logged, marks the log as
    // complete up to it.)
    let http = nodes[0].http_address();
    let logged = |hash: &str| {
        let path = format!("/{hash}.narinfo");
        upstream.nginx.requests().iter().filter(|r| r.path == path).count()
    };
    let (missing, marker) =
        ("00000000000000000000000000000000", "11111111111111111111111111111111");
    assert_eq!(get(http, &format!("/{missing}.narinfo")).0, 404);
    assert_eq!(get(http, &format!("/{missing}.narinfo")).0, 404);
    assert_eq!(get(http, &format!("/{marker}.narinfo")).0, 404);
    wait_until(DEADLINE, "nginx to log the marker request", || logged(marker) == 1);
    assert_eq!(logged(missing), 1, "the miss was asked upstream again");
    for node in nodes {
        runtime.block_on(node.stop()).unwrap();
    }
}

#[test]
fn nars_compressed_with_zstd_bzip2_or_not_at_all_are_decompressed_and_checked() {
    if !nix_available() || !require_tool("nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::generate(dir.path(), "upstream-1");
    let source = HostStore::start(&Host::local_in(dir.path(), "source"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for compression in ["zstd", "bzip2", "none"] {
        let closure = source.build_closure(&test_closure_expr(&unique_marker()));
        let upstream = Upstream::serve(dir.path(), &source, &key, &closure.top, compression);
        let store = HostStore::start(&Host::local_in(dir.path(), &format!("h-{compression}")));
        let mut config = loopback_config(
            &dir.path().join(format!("n-{compression}")),
            &store,
            &key.public,
            vec![],
        );
        config.upstreams = Some(vec![upstream.url.clone()]);
        let node = runtime.block_on(RunningNode::start(config)).unwrap();
        let url = format!("http://{}", node.http_address());
        let copy = store.copy_from(&url, &[&key.public], &closure.top);
        assert!(copy.status.success(), "{compression}: {}", String::from_utf8_lossy(&copy.stderr));
        for path in &closure.paths {
            assert_eq!(store.dump(path), source.dump(path), "{compression}: {path}");
        }
        // What reaches Nix is always uncompressed, and says so.
        let (_, text) = get(node.http_address(), &narinfo_url_path(&closure.top));
        assert!(String::from_utf8(text).unwrap().contains("Compression: none"));
        runtime.block_on(node.stop()).unwrap();
    }
}

#[test]
fn an_upstream_that_never_answers_costs_one_deadline_and_untrusted_narinfos_are_refused() {
    if !nix_available() || !require_tool("nginx") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::generate(dir.path(), "upstream-1");
    let store = HostStore::start(&Host::local_in(dir.path(), "h1"));
    // Accepts connections (the kernel's backlog) and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut config = loopback_config(&dir.path().join("n1"), &store, &key.public, vec![]);
    let timeout = Duration::from_secs(1);
    config.upstreams = Some(vec![format!("http://{}", silent.local_addr().unwrap())]);
    config.upstream_timeout = timeout;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let node = runtime.block_on(RunningNode::start(config)).unwrap();
    let http = node.http_address();
    let asked = |path: &str| {
        let started = Instant::now();
        let (code, _) = get(http, path);
        (code, started.elapsed())
    };
    let (code, took) = asked("/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj.narinfo");
    assert_eq!(code, 404);
    assert!(took < timeout + Duration::from_millis(500), "the first miss took {took:?}");
    // From then on the upstream is skipped: misses are immediate, and the status says why.
    for _ in 0..20 {
        let (code, took) = asked("/1c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj.narinfo");
        assert_eq!(code, 404);
        assert!(took < Duration::from_millis(200), "a miss took {took:?}");
    }
    assert_eq!(status(http)["upstreams"][0]["skipped"], true);
    runtime.block_on(node.stop()).unwrap();

    // A cache signed by a key the node does not trust gives nothing.
    let source = HostStore::start(&Host::local_in(dir.path(), "source"));
    let closure = source.build_closure(&test_closure_expr(&unique_marker()));
    let other_key = CacheKey::generate(dir.path(), "other-1");
    let upstream = Upstream::serve(dir.path(), &source, &other_key, &closure.top, "xz");
    let mut config = loopback_config(&dir.path().join("n2"), &store, &key.public, vec![]);
    config.upstreams = Some(vec![upstream.url.clone()]);
    let node = runtime.block_on(RunningNode::start(config)).unwrap();
    assert_eq!(get(node.http_address(), &narinfo_url_path(&closure.top)).0, 404);
    assert!(upstream.nar_requests().is_empty());
    runtime.block_on(node.stop()).unwrap();
}
