//! Machines that run no node (issue 20, items 1 and 2): the LAN substituter (`--lan-listen`)
//! of one host's node, on a LAN of network namespaces, used the way `nixos-install` uses a
//! substituter: `nix-store --store ROOT -r PATH...` on a host with no node and an empty store,
//! the node's LAN listener its only substituter.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nixmesh_tests::nginx::Nginx;
use nixmesh_tests::{
    CacheKey, Closure, CommandExt, Host, HostStore, Lan, Node, NodeOptions, get_from, mesh_key,
    narinfo_url_path, nixmesh_bin, require_lan, test_closure_expr, unique_marker, wait_until,
};

/// Where the LAN substituter listens on each host with a node.
const LAN_PORT: u16 = 7375;
/// How long nodes may take to find each other by mDNS and learn what the others hold.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How long realising the closures may take.
const REALISE_LIMIT: Duration = Duration::from_secs(180);
/// How long a refused start may take to exit.
const START_LIMIT: Duration = Duration::from_secs(30);

fn lan_url(host: &Host) -> String {
    format!("http://{}:{LAN_PORT}", host.address())
}

/// `--lan-listen 0.0.0.0:7375`, and `--lan-allow` for each of `allow`.
fn lan_args(allow: &[String]) -> Vec<String> {
    let mut args = vec!["--lan-listen".to_owned(), format!("0.0.0.0:{LAN_PORT}")];
    for network in allow {
        args.extend(["--lan-allow".to_owned(), network.clone()]);
    }
    args
}

/// What `nixos-install` does to fetch the system: `nix-store --store ROOT -r PATHS` with
/// `substituter` the only one, trusting `key`, on a host with no daemon of that store and no
/// node, as root.
fn realise_into(host: &Host, root: &Path, substituter: &str, key: &str, paths: &[&str]) -> Output {
    let mut cmd = host.command("nix-store");
    cmd.arg("--store").arg(root).arg("--realise").args(paths);
    cmd.args(["--option", "substituters", substituter])
        .args(["--option", "trusted-public-keys", key])
        .args(["--option", "narinfo-cache-negative-ttl", "0"])
        .args(["--option", "build-users-group", ""]);
    cmd.output_within(REALISE_LIMIT)
}

/// The NAR of `path` as it is in the store under `root`.
fn dump_in(root: &Path, path: &str) -> Vec<u8> {
    let on_disk: PathBuf = root.join(path.trim_start_matches('/'));
    std::process::Command::new("nix-store")
        .arg("--dump")
        .arg(on_disk)
        .stdout_within(Duration::from_secs(60))
}

/// Whether every path of `closure` arrived under `root` as `from` has it.
fn assert_arrived(root: &Path, closure: &Closure, from: &HostStore) {
    for path in &closure.paths {
        assert!(
            dump_in(root, path) == from.dump(path),
            "{path} did not arrive under {} byte-identical",
            root.display()
        );
    }
}

#[test]
fn a_machine_without_a_node_installs_from_the_lan_listener() {
    if !require_lan(&["nginx"]) {
        return;
    }
    let lan = Lan::with_internet(3);
    let [h1, h2, installer] = lan.hosts() else { unreachable!() };
    let key = CacheKey::generate(lan.dir(), "lan-1");

    // Upstream: nginx beyond the router serving a signed cache of a closure no host holds.
    let internet = lan.internet().host();
    let source = HostStore::start(internet);
    let from_upstream = source.build_closure(&test_closure_expr(&unique_marker()));
    source.sign_closure(&key.secret_file, &from_upstream.top);
    let cache = internet.dir().join("cache");
    source.copy_to(&format!("file://{}?compression=none", cache.display()), &[&from_upstream.top]);
    let nginx = Nginx::start(internet, &cache, 80);

    let stores: Vec<HostStore> = [h1, h2].into_iter().map(HostStore::start).collect();
    let held = |store: &HostStore| {
        let closure = store.build_closure(&test_closure_expr(&unique_marker()));
        store.sign_closure(&key.secret_file, &closure.top);
        closure
    };
    let (on_h1, on_h2) = (held(&stores[0]), held(&stores[1]));
    let options = |lan_listen: bool| NodeOptions {
        trusted_keys: vec![key.public.clone()],
        upstreams: vec![nginx.url().to_owned()],
        extra_args: if lan_listen { lan_args(&[]) } else { Vec::new() },
        ..NodeOptions::default()
    };
    let nodes =
        [Node::start(h1, &stores[0], &options(true)), Node::start(h2, &stores[1], &options(false))];
    wait_until(DISCOVERY_LIMIT, "h1's node to offer h2's closure", || {
        nodes[0].narinfo_statuses(&on_h2.paths).iter().all(|&s| s == 200)
    });
    let status = nodes[0].status();
    let urls = status["lan_urls"].to_string();
    assert!(urls.contains(&lan_url(h1)), "nixmesh status names {} in {urls}", lan_url(h1));

    // (What the polling above asked upstream before h1 knew h2's paths is not counted.)
    let asked_before = nginx.requests().len();
    // The installer: no node, an empty store, h1's LAN listener its only substituter.
    let root = installer.dir().join("mnt");
    let tops = [on_h1.top.as_str(), on_h2.top.as_str(), from_upstream.top.as_str()];
    let out = realise_into(installer, &root, &lan_url(h1), &key.public, &tops);
    assert!(out.status.success(), "nix-store -r: {}", String::from_utf8_lossy(&out.stderr));
    assert_arrived(&root, &on_h1, &stores[0]);
    assert_arrived(&root, &on_h2, &stores[1]);
    assert_arrived(&root, &from_upstream, &source);

    // What no host held came from upstream once; nothing else did.
    let requests = nginx.requests().split_off(asked_before);
    let upstream_narinfos: Vec<String> =
        from_upstream.paths.iter().map(|p| narinfo_url_path(p)).collect();
    for request in &requests {
        let expected = request.path == "/nix-cache-info"
            || request.path.starts_with("/nar/")
            || upstream_narinfos.contains(&request.path);
        assert!(expected, "asked upstream for what the LAN holds: {request:?}");
    }
    let nars: Vec<_> = requests.iter().filter(|r| r.path.starts_with("/nar/")).collect();
    let files = std::fs::read_dir(cache.join("nar")).unwrap().count();
    assert_eq!(nars.len(), files, "each NAR of the upstream's closure once: {nars:?}");
    for path in on_h1.paths.iter().chain(&on_h2.paths) {
        let url = narinfo_url_path(path);
        assert!(requests.iter().all(|r| r.path != url), "{url} was asked upstream");
    }

    // A miss is a 404 at once; what is not a cache file, the answers the localhost listener
    // gives.
    let miss = format!("{}/{}.narinfo", lan_url(h1), "0".repeat(32));
    assert_eq!(get_from(installer, &miss).0, 404);
    for path in [
        "/nix-cache-info".to_owned(),
        format!("/{}.narinfo", "e".repeat(31)),
        "/../../etc/passwd".to_owned(),
        "/nar/%2e%2e/x.nar".to_owned(),
        format!("/{}", "a".repeat(9000)),
        "/_nixmesh/status".to_owned(),
    ] {
        let local = nodes[0].http_get(&path).0;
        let from_lan = get_from(installer, &format!("{}{path}", lan_url(h1))).0;
        let expected = if path.starts_with("/_nixmesh") { 404 } else { local };
        assert_eq!(from_lan, expected, "{path}: the LAN listener {from_lan}, localhost {local}");
    }
}

#[test]
fn a_private_meshs_lan_listener_needs_lan_allow_and_answers_only_it() {
    if !require_lan(&["nginx"]) {
        return;
    }
    let lan = Lan::new(3);
    let [h1, outsider, installer] = lan.hosts() else { unreachable!() };
    let key = CacheKey::generate(lan.dir(), "lan-1");
    let mesh = lan.dir().join("mesh.key");
    mesh_key(&mesh);
    let store = HostStore::start(h1);
    let closure = store.build_closure(&test_closure_expr(&unique_marker()));
    store.sign_closure(&key.secret_file, &closure.top);

    // Without lan_allow, the node does not start, and says which setting.
    let refused = h1
        .command(nixmesh_bin())
        .args(["serve", "--store", &store.daemon_url(), "--no-mdns", "--no-upstream"])
        .arg("--state-dir")
        .arg(h1.dir().join("refused"))
        .arg("--mesh-key-file")
        .arg(&mesh)
        .args(lan_args(&[]))
        .output_within(START_LIMIT);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("lan_allow"), "{stderr}");

    let allowed = format!("{}/32", installer.address());
    let options = NodeOptions {
        trusted_keys: vec![key.public.clone()],
        mesh_key_file: Some(mesh.clone()),
        extra_args: lan_args(&[allowed]),
        ..NodeOptions::default()
    };
    let _node = Node::start(h1, &store, &options);
    let narinfo = format!("{}{}", lan_url(h1), narinfo_url_path(&closure.top));
    assert_eq!(get_from(outsider, &narinfo).0, 403, "a host outside lan_allow");
    assert_eq!(get_from(installer, &narinfo).0, 200, "the host lan_allow names");
    let root = installer.dir().join("mnt");
    let out = realise_into(installer, &root, &lan_url(h1), &key.public, &[&closure.top]);
    assert!(out.status.success(), "nix-store -r: {}", String::from_utf8_lossy(&out.stderr));
    assert_arrived(&root, &closure, &store);
}
