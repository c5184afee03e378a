//! The local Nix store, reached only through the nix-daemon's worker protocol.
//!
//! nixmesh never opens the store's database or files itself: the daemon is the one process
//! that knows which paths are valid, and talking to it works the same for the system store and
//! for a test's chroot store. Layers, bottom up:
//!
//! - `daemon_reader`: the daemon's framing (`u64`s and padded strings), with a size limit on every
//!   length it reads;
//! - `connection`: one handshaken connection, the stderr message loop and the operations;
//! - `pool`: a bounded set of connections, reused only after a completed operation;
//! - `nar`: streaming a NAR out of a connection;
//! - [`Store`], here: the operations with a tracing span each, retrying once on a fresh
//!   connection when a pooled one turns out to be stale (all operations only read).

mod address;
pub mod build_log;
mod connection;
mod daemon_reader;
pub mod dump;
mod error;
pub mod listing;
mod nar;
mod path_info;
mod pool;

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use nixmesh_protocol::{StorePath, StorePathHash};
use tracing::{Instrument, debug, debug_span, info};

pub use address::{DEFAULT_SOCKET, SOCKET_ENV, StoreAddress};
pub use error::StoreError;
pub use nar::CHUNK_SIZE;
pub use nixmesh_protocol::nix_daemon::worker_protocol::{MAX_MINOR, MIN_MINOR};
pub use path_info::PathInfo;
pub use pool::{MAX_ACTIVE, MAX_IDLE};

use pool::Pool;

/// Runs `$op` (an async operation on `$conn`) on a pooled connection and evaluates to the
/// still-leased connection and the result, returning early on failure. If a reused connection
/// fails on the socket, the daemon probably closed it while it sat idle (a restart): `$op`
/// runs once more on a new connection. (A macro because an async closure borrowing the
/// connection makes the caller's future not `Send` for all lifetimes.)
macro_rules! leased {
    ($store:expr, $conn:ident => $op:expr) => {{
        let mut lease = $store.pool.lease().await?;
        let first = {
            let $conn = lease.conn();
            $op.await
        };
        match first {
            Ok(value) => (lease, value),
            Err(e) if lease.reused && e.is_io() => {
                debug!("a pooled connection failed ({e}); retrying on a new one");
                drop(lease);
                let mut lease = $store.pool.lease_fresh().await?;
                let value = {
                    let $conn = lease.conn();
                    $op.await?
                };
                (lease, value)
            }
            Err(e) => return Err(e),
        }
    }};
}

/// A nix-daemon, shared by clones: a handle on a small connection pool.
#[derive(Clone)]
pub struct Store {
    pool: Arc<Pool>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("address", self.pool.address()).finish()
    }
}

impl Store {
    /// A handle on the daemon at `address`, after one handshake so that a wrong address or an
    /// unsupported daemon fails here, with a message that says so.
    pub async fn connect(address: StoreAddress) -> Result<Store, StoreError> {
        let pool = Pool::new(address);
        let mut lease = pool.lease().await?;
        let conn = lease.conn();
        info!(
            socket = %conn.socket().display(),
            nix = conn.daemon_version().unwrap_or("unknown"),
            protocol = format_args!("1.{}", conn.minor()),
            "connected to the nix-daemon"
        );
        lease.release();
        Ok(Store { pool })
    }

    /// The address this store was opened with.
    pub fn address(&self) -> &StoreAddress {
        self.pool.address()
    }

    /// The hash of every valid path in the store (`QueryAllValidPaths`), in the daemon's order.
    pub async fn query_all_valid_paths(&self) -> Result<Vec<StorePathHash>, StoreError> {
        let span = debug_span!("nix_daemon", op = "query_all_valid_paths");
        async {
            let (lease, paths) = leased!(self, conn => conn.query_all_valid_paths());
            lease.release();
            debug!(count = paths.len(), "listed valid paths");
            Ok(paths)
        }
        .instrument(span)
        .await
    }

    /// The valid path whose hash part is `hash`, if any (`QueryPathFromHashPart`).
    pub async fn query_path_from_hash_part(
        &self,
        hash: &StorePathHash,
    ) -> Result<Option<StorePath>, StoreError> {
        let span = debug_span!("nix_daemon", op = "query_path_from_hash_part", %hash);
        async {
            let (lease, path) = leased!(self, conn => conn.query_path_from_hash_part(hash));
            lease.release();
            Ok(path)
        }
        .instrument(span)
        .await
    }

    /// The metadata of `path`, `None` if it is not valid (`QueryPathInfo`).
    pub async fn query_path_info(&self, path: &StorePath) -> Result<Option<PathInfo>, StoreError> {
        let span = debug_span!("nix_daemon", op = "query_path_info", hash = %path.hash());
        async {
            let (lease, info) = leased!(self, conn => conn.query_path_info(path));
            lease.release();
            Ok(info)
        }
        .instrument(span)
        .await
    }

    /// The NAR serialisation of `path` (`NarFromPath`), in chunks of at most [`CHUNK_SIZE`],
    /// holding one connection until the last byte is read.
    ///
    /// `nar_size` must be the path's `nar_size` from [`Store::query_path_info`]: the daemon
    /// does not frame the NAR, so the stream reads exactly that many bytes, and fails (closing
    /// the connection) if the NAR does not end there. A stream dropped before its end closes
    /// its connection too; one read to the end returns it to the pool.
    pub async fn nar_from_path(
        &self,
        path: &StorePath,
        nar_size: u64,
    ) -> Result<impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static, StoreError> {
        if nar_size < nar::MIN_NAR_SIZE {
            return Err(StoreError::InvalidNarSize { path: path.clone(), nar_size });
        }
        let span = debug_span!("nix_daemon", op = "nar_from_path", hash = %path.hash(), nar_size);
        let (lease, ()) =
            async { Ok::<_, StoreError>(leased!(self, conn => conn.start_nar_from_path(path))) }
                .instrument(span.clone())
                .await?;
        Ok(nar::stream(lease, path.clone(), nar_size, span))
    }
}
