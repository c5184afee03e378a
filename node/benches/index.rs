//! Fills the index with the worst case (every peer holding disjoint random paths) and reports
//! fill time, lookup latency, peak memory and file size as a markdown table.
//!
//! `cargo bench -p nixmesh-node --bench index -- [--peers 100] [--paths 50000]
//! [--lookups 100000] [--dir DIR] [--shared]` (the file goes into a temporary directory unless
//! `--dir`; `--shared` gives every peer the same paths, the best case).

use std::path::Path;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use nixmesh_node::index::Index;
use nixmesh_protocol::StorePathHash;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

struct Options {
    peers: usize,
    paths: usize,
    lookups: usize,
    dir: Option<std::path::PathBuf>,
    /// Every peer holds the same paths (the best case) instead of disjoint ones (the worst).
    shared: bool,
}

fn options() -> Options {
    let mut options =
        Options { peers: 100, paths: 50_000, lookups: 100_000, dir: None, shared: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> usize {
            let value = args.next().unwrap_or_else(|| panic!("{name} needs a value"));
            value.parse().unwrap_or_else(|e| panic!("{name} {value}: {e}"))
        };
        match arg.as_str() {
            "--peers" => options.peers = number("--peers"),
            "--paths" => options.paths = number("--paths"),
            "--lookups" => options.lookups = number("--lookups"),
            "--dir" => options.dir = Some(args.next().expect("--dir needs a value").into()),
            "--shared" => options.shared = true,
            "--bench" => {} // cargo bench passes this to every bench binary
            other => panic!("unknown argument {other:?}"),
        }
    }
    options
}

const SEED: u64 = 0x6e69786d657368;

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

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// p50, p99 and max of `samples`, formatted.
fn percentiles(samples: &mut [Duration]) -> String {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    format!("p50 {:?}, p99 {:?}, max {:?}", at(0.50), at(0.99), at(1.0))
}

fn lookups(index: &Index, hashes: &[StorePathHash], expect_hit: bool) -> Vec<Duration> {
    hashes
        .iter()
        .map(|h| {
            let start = Instant::now();
            let holders = index.holders(h).expect("holders");
            let elapsed = start.elapsed();
            assert_eq!(!holders.is_empty(), expect_hit, "lookup of {h}");
            elapsed
        })
        .collect()
}

fn main() {
    let options = options();
    let temp = tempfile::tempdir().expect("tempdir");
    let dir = options.dir.as_deref().unwrap_or(temp.path());
    let path = dir.join("index-bench.redb");
    let _ = std::fs::remove_file(&path);
    let mut rows: Vec<(String, String)> = Vec::new();
    let baseline_kb = proc_status_kb("VmRSS").unwrap_or(0);

    let index = Index::open(&path).expect("open");
    let mut rng = StdRng::seed_from_u64(SEED);
    let per_peer_samples = options.lookups.div_ceil(options.peers.max(1));
    let mut hits: Vec<StorePathHash> = Vec::new();
    // Only the first peer's paths are kept (for the re-snapshot), so the bench's own memory
    // stays small next to the index's.
    let mut first: Option<(PeerId, Vec<StorePathHash>)> = None;
    let mut slowest = Duration::ZERO;
    let fill = Instant::now();
    for _ in 0..options.peers {
        let peer = PeerId::random();
        if options.shared {
            rng = StdRng::seed_from_u64(SEED);
        }
        let paths: Vec<StorePathHash> = (0..options.paths).map(|_| random_hash(&mut rng)).collect();
        hits.extend(paths.iter().take(per_peer_samples).copied());
        let start = Instant::now();
        index.replace_peer(&peer, 1, 1, &paths).expect("replace_peer");
        slowest = slowest.max(start.elapsed());
        first.get_or_insert((peer, paths));
    }
    let fill = fill.elapsed();
    let entries = index.total_entries();
    assert_eq!(entries, (options.peers * options.paths) as u64);
    rows.push((
        format!("peers x paths ({})", if options.shared { "shared" } else { "disjoint" }),
        format!("{} x {}", options.peers, options.paths),
    ));
    rows.push(("entries".into(), entries.to_string()));
    rows.push((
        "fill (snapshots)".into(),
        format!(
            "{:.2?} total, {:.0} entries/s, slowest snapshot {slowest:.2?}",
            fill,
            entries as f64 / fill.as_secs_f64()
        ),
    ));

    // A restarted peer re-sends a snapshot that differs by 1%: only the difference is written.
    if let Some((peer, paths)) = first.as_mut() {
        let changed = (paths.len() / 100).max(1).min(paths.len());
        for slot in paths.iter_mut().take(changed) {
            *slot = random_hash(&mut rng);
        }
        let start = Instant::now();
        index.replace_peer(peer, 2, 1, paths).expect("re-snapshot");
        rows.push(("re-snapshot, 1% changed".into(), format!("{:.2?}", start.elapsed())));
        hits.retain(|h| !index.holders(h).expect("holders").is_empty());

        let added: Vec<StorePathHash> = (0..100).map(|_| random_hash(&mut rng)).collect();
        let removed: Vec<StorePathHash> = paths.iter().rev().take(100).copied().collect();
        let start = Instant::now();
        index.apply_delta(peer, 2, 1, 2, &added, &removed).expect("delta");
        rows.push(("delta, +100 -100".into(), format!("{:.2?}", start.elapsed())));
        hits.retain(|h| !removed.contains(h));
    }

    let misses: Vec<StorePathHash> = (0..options.lookups).map(|_| random_hash(&mut rng)).collect();
    // Interleave the hit samples so consecutive lookups land on different peers' paths.
    let mut order: Vec<usize> = (0..hits.len()).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let hits: Vec<StorePathHash> = order.iter().map(|&i| hits[i]).collect();
    rows.push((
        format!("holders() hit, {} lookups", hits.len()),
        percentiles(&mut lookups(&index, &hits, true)),
    ));
    rows.push((
        format!("holders() miss, {} lookups", misses.len()),
        percentiles(&mut lookups(&index, &misses, false)),
    ));

    drop(index);
    let start = Instant::now();
    let index = Index::open(&path).expect("reopen");
    rows.push(("reopen".into(), format!("{:.2?}", start.elapsed())));
    assert_eq!(index.total_entries(), entries);

    drop(first);
    let peak_kb = proc_status_kb("VmHWM").unwrap_or(0);
    rows.push((
        "peak RSS (VmHWM)".into(),
        format!("{} (process start: {})", mib(peak_kb * 1024), mib(baseline_kb * 1024)),
    ));
    rows.push(("db file size".into(), mib(file_size(&path))));
    drop(index);
    rows.extend(storage_rows(&path));

    println!("| measure | value |\n|---|---|");
    for (measure, value) in rows {
        println!("| {measure} | {value} |");
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// How the file's pages are used, and its size once compacted (reclaiming free pages).
fn storage_rows(path: &Path) -> Vec<(String, String)> {
    let mut db = redb::Database::open(path).expect("open for stats");
    let stats = db.begin_write().expect("begin_write").stats().expect("stats");
    let mut rows = vec![(
        "db pages".into(),
        format!(
            "{} allocated, {} leaf, {} branch; {} stored, {} metadata, {} fragmented",
            stats.allocated_pages(),
            stats.leaf_pages(),
            stats.branch_pages(),
            mib(stats.stored_bytes()),
            mib(stats.metadata_bytes()),
            mib(stats.fragmented_bytes()),
        ),
    )];
    let start = Instant::now();
    db.compact().expect("compact");
    drop(db);
    rows.push((
        "db file size compacted".into(),
        format!("{} (compaction took {:.2?})", mib(file_size(path)), start.elapsed()),
    ));
    rows
}
