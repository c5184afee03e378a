//! The node's libp2p identity: one ed25519 key pair, kept in the state dir so that the node's
//! peer id survives restarts (peers resume its advertisements by that id).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;
use thiserror::Error;

/// The file name of the identity in the state dir.
pub const IDENTITY_FILE: &str = "identity.key";

/// The identity could not be read or written.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("cannot read the node identity {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the node identity {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("the node identity {path} is corrupt ({reason}); move it away to make a new one")]
    Corrupt { path: PathBuf, reason: String },
}

/// Loads the identity from `state_dir`, creating it (mode 0600) on first start.
pub fn load_or_create(state_dir: &Path) -> Result<Keypair, IdentityError> {
    let path = state_dir.join(IDENTITY_FILE);
    match fs::read(&path) {
        Ok(bytes) => Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| IdentityError::Corrupt { path, reason: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

fn create(path: &Path) -> Result<Keypair, IdentityError> {
    let keypair = Keypair::generate_ed25519();
    let bytes = keypair.to_protobuf_encoding().expect("ed25519 keys always encode");
    let write_err = |source| IdentityError::Write { path: path.to_owned(), source };
    // Write to a temporary file and rename, so a crash never leaves half a key behind.
    let tmp = path.with_extension("key.tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(write_err)?;
    file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(write_err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).map_err(write_err)?;
    fs::rename(&tmp, path).map_err(write_err)?;
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap();
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public().to_peer_id(), again.public().to_peer_id());
        let mode = fs::metadata(dir.path().join(IDENTITY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_identity_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), b"garbage").unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(IdentityError::Corrupt { .. })));
    }
}
