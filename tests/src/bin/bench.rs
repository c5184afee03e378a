//! `nixmesh-bench`: nixmesh against its baseline, side by side in one run.
//!
//! Two hosts in network namespaces, each with its own nix-daemon. Host 1 holds the paths and
//! runs a node and nginx (Debian's) serving `nix copy --to file://DIR?compression=none` of
//! the same paths; host 2 runs a node peered with host 1's and is the client. Each case runs
//! against host 2's node (through the mesh) and against nginx, several times, and the table
//! gives the median of each, their ratio, and the CPU seconds the nodes (or nginx) used.
//!
//! ```sh
//! cargo run --release -p nixmesh-tests --bin nixmesh-bench -- [--quick] [--no-write]
//! ```
//!
//! `--only small|onenar|big|narinfo|propagation|idle|lan|index|slowlink` runs one group of
//! cases (`onenar`: only the row of one small NAR asked again and again, with the node binary
//! `NIXMESH_BENCH_NODE` names if set, for an A/B against an older commit's). The nodes log
//! at `warn` (`NIXMESH_BENCH_LOG` sets another filter) to `target/bench-logs/`.
//!
//! The narinfo rows' client is wrk (`tests/src/bench/wrk.rs`), for nginx and the node alike.
//!
//! Case 8, the machine's own Nix while a LAN client asks its node's LAN listener flat out,
//! runs on three hosts of its own (`lan`, in `tests/src/bench/lan.rs`; needs wrk too). Case 9,
//! shared-library bytes over a 100 Mbit/s link with and without zstd on the mesh, on two
//! (`slowlink`, in `tests/src/bench/slowlink.rs`; needs tc).
//!
//! Case 6, the index at 1,000 peers, runs in its own processes without hosts or Nix (the
//! index bench of `nixmesh-node`, once per shape) and compares with the first layout's
//! figures from issue 11; `--only index` runs it alone, without root.
//!
//! Needs root, Nix and nginx (`apt-get install nix-bin nginx-light iproute2`). The table is
//! printed and, unless `--no-write`, written to `docs/benchmarks.md` with the machine, the
//! date and the commit.

use std::process::Command;
use std::time::{Duration, Instant};

use nixmesh_tests::http::{count_all, get_all, hammer, quantile};
use nixmesh_tests::nginx::{Nginx, cpu_seconds};
use nixmesh_tests::node::{build_nixmesh, workspace_dir};
use nixmesh_tests::{
    CacheKey, CommandExt, Host, HostStore, Lan, Node, NodeOptions, narinfo_url_path, wait_until,
};

// The bench's cases in files of their own, beside the binary rather than in `src/bin/`,
// where cargo would take each file for a binary.
#[path = "../bench/lan.rs"]
mod lan;
#[path = "../bench/slowlink.rs"]
mod slowlink;
#[path = "../bench/wrk.rs"]
mod wrk;

const NGINX_PORT: u16 = 8080;
/// Host 2's nginx, proxying to host 1's: two hops, as through two nodes.
const PROXY_PORT: u16 = 8081;

struct Settings {
    quick: bool,
    /// Only the cases of this group (`small`, `big`, `narinfo`), for quick looks.
    only: Option<String>,
    paths: usize,
    reps: usize,
    big_mib: usize,
    hammer_secs: u64,
}

/// One row of the table.
struct Row {
    case: String,
    nixmesh: String,
    baseline: String,
    /// nixmesh's speed over the baseline's (above 1: nixmesh is faster).
    ratio: f64,
    cpu: String,
    target: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("load") {
        return load(&args[1..]);
    }
    const GROUPS: [&str; 9] =
        ["small", "onenar", "big", "narinfo", "propagation", "idle", "lan", "index", "slowlink"];
    let mut words = args.iter().map(String::as_str);
    while let Some(word) = words.next() {
        match word {
            "--quick" | "--no-write" => {}
            "--only" if words.next().is_some_and(|g| GROUPS.contains(&g)) => {}
            _ => {
                eprintln!(
                    "usage: nixmesh-bench [--quick] [--no-write] [--only {}]",
                    GROUPS.join("|")
                );
                std::process::exit(2);
            }
        }
    }
    let quick = args.iter().any(|a| a == "--quick");
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1)).cloned();
    let settings = if quick {
        Settings { quick, only, paths: 300, reps: 3, big_mib: 256, hammer_secs: 2 }
    } else {
        Settings { quick, only, paths: 1000, reps: 5, big_mib: 1024, hammer_secs: 10 }
    };
    // What is measured is the tree as it is now, whatever is edited while the cases run.
    let commit = describe_commit();
    let rows = run(&settings);
    let table = render(&rows);
    println!("{table}");
    if !args.iter().any(|a| a == "--no-write") {
        write_report(&settings, &commit, &table);
    }
}

fn run(s: &Settings) -> Vec<Row> {
    let index_wanted = s.only.as_deref().is_none_or(|o| o == "index");
    let mut index_rows = if index_wanted { index_at_scale(s) } else { Vec::new() };
    if s.only.as_deref() == Some("index") {
        return index_rows;
    }
    let wanted = |group: &str| s.only.as_deref().is_none_or(|o| o == group);
    let only = |group: &str| s.only.as_deref() == Some(group);
    assert!(nixmesh_tests::require_root() && nixmesh_tests::require_tool("nginx"));
    assert!(!(wanted("lan") || wanted("narinfo")) || nixmesh_tests::require_tool("wrk"));
    // SAFETY: set before any thread of ours starts.
    // `NIXMESH_BENCH_NODE` names a node binary built elsewhere (an older commit's, for an
    // A/B of `--only onenar`); otherwise this checkout's, built in release.
    let node =
        std::env::var_os("NIXMESH_BENCH_NODE").map_or_else(|| build_nixmesh(true), Into::into);
    unsafe { std::env::set_var("NIXMESH_BIN", node) };
    // Its three hosts are gone before the other cases' two are made.
    let mut lan_rows = if wanted("lan") { lan::own_nix_under_lan_load(s) } else { Vec::new() };
    if wanted("slowlink") {
        lan_rows.extend(slowlink::slow_link(s));
    }
    if matches!(s.only.as_deref(), Some("lan" | "slowlink")) {
        return lan_rows;
    }
    let lan = Lan::new(2);
    let (h1, h2) = (&lan.hosts()[0], &lan.hosts()[1]);
    let (s1, s2) = (HostStore::start(h1), HostStore::start(h2));
    let key = CacheKey::generate(lan.dir(), "bench-1");

    eprintln!("--- making {} small paths and a {} MiB one", s.paths, s.big_mib);
    let closure = s1.add_many_paths(s.paths, &nixmesh_tests::unique_marker());
    s1.sign_closure(&key.secret_file, &closure.top);
    let big = big_path(&s1, s.big_mib);
    s1.sign_closure(&key.secret_file, &big);
    let cache = h1.dir().join("cache-files");
    s1.copy_to(&format!("file://{}?compression=none", cache.display()), &[&closure.top, &big]);
    let nginx = Nginx::start(h1, &cache, NGINX_PORT);
    let proxy = Nginx::proxy(h2, nginx.url(), PROXY_PORT);

    let quiet = |peers: Vec<String>| NodeOptions {
        trusted_keys: vec![key.public.clone()],
        peers,
        mdns: false,
        log_filter: node_log_filter(),
        ..NodeOptions::default()
    };
    let n1 = Node::start(h1, &s1, &quiet(vec![]));
    let n1_addr = format!("/ip4/{}/tcp/7374/p2p/{}", h1.address(), n1.peer_id());
    let n2 = Node::start(h2, &s2, &quiet(vec![n1_addr.clone()]));
    let expected_paths = s1.path_count() as u64;
    wait_until(Duration::from_secs(60), "host 2's node to index host 1's paths", || {
        n2.status()["indexed_paths"] == expected_paths
    });
    let nodes = [n1.pid().unwrap(), n2.pid().unwrap()];
    let mesh = "http://127.0.0.1:7373".to_owned();
    // `--only onenar` starts no node without prefetch: it compares node binaries, and an
    // older one (`NIXMESH_BENCH_NODE`) has no `--no-prefetch`.
    let n2_plain = (!only("onenar")).then(|| {
        let node = start_without_prefetch(h2, &s2, &key.public, &n1_addr);
        wait_until(Duration::from_secs(60), "host 2's second node to index host 1's paths", || {
            status_at(h2, PLAIN_URL)["indexed_paths"] == expected_paths
        });
        node
    });
    let plain_pid = n2_plain.as_ref().map_or(nodes[1], |n| n.pid().unwrap());
    let plain = (PLAIN_URL, [n1.pid().unwrap(), plain_pid]);
    let bench = Bench { s, h2, s2: &s2, nodes, plain, nginx: &nginx, proxy: &proxy };

    let mut rows = Vec::new();
    if wanted("small") {
        eprintln!("--- case 1: nix copy of {} small paths", s.paths + 1);
        rows.extend(bench.timed(
            &format!("nix copy, {} small paths", s.paths + 1),
            "≥ 0.8",
            &closure.paths,
            |url| {
                let out = s2.copy_from(url, &[&key.public], &closure.top);
                assert!(out.status.success(), "nix copy: {}", String::from_utf8_lossy(&out.stderr));
            },
            &mesh,
        ));

        eprintln!("--- case 2: the client's concurrency");
        // The copies before filled host 2's store: its node lists the store and advertises
        // the new paths, and host 1's indexes them, for a second or two after. The burst
        // starts once that is done, from the state nginx starts from too.
        // Host 1's node indexes them twice: from host 2's two nodes, over the same store.
        let settled = s2.path_count() as u64;
        wait_until(Duration::from_secs(60), "the nodes to settle after the copies", || {
            n2.status()["local_paths"] == settled && n1.status()["indexed_paths"] == 2 * settled
        });
        rows.extend(bench.concurrency(&closure.paths, &mesh));
        rows.extend(bench.timed(
            &format!("nix-store -r, {} small paths", s.paths + 1),
            "≥ 0.8",
            &closure.paths,
            |url| {
                let out = s2.realise_from(url, &[&key.public], &closure.top);
                assert!(
                    out.status.success(),
                    "nix-store -r: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            },
            &mesh,
        ));
    }
    if wanted("small") || only("onenar") {
        let first = [narinfo_url_path(one_small_path(&closure.paths))];
        let ours = bench.load(&mesh, 1, &first).bodies_urls;
        let theirs = bench.load(bench.nginx.url(), 1, &first).bodies_urls;
        rows.push(bench.hammered(
            "one small NAR, again and again, 1 conn",
            [&ours[0], &theirs[0]],
            200,
            Client::Load(1),
            &mesh,
            "p99 < 5 ms",
        ));
    }
    if wanted("big") {
        eprintln!("--- case 3: a {} MiB NAR", s.big_mib);
        rows.push(bench.big_nar(&big, &mesh));
        rows.push(transport_alone(s.big_mib));
        rows.extend(bench.timed(
            &format!("nix copy, one {} MiB path", s.big_mib),
            "≥ 0.8",
            std::slice::from_ref(&big),
            |url| {
                let out = s2.copy_from(url, &[&key.public], &big);
                assert!(out.status.success(), "nix copy: {}", String::from_utf8_lossy(&out.stderr));
            },
            &mesh,
        ));
    }
    if wanted("narinfo") {
        eprintln!("--- cases 4 and 5: narinfo misses and hits");
        let miss = "/00000000000000000000000000000000.narinfo";
        for connections in [100, 1000] {
            rows.push(bench.hammered(
                &format!("narinfo miss, {connections} conns"),
                [miss, miss],
                404,
                Client::Wrk(connections),
                &mesh,
                "≥ 1",
            ));
        }
        let hit = narinfo_url_path(&closure.top);
        rows.push(bench.hammered(
            "narinfo hit (repeated), 100 conns",
            [&hit, &hit],
            200,
            Client::Wrk(100),
            &mesh,
            "≥ 0.8",
        ));
    }
    if wanted("propagation") {
        eprintln!("--- case 7: a new path seen by the other node");
        let mut seen = Vec::new();
        for rep in 0..s.reps * 2 {
            let path = s1.add_file(&format!("new-{rep}"), format!("new path {rep}").as_bytes());
            s1.sign_closure(&key.secret_file, &path);
            let added = Instant::now();
            let url = [narinfo_url_path(&path)];
            let took = nixmesh_tests::wait_for(Duration::from_secs(30), "the new path", || {
                (n2.http_statuses(&url)[0] == 200).then(|| added.elapsed())
            });
            seen.push(took.as_secs_f64());
        }
        let median_ms = median(&mut seen) * 1e3;
        let max_ms = seen.last().copied().unwrap_or(0.0) * 1e3;
        rows.push(Row {
            case: "new path visible on the other node: median / max".to_owned(),
            nixmesh: format!("{median_ms:.0} / {max_ms:.0} ms"),
            baseline: "(no counterpart)".to_owned(),
            ratio: f64::NAN,
            cpu: String::new(),
            target: "median < 1 s".to_owned(),
        });
    }
    if wanted("idle") {
        let count = if s.quick { 5_000 } else { 50_000 };
        eprintln!("--- case 7: idle over a store of {count} more paths");
        let expr = format!(
            "builtins.stringLength (builtins.concatStringsSep \" \" (builtins.genList (i: builtins.toFile \"idle-${{toString i}}\" (toString i)) {count}))"
        );
        h1.command("nix-instantiate")
            .args([
                "--store",
                &s1.url(),
                "--eval",
                "--strict",
                "--read-write-mode",
                "--expr",
                &expr,
            ])
            .stdout_within(Duration::from_secs(900));
        let expected = s1.path_count() as u64;
        wait_until(Duration::from_secs(120), "host 2's node to index them", || {
            n2.status()["indexed_paths"] == expected
        });
        let window = Duration::from_secs(if s.quick { 5 } else { 30 });
        let pids = [n1.pid().unwrap()];
        let (_, cpu) = measure(&pids, || std::thread::sleep(window));
        rows.push(Row {
            case: format!("idle holder of {expected} paths: CPU"),
            nixmesh: format!("{:.2} % of a core", cpu / window.as_secs_f64() * 100.0),
            baseline: "(no counterpart)".to_owned(),
            ratio: f64::NAN,
            cpu: format!("{cpu:.2} in {} s", window.as_secs()),
            target: "< 1 %".to_owned(),
        });
        // The same holder while its store changes all the time, as in a rebuild: every
        // change makes it list the store again.
        let window = Duration::from_secs(if s.quick { 3 } else { 10 });
        let mut added = 0;
        let (took, cpu) = measure(&pids, || {
            let until = Instant::now() + window;
            while Instant::now() < until && added < 1_000 {
                s1.add_file(&format!("busy-{added}"), format!("busy {added}").as_bytes());
                added += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        rows.push(Row {
            case: format!(
                "the same holder while a path is added every 100 ms ({added} in {took:.1} s): CPU"
            ),
            nixmesh: format!("{:.2} % of a core", cpu / took * 100.0),
            baseline: "(no counterpart)".to_owned(),
            ratio: f64::NAN,
            cpu: format!("{cpu:.2} in {took:.1} s"),
            target: "(a rebuild's cost; no target)".to_owned(),
        });
    }
    rows.append(&mut lan_rows);
    rows.append(&mut index_rows);
    // The nodes' logs outlive the LAN, for a look at what happened.
    let logs = workspace_dir().join("target/bench-logs");
    let _ = std::fs::create_dir_all(&logs);
    let logs_of = [("host1.log", Some(&n1)), ("host2.log", Some(&n2))];
    for (name, node) in logs_of.into_iter().chain([("host2-no-prefetch.log", n2_plain.as_ref())]) {
        let Some(node) = node else { continue };
        let _ = std::fs::copy(node.log_path(), logs.join(name));
    }
    rows
}

/// The closure's first small file, `nixmesh-small-0` (1 KiB and its marker's line): the same
/// NAR size in every run. The first path in the closure's order would be whichever file
/// (1 to 40 KiB) or the top (about 60 KiB) the run's marker hashes first, and a small NAR's
/// cost per request grows with its size (hashed, sealed, opened and copied on each hop).
fn one_small_path(paths: &[String]) -> &str {
    paths.iter().find(|p| p.ends_with("-nixmesh-small-0")).expect("the closure's first file")
}

/// The nodes' log filter: `warn`, or `NIXMESH_BENCH_LOG`.
fn node_log_filter() -> String {
    std::env::var("NIXMESH_BENCH_LOG").unwrap_or_else(|_| "warn".to_owned())
}

/// Which client asks in a [`Bench::hammered`] row, over how many connections: wrk for the
/// rows whose figure is a request rate (a client of a thread a connection would spend the
/// CPU the servers need), the bench's own `load hammer` for one connection (its latencies
/// are each request's).
#[derive(Clone, Copy)]
enum Client {
    Wrk(usize),
    Load(usize),
}

struct Bench<'a> {
    s: &'a Settings,
    h2: &'a Host,
    s2: &'a HostStore,
    nodes: [u32; 2],
    /// Host 2's node without prefetch ([`start_without_prefetch`]): its URL, and the pids of
    /// host 1's node and it.
    plain: (&'a str, [u32; 2]),
    nginx: &'a Nginx,
    proxy: &'a Nginx,
}

impl Bench<'_> {
    /// Deletes `paths` from host 2's store and forgets Nix's narinfo cache, so the next
    /// copy starts from nothing.
    fn forget(&self, paths: &[String]) {
        forget(self.s2, paths);
    }

    /// Runs `work(url)` `reps` times against each side, alternating: host 2's node, its node
    /// without prefetch, nginx. The median times, with the client's own CPU (the Nix
    /// process's user + sys) beside each; a row for each node against nginx. Every run must
    /// leave Nix's narinfo cache where [`forget`] removes it, so each starts as a new user's
    /// would.
    ///
    /// `fresh` are deleted from host 2's store before each run, outside its time: deleting
    /// a closure of 1,001 paths takes Nix about a second, a fixed cost that hid the copies'
    /// difference (every copy took that second more, whichever server answered).
    fn timed(
        &self,
        case: &str,
        target: &str,
        fresh: &[String],
        work: impl Fn(&str),
        mesh: &str,
    ) -> Vec<Row> {
        let sides = [
            (mesh, self.nodes.to_vec()),
            (self.plain.0, self.plain.1.to_vec()),
            (self.nginx.url(), self.nginx.pids()),
        ];
        let mut runs = [Runs::default(), Runs::default(), Runs::default()];
        for _ in 0..self.s.reps {
            for ((url, pids), runs) in sides.iter().zip(&mut runs) {
                self.forget(fresh);
                let (client0, used0) = (client_cpu_seconds(), prefetched(self.h2, url));
                let (t, cpu) = measure(pids, || work(url));
                runs.record(t, cpu, client_cpu_seconds() - client0);
                runs.prefetched += prefetched(self.h2, url) - used0;
                let cache = self.h2.dir().join("cache/nix/binary-cache-v6.sqlite");
                assert!(cache.exists(), "Nix kept no narinfo cache at {}", cache.display());
            }
        }
        let [mut ours, mut plain, mut theirs] = runs;
        let b = theirs.median_wall();
        let baseline = format!("{b:.2} s (nix {:.2} s CPU)", theirs.median_client());
        let reps = self.s.reps as f64;
        let row = |case: String, side: &mut Runs| {
            let m = side.median_wall();
            Row {
                case,
                nixmesh: format!(
                    "{m:.2} s (nix {:.2} s CPU; {:.0} NARs from prefetch)",
                    side.median_client(),
                    side.prefetched as f64 / reps
                ),
                baseline: baseline.clone(),
                ratio: b / m,
                cpu: format!("{:.2} / {:.2}", side.server_cpu / reps, theirs.server_cpu / reps),
                target: target.to_owned(),
            }
        };
        vec![row(case.to_owned(), &mut ours), row(format!("{case}, --no-prefetch"), &mut plain)]
    }

    /// 25 narinfo connections, then 16 NAR connections, as Nix substitutes; latencies and
    /// any answer but 200.
    fn concurrency(&self, paths: &[String], mesh: &str) -> Vec<Row> {
        let narinfos: Vec<String> = paths.iter().map(|p| narinfo_url_path(p)).collect();
        // The NAR URLs differ (the node names NARs by store hash and NAR hash, nginx's cache
        // by file hash), so each side's come from its own narinfos.
        let mut rows = Vec::new();
        let mut per_side = Vec::new();
        for base in [mesh.to_owned(), self.nginx.url().to_owned()] {
            let pids = if base == mesh { self.nodes.to_vec() } else { self.nginx.pids() };
            let cpu0 = cpu_seconds(&pids);
            let info = self.load(&base, 25, &narinfos);
            let nar = self.load(&base, 16, &info.bodies_urls);
            per_side.push((info, nar, cpu_seconds(&pids) - cpu0));
        }
        let (ours, theirs) = (&per_side[0], &per_side[1]);
        for (kind, o, t) in [("narinfo", &ours.0, &theirs.0), ("small NAR", &ours.1, &theirs.1)] {
            rows.push(Row {
                case: format!(
                    "{} {kind}s, {} conns: p50 / p99, non-200",
                    o.count,
                    if kind == "narinfo" { 25 } else { 16 }
                ),
                nixmesh: o.latencies(),
                baseline: t.latencies(),
                ratio: t.seconds / o.seconds,
                cpu: String::new(),
                target: "0 non-200; p99 < 5 ms".to_owned(),
            });
        }
        if let Some(last) = rows.last_mut() {
            last.cpu = format!("{:.2} / {:.2}", ours.2, theirs.2);
        }
        // The same burst through two hops of nginx: what a request through two servers
        // costs on this machine, as a measure for the row above.
        let pids = [self.proxy.pids(), self.nginx.pids()].concat();
        let cpu0 = cpu_seconds(&pids);
        let info = self.load(self.proxy.url(), 25, &narinfos);
        let nar = self.load(self.proxy.url(), 16, &info.bodies_urls);
        let cpu = cpu_seconds(&pids) - cpu0;
        let (o, t) = (&ours.1, &nar);
        rows.push(Row {
            case: format!(
                "the same {} small NARs through two nginx (host 2's proxying to host 1's, kept \
                 alive): p50 / p99, non-200",
                t.count
            ),
            nixmesh: o.latencies(),
            baseline: t.latencies(),
            ratio: t.seconds / o.seconds,
            cpu: format!("{:.2} / {cpu:.2}", ours.2),
            target: "(two hops, for the row above)".to_owned(),
        });
        rows
    }

    /// One big NAR, fetched whole: throughput and CPU per GiB.
    fn big_nar(&self, big: &str, mesh: &str) -> Row {
        let mut rates = (Vec::new(), Vec::new());
        let mut cpu = (0.0, 0.0);
        for _ in 0..self.s.reps {
            for (side, base) in [(0, mesh), (1, self.nginx.url())] {
                let info = self.load(base, 1, &[narinfo_url_path(big)]);
                let pids = if side == 0 { self.nodes.to_vec() } else { self.nginx.pids() };
                let cpu0 = cpu_seconds(&pids);
                let nar = self.load(base, 1, &info.bodies_urls);
                assert_eq!(nar.ok, 1, "the big NAR from {base}");
                let used = cpu_seconds(&pids) - cpu0;
                let rate = nar.bytes as f64 / nar.seconds / (1 << 20) as f64;
                if side == 0 {
                    rates.0.push(rate);
                    cpu.0 += used / (nar.bytes as f64 / (1u64 << 30) as f64);
                } else {
                    rates.1.push(rate);
                    cpu.1 += used / (nar.bytes as f64 / (1u64 << 30) as f64);
                }
            }
        }
        let (m, b) = (median(&mut rates.0), median(&mut rates.1));
        let reps = self.s.reps as f64;
        Row {
            case: format!("one {} MiB NAR (CPU s per GiB)", self.s.big_mib),
            nixmesh: format!("{m:.0} MiB/s"),
            baseline: format!("{b:.0} MiB/s"),
            ratio: m / b,
            cpu: format!("{:.2} / {:.2}", cpu.0 / reps, cpu.1 / reps),
            target: "≥ 1 GB/s".to_owned(),
        }
    }

    fn hammered(
        &self,
        case: &str,
        paths: [&str; 2],
        expect: u16,
        client: Client,
        mesh: &str,
        target: &str,
    ) -> Row {
        let mut out = Vec::new();
        for (side, (base, pids)) in [
            (mesh.to_owned(), self.nodes.to_vec()),
            (self.nginx.url().to_owned(), self.nginx.pids()),
        ]
        .into_iter()
        .enumerate()
        {
            let path = paths[side];
            let cpu0 = cpu_seconds(&pids);
            let secs = self.s.hammer_secs;
            let v = match client {
                Client::Wrk(conns) => wrk::hammer(self.h2, &base, path, expect, conns, secs),
                Client::Load(conns) => {
                    let printed = self
                        .h2
                        .command(std::env::current_exe().expect("our own path"))
                        .args(["load", "hammer", &base, path, &expect.to_string()])
                        .args([conns.to_string(), secs.to_string()])
                        .stdout_within(Duration::from_secs(secs + 120));
                    serde_json::from_slice(&printed).expect("load printed JSON")
                }
            };
            out.push((v, cpu_seconds(&pids) - cpu0));
        }
        let rate = |v: &serde_json::Value| {
            v["expected"].as_f64().unwrap_or(0.0) / v["seconds"].as_f64().unwrap_or(1.0)
        };
        let show = |v: &serde_json::Value| {
            format!(
                "{:.0}/s, p99 {:.2} ms{}",
                rate(v),
                v["p99_us"].as_f64().unwrap_or(0.0) / 1e3,
                match v["requests"].as_u64().unwrap_or(0) - v["expected"].as_u64().unwrap_or(0) {
                    0 => String::new(),
                    n => format!(", {n} not {expect}"),
                }
            )
        };
        Row {
            case: case.to_owned(),
            nixmesh: show(&out[0].0),
            baseline: show(&out[1].0),
            ratio: rate(&out[0].0) / rate(&out[1].0).max(1e-9),
            cpu: format!("{:.2} / {:.2}", out[0].1, out[1].1),
            target: target.to_owned(),
        }
    }

    /// Runs `load once` on host 2: GET each of `paths` from `base` over `connections`.
    fn load(&self, base: &str, connections: usize, paths: &[String]) -> LoadResult {
        load_on(self.h2, base, connections, paths)
    }
}

/// Where host 2's node without prefetch answers Nix.
const PLAIN_URL: &str = "http://127.0.0.1:7375";

/// Host 2's second node, as the first but with `--no-prefetch`, on ports of its own
/// ([`PLAIN_URL`] for Nix, 7376 for the mesh), peered with host 1's: the copies' A/B.
fn start_without_prefetch(h2: &Host, s2: &HostStore, key: &str, n1_addr: &str) -> Node {
    let dir = h2.dir().join("node-no-prefetch");
    let state = dir.join("state");
    std::fs::create_dir_all(&state).expect("creating the second node's directory");
    let log = dir.join("nixmesh.log");
    let log_file = std::fs::File::create(&log).expect("creating the second node's log");
    let mut cmd = h2.command(nixmesh_tests::node::nixmesh_bin());
    cmd.args(["serve", "--store", &s2.daemon_url(), "--http-listen", "127.0.0.1:7375"])
        .args(["--p2p-listen", "/ip4/0.0.0.0/tcp/7376", "--real-store-dir"])
        .arg(s2.real_store_dir())
        .arg("--state-dir")
        .arg(&state)
        .args(["--trusted-public-key", key, "--peer", n1_addr])
        .args(["--no-mdns", "--no-upstream", "--no-prefetch"])
        .env("RUST_LOG", node_log_filter())
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().expect("duplicating a file handle"))
        .stderr(log_file);
    let child = cmd.spawn().expect("starting the second nixmesh serve");
    // `adopt` waits on the first node's port; the caller waits on this one's index.
    Node::adopt(h2, child, log, state)
}

/// `/_nixmesh/status` of the node at `base` on `host`, or `null` while it does not answer.
fn status_at(host: &Host, base: &str) -> serde_json::Value {
    let (code, body) = nixmesh_tests::node::get_from(host, &format!("{base}/_nixmesh/status"));
    if code != 200 {
        return serde_json::Value::Null;
    }
    serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null)
}

/// How many NARs the node at `base` on `host` served from its prefetch so far (0 for a
/// server that has no such count, as nginx).
fn prefetched(host: &Host, base: &str) -> u64 {
    let (_, body) = nixmesh_tests::node::get_from(host, &format!("{base}/metrics"));
    let line = "nixmesh_prefetch_nars_total{result=\"used\"} ";
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Deletes `paths` from `store` and forgets its host's Nix narinfo cache, so the next copy
/// into it starts from nothing.
fn forget(store: &HostStore, paths: &[String]) {
    let _ = std::fs::remove_dir_all(store.host().dir().join("cache"));
    let mut args = vec!["--delete"];
    args.extend(paths.iter().rev().map(String::as_str));
    let out = store.nix_store(&args);
    assert!(out.status.success(), "nix-store --delete: {}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `load once` on `host`: GET each of `paths` from `base` over `connections`.
fn load_on(host: &Host, base: &str, connections: usize, paths: &[String]) -> LoadResult {
    let list = host.dir().join("load-paths");
    std::fs::write(&list, paths.join("\n")).expect("writing the path list");
    let printed = host
        .command(std::env::current_exe().expect("our own path"))
        .args(["load", "once", base, &connections.to_string()])
        .arg(&list)
        .stdout_within(Duration::from_secs(600));
    let v: serde_json::Value = serde_json::from_slice(&printed).expect("load printed JSON");
    LoadResult {
        count: v["count"].as_u64().unwrap_or(0) as usize,
        ok: v["ok"].as_u64().unwrap_or(0) as usize,
        p50_us: v["p50_us"].as_u64().unwrap_or(0),
        p99_us: v["p99_us"].as_u64().unwrap_or(0),
        seconds: v["seconds"].as_f64().unwrap_or(0.0),
        bytes: v["bytes"].as_u64().unwrap_or(0),
        bodies_urls: v["nar_urls"]
            .as_array()
            .map(|a| a.iter().filter_map(|u| u.as_str().map(String::from)).collect())
            .unwrap_or_default(),
    }
}

struct LoadResult {
    count: usize,
    ok: usize,
    p50_us: u64,
    p99_us: u64,
    seconds: f64,
    bytes: u64,
    /// For narinfo answers: the NAR URL each names, as `/nar/...`.
    bodies_urls: Vec<String>,
}

impl LoadResult {
    /// `p50 / p99 ms, non-200s`, as the table gives them.
    fn latencies(&self) -> String {
        let ms = |us: u64| us as f64 / 1e3;
        format!("{:.2} / {:.2} ms, {}", ms(self.p50_us), ms(self.p99_us), self.count - self.ok)
    }
}

/// `nixmesh-bench load once BASE CONNECTIONS FILE` and `load hammer BASE PATH STATUS
/// CONNECTIONS SECONDS`: the client side, run inside host 2's namespace; prints JSON.
fn load(args: &[String]) {
    let address = |base: &str| -> std::net::SocketAddr {
        base.trim_start_matches("http://").parse().expect("BASE is http://IP:PORT")
    };
    match args.first().map(String::as_str) {
        Some("once") => {
            let connections: usize = args[2].parse().expect("CONNECTIONS");
            let paths: Vec<String> = std::fs::read_to_string(&args[3])
                .expect("FILE")
                .lines()
                .map(String::from)
                .collect();
            let start = Instant::now();
            // narinfos are kept (their NAR URLs are wanted); NARs only counted.
            let keep = !paths.iter().any(|p| p.starts_with("/nar/"));
            let fetch = if keep { get_all } else { count_all };
            let fetched = fetch(address(&args[1]), &paths, connections);
            let seconds = start.elapsed().as_secs_f64();
            let mut latencies: Vec<u64> =
                fetched.iter().map(|f| f.took.as_micros() as u64).collect();
            latencies.sort_unstable();
            let nar_urls: Vec<String> = fetched
                .iter()
                .filter_map(|f| {
                    let text = std::str::from_utf8(&f.body).ok()?;
                    let url = text.lines().find_map(|l| l.strip_prefix("URL: "))?;
                    Some(format!("/{url}"))
                })
                .collect();
            let report = serde_json::json!({
                "count": fetched.len(),
                "ok": fetched.iter().filter(|f| f.status == 200).count(),
                "p50_us": quantile(&latencies, 0.5),
                "p99_us": quantile(&latencies, 0.99),
                "seconds": seconds,
                "bytes": fetched.iter().map(|f| f.len).sum::<u64>(),
                "nar_urls": nar_urls,
            });
            println!("{report}");
        }
        Some("hammer") => {
            let status: u16 = args[3].parse().expect("STATUS");
            let connections: usize = args[4].parse().expect("CONNECTIONS");
            let secs: u64 = args[5].parse().expect("SECONDS");
            let h =
                hammer(address(&args[1]), &args[2], status, connections, Duration::from_secs(secs));
            let report = serde_json::json!({
                "requests": h.requests,
                "expected": h.expected,
                "p50_us": quantile(&h.latencies_us, 0.5),
                "p99_us": quantile(&h.latencies_us, 0.99),
                "seconds": h.seconds,
            });
            println!("{report}");
        }
        _ => panic!("usage: nixmesh-bench load once|hammer ..."),
    }
}

/// Wall time of `work` and the CPU seconds `pids` used meanwhile.
fn measure(pids: &[u32], work: impl FnOnce()) -> (f64, f64) {
    let cpu0 = cpu_seconds(pids);
    let start = Instant::now();
    work();
    (start.elapsed().as_secs_f64(), cpu_seconds(pids) - cpu0)
}

/// One side's runs of a timed case.
#[derive(Default)]
struct Runs {
    wall: Vec<f64>,
    /// The client's CPU seconds, run by run.
    client: Vec<f64>,
    /// The server side's CPU seconds, all runs together.
    server_cpu: f64,
    /// NARs served from the node's prefetch, all runs together.
    prefetched: u64,
}

impl Runs {
    fn record(&mut self, wall: f64, server_cpu: f64, client_cpu: f64) {
        self.wall.push(wall);
        self.server_cpu += server_cpu;
        self.client.push(client_cpu);
    }

    fn median_wall(&mut self) -> f64 {
        median(&mut self.wall)
    }

    fn median_client(&mut self) -> f64 {
        median(&mut self.client)
    }
}

/// User + system CPU seconds of this process's children that have been waited for: around
/// one `nix` command run to its end, that command's own (`ip netns exec` executes it in its
/// place). The nix-daemon's work for it is not counted: the daemon reaps its children itself.
fn client_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct it is given, nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A path of `mib` MiB of random bytes, added to `store`.
fn big_path(store: &HostStore, mib: usize) -> String {
    let file = store.host().dir().join("big");
    Command::new("head")
        .args(["-c", &format!("{}M", mib), "/dev/urandom"])
        .stdout(std::fs::File::create(&file).expect("creating the big file"))
        .status()
        .expect("head");
    let file = file.to_str().expect("a UTF-8 path").to_owned();
    let out = store.nix_store(&["--add", &file]);
    assert!(out.status.success(), "nix-store --add: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8").trim().to_owned()
}

/// Case 6: the index under 1,000 peers' snapshots (50,000 paths each; 10,000 with
/// `--quick`), 80% shared and disjoint, each shape in a process of its own so that its peak
/// RSS is its own. The baseline is the first layout (every pair twice as redb keys), as
/// issue 11 measured it at 100 peers: running it at 1,000 would write 10 GB.
fn index_at_scale(s: &Settings) -> Vec<Row> {
    let bench = build_node_bench("index");
    let paths = if s.quick { 10_000 } else { 50_000 };
    let mut rows = Vec::new();
    for (shape, shared) in [("80% shared", "0.8"), ("disjoint", "0")] {
        eprintln!("--- case 6: the index at 1,000 peers x {paths} paths, {shape}");
        let out = Command::new(&bench)
            .args(["--peers", "1000", "--paths", &paths.to_string(), "--shared", shared, "--json"])
            .stdout_within(Duration::from_secs(900));
        let r: serde_json::Value = serde_json::from_slice(&out).expect("the index bench's JSON");
        let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
        let case = |what: &str| format!("index, 1,000 peers x {paths} paths, {shape}: {what}");
        let disk_target = if shared == "0" { "< 1 GB" } else { "< 256 MB" };
        let mut row = |what: &str, nixmesh: String, baseline: &str, cpu: String, target: &str| {
            rows.push(Row {
                case: case(what),
                nixmesh,
                baseline: baseline.to_owned(),
                ratio: f64::NAN,
                cpu,
                target: target.to_owned(),
            })
        };
        row(
            "all snapshots absorbed",
            format!("{:.1} s", f("absorb_s")),
            "44 s at 100 peers",
            format!("{:.1}", f("absorb_cpu_s")),
            "< 30 s",
        );
        row(
            "lookup of a miss, p50 / p99",
            format!("{:.2} / {:.2} us", f("miss_p50_us"), f("miss_p99_us")),
            "p50 5 us at 100 peers",
            String::new(),
            "p99 < 2 us",
        );
        row(
            "lookup of a held path (up to 8 holders, as a request asks), p50 / p99",
            format!("{:.2} / {:.2} us", f("hit_p50_us"), f("hit_p99_us")),
            "p50 5 us at 100 peers",
            String::new(),
            "p99 < 2 us",
        );
        row(
            "false positives (misses named a holder)",
            format!("{} in {}", r["false_positives"], r["lookups"]),
            "none (exact)",
            String::new(),
            "< 1 in 10,000",
        );
        row(
            "peak RSS",
            format!("{:.0} MB", f("peak_rss_mib") * 1.048_576),
            "52 MB at 100 peers",
            String::new(),
            "< 256 MB",
        );
        row(
            "state on disk (allocated blocks; the file's length after it)",
            format!(
                "{:.0} MB (file {:.0} MB)",
                f("disk_mib") * 1.048_576,
                f("file_mib") * 1.048_576
            ),
            "1,078 MB at 100 peers (10 GB at 1,000)",
            String::new(),
            disk_target,
        );
        row(
            "restart: table built from the file",
            format!("{:.1} s", f("reopen_s")),
            "(opened at once, lookups from disk)",
            format!("{:.1}", f("reopen_cpu_s")),
            "serves from the stored index at once",
        );
        if shared == "0" {
            row(
                "a delta of 100 paths on the wire",
                format!("{} bytes", r["delta_100_wire_bytes"]),
                "(same wire format)",
                String::new(),
                "< 4 KB",
            );
        }
    }
    rows
}

/// Beside case 3: the mesh's transport alone, one stream of `mib` MiB in one process with
/// SHA-256 on the receiving side, against plain TCP doing the same and libp2p's own stack:
/// the ceiling that the nodes' figure meets (`nixmesh-node`'s bench `transport`).
fn transport_alone(mib: usize) -> Row {
    let bench = build_node_bench("transport");
    eprintln!("--- case 3: the mesh's transport alone, {mib} MiB");
    let out = Command::new(&bench)
        .args(["--mib", &mib.to_string(), "--hash", "--json"])
        .stdout_within(Duration::from_secs(600));
    let r: serde_json::Value = serde_json::from_slice(&out).expect("the transport bench's JSON");
    let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    Row {
        case: format!(
            "the same through the mesh's transport alone: one stream, {mib} MiB, SHA-256 on, \
             in one process (CPU s per GiB)"
        ),
        nixmesh: format!("{:.0} MiB/s", f("mesh_mib_s")),
        baseline: format!(
            "plain TCP {:.0} MiB/s; libp2p's stock TCP+noise+yamux {:.0} MiB/s",
            f("tcp_mib_s"),
            f("libp2p_mib_s")
        ),
        ratio: f("mesh_mib_s") / f("tcp_mib_s"),
        cpu: format!(
            "{:.2} / TCP {:.2}, stock {:.2}",
            f("mesh_cpu_s_per_gib"),
            f("tcp_cpu_s_per_gib"),
            f("libp2p_cpu_s_per_gib")
        ),
        target: "(the ceiling for the row above)".to_owned(),
    }
}

/// A bench of `nixmesh-node`, built in release; where cargo put it.
fn build_node_bench(name: &str) -> std::path::PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let messages = Command::new(cargo)
        .current_dir(workspace_dir())
        .args(["bench", "-p", "nixmesh-node", "--bench", name, "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stdout_within(Duration::from_secs(1800));
    String::from_utf8_lossy(&messages)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(std::path::PathBuf::from))
        .unwrap_or_else(|| panic!("cargo bench reported no `{name}` executable"))
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | nixmesh | nginx (baseline) | ratio | CPU s: nodes / nginx | target |\n|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let ratio = if r.ratio.is_nan() { "—".to_owned() } else { format!("{:.2}", r.ratio) };
        out += &format!(
            "| {} | {} | {} | {ratio} | {} | {} |\n",
            r.case, r.nixmesh, r.baseline, r.cpu, r.target
        );
    }
    out
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .current_dir(workspace_dir())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The commit checked out, and whether the tree differs from it.
fn describe_commit() -> String {
    let dirty = !sh("git status --porcelain --untracked-files=no").is_empty();
    sh("git rev-parse --short HEAD") + if dirty { " (with uncommitted changes)" } else { "" }
}

fn write_report(s: &Settings, commit: &str, table: &str) {
    let mut flags: Vec<String> = Vec::new();
    if s.quick {
        flags.push("--quick".to_owned());
    }
    if let Some(only) = &s.only {
        flags.extend(["--only".to_owned(), only.clone()]);
    }
    let run = format!(
        "## Run of {date} ({mode})\n\n- machine: {cpu}, {cores} cores, {mem}\n- commit: {commit}\n- command: `cargo run --release -p nixmesh-tests --bin nixmesh-bench{flag}`\n- SHA-256 on one core (`openssl speed -evp sha256`, 16 KiB blocks): {sha}\n\n{table}\n",
        date = sh("date -u +%Y-%m-%dT%H:%MZ"),
        mode = if flags.is_empty() { "full".to_owned() } else { flags.join(" ") },
        cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        cores = sh("nproc"),
        mem = sh("free -g | awk '/Mem:/ {print $2 \" GiB\"}'"),
        commit = commit,
        flag = if flags.is_empty() { String::new() } else { format!(" -- {}", flags.join(" ")) },
        sha = sh(
            "openssl speed -evp sha256 -bytes 16384 -seconds 1 2>/dev/null | awk '/^sha256/ {print $2}'"
        ) + " bytes/s (k = 1,000)",
    );
    let path = workspace_dir().join("docs/benchmarks.md");
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let marker = "<!-- runs: newest first -->\n";
    let text = match existing.split_once(marker) {
        Some((head, rest)) => format!("{head}{marker}\n{run}{rest}"),
        None => {
            format!("# Benchmarks\n\nWritten by `nixmesh-bench`; see README.md.\n\n{marker}\n{run}")
        }
    };
    std::fs::write(&path, text).expect("writing docs/benchmarks.md");
    eprintln!("written to {}", path.display());
}
