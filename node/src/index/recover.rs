//! Recovery: a damaged file set aside at start ([`Index::open_or_set_aside`]), and the
//! database reopened after an I/O error ([`Index::trouble`] says why the index does not work
//! meanwhile).
//!
//! After an I/O error (a full disk) redb refuses every later operation until the database is
//! opened again, so every operation on the file goes through [`Index::with_db`], which
//! records the trouble, and a failed write reopens the database, at most once a
//! [`REOPEN_PAUSE`]. Lookups never touch the file, so they are unaffected.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::MutexGuard;
use redb::Database;

use super::Index;
use super::error::IndexError;
use super::open::open_database;
use super::schema::SCHEMA_VERSION;

/// The index's trouble, and when the database was last reopened.
#[derive(Default)]
pub(super) struct Health {
    trouble: Option<String>,
    last_reopen: Option<Instant>,
}

/// The least time between two reopenings: a disk that stays full is not hammered.
const REOPEN_PAUSE: Duration = Duration::from_secs(1);

impl Index {
    /// Opens the index at `path` like [`Index::open`]. A file that turns out damaged
    /// (truncated, garbage, a newer layout, or one that makes redb panic) is renamed to
    /// `<path>.damaged-<unix time>`, and a file of the older layout (version 1, a nixmesh
    /// before this one) is removed; either way a new, empty index is made in its place, to be
    /// filled again from the peers' snapshots. Returns the index and where a damaged file
    /// went. Errors that are not damage (no permission, a full disk) are returned as they are.
    pub fn open_or_set_aside(path: &Path) -> Result<(Index, Option<PathBuf>), IndexError> {
        let why = match std::panic::catch_unwind(|| Index::open(path)) {
            Ok(Ok(index)) => return Ok((index, None)),
            Ok(Err(IndexError::Schema { found, .. })) if found < SCHEMA_VERSION => {
                return replace_older_layout(path, found);
            }
            Ok(Err(e)) if e.is_damage() => e.to_string(),
            Ok(Err(e)) => return Err(e),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "no message".to_owned());
                format!("opening it panicked in redb: {message}")
            }
        };
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        let mut aside = path.as_os_str().to_owned();
        aside.push(format!(".damaged-{unix}"));
        let aside = PathBuf::from(aside);
        std::fs::rename(path, &aside).map_err(|e| IndexError::SetAside {
            path: path.to_path_buf(),
            why: why.clone(),
            source: e,
        })?;
        tracing::warn!(
            index = %path.display(),
            set_aside = %aside.display(),
            "the index was damaged ({why}); starting a new one, filled again from the peers"
        );
        Ok((Index::open(path)?, Some(aside)))
    }

    /// Why the index does not work now, if it does not (the status page shows it).
    pub fn trouble(&self) -> Option<String> {
        self.health().trouble.clone()
    }

    /// Runs `f` on the database, recording trouble the way [`Index::trouble`] reports it.
    pub(super) fn with_db<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, IndexError>,
    ) -> Result<T, IndexError> {
        // The database lock is let go before the health lock is taken: `reopen` takes them
        // the other way round.
        let ran = self.db.read().as_ref().map(f);
        let result = ran.unwrap_or_else(|| {
            let why = self.trouble().unwrap_or_else(|| "being reopened".to_owned());
            Err(IndexError::Unavailable { path: self.path.clone(), why })
        });
        if let Err(e) = &result
            && e.needs_reopen()
        {
            self.health().trouble = Some(e.to_string());
        }
        result
    }

    /// Drops the database and opens it again (at most once a [`REOPEN_PAUSE`]): after an I/O
    /// error redb refuses every later operation until then. True if it is open again.
    pub(super) fn reopen(&self) -> bool {
        let mut health = self.health();
        if health.last_reopen.is_some_and(|t| t.elapsed() < REOPEN_PAUSE) {
            return false;
        }
        health.last_reopen = Some(Instant::now());
        let mut db = self.db.write();
        // The old one first: it holds the file's lock.
        *db = None;
        match open_database(&self.path) {
            // Still in trouble until a write succeeds again (a full disk stays full).
            Ok(reopened) => {
                *db = Some(reopened);
                true
            }
            Err(e) => {
                tracing::warn!(index = %self.path.display(), "cannot reopen the index: {e}");
                health.trouble = Some(e.to_string());
                false
            }
        }
    }

    /// Clears the trouble after a write succeeded, saying so if there was any.
    pub(super) fn recovered(&self) {
        if let Some(trouble) = self.health().trouble.take() {
            let index = self.path.display();
            tracing::info!(%index, "the index works again after: {trouble}");
        }
    }

    fn health(&self) -> MutexGuard<'_, Health> {
        self.health.lock()
    }
}

/// Removes a file of the older layout `found` (ours to replace: nothing in it can be read
/// any more) and makes a new index in its place.
fn replace_older_layout(path: &Path, found: u64) -> Result<(Index, Option<PathBuf>), IndexError> {
    std::fs::remove_file(path).map_err(|e| IndexError::SetAside {
        path: path.to_path_buf(),
        why: format!("it has the layout of an older nixmesh (version {found})"),
        source: e,
    })?;
    tracing::info!(
        index = %path.display(),
        "the index had the layout of an older nixmesh (version {found}); it is \
         replaced by a new one, filled again from the peers"
    );
    Ok((Index::open(path)?, None))
}
