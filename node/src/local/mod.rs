//! This machine, as the node finds it: the Nix store (through the nix-daemon), the local Nix's
//! settings, the keys the node trusts and signs with, and the node's own identity.

pub mod identity;
pub mod nix_settings;
pub mod store;
pub mod trust;
