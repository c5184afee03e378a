//! Reading the local Nix's list settings (`trusted-public-keys`, `substituters`) as Nix
//! does: the setting's default, then `nix.conf` (following its `include`s where they stand),
//! then `$NIX_CONFIG`. The rules of each line are [`nixmesh_protocol::nix_conf`]'s; this
//! module does the file reading.

use std::fs;
use std::path::{Path, PathBuf};

use nixmesh_protocol::nix_conf::{ListLine, ListSetting, list_lines};
use thiserror::Error;

/// How deep `include`s in nix.conf may nest before we call it a loop.
const MAX_INCLUDE_DEPTH: usize = 8;

/// A nix.conf that could not be read.
#[derive(Debug, Error)]
pub enum NixConfError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: includes nest deeper than {MAX_INCLUDE_DEPTH} (a loop?)")]
    IncludeLoop { path: PathBuf },
}

/// The default nix.conf: `$NIX_CONF_DIR/nix.conf`, else `/etc/nix/nix.conf`.
pub fn default_path() -> PathBuf {
    let dir = std::env::var_os("NIX_CONF_DIR").map(PathBuf::from);
    dir.unwrap_or_else(|| PathBuf::from("/etc/nix")).join("nix.conf")
}

/// `setting` as the local Nix sees it: its default, changed by `nix_conf` (a missing file
/// changes nothing) and the files it includes, then by `$NIX_CONFIG`.
pub fn read_list(nix_conf: &Path, setting: &ListSetting) -> Result<Vec<String>, NixConfError> {
    let mut list = setting.default.iter().map(|v| (*v).to_owned()).collect();
    apply_file(nix_conf, false, 0, setting, &mut list)?;
    if let Ok(text) = std::env::var("NIX_CONFIG") {
        for line in list_lines(&text, setting) {
            line.apply(&mut list);
        }
    }
    Ok(list)
}

/// Applies the lines of `path`, and of the files it includes where it includes them.
fn apply_file(
    path: &Path,
    required: bool,
    depth: usize,
    setting: &ListSetting,
    list: &mut Vec<String>,
) -> Result<(), NixConfError> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(NixConfError::IncludeLoop { path: path.to_owned() });
    }
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok(()),
        Err(source) => return Err(NixConfError::Read { path: path.to_owned(), source }),
    };
    for line in list_lines(&text, setting) {
        match line {
            ListLine::Include { path: include, required } => {
                // Relative includes are relative to the including file, as in Nix.
                let include = path.parent().unwrap_or(Path::new("/")).join(include);
                apply_file(&include, required, depth + 1, setting, list)?;
            }
            line => line.apply(list),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use nixmesh_protocol::nix_conf::{SUBSTITUTERS, TRUSTED_PUBLIC_KEYS};

    use super::*;

    #[test]
    fn follows_includes_in_place_and_catches_loops() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("nix.conf");
        assert_eq!(read_list(&conf, &SUBSTITUTERS).unwrap(), ["https://cache.nixos.org/"]);
        fs::write(dir.path().join("more.conf"), "extra-substituters = http://b\n").unwrap();
        fs::write(&conf, "substituters = http://a\ninclude more.conf\n").unwrap();
        assert_eq!(read_list(&conf, &SUBSTITUTERS).unwrap(), ["http://a", "http://b"]);
        fs::write(&conf, "include more.conf\nsubstituters = http://a\n").unwrap();
        assert_eq!(read_list(&conf, &SUBSTITUTERS).unwrap(), ["http://a"]);
        fs::write(&conf, "!include gone.conf\n").unwrap();
        assert!(read_list(&conf, &TRUSTED_PUBLIC_KEYS).is_ok());
        fs::write(&conf, "include gone.conf\n").unwrap();
        let missing = read_list(&conf, &TRUSTED_PUBLIC_KEYS);
        assert!(matches!(missing, Err(NixConfError::Read { .. })));
        fs::write(&conf, "include nix.conf\n").unwrap();
        let looped = read_list(&conf, &SUBSTITUTERS);
        assert!(matches!(looped, Err(NixConfError::IncludeLoop { .. })));
    }
}
