//! A store path's NAR listing (`<hash>.ls`) made on this machine: from its files on disk,
//! reading only their metadata (where each file's contents would fall in the NAR is counted,
//! [`Listing::with_nar_offsets`]), or, for a path not found there, from the NAR the daemon
//! streams, read as it passes and kept nowhere.
//!
//! Either way nothing is trusted further than the daemon's NAR would be: the listing goes
//! only to a peer that asked for the path's NarHash, under the rule its narinfo is served by.

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use futures::{Stream, StreamExt};
use nixmesh_protocol::nar::listing::{
    Entry, Listing, ListingCollector, ListingError, MAX_LISTING_ENTRIES,
};
use nixmesh_protocol::nar::{NarError, NarParser};
use thiserror::Error;

use super::StoreError;

/// Why a listing could not be made; each names the path.
#[derive(Debug, Error)]
pub enum ListingFailed {
    #[error("listing {}: {cause}", .path.display())]
    Walk { path: PathBuf, cause: io::Error },
    #[error("listing {}: {cause}", .path.display())]
    TooLarge { path: PathBuf, cause: ListingError },
    #[error("listing the NAR of {path}: {cause}")]
    Nar { path: String, cause: String },
}

/// The listing of the file system object at `path` (not following a symlink there), walked
/// on a blocking thread.
pub async fn from_disk(path: PathBuf) -> Result<Listing, ListingFailed> {
    let walked = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut count = 0;
        Ok(Listing::with_nar_offsets(walk(&walked, &mut count)?))
    })
    .await
    .map_err(|e| ListingFailed::Walk { path, cause: io::Error::other(e) })?
}

/// The entry of the object at `path`, its offsets left to [`Listing::with_nar_offsets`];
/// `count` counts the objects seen, up to [`MAX_LISTING_ENTRIES`]. Errors name the object
/// that failed.
fn walk(path: &Path, count: &mut usize) -> Result<Entry, ListingFailed> {
    let failed = |cause| ListingFailed::Walk { path: path.to_owned(), cause };
    *count += 1;
    if *count > MAX_LISTING_ENTRIES {
        let cause = ListingError::TooManyEntries;
        return Err(ListingFailed::TooLarge { path: path.to_owned(), cause });
    }
    let meta = fs::symlink_metadata(path).map_err(failed)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path).map_err(failed)?.as_os_str().as_bytes().to_vec();
        Ok(Entry::Symlink { target })
    } else if kind.is_file() {
        let executable = meta.permissions().mode() & 0o100 != 0;
        Ok(Entry::Regular { size: meta.len(), executable, nar_offset: 0 })
    } else if kind.is_dir() {
        let mut entries = Vec::new();
        for entry in fs::read_dir(path).map_err(failed)? {
            let entry = entry.map_err(failed)?;
            let name = entry.file_name().as_bytes().to_vec();
            entries.push((name, walk(&entry.path(), count)?));
        }
        Ok(Entry::Directory { entries })
    } else {
        Err(failed(io::Error::other("neither a file, a directory nor a symlink")))
    }
}

/// The listing of the NAR `nar` of `path`, read as it streams by.
pub async fn from_nar<S>(path: &str, nar: S) -> Result<Listing, ListingFailed>
where
    S: Stream<Item = Result<bytes::Bytes, StoreError>>,
{
    let failed = |cause: String| ListingFailed::Nar { path: path.to_owned(), cause };
    let mut parser = NarParser::new();
    let mut collector = ListingCollector::new();
    let mut nar = std::pin::pin!(nar);
    while let Some(chunk) = nar.next().await {
        let chunk = chunk.map_err(|e| failed(e.to_string()))?;
        let mut collected = Ok(());
        parser
            .push(&chunk, |event| {
                if collected.is_ok() {
                    collected = collector.event(&event);
                }
            })
            .map_err(|e: NarError| failed(e.to_string()))?;
        collected.map_err(|e| failed(e.to_string()))?;
    }
    parser.finish().map_err(|e| failed(e.to_string()))?;
    collector.finish().map_err(|e| failed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use futures::TryStreamExt;

    use super::*;
    use crate::local::store::dump;

    #[tokio::test]
    async fn the_listing_from_disk_is_the_one_read_from_its_nar() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("b/deep")).unwrap();
        fs::create_dir_all(root.join("empty")).unwrap();
        fs::write(root.join("b/deep/file"), vec![7u8; 200_001]).unwrap();
        fs::write(root.join("a"), b"hello").unwrap();
        fs::write(root.join("z"), b"").unwrap();
        fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("b/deep", root.join("c")).unwrap();

        let from_disk = from_disk(root.clone()).await.unwrap();
        let nar: Vec<bytes::Bytes> = dump::dump(root).try_collect().await.unwrap();
        let stream = futures::stream::iter(nar.into_iter().map(Ok));
        assert_eq!(from_disk, from_nar("root", stream).await.unwrap());
        let text = String::from_utf8(from_disk.render()).unwrap();
        assert!(text.contains(r#""a":{"type":"regular","size":5,"executable":true,"narOffset":"#));
    }

    #[tokio::test]
    async fn a_missing_path_is_an_error_naming_it() {
        let err = from_disk(PathBuf::from("/nonexistent/nixmesh")).await.unwrap_err();
        assert!(err.to_string().contains("/nonexistent/nixmesh"), "{err}");
    }
}
