//! The node's Prometheus metrics, served as `GET /metrics` (OpenMetrics text, which Prometheus
//! scrapes as it does its own format).
//!
//! One [`Metrics`] holds the registry. The substituter's own series are kept here: requests by
//! kind and result, and the time to a hit's first byte; the node's gauges (peers, paths) are
//! set from [`crate::NodeView::status`] at each scrape. What only the node can count (NAR bytes
//! from and to peers, over libp2p) it registers itself in [`Metrics::registry`], so this
//! crate never learns of libp2p and the node never learns of HTTP. The registry and the
//! counter, gauge and histogram handles are `nixmesh-telemetry`'s; what is HTTP's (the request
//! series, the LAN listener's, the gauges set from [`NodeStatus`]) is here.
//!
//! Labels take a fixed set of values (kinds and results below); nothing a client or peer
//! sends becomes a label, so the number of series is bounded.

use nixmesh_telemetry::{Counter, Gauge, Histogram, Metric, Registry, latency_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;

use crate::node_view::{NodeStatus, RequestCounts};

/// What a request asked for, as the `kind` label says it.
pub mod kind {
    pub const NARINFO: &str = "narinfo";
    pub const NAR: &str = "nar";
    pub const CACHE_INFO: &str = "cache-info";
    /// `<hash>.ls`.
    pub const LISTING: &str = "listing";
    /// `log/<drv>`.
    pub const BUILD_LOG: &str = "build-log";
    /// The `/_nixmesh/*` pages and `/metrics`.
    pub const STATUS_PAGE: &str = "status-page";
    /// Anything else (answered `404` or `400`).
    pub const OTHER: &str = "other";
}

/// How a request ended, as the `result` label says it.
pub mod result {
    /// A narinfo served.
    pub const HIT: &str = "hit";
    /// A `404`: for a narinfo, no connected peer advertises the path.
    pub const MISS: &str = "miss";
    /// A narinfo with holders, none of which gave one that may be served (untrusted, not the
    /// path asked for, unreachable); a `why` report past its limits (`429`).
    pub const REFUSED: &str = "refused";
    /// A NAR sent whole, or any other request answered `200`.
    pub const OK: &str = "ok";
    /// A NAR cut off after its response started (a peer's fault, or the client left).
    pub const ABORTED: &str = "aborted";
    /// A `400`.
    pub const MALFORMED: &str = "malformed";
    /// A `5xx` (a time-out, say).
    pub const ERROR: &str = "error";
}

/// Where a fetch's time is measured to, as the `stage` label says it.
pub mod stage {
    /// A narinfo hit: from the request to the verified narinfo.
    pub const NARINFO: &str = "narinfo";
    /// A NAR: from the request to its first verified bytes (the response head).
    pub const NAR_FIRST_BYTE: &str = "nar_first_byte";
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    kind: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    stage: &'static str,
}

/// The registry and the substituter's series. Shared as an `Arc` between the router and the
/// node.
pub struct Metrics {
    /// Shared with the LAN listener's [`Metrics::for_lan`] and with the node's own series.
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<StageLabels, Histogram, fn() -> Histogram>,
    /// The LAN listener's waits for the machine's own Nix (registered by [`Metrics::for_lan`]
    /// alone).
    yields: Histogram,
    peers_connected: Gauge,
    peers_known: Gauge,
    indexed_paths: Gauge,
    local_paths: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with the substituter's series, none moved yet.
    pub fn new() -> Self {
        let metrics = Metrics {
            registry: Registry::new(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            yields: latency_histogram(),
            peers_connected: Gauge::default(),
            peers_known: Gauge::default(),
            indexed_paths: Gauge::default(),
            local_paths: Gauge::default(),
        };
        metrics.register(
            "requests",
            "Requests to the substituter, by kind (narinfo, nar, cache-info, status-page, other) \
             and result (hit, miss, refused, ok, aborted, malformed, error)",
            metrics.requests.clone(),
        );
        metrics.register(
            "fetch_seconds",
            "Time to a narinfo hit (stage narinfo) and to a NAR's first verified bytes \
             (stage nar_first_byte)",
            metrics.latency.clone(),
        );
        let gauges = [
            ("peers_connected", "Peers connected now", &metrics.peers_connected),
            ("peers_known", "Peers seen since the start or in the index", &metrics.peers_known),
            ("indexed_paths", "(path, peer) pairs in the index", &metrics.indexed_paths),
            ("local_paths", "Store paths this node advertises", &metrics.local_paths),
        ];
        for (name, help, gauge) in gauges {
            metrics.register(name, help, gauge.clone());
        }
        metrics
    }

    /// The metrics of a second listener, the one open to the LAN (`lan_listen`): its requests
    /// and times as series of their own, `nixmesh_lan_requests_total` and
    /// `nixmesh_lan_fetch_seconds`, and its waits for the machine's own Nix,
    /// `nixmesh_lan_yield_seconds`, in the same registry, so `/metrics` on the localhost
    /// listener tells the two apart; the gauges are shared.
    pub fn for_lan(&self) -> Metrics {
        let lan = Metrics {
            registry: self.registry.clone(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            yields: latency_histogram(),
            peers_connected: self.peers_connected.clone(),
            peers_known: self.peers_known.clone(),
            indexed_paths: self.indexed_paths.clone(),
            local_paths: self.local_paths.clone(),
        };
        lan.register(
            "lan_requests",
            "Requests to the LAN listener, by kind and result as nixmesh_requests_total",
            lan.requests.clone(),
        );
        lan.register(
            "lan_fetch_seconds",
            "Times to a narinfo hit and to a NAR's first bytes on the LAN listener",
            lan.latency.clone(),
        );
        lan.register(
            "lan_yield_seconds",
            "Time LAN requests and LAN NAR chunks waited for the machine's own Nix to go first",
            lan.yields.clone(),
        );
        lan
    }

    /// Adds `metric` as `nixmesh_<name>` (a counter gets `_total` after that). For the node's
    /// own series; keep the metric (counters and gauges are handles) to move it.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.register(name, help, metric);
    }

    /// The registry these series are kept in, for the node's own series (which it registers
    /// without knowing this crate's, nor this crate the node's).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one request of `kind` that ended with `result` (see [`kind`] and [`result`]).
    pub fn request(&self, kind: &'static str, result: &'static str) {
        self.requests.get_or_create(&RequestLabels { kind, result }).inc();
    }

    /// How many requests of `kind` ended with `result` so far.
    pub fn requests(&self, kind: &'static str, result: &'static str) -> u64 {
        self.requests.get_or_create(&RequestLabels { kind, result }).get()
    }

    /// Records that a fetch took `seconds` to `stage` (see [`stage`]).
    pub fn fetched(&self, stage: &'static str, seconds: f64) {
        self.latency.get_or_create(&StageLabels { stage }).observe(seconds);
    }

    /// Records that a piece of LAN work waited `waited` for the machine's own Nix
    /// (`nixmesh_lan_yield_seconds`; see [`crate::local_first`]).
    pub fn lan_yielded(&self, waited: std::time::Duration) {
        self.yields.observe(waited.as_secs_f64());
    }

    /// The counts a person reads in `nixmesh status`.
    pub fn request_counts(&self) -> RequestCounts {
        RequestCounts {
            narinfo_hits: self.requests(kind::NARINFO, result::HIT),
            narinfo_misses: self.requests(kind::NARINFO, result::MISS),
            narinfo_refused: self.requests(kind::NARINFO, result::REFUSED),
            nars_sent: self.requests(kind::NAR, result::OK),
            nars_aborted: self.requests(kind::NAR, result::ABORTED),
        }
    }

    /// Every series in the OpenMetrics text format, the gauges set from `status` first.
    pub fn encode(&self, status: &NodeStatus) -> String {
        let set = |gauge: &Gauge, n: u64| gauge.set(i64::try_from(n).unwrap_or(i64::MAX));
        set(&self.peers_connected, status.peers_connected);
        set(&self.peers_known, status.peers_known);
        set(&self.indexed_paths, status.indexed_paths);
        set(&self.local_paths, status.local_paths);
        self.registry.encode()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> NodeStatus {
        NodeStatus { peers_connected: 2, indexed_paths: 7, ..NodeStatus::default() }
    }

    #[test]
    fn encodes_every_series_with_the_prefix_and_the_node_counters() {
        let metrics = Metrics::new();
        metrics.request(kind::NARINFO, result::HIT);
        metrics.request(kind::NARINFO, result::HIT);
        metrics.request(kind::NAR, result::ABORTED);
        metrics.fetched(stage::NARINFO, 0.003);
        let received = Counter::<u64>::default();
        metrics.register("nar_received_bytes", "NAR bytes from peers", received.clone());
        received.inc_by(1234);
        let text = metrics.encode(&status());
        for line in [
            "nixmesh_requests_total{kind=\"narinfo\",result=\"hit\"} 2",
            "nixmesh_requests_total{kind=\"nar\",result=\"aborted\"} 1",
            "nixmesh_fetch_seconds_count{stage=\"narinfo\"} 1",
            "nixmesh_fetch_seconds_bucket{le=\"0.004\",stage=\"narinfo\"} 1",
            "nixmesh_peers_connected 2",
            "nixmesh_indexed_paths 7",
            "nixmesh_nar_received_bytes_total 1234",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn the_hit_rate_counts_every_narinfo_answer() {
        let metrics = Metrics::new();
        assert_eq!(metrics.request_counts().hit_rate(), None);
        metrics.request(kind::NARINFO, result::HIT);
        metrics.request(kind::NARINFO, result::MISS);
        metrics.request(kind::NARINFO, result::REFUSED);
        metrics.request(kind::NARINFO, result::HIT);
        let counts = metrics.request_counts();
        assert_eq!((counts.narinfo_hits, counts.narinfo_misses, counts.narinfo_refused), (2, 1, 1));
        assert_eq!(counts.hit_rate(), Some(0.5));
    }
}
