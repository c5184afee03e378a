//! The local Nix store, reached only through the nix-daemon's worker protocol. (STUB)
//!
//! API (fixed; bodies to be written):
//! - `StoreAddress::parse("daemon" | "unix:///path/to/socket")`
//! - `Store::connect(StoreAddress) -> Result<Store, StoreError>` (a small connection pool)
//! - `Store::query_all_valid_paths() -> Vec<StorePath>`
//! - `Store::query_path_from_hash_part(StorePathHash) -> Option<StorePath>`
//! - `Store::query_path_info(&StorePath) -> Option<PathInfo>`
//! - `Store::nar_from_path(&StorePath, nar_size) -> impl Stream<Item = Result<Bytes, StoreError>>`
