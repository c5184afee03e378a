//! Case 8 (`--only lan`), a module of `nixmesh-bench`: the machine's own Nix while a LAN
//! client asks its node's LAN substituter flat out (issue 20: such a client "does not slow the
//! machine's own Nix beyond what the bench shows as noise").
//!
//! Three hosts of their own, apart from the other cases': host 1 holds two closures of small
//! paths and a larger path and runs a node; host 2 runs a node peered with host 1's, with the
//! LAN listener (`--lan-listen`), and is the machine whose own Nix is timed: `nix copy` of one
//! closure and the larger path from its localhost substituter into its store, emptied before
//! each copy; host 3 is the LAN client: wrk, 25 connections (Nix's count, and the share the
//! listener gives one client host), asking host 2's LAN listener for the narinfo and the NAR
//! of every path of the other closure, round and round. The copies alternate, quiet and under
//! that load, so that both see the same machine; the quiet ones' spread is the noise the loaded
//! median is judged against.
//!
//! The client asks for paths host 1 holds, so they come through host 2's node and the mesh:
//! the same node, the same connection to the same holder and that holder's share for host 2
//! as the machine's own copy, which is where the LAN could crowd out the machine's own Nix.
//! All hosts share this machine's cores, so the client's own CPU (in the row) weighs on the
//! copy as it would not from another machine: a loaded copy slower than the noise here is a
//! bound on the node's part, not a measure of it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nixmesh_tests::nginx::cpu_seconds;
use nixmesh_tests::node::workspace_dir;
use nixmesh_tests::{
    CacheKey, Host, HostStore, Lan, NODE_URL, Node, NodeOptions, narinfo_url_path, unique_marker,
    wait_for, wait_until,
};

use super::{
    LoadResult, Row, Settings, big_path, forget, load_on, measure, median, node_log_filter,
};

/// Where host 2's LAN substituter listens.
const LAN_PORT: u16 = 7375;
/// The LAN client's connections: as many as Nix's own client opens, and as many requests as
/// the LAN listener lets one client host have in flight.
const CLIENT_CONNECTIONS: usize = 25;
/// wrk's threads: one a core of this machine.
const CLIENT_THREADS: usize = 2;
/// How long the client runs before a loaded copy starts, so that the copy meets it at its
/// full rate.
const RAMP_UP: Duration = Duration::from_secs(1);
/// The longest the client may run; it is stopped after each copy, this bounds a hung one.
const CLIENT_LIMIT: Duration = Duration::from_secs(900);
/// How long wrk may take to stop and print once interrupted.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// The connections of the narinfo burst on host 2's localhost after each copy, as Nix's.
const NARINFO_CONNECTIONS: usize = 25;

/// wrk's script: the URL paths of the file named after `--`, one a line, asked in turn
/// (each thread from its own place in the list, so that the threads do not ask the same path
/// at once); at the end one line of JSON with the totals.
const CLIENT_SCRIPT: &str = r#"
local paths = {}
local at = 0
local threads = 0
function setup(thread)
  thread:set("first", threads)
  threads = threads + 1
end
function init(args)
  for line in io.lines(args[1]) do paths[#paths + 1] = line end
  at = ((first or 0) * 7919) % #paths
end
function request()
  at = at % #paths + 1
  return wrk.format("GET", paths[at])
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"bytes":%d,"micros":%d,"non2xx":%d,"errors":%d,"p99_us":%d}\n',
    summary.requests, summary.bytes, summary.duration, e.status,
    e.connect + e.read + e.write + e.timeout, latency:percentile(99)))
end
"#;

/// The case's rows: host 2's own copy quiet and under the LAN client's load, the verdict,
/// the client's rate, and host 2's localhost narinfos quiet and loaded.
pub(crate) fn own_nix_under_lan_load(s: &Settings) -> Vec<Row> {
    let setup = Setup::new(s);
    let client = setup.lan_client();
    let (mut quiet, mut loaded) = (Vec::new(), Vec::new());
    for rep in 1..=s.reps {
        eprintln!("--- case 8: rep {rep} of {}, quiet then under the LAN client's load", s.reps);
        quiet.push(setup.own_copy(None));
        loaded.push(setup.own_copy(Some(&client)));
    }
    setup.keep_logs();
    table_rows(&setup, &quiet, &loaded)
}

/// The three hosts, their stores and nodes, and what the case asks for.
struct Setup {
    /// Host 1's node and host 2's, the one with the LAN listener.
    nodes: [Node; 2],
    /// Host 1's store, holding everything, and host 2's, into which its own Nix copies.
    stores: [HostStore; 2],
    /// Host 3, the LAN client.
    client_host: Host,
    trusted_key: String,
    /// What host 2's own Nix copies: the closure's top and the larger path.
    copied_tops: [String; 2],
    /// Every path the copy brings, the closure's and the larger one.
    copied_paths: Vec<String>,
    /// The other closure, what the LAN client asks for.
    asked_paths: Vec<String>,
    big_mib: usize,
    /// Last, so that the nodes and daemons are gone before their namespaces.
    lan: Lan,
}

impl Setup {
    /// Makes the paths on host 1, starts both nodes, and waits until host 2's has indexed
    /// host 1's paths.
    fn new(s: &Settings) -> Setup {
        let lan = Lan::new(3);
        let [h1, h2, h3] = lan.hosts() else { unreachable!("a LAN of three hosts") };
        let stores = [HostStore::start(h1), HostStore::start(h2)];
        let key = CacheKey::generate(lan.dir(), "bench-lan-1");
        let big_mib = if s.quick { 32 } else { 128 };
        eprintln!("--- case 8: making 2 x {} small paths and a {big_mib} MiB one", s.paths);
        let copied = stores[0].add_many_paths(s.paths, &unique_marker());
        let asked = stores[0].add_many_paths(s.paths, &unique_marker());
        let big = big_path(&stores[0], big_mib);
        for top in [&copied.top, &asked.top, &big] {
            stores[0].sign_closure(&key.secret_file, top);
        }
        let options = |peers: Vec<String>, extra_args: Vec<String>| NodeOptions {
            trusted_keys: vec![key.public.clone()],
            peers,
            mdns: false,
            log_filter: node_log_filter(),
            extra_args,
            ..NodeOptions::default()
        };
        let n1 = Node::start(h1, &stores[0], &options(vec![], vec![]));
        let n1_addr = format!("/ip4/{}/tcp/7374/p2p/{}", h1.address(), n1.peer_id());
        let lan_listen = vec!["--lan-listen".to_owned(), format!("0.0.0.0:{LAN_PORT}")];
        let n2 = Node::start(h2, &stores[1], &options(vec![n1_addr], lan_listen));
        let expected = stores[0].path_count() as u64;
        wait_until(Duration::from_secs(60), "host 2's node to index host 1's paths", || {
            n2.status()["indexed_paths"] == expected
        });
        let mut copied_paths = copied.paths;
        copied_paths.push(big.clone());
        Setup {
            nodes: [n1, n2],
            stores,
            client_host: h3.clone(),
            trusted_key: key.public,
            copied_tops: [copied.top, big],
            copied_paths,
            asked_paths: asked.paths,
            big_mib,
            lan,
        }
    }

    /// Host 3's client, its list made from host 2's LAN listener's own narinfos (their NAR
    /// URLs), each of which it must have answered.
    fn lan_client(&self) -> LanClient {
        let base = format!("http://{}:{LAN_PORT}", self.lan.hosts()[1].address());
        let narinfos: Vec<String> = self.asked_paths.iter().map(|p| narinfo_url_path(p)).collect();
        let first = load_on(&self.client_host, &base, CLIENT_CONNECTIONS, &narinfos);
        assert_eq!(first.ok, narinfos.len(), "host 2's LAN listener answers every narinfo");
        let mut list = String::new();
        for (narinfo, nar) in narinfos.iter().zip(&first.bodies_urls) {
            list += &format!("{narinfo}\n{nar}\n");
        }
        let dir = self.client_host.dir();
        let (script, paths) = (dir.join("lan-client.lua"), dir.join("lan-client-paths"));
        std::fs::write(&script, CLIENT_SCRIPT).expect("writing the client's script");
        std::fs::write(&paths, list).expect("writing the client's path list");
        LanClient { host: self.client_host.clone(), base, script, paths }
    }

    /// One copy by host 2's own Nix into its emptied store, quiet or while `client` runs.
    fn own_copy(&self, client: Option<&LanClient>) -> Rep {
        let store = &self.stores[1];
        forget(store, &self.copied_paths);
        let running = client.map(LanClient::start);
        if running.is_some() {
            std::thread::sleep(RAMP_UP);
        }
        let nodes: Vec<u32> = self.nodes.iter().filter_map(Node::pid).collect();
        let (copy_s, nodes_cpu_s) = measure(&nodes, || {
            for top in &self.copied_tops {
                let out = store.copy_from(NODE_URL, &[&self.trusted_key], top);
                assert!(out.status.success(), "nix copy: {}", String::from_utf8_lossy(&out.stderr));
            }
        });
        let narinfos: Vec<String> = self.copied_paths.iter().map(|p| narinfo_url_path(p)).collect();
        let narinfos = load_on(store.host(), NODE_URL, NARINFO_CONNECTIONS, &narinfos);
        Rep { copy_s, nodes_cpu_s, narinfos, client: running.map(RunningClient::stop) }
    }

    /// The nodes' logs and the client's last report, kept past the LAN for a look.
    fn keep_logs(&self) {
        let logs = workspace_dir().join("target/bench-logs");
        let _ = std::fs::create_dir_all(&logs);
        for (name, node) in [("lan-host1.log", &self.nodes[0]), ("lan-host2.log", &self.nodes[1])] {
            let _ = std::fs::copy(node.log_path(), logs.join(name));
        }
        let _ = std::fs::copy(self.client_host.dir().join("wrk.out"), logs.join("lan-wrk.out"));
    }
}

/// One copy by host 2's own Nix and what was measured around it.
struct Rep {
    copy_s: f64,
    /// CPU seconds both nodes used during the copy.
    nodes_cpu_s: f64,
    /// Host 2's localhost narinfos of the copied paths, asked right after the copy.
    narinfos: LoadResult,
    /// What the LAN client did, for a copy under its load.
    client: Option<ClientRun>,
}

/// wrk on host 3, asking host 2's LAN listener.
struct LanClient {
    host: Host,
    base: String,
    script: PathBuf,
    paths: PathBuf,
}

impl LanClient {
    /// Starts the client; it asks until [`RunningClient::stop`] (at most [`CLIENT_LIMIT`]).
    fn start(&self) -> RunningClient {
        let report = self.host.dir().join("wrk.out");
        let out = std::fs::File::create(&report).expect("creating the client's report");
        let child = self
            .host
            .command("wrk")
            .args(["-t", &CLIENT_THREADS.to_string(), "-c", &CLIENT_CONNECTIONS.to_string()])
            .args(["-d", &format!("{}s", CLIENT_LIMIT.as_secs()), "--timeout", "10s", "-s"])
            .arg(&self.script)
            .arg(&self.base)
            .arg("--")
            .arg(&self.paths)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("duplicating a file handle"))
            .stderr(out)
            .spawn()
            .expect("starting wrk");
        RunningClient { child, report }
    }
}

/// The client at work (`ip netns exec` execs wrk: the child's pid is wrk's).
struct RunningClient {
    child: Child,
    report: PathBuf,
}

/// What the client did in one run.
struct ClientRun {
    requests: u64,
    bytes: u64,
    seconds: f64,
    /// Answers other than 2xx and 3xx, and requests that failed (connect, read, write, time-out).
    non2xx: u64,
    errors: u64,
    p99_us: u64,
    cpu_s: f64,
}

impl RunningClient {
    /// Interrupts wrk (it stops, then prints its totals) and reads its report.
    fn stop(mut self) -> ClientRun {
        let pid = self.child.id();
        let cpu_s = cpu_seconds(&[pid]);
        let sent = Command::new("kill").args(["-INT", &pid.to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -INT {pid} (wrk)");
        let status = wait_for(STOP_LIMIT, "wrk to stop and report", || {
            self.child.try_wait().expect("waiting for wrk")
        });
        let text = std::fs::read_to_string(&self.report).expect("reading wrk's report");
        assert!(status.success(), "wrk exited {status}: {text}");
        let json = text.lines().rev().find(|l| l.starts_with('{')).expect("wrk's JSON line");
        let v: serde_json::Value = serde_json::from_str(json).expect("wrk's JSON");
        let n = |key: &str| v[key].as_u64().unwrap_or(0);
        ClientRun {
            requests: n("requests"),
            bytes: n("bytes"),
            seconds: n("micros") as f64 / 1e6,
            non2xx: n("non2xx"),
            errors: n("errors"),
            p99_us: n("p99_us"),
            cpu_s,
        }
    }
}

/// Median and range of `values`, as `1.23 s (1.10-1.40)`.
fn spread(values: &mut [f64]) -> (f64, f64, f64, String) {
    let m = median(values);
    let (lo, hi) = (values[0], values[values.len() - 1]);
    (m, lo, hi, format!("{m:.2} s ({lo:.2}-{hi:.2})"))
}

/// Whether the loaded median is within the quiet reps' spread, and if not by how much.
fn verdict(quiet: (f64, f64, f64), loaded_median: f64) -> String {
    let (median, lo, hi) = quiet;
    if loaded_median <= hi {
        format!("noise: loaded median {loaded_median:.2} s within the quiet {lo:.2}-{hi:.2} s")
    } else {
        format!(
            "slower beyond noise: loaded median {loaded_median:.2} s, {:+.0} % on the quiet \
             median, {:.2} s past the quiet max",
            (loaded_median / median - 1.0) * 100.0,
            loaded_median - hi
        )
    }
}

fn table_rows(setup: &Setup, quiet: &[Rep], loaded: &[Rep]) -> Vec<Row> {
    let times = |reps: &[Rep]| reps.iter().map(|r| r.copy_s).collect::<Vec<f64>>();
    let (qm, qlo, qhi, q_text) = spread(&mut times(quiet));
    let (lm, _, _, l_text) = spread(&mut times(loaded));
    let cpu = |reps: &[Rep]| reps.iter().map(|r| r.nodes_cpu_s).sum::<f64>() / reps.len() as f64;
    let small = setup.copied_paths.len() - 1;
    let copy = format!(
        "host 2's own nix copy of {small} small paths and a {} MiB one from its node \
         (localhost): under host 3's LAN load (nixmesh column) and quiet (baseline), median \
         (range) of {} each, alternating",
        setup.big_mib,
        quiet.len()
    );
    let mut rows = vec![
        Row {
            case: copy,
            nixmesh: l_text,
            baseline: q_text,
            ratio: qm / lm,
            cpu: format!("{:.2} / {:.2} a copy (loaded / quiet)", cpu(loaded), cpu(quiet)),
            target: "loaded median within the quiet range".to_owned(),
        },
        Row {
            case: "the verdict on host 2's own copy under the LAN client's load".to_owned(),
            nixmesh: verdict((qm, qlo, qhi), lm),
            baseline: "(the quiet copies' range is the noise)".to_owned(),
            ratio: f64::NAN,
            cpu: String::new(),
            target: "noise".to_owned(),
        },
    ];
    rows.push(client_row(setup, loaded));
    rows.push(narinfo_row(setup, quiet, loaded));
    rows
}

/// The LAN client's rate over all the loaded copies, to show it asked flat out.
fn client_row(setup: &Setup, loaded: &[Rep]) -> Row {
    let runs: Vec<&ClientRun> = loaded.iter().filter_map(|r| r.client.as_ref()).collect();
    let sum = |f: fn(&ClientRun) -> u64| runs.iter().map(|r| f(r)).sum::<u64>();
    let seconds: f64 = runs.iter().map(|r| r.seconds).sum();
    let cpu: f64 = runs.iter().map(|r| r.cpu_s).sum();
    let p99_ms = runs.iter().map(|r| r.p99_us).max().unwrap_or(0) as f64 / 1e3;
    let rate = |n: u64| n as f64 / seconds.max(1e-9);
    Row {
        case: format!(
            "host 3, the LAN client during the loaded copies: wrk, {CLIENT_CONNECTIONS} conns \
             to host 2's LAN listener, the narinfo and NAR of {} other small paths (host 1's, \
             through host 2's node) in turn: rate, highest p99, non-2xx, errors",
            setup.asked_paths.len()
        ),
        nixmesh: format!(
            "{:.0} requests/s, {:.1} MiB/s, p99 {p99_ms:.2} ms, {} non-2xx, {} errors",
            rate(sum(|r| r.requests)),
            rate(sum(|r| r.bytes)) / (1 << 20) as f64,
            sum(|r| r.non2xx),
            sum(|r| r.errors)
        ),
        baseline: "(no counterpart)".to_owned(),
        ratio: f64::NAN,
        cpu: format!("wrk {cpu:.2} in {seconds:.1} s"),
        target: "(flat out: the load the copies bore)".to_owned(),
    }
}

/// Host 2's localhost narinfos right after each copy, loaded against quiet: medians of the
/// reps' p50 and p99.
fn narinfo_row(setup: &Setup, quiet: &[Rep], loaded: &[Rep]) -> Row {
    let ms = |reps: &[Rep], f: fn(&LoadResult) -> u64| {
        median(&mut reps.iter().map(|r| f(&r.narinfos) as f64 / 1e3).collect::<Vec<_>>())
    };
    let show = |reps: &[Rep]| {
        let failed: usize = reps.iter().map(|r| r.narinfos.count - r.narinfos.ok).sum();
        format!("{:.2} / {:.2} ms, {failed}", ms(reps, |l| l.p50_us), ms(reps, |l| l.p99_us))
    };
    Row {
        case: format!(
            "host 2's localhost narinfos after each copy ({}, {NARINFO_CONNECTIONS} conns), \
             under the LAN load (nixmesh column) and quiet: p50 / p99 (medians), non-200",
            setup.copied_paths.len()
        ),
        nixmesh: show(loaded),
        baseline: show(quiet),
        ratio: ms(quiet, |l| l.p99_us) / ms(loaded, |l| l.p99_us).max(1e-9),
        cpu: String::new(),
        target: "p99 < 5 ms".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_median_within_the_quiet_range_is_noise() {
        assert!(verdict((2.0, 1.9, 2.2), 2.1).starts_with("noise"));
        assert!(verdict((2.0, 1.9, 2.2), 1.5).starts_with("noise"));
        let slower = verdict((2.0, 1.9, 2.2), 2.5);
        assert!(slower.contains("+25 %") && slower.contains("0.30 s past"), "{slower}");
    }
}
