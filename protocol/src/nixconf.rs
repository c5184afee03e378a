//! The few `nix.conf` settings nixmesh reads. (STUB)

/// The public keys `trusted-public-keys` and `extra-trusted-public-keys` name in a nix.conf
/// text, in order, with `include`/`!include` lines returned separately for the caller to
/// read (this crate does no I/O).
pub fn trusted_public_keys(_text: &str) -> NixConfKeys {
    todo!()
}

/// What [`trusted_public_keys`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NixConfKeys {
    pub keys: Vec<String>,
    /// `(path, required)`: `include` is required, `!include` is not.
    pub includes: Vec<(String, bool)>,
}
