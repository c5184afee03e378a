//! What the node and the substituter both report, and nothing about either: log lines about
//! refusals at most one an interval ([`RateLimitedLog`]), and the Prometheus registry with
//! the counter, gauge and histogram handles registered in it ([`Registry`]).
//!
//! Its own crate so that the node's core (index, mesh, upstream, traffic) counts and logs
//! without depending on the HTTP crate, and the HTTP crate builds its request series from the
//! same parts. It knows neither HTTP nor libp2p, and `nixmesh-protocol` never depends on it
//! (`protocol` does no I/O and has no runtime).
//!
//! Locks here are `parking_lot`'s, which do not poison, as everywhere in the workspace (see
//! ARCHITECTURE.md, "Locks").

pub mod log_limit;
pub mod metrics;

pub use log_limit::RateLimitedLog;
pub use metrics::{Counter, Gauge, Histogram, Metric, PREFIX, Registry, latency_histogram};
