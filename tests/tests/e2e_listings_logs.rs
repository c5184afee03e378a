//! NAR listings (`<hash>.ls`) and build logs (`log/<drv>`) through the mesh (issue 23, items
//! 3 and 4), on a LAN of network namespaces with real nodes, real nix-daemons on chroot
//! stores, and the real Nix as the client.
//!
//! - A peer's listing is served without its NAR crossing the mesh (the holder's bytes served
//!   stay 0), and is byte for byte the `.ls` Nix itself writes for the same path (`nix copy
//!   --to 'file://…?write-nar-listing=true'`); Nix's own reading of the NAR (`nix store ls
//!   --json -R`, which in Nix 2.8 downloads the NAR rather than ask for `.ls`) agrees with it.
//! - `nix log --store http://127.0.0.1:7373` prints the log of a derivation built on another
//!   host whose node has `serve_logs`, asked by the `.drv` and by the output path, and the log
//!   of a build that failed there; the same host's node without `serve_logs` gives none (404).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use nixmesh_tests::{
    CacheKey, Closure, CommandExt, Host, HostStore, Lan, NODE_URL, Node, NodeOptions,
    narinfo_url_path, require_lan, test_closure_expr, unique_marker, wait_until,
};
use serde_json::Value;

/// How long nodes may take to find each other and learn what the others hold.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How long one Nix or curl command may take.
const CALL_LIMIT: Duration = Duration::from_secs(60);

/// The store path hash of `path` (`/nix/store/<hash>-<name>`).
fn hash_of(path: &str) -> &str {
    &path.strip_prefix("/nix/store/").expect("a store path")[..32]
}

fn base_name(path: &str) -> &str {
    path.strip_prefix("/nix/store/").expect("a store path")
}

/// `GET path` from the node on `host`: the status, the `Content-Type` and the body.
fn get(host: &Host, path: &str) -> (u16, String, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    let out = host
        .command("curl")
        .args(["--silent", "--path-as-is", "--max-time", "20", "--output"])
        .arg(&body)
        .args(["--write-out", "%{http_code} %{content_type}"])
        .arg(format!("{NODE_URL}{path}"))
        .stdout_within(CALL_LIMIT);
    let out = String::from_utf8(out).unwrap();
    let (status, content_type) = out.split_once(' ').unwrap_or((&out, ""));
    let body = std::fs::read(&body).unwrap_or_default();
    (status.parse().unwrap_or(0), content_type.to_owned(), body)
}

/// The new CLI of Nix 2.8 on `host`, with the node as its store and no other substituter.
fn nix_via_node(host: &Host, args: &[&str]) -> Output {
    let mut cmd: Command = host.command("nix");
    cmd.args(["--extra-experimental-features", "nix-command", "--option", "substituters", ""])
        .args(args)
        .args(["--store", NODE_URL]);
    cmd.output_within(CALL_LIMIT)
}

/// Waits until the node on `node`'s host answers 200 for the narinfo of each of `paths`.
fn wait_for_paths(node: &Node, paths: &[String], what: &str) {
    let urls: Vec<String> = paths.iter().map(|p| narinfo_url_path(p)).collect();
    wait_until(DISCOVERY_LIMIT, what, || node.http_statuses(&urls).iter().all(|&s| s == 200));
}

fn trusting(key: &CacheKey) -> NodeOptions {
    NodeOptions { trusted_keys: vec![key.public.clone()], ..Default::default() }
}

#[test]
fn a_listing_comes_from_the_holder_without_its_nar_and_is_nix_s() {
    if !require_lan(&[]) {
        return;
    }
    let lan = Lan::new(2);
    let stores: Vec<HostStore> = lan.hosts().iter().map(HostStore::start).collect();
    let key = CacheKey::generate(lan.dir(), "test-1");
    let Closure { top, paths } = stores[0].build_closure(&test_closure_expr(&unique_marker()));
    stores[0].sign_closure(&key.secret_file, &top);
    let nodes: Vec<Node> =
        stores.iter().map(|s| Node::start(s.host(), s, &trusting(&key))).collect();
    wait_for_paths(&nodes[1], &paths, "host 2's node to offer host 1's closure");

    // What Nix writes for the same paths.
    let cache = lan.dir().join("nix-cache");
    let url = format!("file://{}?write-nar-listing=true&compression=none", cache.display());
    stores[0].copy_to(&url, &[&top]);

    let host2 = stores[1].host();
    for path in &paths {
        let (status, content_type, body) = get(host2, &format!("/{}.ls", hash_of(path)));
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        assert_eq!(content_type, "application/json", "{path}");
        let nix_s = std::fs::read(cache.join(format!("{}.ls", hash_of(path)))).unwrap();
        assert!(
            body == nix_s,
            "{path}: the listing differs from Nix's:\nours: {}\nnix:  {}",
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(&nix_s)
        );
    }
    let served = &nodes[0].status()["bytes_served"];
    assert_eq!(served, 0, "listings made host 1's node send NAR bytes ({served})");
    let (status, _, _) = get(host2, &format!("/{}.ls", "0".repeat(32)));
    assert_eq!(status, 404, "a path nobody holds has no listing");

    // Nix's own reading of the path, from its NAR (Nix 2.8's `nix store ls` downloads it).
    let listed = nix_via_node(host2, &["store", "ls", "--json", "-R", &top]);
    assert!(listed.status.success(), "nix store ls: {}", String::from_utf8_lossy(&listed.stderr));
    let nix_s: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let (_, _, ours) = get(host2, &format!("/{}.ls", hash_of(&top)));
    let ours: Value = serde_json::from_slice(&ours).unwrap();
    assert_eq!(ours["root"], nix_s, "the listing and Nix's reading of the NAR differ");
}

/// A derivation that prints `nixmesh-log <what> <marker>` and then builds, or fails.
fn logged_expr(what: &str, marker: &str, succeeds: bool) -> String {
    let end = if succeeds { "echo built > $out" } else { "exit 1" };
    format!(
        r#"derivation {{
  name = "nixmesh-logged-{what}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo 'nixmesh-log {what} {marker}'; echo 'on stderr' >&2; {end}" ];
  PATH = "/usr/bin:/bin";
}}"#
    )
}

fn instantiate(store: &HostStore, expr: &str) -> String {
    let mut cmd = store.host().command("nix-instantiate");
    cmd.args(["--store", &store.url(), "--expr", expr]);
    String::from_utf8(cmd.stdout_within(CALL_LIMIT)).unwrap().trim().to_owned()
}

/// `nix log` of `path` on `host` through its node: what it printed, if it found a log.
fn nix_log(host: &Host, path: &str) -> Option<String> {
    let out = nix_via_node(host, &["log", path]);
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn nix_log_finds_builds_and_failures_of_a_host_that_serves_its_logs() {
    if !require_lan(&[]) {
        return;
    }
    let lan = Lan::new(2);
    let stores: Vec<HostStore> = lan.hosts().iter().map(HostStore::start).collect();
    let key = CacheKey::generate(lan.dir(), "test-1");
    let marker = unique_marker();
    let built_drv = instantiate(&stores[0], &logged_expr("built", &marker, true));
    let failed_drv = instantiate(&stores[0], &logged_expr("failed", &marker, false));
    let built = stores[0].nix_store(&["--realise", &built_drv]);
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let out = String::from_utf8(built.stdout).unwrap().trim().to_owned();
    let failed = stores[0].nix_store(&["--realise", &failed_drv]);
    assert!(!failed.status.success(), "the failing derivation built");
    let logs = stores[0].host().store_root().join("nix/var/log/nix/drvs");
    let on_disk = Path::new(&logs).join(&base_name(&failed_drv)[..2]);
    assert!(on_disk.is_dir(), "no logs where a chroot store keeps them: {}", logs.display());
    stores[0].sign_closure(&key.secret_file, &out);
    // `nix log` of a `.drv` through a binary cache reads the derivation from it.
    let secret = key.secret_file.to_str().unwrap();
    stores[0].nix(&[
        "store",
        "sign",
        "--key-file",
        secret,
        "--derivation",
        &built_drv,
        &failed_drv,
    ]);

    let serving = NodeOptions { serve_logs: true, ..trusting(&key) };
    let mut holder = Node::start(stores[0].host(), &stores[0], &serving);
    let asker = Node::start(stores[1].host(), &stores[1], &trusting(&key));
    let held = [out.clone(), built_drv.clone(), failed_drv.clone()];
    wait_for_paths(&asker, &held, "host 2's node to offer host 1's derivations");

    let host2 = stores[1].host();
    let built_line = format!("nixmesh-log built {marker}");
    let failed_line = format!("nixmesh-log failed {marker}");
    let by_drv = nix_log(host2, &built_drv).expect("nix log of the derivation built");
    assert!(by_drv.contains(&built_line) && by_drv.contains("on stderr"), "{by_drv}");
    let by_output = nix_log(host2, &out).expect("nix log of the output path");
    assert!(by_output.contains(&built_line), "{by_output}");
    let of_failure = nix_log(host2, &failed_drv).expect("nix log of the failed build");
    assert!(of_failure.contains(&failed_line), "{of_failure}");
    let (status, content_type, _) = get(host2, &format!("/log/{}", base_name(&failed_drv)));
    assert_eq!((status, content_type.as_str()), (200, "text/plain; charset=utf-8"));

    // The same host's node without serve_logs gives none.
    holder.stop();
    let holder = Node::start(stores[0].host(), &stores[0], &trusting(&key));
    wait_for_paths(&asker, &held, "host 2's node to offer host 1's derivations again");
    for drv in [&built_drv, &failed_drv] {
        let (status, _, body) = get(host2, &format!("/log/{}", base_name(drv)));
        assert_eq!(status, 404, "{drv}: {}", String::from_utf8_lossy(&body));
        assert_eq!(nix_log(host2, drv), None, "nix log found a log of {drv}");
    }
    drop((asker, holder));
}
