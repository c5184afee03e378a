//! Which signing keys the node trusts, and the key it signs with.
//!
//! Trusted keys come from `--trusted-public-key`; when none is given, from the local
//! `nix.conf` (`trusted-public-keys` and `extra-trusted-public-keys`, following `include`s),
//! so paths signed by `cache.nixos.org-1` are trusted out of the box, as Nix trusts them.

use std::fs;
use std::path::{Path, PathBuf};

use nixmesh_protocol::nixconf;
use nixmesh_protocol::signature::{KeyError, SigningKey, TrustedKeys, VerifyingKey};
use thiserror::Error;

/// How deep `include`s in nix.conf may nest before we call it a loop.
const MAX_INCLUDE_DEPTH: usize = 8;

/// A key that could not be loaded.
#[derive(Debug, Error)]
pub enum TrustError {
    #[error("trusted public key {key:?}: {source}")]
    BadTrustedKey { key: String, source: KeyError },
    #[error("{path}: trusted public key {key:?}: {source}")]
    BadNixConfKey { path: PathBuf, key: String, source: KeyError },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: includes nest deeper than {MAX_INCLUDE_DEPTH} (a loop?)")]
    IncludeLoop { path: PathBuf },
    #[error("signing key file {path}: {source}")]
    BadSigningKey { path: PathBuf, source: KeyError },
}

/// The default nix.conf: `$NIX_CONF_DIR/nix.conf`, else `/etc/nix/nix.conf`.
pub fn default_nix_conf() -> PathBuf {
    let dir = std::env::var_os("NIX_CONF_DIR").map(PathBuf::from);
    dir.unwrap_or_else(|| PathBuf::from("/etc/nix")).join("nix.conf")
}

/// The trusted keys: `flags` if any, else those `nix_conf` names (none if it does not exist).
pub fn trusted_keys(flags: &[String], nix_conf: &Path) -> Result<TrustedKeys, TrustError> {
    let keys = if flags.is_empty() {
        let mut found = Vec::new();
        read_nix_conf(nix_conf, true, 0, &mut found)?;
        found
            .into_iter()
            .map(|(path, key)| {
                VerifyingKey::parse(&key).map_err(|source| TrustError::BadNixConfKey {
                    path,
                    key,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
    } else {
        flags
            .iter()
            .map(|key| {
                VerifyingKey::parse(key)
                    .map_err(|source| TrustError::BadTrustedKey { key: key.clone(), source })
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    Ok(TrustedKeys::new(keys))
}

/// Collects `(file, key)` pairs from `path` and what it includes, in order.
fn read_nix_conf(
    path: &Path,
    required: bool,
    depth: usize,
    found: &mut Vec<(PathBuf, String)>,
) -> Result<(), TrustError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(TrustError::IncludeLoop { path: path.to_owned() });
    }
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && depth == 0 => return Ok(()),
        Err(source) => return Err(TrustError::Read { path: path.to_owned(), source }),
    };
    let parsed = nixconf::trusted_public_keys(&text);
    found.extend(parsed.keys.into_iter().map(|k| (path.to_owned(), k)));
    for (include, required) in parsed.includes {
        // Relative includes are relative to the including file, as in Nix.
        let include = path.parent().unwrap_or(Path::new("/")).join(include);
        read_nix_conf(&include, required, depth + 1, found)?;
    }
    Ok(())
}

/// Reads a secret key file in Nix's format.
pub fn signing_key(path: &Path) -> Result<SigningKey, TrustError> {
    let text = fs::read_to_string(path)
        .map_err(|source| TrustError::Read { path: path.into(), source })?;
    SigningKey::parse(text.trim())
        .map_err(|source| TrustError::BadSigningKey { path: path.into(), source })
}
