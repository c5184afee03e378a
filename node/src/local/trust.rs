//! Which signing keys the node trusts, and the key it signs with.
//!
//! Trusted keys come from `--trusted-public-key`; when none is given, they are the keys the
//! local Nix trusts: its default (`cache.nixos.org-1`), changed by `trusted-public-keys` and
//! `extra-trusted-public-keys` in `nix.conf` (following `include`s) and `$NIX_CONFIG`.

use std::fs;
use std::path::{Path, PathBuf};

use nixmesh_protocol::nix_conf::TRUSTED_PUBLIC_KEYS;
use nixmesh_protocol::signature::{KeyError, SigningKey, TrustedKeys, VerifyingKey};
use thiserror::Error;

use crate::local::nix_settings::{self, NixConfError};

/// A key that could not be loaded.
#[derive(Debug, Error)]
pub enum TrustError {
    #[error("trusted public key {key:?}: {source}")]
    BadTrustedKey { key: String, source: KeyError },
    #[error("{path} (or $NIX_CONFIG): trusted public key {key:?}: {source}")]
    BadNixConfKey { path: PathBuf, key: String, source: KeyError },
    #[error(transparent)]
    NixConf(#[from] NixConfError),
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("signing key file {path}: {source}")]
    BadSigningKey { path: PathBuf, source: KeyError },
}

/// The trusted keys: `flags` if any, else what Nix itself trusts: the default key, then the
/// settings of `nix_conf` (and the files it includes) and of `$NIX_CONFIG`, applied in order.
pub fn trusted_keys(flags: &[String], nix_conf: &Path) -> Result<TrustedKeys, TrustError> {
    let parse_flag = |key: &String| {
        VerifyingKey::parse(key)
            .map_err(|source| TrustError::BadTrustedKey { key: key.clone(), source })
    };
    if !flags.is_empty() {
        return Ok(TrustedKeys::new(flags.iter().map(parse_flag).collect::<Result<_, _>>()?));
    }
    let keys = nix_settings::read_list(nix_conf, &TRUSTED_PUBLIC_KEYS)?;
    let parsed = keys.iter().map(|key| {
        VerifyingKey::parse(key).map_err(|source| TrustError::BadNixConfKey {
            path: nix_conf.to_owned(),
            key: key.clone(),
            source,
        })
    });
    Ok(TrustedKeys::new(parsed.collect::<Result<_, _>>()?))
}

/// Reads a secret key file in Nix's format.
pub fn signing_key(path: &Path) -> Result<SigningKey, TrustError> {
    let text = fs::read_to_string(path)
        .map_err(|source| TrustError::Read { path: path.into(), source })?;
    SigningKey::parse(text.trim())
        .map_err(|source| TrustError::BadSigningKey { path: path.into(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str = "a-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";
    const KEY_B: &str = "b-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=";

    fn names(keys: &TrustedKeys) -> Vec<&str> {
        keys.keys().iter().map(|k| k.name()).collect()
    }

    #[test]
    fn flags_win_over_nix_conf() {
        let keys = trusted_keys(&[KEY_A.to_owned()], Path::new("/nonexistent/nix.conf")).unwrap();
        assert_eq!(names(&keys), ["a-1"]);
    }

    #[test]
    fn nix_conf_follows_nix_rules() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nix.conf");
        // No file: Nix's default key.
        assert_eq!(names(&trusted_keys(&[], &conf).unwrap()), ["cache.nixos.org-1"]);
        // `extra-` adds to the default; an include is read where it stands; a later
        // assignment replaces what came before.
        fs::write(dir.path().join("more.conf"), format!("extra-trusted-public-keys = {KEY_B}\n"))
            .unwrap();
        fs::write(&conf, format!("extra-trusted-public-keys = {KEY_A}\ninclude more.conf\n"))
            .unwrap();
        assert_eq!(names(&trusted_keys(&[], &conf).unwrap()), ["cache.nixos.org-1", "a-1", "b-1"]);
        fs::write(&conf, format!("include more.conf\ntrusted-public-keys = {KEY_A}\n")).unwrap();
        assert_eq!(names(&trusted_keys(&[], &conf).unwrap()), ["a-1"]);
        // A missing `include` is an error; a missing `!include` is not.
        fs::write(&conf, "!include gone.conf\n").unwrap();
        assert!(trusted_keys(&[], &conf).is_ok());
        fs::write(&conf, "include gone.conf\n").unwrap();
        assert!(matches!(
            trusted_keys(&[], &conf),
            Err(TrustError::NixConf(NixConfError::Read { .. }))
        ));
        // An include loop ends with an error, not a stack overflow.
        fs::write(&conf, "include nix.conf\n").unwrap();
        let looped = trusted_keys(&[], &conf);
        assert!(matches!(looped, Err(TrustError::NixConf(NixConfError::IncludeLoop { .. }))));
    }
}
