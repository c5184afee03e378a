//! Build logs as Nix keeps them: `<log dir>/drvs/<first two characters>/<rest of the .drv's
//! base name>`, bzip2-compressed with `.bz2` (or, from old versions, flat under `drvs/`),
//! read as `LocalFSStore::getBuildLog` reads them. Failed builds leave theirs there too.
//!
//! The log directory is the state directory's `log/nix`: `/nix/var/log/nix` for `/nix/store`,
//! and beside the store's files for a chroot store (`nix-daemon --store DIR` keeps its files
//! in `DIR/nix/store` and its logs in `DIR/nix/var/log/nix`).

use std::io;
use std::path::{Path, PathBuf};

use async_compression::tokio::bufread::BzDecoder;
use nixmesh_protocol::StorePath;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};

/// Why a log could not be read; names the file.
#[derive(Debug, Error)]
pub enum BuildLogError {
    #[error("{drv:?} is not the base name of a derivation's store path")]
    NotADerivation { drv: String },
    #[error("reading the build log {}: {cause}", .file.display())]
    Read { file: PathBuf, cause: io::Error },
    #[error("the build log {} is larger than {limit} bytes", .file.display())]
    TooLarge { file: PathBuf, limit: usize },
}

/// The log directory beside a store whose files are in `real_store_dir` (`…/nix/store`):
/// `…/nix/var/log/nix`.
pub fn log_dir_beside(real_store_dir: &Path) -> PathBuf {
    let state = real_store_dir.parent().unwrap_or(Path::new("/"));
    state.join("var/log/nix")
}

/// The log of the derivation whose store path's base name is `drv`, decompressed, if
/// `log_dir` has one; at most `limit` bytes, or an error.
pub async fn read(
    log_dir: &Path,
    drv: &str,
    limit: usize,
) -> Result<Option<Vec<u8>>, BuildLogError> {
    let not_drv = || BuildLogError::NotADerivation { drv: drv.to_owned() };
    // A valid store path's base name has no '/' nor "..": it cannot leave `drvs/`.
    let path = StorePath::from_base_name(drv).map_err(|_| not_drv())?;
    if !path.name().ends_with(".drv") {
        return Err(not_drv());
    }
    let drvs = log_dir.join("drvs");
    let (head, rest) = drv.split_at(2);
    for file in [drvs.join(head).join(rest), drvs.join(drv)] {
        let compressed = file.with_file_name(format!(
            "{}.bz2",
            file.file_name().unwrap_or_default().to_string_lossy()
        ));
        if let Some(log) = read_file(&file, false, limit).await? {
            return Ok(Some(log));
        }
        if let Some(log) = read_file(&compressed, true, limit).await? {
            return Ok(Some(log));
        }
    }
    Ok(None)
}

/// The contents of `file` (bzip2-decompressed if `bzip2`), or `None` if it does not exist.
async fn read_file(
    file: &Path,
    bzip2: bool,
    limit: usize,
) -> Result<Option<Vec<u8>>, BuildLogError> {
    let failed = |cause| BuildLogError::Read { file: file.to_owned(), cause };
    let opened = match tokio::fs::File::open(file).await {
        Ok(opened) => BufReader::new(opened),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(failed(e)),
    };
    let reader: Box<dyn AsyncRead + Unpin + Send> =
        if bzip2 { Box::new(BzDecoder::new(opened)) } else { Box::new(opened) };
    let mut log = Vec::new();
    reader.take(limit as u64 + 1).read_to_end(&mut log).await.map_err(failed)?;
    if log.len() > limit {
        return Err(BuildLogError::TooLarge { file: file.to_owned(), limit });
    }
    Ok(Some(log))
}

#[cfg(test)]
mod tests {
    use async_compression::tokio::write::BzEncoder;
    use tokio::io::AsyncWriteExt;

    use super::*;

    const DRV: &str = "0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-hello-2.12.drv";

    async fn bzip2(text: &[u8]) -> Vec<u8> {
        let mut encoder = BzEncoder::new(Vec::new());
        encoder.write_all(text).await.unwrap();
        encoder.shutdown().await.unwrap();
        encoder.into_inner()
    }

    #[tokio::test]
    async fn reads_a_compressed_log_where_nix_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let logs = log_dir_beside(&dir.path().join("nix/store"));
        assert_eq!(logs, dir.path().join("nix/var/log/nix"));
        std::fs::create_dir_all(logs.join("drvs/0c")).unwrap();
        let file = logs.join(format!("drvs/0c/{}.bz2", &DRV[2..]));
        std::fs::write(&file, bzip2(b"building hello\n").await).unwrap();
        assert_eq!(
            read(&logs, DRV, 1000).await.unwrap().as_deref(),
            Some(&b"building hello\n"[..])
        );
        assert!(matches!(read(&logs, DRV, 5).await, Err(BuildLogError::TooLarge { .. })));
        let other = "1b9p07z77phvv2hf6gm9f28syp39f1ag-bash-5.1.drv";
        assert_eq!(read(&logs, other, 1000).await.unwrap(), None);
    }

    #[tokio::test]
    async fn only_derivations_base_names_are_looked_for() {
        let dir = tempfile::tempdir().unwrap();
        for bad in ["../../etc/passwd", "0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-hello", "x/y.drv", ""] {
            let refused = read(dir.path(), bad, 1000).await;
            assert!(matches!(refused, Err(BuildLogError::NotADerivation { .. })), "{bad}");
        }
    }
}
