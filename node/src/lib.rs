//! The nixmesh node: local store access, discovery, the mesh, the index, and the wiring that
//! puts the local substituter (`nixmesh-localhttp`) in front of them.
//!
//! Grouped by what each part is about: this machine ([`local`]); the mesh and what travels on
//! it ([`mesh`], [`adverts`], [`discovery`], [`fetch`], [`index`]); serving Nix
//! ([`substituter`], [`upstream`]); and running the node ([`node`], [`config`], [`args`],
//! [`cli`]).

/// Advertisements: publishing which store paths this node holds, and following its peers'.
pub mod adverts;
/// The command line's flags and subcommands (clap).
pub mod args;
/// The client side of the CLI: `peers`, `status`, `why` (asking a running node), `keygen`.
pub mod cli;
/// The configuration file, the flags over it, and the effective settings.
pub mod config;
/// Finding peers: mDNS on the LAN, static peers, and peer exchange.
pub mod discovery;
/// Fetching narinfos and NARs from peers, serving them to peers, and the bytes exchanged.
pub mod fetch;
/// The index: which peer holds which store path, kept on disk (redb).
pub mod index;
/// This machine: the Nix store, the local Nix's settings, trusted keys, the node's identity.
pub mod local;
/// The private libp2p mesh: connections, streams, peer names and access.
pub mod mesh;
/// `nixmesh serve`: starting every part of the node, stopping them together, socket activation.
pub mod node;
/// The node's side of the local substituter: the mesh as a source, the status view, the LAN.
pub mod substituter;
/// The upstream caches: narinfo and NAR downloads, checked, spooled, and one flight per path.
pub mod upstream;
