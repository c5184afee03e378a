//! The localhost HTTP substituter: Nix's binary-cache protocol in front of the mesh.
//!
//! Nix asks for `/<hash>.narinfo`, then for the NAR its `URL` names. A narinfo is answered
//! only when some connected peer holds the path ([`PathSource::holders`], local state: a miss
//! never waits on the network) and gives a narinfo for exactly that path with a signature
//! from a trusted key. The NAR is streamed from a holder and checked against that narinfo on
//! the way ([`verified_nar`]): Nix never receives a complete NAR that does not match it.
//!
//! Modules: `target` parses request paths; `substituter` holds the shared state and the
//! narinfo trust rule; `cache` remembers verified narinfos; `routes` and `nar` are the
//! handlers, `listing` (`<hash>.ls`) and `build_log` (`log/<drv>`) too; `nar_range` serves
//! byte ranges of a NAR under the same rule; `why` explains what would be served and why,
//! within `why_limit`'s bounds; `verified_nar` checks NAR bytes; `node_view` is what the
//! status pages read; `metrics` holds its Prometheus series; `server` assembles the router
//! with its limits; `http1` serves each connection with hyper, bounding a request's head in
//! time and size; `connection` bounds each client connection in time and their number; `trim`
//! gives memory back after bursts of them; `nar_slots` bounds the NAR downloads and what a
//! stalled one holds; `prefetch` fetches the NARs of a walked closure ahead of Nix, verified; `client_hosts` gates a listener open to the LAN; `local_first` holds the LAN
//! listener's work back while the machine's own Nix fetches.

mod answer;
mod build_log;
mod cache;
pub mod client_hosts;
pub mod config;
pub mod connection;
pub mod health;
mod held_body;
mod holders;
pub mod http1;
pub mod listing;
pub mod local_first;
pub mod metrics;
mod nar;
pub mod nar_range;
pub mod nar_slots;
pub mod node_view;
pub mod prefetch;
mod routes;
pub mod server;
pub mod source;
mod substituter;
pub mod target;
mod trim;
pub mod verified_nar;
pub mod why;
pub mod why_limit;

pub use axum::Router;
pub use config::Config;
pub use local_first::{LocalFirst, Role};
pub use metrics::Metrics;
pub use node_view::{NodeStatus, NodeView, PeerSummary, RequestCounts, UpstreamSummary};
pub use server::{SHUTDOWN_GRACE, router, serve};
pub use source::{NarStream, PathSource, SourceError};
pub use substituter::{Accepted, Rejection, accept};
pub use why::{HolderReport, Verdict, WhyReport};
