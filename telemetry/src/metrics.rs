//! The Prometheus registry every series of the node is kept in, and the handles put in it.
//!
//! A counter, gauge or histogram is a handle: whoever registers one keeps a clone and moves
//! it, and the registry reads it at each [`Registry::encode`]. What the series mean (the
//! substituter's requests, the node's NAR bytes) is decided by who registers them; this module
//! only names them under [`PREFIX`] and writes them out in the OpenMetrics text format.

use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::metrics::histogram::exponential_buckets;
pub use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};
pub use prometheus_client::registry::Metric;

/// Every series' name starts with this and `_`.
pub const PREFIX: &str = "nixmesh";

/// A histogram of durations in seconds, 1 ms to about 33 s in 16 doubling buckets: the one
/// shape every time series of the node has, so that they compare bucket by bucket.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// A shared handle on one registry: clones register into, and encode, the same series.
#[derive(Clone)]
pub struct Registry(Arc<RwLock<prometheus_client::registry::Registry>>);

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry whose series are named `nixmesh_*`.
    pub fn new() -> Self {
        Registry(Arc::new(RwLock::new(prometheus_client::registry::Registry::with_prefix(PREFIX))))
    }

    /// Adds `metric` as `nixmesh_<name>` (a counter gets `_total` after that). Keep the metric
    /// (counters, gauges and histograms are handles) to move it.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.0.write().register(name, help, metric);
    }

    /// Every series in the OpenMetrics text format, ending with `# EOF`.
    pub fn encode(&self) -> String {
        let registry = self.0.read();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)
            .expect("writing to a String cannot fail");
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_series_under_the_prefix() {
        let registry = Registry::new();
        let received = Counter::<u64>::default();
        registry.clone().register("nar_received_bytes", "NAR bytes from peers", received.clone());
        let times = latency_histogram();
        registry.register("fetch_seconds", "Times", times.clone());
        received.inc_by(1234);
        times.observe(0.003);
        let text = registry.encode();
        for line in [
            "nixmesh_nar_received_bytes_total 1234",
            "nixmesh_fetch_seconds_bucket{le=\"0.004\"} 1",
            "nixmesh_fetch_seconds_count 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
