//! Whole nodes (`RunningNode`, as `nixmesh serve` starts one) in one process on loopback
//! (static peers, no mDNS), each on its own chroot Nix store, with the real Nix as the client:
//! the fast, namespace-free cousin of the LAN tests in `tests/`. One binary of feature modules,
//! as `localhttp/tests/substituter/`: each binary of this package links the whole node.

mod content_addressed;
mod damaged_copy;
mod forget_peers;
mod index_recovery;
mod metrics_cli;
mod pair;
mod shutdown;
mod startup;
mod substitution;
#[path = "../support/mod.rs"]
mod support;
mod why;
