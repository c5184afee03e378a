//! What can go wrong with the index, each error naming the file or the peer concerned.

use std::path::{Path, PathBuf};

use libp2p::PeerId;
use thiserror::Error;

/// Why an index operation failed.
#[derive(Debug, Error)]
pub enum IndexError {
    /// redb could not open, read or commit. The message names the file and the operation.
    #[error("index at {path}: {operation}: {source}")]
    Storage { path: PathBuf, operation: &'static str, source: Box<redb::Error> },
    /// The file was written by a nixmesh with another layout of the index.
    #[error(
        "index at {path}: schema version {found}, but this nixmesh reads version {expected}; \
         move the file away and the index is rebuilt from peers' snapshots"
    )]
    Schema { path: PathBuf, found: u64, expected: u64 },
    /// The file is a redb database, but its contents are not what the index writes.
    #[error(
        "index at {path}: {what}; move the file away and the index is rebuilt from peers' \
         snapshots"
    )]
    Corrupt { path: PathBuf, what: String },
    /// The database is not open (it failed and could not be reopened yet).
    #[error("index at {path} is unavailable: {why}")]
    Unavailable { path: PathBuf, why: String },
    /// A damaged index could not be moved out of the way.
    #[error("index at {path} is damaged ({why}) and cannot be set aside: {source}")]
    SetAside { path: PathBuf, why: String, source: std::io::Error },
    /// A delta that does not continue the position indexed for `peer` (unknown peer, other
    /// epoch, other generation, or a generation going backwards). Nothing was changed; the
    /// caller should ask the peer for a snapshot.
    #[error(
        "peer {peer}: delta from generation {from_generation} to {to_generation} in epoch \
         {epoch} does not follow the indexed position ({}); a snapshot is needed",
        match stored {
            Some((epoch, generation)) => format!("epoch {epoch}, generation {generation}"),
            None => "none".to_string(),
        }
    )]
    OutOfStep {
        /// Boxed: a `PeerId` alone would make every `Result<_, IndexError>` large.
        peer: Box<PeerId>,
        epoch: u64,
        from_generation: u64,
        to_generation: u64,
        /// The (epoch, generation) indexed for the peer, if any.
        stored: Option<(u64, u64)>,
    },
    /// The index is at its size bound and `peer` would hold more than its share of it (see
    /// `index::bound`). Nothing was changed.
    #[error(
        "peer {peer}: not indexing its {paths} paths: the index is at its bound of {max} \
         (index_max_paths) and this peer would hold more than its share of {share}"
    )]
    Full { peer: Box<PeerId>, paths: u64, max: u64, share: u64 },
    /// The index tells apart at most `max` peers and has no room for another.
    #[error(
        "peer {peer}: not indexing it: the index already holds the most peers it can tell \
         apart ({max}); peers unseen for forget_peers_after make room"
    )]
    TooManyPeers { peer: Box<PeerId>, max: usize },
}

impl IndexError {
    /// Whether the caller should re-request a snapshot (the delta did not fit), as opposed to
    /// the index itself failing.
    pub fn is_out_of_step(&self) -> bool {
        matches!(self, IndexError::OutOfStep { .. })
    }

    /// Whether the index refused a peer's paths for its size bound (see `index::bound`), as
    /// opposed to failing.
    pub fn is_full(&self) -> bool {
        matches!(self, IndexError::Full { .. } | IndexError::TooManyPeers { .. })
    }

    /// Whether opening failed on what the file holds (as opposed to reaching it at all: no
    /// permission, a full disk), so that a new index in its place is the cure.
    pub fn is_damage(&self) -> bool {
        match self {
            IndexError::Corrupt { .. } | IndexError::Schema { .. } => true,
            IndexError::Storage { source, .. } => !matches!(
                **source,
                redb::Error::Io(_)
                    | redb::Error::DatabaseAlreadyOpen
                    | redb::Error::LockPoisoned(_)
            ),
            IndexError::SetAside { .. }
            | IndexError::OutOfStep { .. }
            | IndexError::Full { .. }
            | IndexError::TooManyPeers { .. }
            | IndexError::Unavailable { .. } => false,
        }
    }

    /// Whether the database failed on I/O (a full disk, say), after which redb refuses every
    /// operation until it is opened again.
    pub(super) fn needs_reopen(&self) -> bool {
        match self {
            IndexError::Storage { source, .. } => {
                matches!(**source, redb::Error::Io(_) | redb::Error::PreviousIo)
            }
            IndexError::Unavailable { .. } => true,
            _ => false,
        }
    }
}

/// Any redb error, boxed so that `Result`s stay small; `?` converts each redb error type into
/// it.
pub(super) struct RedbError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for RedbError {
    fn from(error: E) -> Self {
        RedbError(Box::new(error.into()))
    }
}

/// Wraps redb errors with the file and the operation.
pub(super) trait StorageContext<T> {
    fn context(self, path: &Path, operation: &'static str) -> Result<T, IndexError>;
}

impl<T, E: Into<RedbError>> StorageContext<T> for Result<T, E> {
    fn context(self, path: &Path, operation: &'static str) -> Result<T, IndexError> {
        self.map_err(|e| IndexError::Storage {
            path: path.to_path_buf(),
            operation,
            source: e.into().0,
        })
    }
}
