//! The prefetch's series: NARs by what became of them, and the bytes held.

use nixmesh_telemetry::{Counter, Gauge};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;

use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// Counts of prefetched NARs by `result`: `used` (served to Nix), `expired` (unasked for the
/// time-to-live), `evicted` (Nix went past them), `failed` (the transfer or its check); and
/// the bytes held and reserved.
#[derive(Clone, Default)]
pub struct PrefetchMetrics {
    nars: Family<ResultLabel, Counter>,
    bytes: Gauge,
}

impl PrefetchMetrics {
    /// Registers the series as `nixmesh_<prefix>prefetch_nars_total` and
    /// `nixmesh_<prefix>prefetch_bytes` (`prefix` is `lan_` for the LAN listener's).
    pub fn register(&self, metrics: &Metrics, prefix: &str) {
        metrics.register(
            &format!("{prefix}prefetch_nars"),
            "NARs prefetched ahead of Nix, by result (used, expired, evicted, failed)",
            self.nars.clone(),
        );
        metrics.register(
            &format!("{prefix}prefetch_bytes"),
            "Bytes of prefetched NARs held, and reserved for transfers under way",
            self.bytes.clone(),
        );
    }

    /// How many prefetched NARs ended with `result` so far.
    pub fn count(&self, result: &'static str) -> u64 {
        self.nars.get_or_create(&ResultLabel { result }).get()
    }

    fn inc(&self, result: &'static str) {
        self.nars.get_or_create(&ResultLabel { result }).inc();
    }

    pub(super) fn held(&self, bytes: u64) {
        self.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub(super) fn used(&self, bytes: u64) {
        self.inc("used");
        self.held(bytes);
    }

    pub(super) fn evicted(&self, bytes: u64) {
        self.inc("evicted");
        self.held(bytes);
    }

    pub(super) fn failed(&self, bytes: u64) {
        self.inc("failed");
        self.held(bytes);
    }

    pub(super) fn expired(&self) {
        self.inc("expired");
    }
}
