//! The tests themselves never reach the internet: a node started as the harness starts it
//! sends nothing beyond the LAN (counted on the router's link to the "internet" host of
//! [`Lan::with_internet`]), and no in-process node is configured without saying its upstreams
//! (read from the tests' sources).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nixmesh_protocol::Sha256;
use nixmesh_tests::{
    CommandExt, HostStore, Lan, NODE_URL, Node, NodeOptions, narinfo_url_path, random_hash,
    require_lan, wait_until,
};

/// How long nodes may take to find each other by mDNS.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How long a node is watched for packets it should not send, once it has found its peer
/// (mDNS announces at once and again within a few seconds).
const QUIET_WATCH: Duration = Duration::from_secs(5);

/// The tests never reach the internet: a node started as the harness starts every node
/// (mDNS on, no upstream: `NodeOptions::default()`), asked for narinfos and NARs nobody has
/// and left to find its peer, sends nothing beyond the LAN. Everything bound beyond it goes
/// through the router (the hosts' default route), whose count of packets sent out must not
/// move; that the count would show an attempt is checked at the end.
#[test]
fn a_node_started_as_the_tests_start_it_sends_nothing_beyond_the_lan() {
    if !require_lan(&["tc", "ss", "nginx"]) {
        return;
    }
    let lan = Lan::with_internet(2);
    let internet = lan.internet();
    let before = internet.packets_sent_out();
    let stores: Vec<HostStore> = lan.hosts().iter().map(HostStore::start).collect();
    let nodes: Vec<Node> =
        stores.iter().map(|s| Node::start(s.host(), s, &NodeOptions::default())).collect();
    let assert_quiet = |when: &str| {
        let now = internet.packets_sent_out();
        assert_eq!(now, before, "{} packets left the LAN {when}", now - before);
    };

    let absent = format!("/nix/store/{}-absent", random_hash());
    let asked: Vec<String> = (0..5)
        .map(|_| format!("/{}.narinfo", random_hash()))
        .chain([narinfo_url_path(&absent)])
        .chain([format!(
            "/nar/{}-{}.nar",
            random_hash(),
            Sha256::digest(absent.as_bytes()).to_nixbase32()
        )])
        .collect();
    for (node, store) in nodes.iter().zip(&stores) {
        let statuses = node.http_statuses(&asked);
        assert!(statuses.iter().all(|&s| s == 404), "{asked:?}: {statuses:?}");
        let copy = store.copy_from(NODE_URL, &[], &absent);
        assert!(!copy.status.success(), "nix copy of a path nobody has");
    }
    assert_quiet("while the nodes were asked for what nobody has");

    wait_until(DISCOVERY_LIMIT, "the nodes to find each other by mDNS", || {
        nodes.iter().all(|node| node.connected_peers() == 1)
    });
    assert_quiet("while the nodes found each other");
    let watch_end = Instant::now() + QUIET_WATCH;
    while Instant::now() < watch_end {
        assert_quiet("while the nodes ran");
        std::thread::sleep(Duration::from_millis(250));
    }

    // The count sees an attempt to go out: one connection attempt to an address beyond the
    // LAN (TEST-NET-1, which the internet host drops).
    let out = lan.hosts()[0]
        .command("curl")
        .args(["--silent", "--max-time", "1", "http://192.0.2.1/"])
        .output_within(Duration::from_secs(10));
    assert!(!out.status.success(), "nothing answers at 192.0.2.1");
    wait_until(Duration::from_secs(5), "the router to count curl's attempt", || {
        internet.packets_sent_out() > before
    });
}

/// The same for nodes started in-process (the node crate's tests): every `ServeConfig` a
/// test writes out says its upstreams (`upstreams: Some(..)`), or is built from one that
/// does, so that none falls back on the default (nix.conf's substituters, else
/// cache.nixos.org). Read from the sources: a struct literal of `ServeConfig` in a test file
/// either sets `upstreams` or takes the rest from another function (which is checked where
/// it is written), never from `ServeConfig::default()` alone; and no test keeps or starts
/// `ServeConfig::default()` whole. (Nodes started as binaries are `NodeOptions`', which always
/// passes `--upstream` or `--no-upstream`, and the previous test's.)
#[test]
fn every_in_process_node_config_in_the_tests_says_its_upstreams() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let mut files = Vec::new();
    for dir in ["node/tests", "node/src", "localhttp", "tests/src", "tests/tests"] {
        rust_files(&workspace.join(dir), &mut files);
    }
    // The definition and its defaults are what the binary uses; they are not tests. This
    // file holds the scan itself, and examples for it.
    files.retain(|f| {
        !f.starts_with(workspace.join("node/src/config")) && *f != workspace.join(file!())
    });
    let mut literals = 0;
    let mut unsaid = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("reading a source file");
        // In the node's own sources, only their test modules are tests.
        let text = match text.find("#[cfg(test)]") {
            Some(at) if file.starts_with(workspace.join("node/src")) => &text[at..],
            None if file.starts_with(workspace.join("node/src")) => "",
            _ => &text[..],
        };
        let (found, problems) = configs_without_upstreams(text);
        literals += found;
        unsaid.extend(problems.into_iter().map(|p| format!("{}: {p}", file.display())));
    }
    assert!(literals >= 2, "found only {literals} ServeConfig literals: is the scan still right?");
    assert!(
        unsaid.is_empty(),
        "node configs in tests that do not say their upstreams:\n{}",
        unsaid.join("\n")
    );
}

/// How many `ServeConfig` struct literals `text` has, and the configs in it that do not say
/// their upstreams: a literal with neither `upstreams:` nor a base other than the defaults,
/// or `ServeConfig::default()` taken whole as a node's config.
fn configs_without_upstreams(text: &str) -> (usize, Vec<String>) {
    let literals = serve_config_literals(text);
    let mut unsaid = Vec::new();
    for body in &literals {
        let base = body.rsplit_once("..").map(|(_, base)| base.trim());
        let defaults_only = base.is_some_and(|b| {
            b.starts_with("Default::default") || b.contains("ServeConfig::default")
        });
        if !body.contains("upstreams:") && (base.is_none() || defaults_only) {
            unsaid.push(format!("ServeConfig {{{body}}}"));
        }
    }
    for (at, found) in text.match_indices("ServeConfig::default()") {
        // The defaults become a node's config when kept whole in a binding (to be adjusted
        // field by field and started) or handed to a `start(`; not when they fill in a
        // literal (`..ServeConfig::default()`, checked above), have a field read, or are
        // serialised to list the settings.
        let before = without_path(&text[..at]).trim_end();
        let read_field = text[at + found.len()..].starts_with('.');
        if !read_field && (before.ends_with('=') || before.ends_with("start(")) {
            unsaid.push("a node config from ServeConfig::default()".to_owned());
        }
    }
    (literals.len(), unsaid)
}

/// Every `.rs` file under `dir`, outside `target` directories.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name().is_some_and(|n| n != "target") {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `text` without the module path it ends with (`nixmesh_node::config::`).
fn without_path(text: &str) -> &str {
    text.trim_end_matches(|c: char| c.is_alphanumeric() || c == '_' || c == ':')
}

/// The bodies (between the braces) of the struct literals `ServeConfig { .. }` in `text`:
/// not its definition, an `impl`, or a return type.
fn serve_config_literals(text: &str) -> Vec<&str> {
    let mut bodies = Vec::new();
    for (at, found) in text.match_indices("ServeConfig {") {
        let before = without_path(&text[..at]).trim_end();
        if ["struct", "for", "impl", "->"].iter().any(|w| before.ends_with(w)) {
            continue;
        }
        let start = at + found.len();
        let mut depth = 1;
        let end = text[start..].char_indices().find_map(|(i, c)| {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            (depth == 0).then_some(start + i)
        });
        bodies.push(&text[start..end.unwrap_or(text.len())]);
    }
    bodies
}

#[test]
fn the_scan_finds_config_literals_and_what_they_say() {
    let text = "pub struct ServeConfig { a: u8 }\n\
                impl Default for ServeConfig { fn default() -> ServeConfig { ServeConfig { a: 1 } } }\n\
                let c = nixmesh_node::config::ServeConfig { x: S { y: 1 }, ..base() };";
    assert_eq!(serve_config_literals(text), [" a: 1 ", " x: S { y: 1 }, ..base() "]);
    // What the loopback tests wrote before they said their upstreams is caught; what they
    // write now is not.
    let before = "ServeConfig { mdns: false, ..ServeConfig::default() }";
    assert_eq!(configs_without_upstreams(before).1.len(), 1);
    let now = "ServeConfig { mdns: false, upstreams: Some(Vec::new()), ..ServeConfig::default() }";
    assert_eq!(configs_without_upstreams(now), (1, vec![]));
    let built_on = "ServeConfig { forget_peers_after: t, ..config(&dir, &store) }";
    assert_eq!(configs_without_upstreams(built_on), (1, vec![]));
    let whole = "let mut config = nixmesh_node::config::ServeConfig::default();";
    assert_eq!(configs_without_upstreams(whole).1.len(), 1);
    let started = "RunningNode::start(ServeConfig::default())";
    assert_eq!(configs_without_upstreams(started).1.len(), 1);
    let listed = "let every = serde_json::to_value(ServeConfig::default()).unwrap();";
    assert_eq!(configs_without_upstreams(listed), (0, vec![]));
}
