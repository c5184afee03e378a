//! The nixmesh node: local store access, discovery, the mesh, the index, and the wiring that
//! puts the local substituter (`nixmesh-localhttp`) in front of them.

pub mod adverts;
pub mod args;
pub mod cli;
pub mod config;
pub mod discovery;
pub mod fetch;
pub mod identity;
pub mod index;
pub mod lan;
pub mod mesh;
pub mod nix_conf;
pub mod node;
pub mod peer_name;
pub mod shutdown;
pub mod socket_activation;
pub mod source;
pub mod store;
pub mod traffic;
pub mod trust;
pub mod upstream;
pub mod view;
