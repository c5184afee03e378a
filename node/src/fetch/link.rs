//! Whether compressing a peer's NARs pays: the asker's measure of each peer's link, and the
//! holder's of its own CPU.
//!
//! zstd pays where the link, not the CPU, is what a transfer waits for. The asker measures it
//! per peer ([`LinkStats`]): for each NAR transfer of at least [`MEASURED_FROM`] bytes, the
//! wire rate and the share of the transfer its reader spent waiting for bytes (a reader
//! that waits is not CPU-bound), each as a moving average. Against that it puts this node's
//! own zstd speed, measured once at start on its own binary (machine code, about as
//! compressible as a closure's libraries): it asks for zstd while the reader waits over half
//! the time and the link carries less than a third of what zstd compresses per second (at
//! the threefold ratio of such bytes, compressing then keeps ahead of the link). A peer not
//! yet measured is asked for raw NARs, which measure it. (Switching a raw transfer to zstd
//! halfway, once its first MiB found the link slow, let stalled HTTP clients take whole NARs
//! into socket buffers instead of being cut off: `wedge_clients` caught it. Not done.)
//! Nor is zstd asked for while this node is busy: its readers then wait for a core, not the
//! link.
//!
//! The holder cannot tell a slow link from a fast one itself: its writes go into socket and
//! stream buffers of megabytes, which a slow link takes seconds to fill, so a write returning
//! at once says nothing about the link. It follows the asker's measure, but for its CPU.
//!
//! The holder answers raw when its process used more than [`BUSY_SHARE`] of the machine's
//! cores over the last second ([`ProcessCpu`]): its other askers come first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use nixmesh_protocol::mesh_messages::NAR_BLOCK_MAX;
use nixmesh_telemetry::{Counter, Registry};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::debug;

/// Whether NARs from peers may come zstd-compressed (`mesh_compression`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MeshCompression {
    /// Asked for where the link is the bottleneck, and given where asked and the CPU allows.
    #[default]
    Auto,
    /// Asked for of every fetch/3 peer, whatever the link (a link known to be slow: a VPN);
    /// given as with `auto`.
    Always,
    /// Never asked for, never given: every NAR travels raw.
    Off,
}

impl std::fmt::Display for MeshCompression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MeshCompression::Auto => "auto",
            MeshCompression::Always => "always",
            MeshCompression::Off => "off",
        })
    }
}

/// Transfers shorter than this say more about latency than about the link.
pub const MEASURED_FROM: u64 = 1 << 20;
/// The share of a transfer the reader must spend waiting for the link for the link to count
/// as the bottleneck: at a half, the reader could take twice what the link brings, and
/// zstd's threefold bytes would not just make it wait on its own CPU instead.
const WAITING_SHARE: f64 = 0.5;
/// The ratio zstd gets on a typical closure's bytes, and so how much slower than zstd the
/// link must be.
const TYPICAL_RATIO: f64 = 3.0;
/// The zstd speed assumed until this node has measured its own.
const ASSUMED_SPEED: f64 = 100e6;
/// The most peers measured one by one.
const MAX_PEERS: usize = 4096;
/// A holder busier than this share of its cores answers raw.
pub const BUSY_SHARE: f64 = 0.75;

/// One peer's link, as measured: moving averages over its large transfers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Link {
    /// Wire bytes per second.
    pub rate: f64,
    /// The share of a transfer the reader waited for bytes (0 to 1).
    pub waiting: f64,
    /// Whether the last transfer came zstd-compressed (a block of it, at least).
    pub zstd: bool,
}

/// One NAR transfer's measure, as its reader went.
#[derive(Debug, Default)]
pub struct TransferClock {
    started: Option<Instant>,
    waited: Duration,
    wire: u64,
    nar: u64,
    zstd: bool,
}

impl TransferClock {
    /// A read began; `waited` its time, once it ended with `wire` bytes.
    pub fn read(&mut self, began: Instant, wire: u64) {
        self.started.get_or_insert(began);
        self.waited += began.elapsed();
        self.wire += wire;
    }

    /// `nar` NAR bytes were handed on, zstd-decoded or not.
    pub fn decoded(&mut self, nar: u64, zstd: bool) {
        self.nar += nar;
        self.zstd |= zstd;
    }
}

/// Every peer's link, this node's zstd speed and its NAR wire bytes by coding. Shared.
#[derive(Debug, Default)]
pub struct LinkStats {
    peers: Mutex<HashMap<PeerId, Link>>,
    /// Bytes per second this node compresses at level 3, once measured.
    speed: Mutex<Option<f64>>,
    /// This node's load: a reader on a busy node waits for its turn on a core, not for the
    /// link, and zstd would only add work.
    cpu: ProcessCpu,
    raw_wire: Counter,
    zstd_wire: Counter,
    zstd_nar: Counter,
}

impl LinkStats {
    /// Registers `nixmesh_nar_received_raw_wire_bytes_total` and
    /// `nixmesh_nar_received_zstd_wire_bytes_total` (NAR transfers' bytes on the wire by
    /// coding: raw, or zstd blocks) and `nixmesh_nar_received_zstd_nar_bytes_total` (the NAR
    /// bytes those zstd blocks decoded to).
    pub fn register(&self, metrics: &Registry) {
        let help = "Bytes of NAR transfers from peers on the wire, sent raw";
        metrics.register("nar_received_raw_wire_bytes", help, self.raw_wire.clone());
        let help = "Bytes of NAR transfers from peers on the wire, sent as zstd blocks";
        metrics.register("nar_received_zstd_wire_bytes", help, self.zstd_wire.clone());
        let help = "NAR bytes the zstd blocks from peers decoded to";
        metrics.register("nar_received_zstd_nar_bytes", help, self.zstd_nar.clone());
    }

    /// Measures this node's zstd speed (about 20 ms of one core), in the background.
    pub fn calibrate(self: &std::sync::Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let stats = self.clone();
        runtime.spawn_blocking(move || {
            let speed = zstd_speed();
            debug!(speed_mb_s = speed.map(|s| s / 1e6), "measured this node's zstd speed");
            *stats.speed.lock() = speed;
        });
    }

    /// Whether to ask `peer` for zstd: once a transfer measured its link slow; see the
    /// module docs.
    pub fn wants_zstd(&self, peer: &PeerId) -> bool {
        self.of(peer).is_some_and(|link| self.slow(link.rate, link.waiting))
    }

    /// Whether a link of `rate` wire bytes a second, whose reader waited `waiting` of the
    /// time, is the bottleneck zstd relieves.
    fn slow(&self, rate: f64, waiting: f64) -> bool {
        let speed = self.speed.lock().unwrap_or(ASSUMED_SPEED);
        waiting > WAITING_SHARE && rate < speed / TYPICAL_RATIO && !self.cpu.busy()
    }

    /// NAR transfers' bytes received so far: on the wire raw, on the wire as zstd blocks,
    /// and the NAR bytes those blocks decoded to.
    pub fn wire_bytes(&self) -> (u64, u64, u64) {
        (self.raw_wire.get(), self.zstd_wire.get(), self.zstd_nar.get())
    }

    /// `peer`'s link, once a large transfer measured it.
    pub fn of(&self, peer: &PeerId) -> Option<Link> {
        self.peers.lock().get(peer).copied()
    }

    /// A NAR transfer from `peer` ended (whole or not): counts its bytes and, if it was
    /// large enough, measures the link.
    pub fn ended(&self, peer: PeerId, clock: &TransferClock) {
        if clock.zstd {
            self.zstd_wire.inc_by(clock.wire);
            self.zstd_nar.inc_by(clock.nar);
        } else {
            self.raw_wire.inc_by(clock.wire);
        }
        let Some(started) = clock.started.filter(|_| clock.nar >= MEASURED_FROM) else { return };
        let took = started.elapsed().as_secs_f64().max(1e-6);
        let sample = Link {
            rate: clock.wire as f64 / took,
            waiting: (clock.waited.as_secs_f64() / took).min(1.0),
            zstd: clock.zstd,
        };
        let mut peers = self.peers.lock();
        if peers.len() >= MAX_PEERS && !peers.contains_key(&peer) {
            return;
        }
        let link = peers.entry(peer).or_insert(sample);
        link.rate = (link.rate + sample.rate) / 2.0;
        link.waiting = (link.waiting + sample.waiting) / 2.0;
        link.zstd = sample.zstd;
        debug!(%peer, rate_mb_s = link.rate / 1e6, waiting = link.waiting, zstd = link.zstd,
            "measured the link");
    }
}

/// Level-3 bytes per second on up to 4 MiB of this node's own binary.
fn zstd_speed() -> Option<f64> {
    use std::io::Read;
    let mut sample = Vec::new();
    let binary = std::fs::File::open("/proc/self/exe").ok()?;
    binary.take(4 << 20).read_to_end(&mut sample).ok()?;
    let started = Instant::now();
    for block in sample.chunks(NAR_BLOCK_MAX) {
        std::hint::black_box(super::zstd_blocks::encode_block(block, Some(3)));
    }
    Some(sample.len() as f64 / started.elapsed().as_secs_f64().max(1e-6))
}

/// This process's share of the machine's cores over about the last second.
#[derive(Debug)]
pub struct ProcessCpu {
    sampled: Mutex<(Instant, Duration, bool)>,
    cores: f64,
}

impl Default for ProcessCpu {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        ProcessCpu { sampled: Mutex::new((Instant::now(), cpu_time(), false)), cores }
    }
}

impl ProcessCpu {
    /// Whether the process used more than [`BUSY_SHARE`] of the cores over the last
    /// second (sampled at most once a second).
    pub fn busy(&self) -> bool {
        let mut sampled = self.sampled.lock();
        let (at, cpu, busy) = *sampled;
        let wall = at.elapsed();
        if wall < Duration::from_secs(1) {
            return busy;
        }
        let now = cpu_time();
        let busy = (now - cpu).as_secs_f64() / wall.as_secs_f64() > BUSY_SHARE * self.cores;
        *sampled = (Instant::now(), now, busy);
        busy
    }
}

fn cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec to write to; the clock id is a constant.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock(wire: u64, nar: u64, took: Duration, waited: Duration, zstd: bool) -> TransferClock {
        let started = Instant::now() - took;
        TransferClock { started: Some(started), waited, wire, nar, zstd }
    }

    #[test]
    fn a_slow_link_the_reader_waits_for_asks_for_zstd_and_a_fast_one_does_not() {
        let stats = LinkStats::default();
        *stats.speed.lock() = Some(150e6);
        let (slow, fast, busy_reader) = (PeerId::random(), PeerId::random(), PeerId::random());
        assert!(!stats.wants_zstd(&slow), "unmeasured: raw, measured as it goes");
        let second = Duration::from_secs(1);
        stats.ended(slow, &clock(12_000_000, 12_000_000, second, second * 95 / 100, false));
        stats.ended(fast, &clock(400_000_000, 400_000_000, second, second * 95 / 100, true));
        stats.ended(busy_reader, &clock(12_000_000, 12_000_000, second, second * 3 / 10, false));
        assert!(stats.wants_zstd(&slow));
        assert!(!stats.wants_zstd(&fast));
        assert!(!stats.wants_zstd(&busy_reader));
        assert!(stats.of(&fast).unwrap().zstd);
    }

    #[test]
    fn small_transfers_count_their_bytes_but_do_not_measure() {
        let stats = LinkStats::default();
        let peer = PeerId::random();
        let second = Duration::from_secs(1);
        stats.ended(peer, &clock(1000, 3000, second, Duration::ZERO, true));
        stats.ended(peer, &clock(500, 500, second, Duration::ZERO, false));
        assert_eq!(stats.of(&peer), None);
        assert_eq!(
            (stats.zstd_wire.get(), stats.zstd_nar.get(), stats.raw_wire.get()),
            (1000, 3000, 500)
        );
    }

    #[test]
    fn this_node_compresses_its_own_binary() {
        let speed = zstd_speed().expect("a speed");
        assert!(speed > 1e6, "{speed} B/s");
    }
}
