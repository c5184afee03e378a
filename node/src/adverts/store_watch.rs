//! Noticing store changes as they happen: inotify on the Nix database's directory, so a path
//! registered by the daemon is rescanned for at once instead of at the next periodic listing
//! (which stays, far apart, as the safety net). Nix writes `db.sqlite` (and its write-ahead
//! log) whenever a path becomes valid, gets a signature, or is deleted; reads do not write
//! it, so an idle store wakes the node for nothing.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use inotify::{EventStream, Inotify, WatchMask};

/// After a change, how long to wait for the rest of a burst (a closure being registered is
/// many writes) before one rescan.
const SETTLE: Duration = Duration::from_millis(20);

/// Changes to a Nix database, as a stream of "something changed".
pub struct StoreWatch {
    events: EventStream<Vec<u8>>,
    dir: PathBuf,
}

impl StoreWatch {
    /// Watches the database of the store whose files are in `real_store_dir` (`/nix/store`
    /// means `/nix/var/nix/db`).
    pub fn for_store(real_store_dir: &Path) -> io::Result<StoreWatch> {
        let parent = real_store_dir.parent().ok_or_else(|| io::Error::other("no parent"))?;
        StoreWatch::new(parent.join("var/nix/db"))
    }

    fn new(dir: PathBuf) -> io::Result<StoreWatch> {
        let inotify = Inotify::init()?;
        let mask = WatchMask::MODIFY
            | WatchMask::CLOSE_WRITE
            | WatchMask::CREATE
            | WatchMask::MOVED_TO
            | WatchMask::DELETE;
        inotify.watches().add(&dir, mask)?;
        let events = inotify.into_event_stream(vec![0u8; 4096])?;
        Ok(StoreWatch { events, dir })
    }

    /// The directory watched.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Completes when the database changed (after the burst settled); an error means the
    /// watch is broken and the caller should fall back to listing.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let event = self.events.next().await.ok_or_else(|| io::Error::other("ended"))??;
            if event.name.as_deref().is_some_and(is_database) {
                break;
            }
        }
        tokio::time::sleep(SETTLE).await;
        while let Some(Some(event)) = self.events.next().now_or_never() {
            event?;
        }
        Ok(())
    }
}

/// The database and its journal or write-ahead log; not the shared-memory index, which
/// readers touch too.
fn is_database(name: &std::ffi::OsStr) -> bool {
    let name = name.as_encoded_bytes();
    name.starts_with(b"db.sqlite") && !name.ends_with(b"-shm")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_database_write_is_noticed_and_other_files_are_not() {
        let root = tempfile::tempdir().unwrap();
        let db = root.path().join("var/nix/db");
        std::fs::create_dir_all(&db).unwrap();
        std::fs::create_dir_all(root.path().join("store")).unwrap();
        let mut watch = StoreWatch::for_store(&root.path().join("store")).unwrap();
        assert_eq!(watch.dir(), db);

        std::fs::write(db.join("big-lock"), b"").unwrap();
        std::fs::write(db.join("db.sqlite-shm"), b"x").unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(100), watch.changed()).await;
        assert!(quiet.is_err(), "only the database counts");

        std::fs::write(db.join("db.sqlite-wal"), b"x").unwrap();
        let noticed = tokio::time::timeout(Duration::from_secs(5), watch.changed()).await;
        assert!(matches!(noticed, Ok(Ok(()))));
    }
}
