//! Case 9 (`--only slowlink`), a module of `nixmesh-bench`: NAR bytes as compressible as a
//! typical closure's over a 100 Mbit/s link (issue 21's last target: at least 2x faster than
//! nginx serving them uncompressed, within 1.25x of nginx serving zstd files made ahead), and
//! the same path over the unshaped link, where compressing must cost nothing.
//!
//! Two hosts of their own, apart from the other cases': host 1 holds one path of this
//! machine's shared libraries (64 MiB; 32 with `--quick`; about threefold with zstd, as a
//! closure of libraries is) and serves it three ways: its node, nginx with the files of
//! `nix copy --to file://…?compression=none`, and nginx with those of `?compression=zstd`
//! (Nix's level). Host 2's Nix copies it into its store, emptied before each copy, from its
//! own node (`mesh_compression` auto, then off: the node restarted between them) or from
//! either nginx. Host 1's egress is shaped with tc (a token bucket, as `Lan::shape_egress`)
//! for the slow rows and unshaped for the last. The sides alternate within each repetition.

use nixmesh_tests::library_bytes::shared_library_bytes;
use nixmesh_tests::nginx::Nginx;
use nixmesh_tests::{
    CacheKey, CommandExt, HostStore, Lan, NODE_URL, Node, NodeOptions, wait_until,
};
use std::time::Duration;

use super::{Row, Settings, forget, measure, median, node_log_filter};

/// The slow link's rate.
const LINK_MBIT: u32 = 100;
/// Host 1's nginx ports: the raw files, and the zstd ones.
const RAW_PORT: u16 = 8090;
const ZSTD_PORT: u16 = 8091;

/// The case's rows.
pub(crate) fn slow_link(s: &Settings) -> Vec<Row> {
    let setup = Setup::new(s);
    setup.lan.shape_egress(&setup.lan.hosts()[0], LINK_MBIT);
    let urls = [setup.raw.url().to_owned(), setup.zstd.url().to_owned()];
    let (mut raw, mut zstd, mut auto, mut off) = (vec![], vec![], vec![], vec![]);
    let mut node = setup.asker("auto");
    for rep in 1..=s.reps {
        eprintln!("--- case 9: rep {rep} of {}, {LINK_MBIT} Mbit/s: nginx raw, zstd, auto", s.reps);
        raw.push(setup.copy(&urls[0], &[]));
        zstd.push(setup.copy(&urls[1], &[]));
        auto.push(setup.copy(NODE_URL, &setup.pids(&node)));
    }
    node.stop();
    node = setup.asker("off");
    for rep in 1..=s.reps {
        eprintln!("--- case 9: rep {rep} of {}, {LINK_MBIT} Mbit/s: nixmesh off", s.reps);
        off.push(setup.copy(NODE_URL, &setup.pids(&node)));
    }
    setup.unshape();
    let mut fast_off = Vec::new();
    for _ in 1..=s.reps {
        fast_off.push(setup.copy(NODE_URL, &setup.pids(&node)));
    }
    node.stop();
    node = setup.asker("auto");
    let mut fast_auto = Vec::new();
    for _ in 1..=s.reps {
        fast_auto.push(setup.copy(NODE_URL, &setup.pids(&node)));
    }
    node.stop();
    let what = format!("{} MiB of shared libraries", setup.mib);
    let slow = format!("{what} over {LINK_MBIT} Mbit/s");
    vec![
        row(format!("{slow}: nixmesh auto / nginx raw"), &auto, &raw, "≥ 2"),
        row(format!("{slow}: nixmesh auto / nginx zstd files"), &auto, &zstd, "≥ 0.8"),
        row(format!("{slow}: nixmesh off / nginx raw"), &off, &raw, "≈ 1"),
        row(format!("{what}, unshaped: nixmesh auto / off"), &fast_auto, &fast_off, "≈ 1"),
    ]
}

/// A row of medians: `ours` against `theirs` (wall seconds and CPU seconds of the side's
/// processes, per copy).
fn row(case: String, ours: &[(f64, f64)], theirs: &[(f64, f64)], target: &str) -> Row {
    let cpu = |v: &[(f64, f64)]| v.iter().map(|(_, c)| c).sum::<f64>() / v.len() as f64;
    let (cpu_ours, cpu_theirs) = (cpu(ours), cpu(theirs));
    let walls = |v: &[(f64, f64)]| median(&mut v.iter().map(|(t, _)| *t).collect::<Vec<_>>());
    let (m, b) = (walls(ours), walls(theirs));
    Row {
        case,
        nixmesh: format!("{m:.2} s"),
        baseline: format!("{b:.2} s"),
        ratio: b / m,
        cpu: format!("{cpu_ours:.2} / {cpu_theirs:.2}"),
        target: target.to_owned(),
    }
}

/// The two hosts, the path, host 1's node and nginx twice.
struct Setup {
    stores: [HostStore; 2],
    key: CacheKey,
    path: String,
    mib: usize,
    holder: Node,
    raw: Nginx,
    zstd: Nginx,
    /// Last, so that the nodes, nginx and daemons are gone before their namespaces.
    lan: Lan,
}

impl Setup {
    fn new(s: &Settings) -> Setup {
        let lan = Lan::new(2);
        let (h1, h2) = (&lan.hosts()[0], &lan.hosts()[1]);
        let stores = [HostStore::start(h1), HostStore::start(h2)];
        let key = CacheKey::generate(lan.dir(), "slowlink-1");
        let mib = if s.quick { 32 } else { 64 };
        eprintln!("--- case 9: a path of {mib} MiB of shared libraries, its files raw and zstd");
        let bytes = shared_library_bytes(mib << 20).expect("this machine's shared libraries");
        let path = stores[0].add_file("shared-libraries", &bytes);
        stores[0].sign_closure(&key.secret_file, &path);
        let (raw_dir, zstd_dir) = (h1.dir().join("cache-raw"), h1.dir().join("cache-zstd"));
        stores[0].copy_to(&format!("file://{}?compression=none", raw_dir.display()), &[&path]);
        stores[0].copy_to(&format!("file://{}?compression=zstd", zstd_dir.display()), &[&path]);
        let raw = Nginx::start(h1, &raw_dir, RAW_PORT);
        let zstd = Nginx::start(h1, &zstd_dir, ZSTD_PORT);
        let options = node_options(&key, vec![], "auto");
        let holder = Node::start(h1, &stores[0], &options);
        let _ = h2;
        Setup { stores, key, path, mib, holder, raw, zstd, lan }
    }

    /// Host 2's node, peered with host 1's, with `mesh_compression` as given, once it offers
    /// the path.
    fn asker(&self, compression: &str) -> Node {
        let h1 = &self.lan.hosts()[0];
        let peer = format!("/ip4/{}/tcp/7374/p2p/{}", h1.address(), self.holder.peer_id());
        let options = node_options(&self.key, vec![peer], compression);
        let node = Node::start(self.stores[1].host(), &self.stores[1], &options);
        let wanted = [self.path.clone()];
        wait_until(Duration::from_secs(60), "host 2's node to offer the path", || {
            node.narinfo_statuses(&wanted).iter().all(|&s| s == 200)
        });
        node
    }

    /// Both nodes' processes.
    fn pids(&self, asker: &Node) -> Vec<u32> {
        [self.holder.pid(), asker.pid()].into_iter().flatten().collect()
    }

    /// Host 2's copy of the path from `url`, into a store emptied of it: wall seconds, and
    /// the CPU seconds of `pids` (nginx's own when none are given).
    fn copy(&self, url: &str, pids: &[u32]) -> (f64, f64) {
        forget(&self.stores[1], std::slice::from_ref(&self.path));
        let nginx_pids = [self.raw.pids(), self.zstd.pids()].concat();
        let pids = if pids.is_empty() { &nginx_pids[..] } else { pids };
        measure(pids, || {
            let out = self.stores[1].copy_from(url, &[&self.key.public], &self.path);
            assert!(out.status.success(), "nix copy: {}", String::from_utf8_lossy(&out.stderr));
        })
    }

    /// Host 1's egress unshaped again.
    fn unshape(&self) {
        let netns = self.lan.hosts()[0].netns();
        std::process::Command::new("tc")
            .args(["-n", netns, "qdisc", "del", "dev", "eth0", "root"])
            .stdout_within(Duration::from_secs(10));
    }
}

fn node_options(key: &CacheKey, peers: Vec<String>, compression: &str) -> NodeOptions {
    NodeOptions {
        trusted_keys: vec![key.public.clone()],
        peers,
        mdns: false,
        log_filter: node_log_filter(),
        extra_args: vec!["--mesh-compression".to_owned(), compression.to_owned()],
        ..NodeOptions::default()
    }
}
