//! The index at scale, in one process: every peer's snapshot absorbed, then lookups, a
//! restarted peer's snapshot, a delta, a reopen; reported as a markdown table (or JSON).
//!
//! `cargo bench -p nixmesh-node --bench index -- [--peers 100] [--paths 50000]
//! [--shared 0.8] [--lookups 1000000] [--dir DIR] [--json]`
//!
//! Each peer holds `--paths` paths; with `--shared F`, a fraction F of them is drawn from one
//! pool of `--paths` paths that every peer draws from (a LAN on one nixpkgs), the rest are its
//! own; without it (F = 0) every path is distinct, the worst case for size. The file goes
//! into a temporary directory unless `--dir`. `--json` prints one JSON object instead of the
//! table, for `nixmesh-bench` (case 6), which runs this binary once per shape so that each
//! run's peak RSS is its own.
//!
//! A lookup is the node's: at most 8 holders of a path, as a request asks
//! (`Index::holders_among`); a path held by 800 peers costs about what one held by a few does.

use std::path::Path;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use nixmesh_node::index::Index;
// Lookups ask for the holders a request may ask, as the node's do, every peer taken as connected.
use nixmesh_node::substituter::mesh_source::HOLDERS_ASKED;
use nixmesh_protocol::StorePathHash;
use nixmesh_protocol::mesh_messages::{AdvertMessage, AdvertPosition, encode_frame};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

struct Options {
    peers: usize,
    paths: usize,
    lookups: usize,
    dir: Option<std::path::PathBuf>,
    /// The fraction of each peer's paths drawn from the pool every peer draws from.
    shared: f64,
    json: bool,
}

fn options() -> Options {
    let mut options = Options {
        peers: 100,
        paths: 50_000,
        lookups: 1_000_000,
        dir: None,
        shared: 0.0,
        json: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| panic!("{name} needs a value"));
        let number = |name: &str, value: String| -> usize {
            value.parse().unwrap_or_else(|e| panic!("{name} {value}: {e}"))
        };
        match arg.as_str() {
            "--peers" => options.peers = number("--peers", value("--peers")),
            "--paths" => options.paths = number("--paths", value("--paths")),
            "--lookups" => options.lookups = number("--lookups", value("--lookups")),
            "--dir" => options.dir = Some(value("--dir").into()),
            "--shared" => {
                let fraction = value("--shared");
                options.shared = fraction.parse().unwrap_or_else(|e| panic!("--shared: {e}"));
                assert!((0.0..=1.0).contains(&options.shared), "--shared is a fraction");
            }
            "--json" => options.json = true,
            "--bench" => {} // cargo bench passes this to every bench binary
            other => panic!("unknown argument {other:?}"),
        }
    }
    options
}

const SEED: u64 = 0x6e69786d657368;
/// Hits looked up are drawn from at most this many paths sampled while filling (the
/// samples are the bench's own memory, counted in the peak RSS).
const HIT_SAMPLES: usize = 100_000;

fn random_hash(rng: &mut StdRng) -> StorePathHash {
    let mut bytes = [0u8; 20];
    rng.fill(&mut bytes);
    StorePathHash(bytes)
}

/// A `/proc/self/status` field in kB, e.g. `VmHWM` (peak resident set size).
fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line =
        status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// CPU time this process has used (all threads): on a shared machine, what the work cost
/// whatever else runs beside it.
fn cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `t` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// (p50, p99, max) of `samples` (nanoseconds), in microseconds.
fn percentiles(samples: &mut [u32]) -> (f64, f64, f64) {
    samples.sort_unstable();
    let at = |q: f64| f64::from(samples[((samples.len() - 1) as f64 * q) as usize]) / 1e3;
    (at(0.50), at(0.99), at(1.0))
}

fn nanos(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// The paths of one peer: `shared` of them from `pool`, the rest its own.
fn peer_paths(
    rng: &mut StdRng,
    pool: &[StorePathHash],
    paths: usize,
    shared: f64,
) -> Vec<StorePathHash> {
    let from_pool = ((paths as f64 * shared).round() as usize).min(pool.len());
    let mut out: Vec<StorePathHash> = pool.choose_multiple(rng, from_pool).copied().collect();
    out.extend((from_pool..paths).map(|_| random_hash(rng)));
    out
}

fn main() {
    let options = options();
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = options.dir.as_deref().unwrap_or(temp.path());
    let path = dir.join("index-bench.redb");
    let _ = std::fs::remove_file(&path);
    let mut report = serde_json::Map::new();
    let mut note = |key: &str, value: Value| report.insert(key.to_owned(), value);
    let baseline_kb = proc_status_kb("VmRSS").unwrap_or(0);

    let index = Index::open(&path).expect("open");
    index.set_max_paths(u64::MAX);
    let mut rng = StdRng::seed_from_u64(SEED);
    let pool: Vec<StorePathHash> = if options.shared > 0.0 {
        (0..options.paths).map(|_| random_hash(&mut rng)).collect()
    } else {
        Vec::new()
    };
    let per_peer_samples = HIT_SAMPLES.div_ceil(options.peers.max(1));
    let mut hits: Vec<StorePathHash> = Vec::new();
    // Only the first peer's paths are kept (for the re-snapshot).
    let mut first: Option<(PeerId, Vec<StorePathHash>)> = None;
    let mut slowest = Duration::ZERO;
    let (mut absorbing, mut absorbing_cpu) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..options.peers {
        let peer = PeerId::random();
        let paths = peer_paths(&mut rng, &pool, options.paths, options.shared);
        hits.extend(paths.choose_multiple(&mut rng, per_peer_samples).copied());
        let (start, start_cpu) = (Instant::now(), cpu_time());
        index.replace_peer(&peer, 1, 1, &paths).expect("replace_peer");
        let took = start.elapsed();
        absorbing += took;
        absorbing_cpu += cpu_time() - start_cpu;
        slowest = slowest.max(took);
        first.get_or_insert((peer, paths));
    }
    let entries = index.total_entries();
    assert_eq!(entries, (options.peers * options.paths) as u64);
    note("rss_after_absorb_mib", json!(mib(proc_status_kb("VmRSS").unwrap_or(0) * 1024)));
    note("peak_rss_absorb_mib", json!(mib(proc_status_kb("VmHWM").unwrap_or(0) * 1024)));
    note("peers", json!(options.peers));
    note("paths", json!(options.paths));
    note("shared", json!(options.shared));
    note("entries", json!(entries));
    note("absorb_s", json!(absorbing.as_secs_f64()));
    note("absorb_cpu_s", json!(absorbing_cpu.as_secs_f64()));
    note("slowest_snapshot_ms", json!(slowest.as_secs_f64() * 1e3));

    // A restarted peer re-sends a snapshot that differs by 1%: only the difference moves.
    let (peer, mut paths) = first.take().expect("at least one peer");
    let changed = (paths.len() / 100).max(1).min(paths.len());
    for slot in paths.iter_mut().take(changed) {
        *slot = random_hash(&mut rng);
    }
    let start = Instant::now();
    index.replace_peer(&peer, 2, 1, &paths).expect("re-snapshot");
    note("resnapshot_ms", json!(start.elapsed().as_secs_f64() * 1e3));
    hits.retain(|h| !index.holders(h).expect("holders").is_empty());

    let added: Vec<StorePathHash> = (0..100).map(|_| random_hash(&mut rng)).collect();
    let removed: Vec<StorePathHash> = paths.iter().rev().take(100).copied().collect();
    let start = Instant::now();
    index.apply_delta(&peer, 2, 1, 2, &added, &removed).expect("delta");
    note("delta_ms", json!(start.elapsed().as_secs_f64() * 1e3));
    hits.retain(|h| !removed.contains(h));
    drop(paths);
    let delta = AdvertMessage::Delta {
        position: AdvertPosition { epoch: 2, generation: 2 },
        from: 1,
        added: added.clone(),
        removed: Vec::new(),
    };
    note("delta_100_wire_bytes", json!(encode_frame(&delta).expect("encodes").len()));

    hits.shuffle(&mut rng);
    let mut hit_times = Vec::with_capacity(options.lookups);
    for i in 0..options.lookups {
        let hash = &hits[i % hits.len()];
        let start = Instant::now();
        let holders = index.holders_among(hash, HOLDERS_ASKED, |_| true);
        hit_times.push(nanos(start.elapsed()));
        assert!(!holders.is_empty(), "a path indexed is found: {hash}");
    }
    let (p50, p99, max) = percentiles(&mut hit_times);
    drop(hit_times);
    note("hit_p50_us", json!(p50));
    note("hit_p99_us", json!(p99));
    note("hit_max_us", json!(max));
    let (mut miss_times, mut false_positives) = (Vec::with_capacity(options.lookups), 0u64);
    for _ in 0..options.lookups {
        let hash = random_hash(&mut rng);
        let start = Instant::now();
        let holders = index.holders_among(&hash, HOLDERS_ASKED, |_| true);
        miss_times.push(nanos(start.elapsed()));
        false_positives += u64::from(!holders.is_empty());
    }
    let (p50, p99, max) = percentiles(&mut miss_times);
    drop(miss_times);
    note("miss_p50_us", json!(p50));
    note("miss_p99_us", json!(p99));
    note("miss_max_us", json!(max));
    note("lookups", json!(options.lookups));
    note("false_positives", json!(false_positives));
    note("table_mib", json!(mib(index.memory_bytes() as u64)));

    drop(index);
    let (start, start_cpu) = (Instant::now(), cpu_time());
    let index = Index::open(&path).expect("reopen");
    note("reopen_s", json!(start.elapsed().as_secs_f64()));
    note("reopen_cpu_s", json!((cpu_time() - start_cpu).as_secs_f64()));
    assert_eq!(index.total_entries(), entries);
    assert!(hits.iter().take(1000).all(|h| !index.holders(h).expect("holders").is_empty()));
    drop(hits);

    let peak_kb = proc_status_kb("VmHWM").unwrap_or(0);
    note("peak_rss_mib", json!(mib(peak_kb * 1024)));
    note("start_rss_mib", json!(mib(baseline_kb * 1024)));
    note("file_mib", json!(mib(file_size(&path))));
    note("disk_mib", json!(mib(disk_usage(&path))));
    drop(index);
    let (fragmented, compacted, compaction) = storage(&path);
    note("fragmented_mib", json!(mib(fragmented)));
    note("compacted_file_mib", json!(mib(compacted)));
    note("compaction_s", json!(compaction.as_secs_f64()));

    if options.json {
        println!("{}", Value::Object(report));
    } else {
        print_table(&report);
    }
}

fn print_table(r: &serde_json::Map<String, Value>) {
    let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    let shape = if f("shared") > 0.0 {
        format!("{:.0}% shared", f("shared") * 100.0)
    } else {
        "disjoint".to_owned()
    };
    let rows = [
        ("peers x paths", format!("{} x {} ({shape})", r["peers"], r["paths"])),
        ("entries", r["entries"].to_string()),
        (
            "absorb (all snapshots)",
            format!(
                "{:.2} s ({:.2} s CPU), {:.0} entries/s, slowest snapshot {:.1} ms",
                f("absorb_s"),
                f("absorb_cpu_s"),
                f("entries") / f("absorb_s"),
                f("slowest_snapshot_ms")
            ),
        ),
        ("re-snapshot, 1% changed", format!("{:.1} ms", f("resnapshot_ms"))),
        ("delta, +100 -100", format!("{:.2} ms", f("delta_ms"))),
        ("a delta of 100 paths on the wire", format!("{} bytes", r["delta_100_wire_bytes"])),
        (
            "holders() hit",
            format!(
                "p50 {:.2} us, p99 {:.2} us, max {:.0} us ({} lookups)",
                f("hit_p50_us"),
                f("hit_p99_us"),
                f("hit_max_us"),
                r["lookups"]
            ),
        ),
        (
            "holders() miss",
            format!(
                "p50 {:.2} us, p99 {:.2} us, max {:.0} us; {} false positives in {}",
                f("miss_p50_us"),
                f("miss_p99_us"),
                f("miss_max_us"),
                r["false_positives"],
                r["lookups"]
            ),
        ),
        (
            "reopen (table built from the file)",
            format!("{:.2} s ({:.2} s CPU)", f("reopen_s"), f("reopen_cpu_s")),
        ),
        (
            "peak RSS (VmHWM)",
            format!(
                "{:.1} MiB (after absorbing: {:.1} MiB, peak {:.1} MiB; holder table {:.1} MiB; \
                 process start {:.1} MiB)",
                f("peak_rss_mib"),
                f("rss_after_absorb_mib"),
                f("peak_rss_absorb_mib"),
                f("table_mib"),
                f("start_rss_mib")
            ),
        ),
        (
            "db file size",
            format!(
                "{:.1} MiB ({:.1} MiB of free pages); on disk {:.1} MiB",
                f("file_mib"),
                f("fragmented_mib"),
                f("disk_mib")
            ),
        ),
        (
            "db file size compacted",
            format!(
                "{:.1} MiB (compaction took {:.2} s)",
                f("compacted_file_mib"),
                f("compaction_s")
            ),
        ),
    ];
    println!("| measure | value |\n|---|---|");
    for (measure, value) in rows {
        println!("| {measure} | {value} |");
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// What the file takes on disk: its allocated blocks. redb grows its file by doubling and
/// writes only the pages it uses, so the unused end of the file is a hole that takes none.
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
}

/// The file's free pages, its size once compacted, and how long compaction took.
fn storage(path: &Path) -> (u64, u64, Duration) {
    let mut db = redb::Database::open(path).expect("open for stats");
    let stats = db.begin_write().expect("begin_write").stats().expect("stats");
    let start = Instant::now();
    db.compact().expect("compact");
    drop(db);
    (stats.fragmented_bytes(), file_size(path), start.elapsed())
}
