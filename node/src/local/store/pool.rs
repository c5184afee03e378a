//! A small pool of daemon connections.
//!
//! Each daemon connection is a forked process on the daemon's side, so both the connections
//! in use ([`MAX_ACTIVE`]) and the idle ones kept for reuse ([`MAX_IDLE`]) are bounded. A
//! connection goes back to the pool only through [`Lease::release`], which callers reach only
//! after an operation completed; a lease dropped any other way (an error, a cancelled future,
//! a NAR stream abandoned half-way) closes its connection, so no half-read answer can reach
//! the next operation.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::UnixStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::connection::Connection;
use super::{StoreAddress, StoreError};

/// The most connections in use at once; more operations wait for one to be released.
pub const MAX_ACTIVE: usize = 32;
/// The most idle connections kept for reuse: enough for the NARs and queries of Nix's usual
/// concurrency (16 NARs, 25 narinfos), since a connection closed and opened again costs the
/// daemon a fork and a handshake per operation.
pub const MAX_IDLE: usize = 24;
/// How long connecting and the handshake may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// The most connections being opened at once. The daemon accepts one connection at a time
/// and listens with a short backlog (5 in Nix 2.8); a full backlog makes `connect` on a Unix
/// socket fail at once with `EAGAIN` rather than wait, so we stay under it.
const MAX_OPENING: usize = 4;
/// The first and the longest pause before trying `connect` again after `EAGAIN` (other
/// clients of the daemon can fill its backlog too).
const BACKLOG_RETRY: (Duration, Duration) = (Duration::from_millis(5), Duration::from_millis(200));

pub struct Pool {
    address: StoreAddress,
    idle: Mutex<Vec<Connection<UnixStream>>>,
    active: Arc<Semaphore>,
    opening: Semaphore,
}

/// A connection in use. Dropping it closes the connection; [`Lease::release`] returns it.
pub struct Lease {
    conn: Option<Connection<UnixStream>>,
    pool: Arc<Pool>,
    /// Whether the connection came from the idle list (and so may have gone stale).
    pub reused: bool,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(address: StoreAddress) -> Arc<Pool> {
        Arc::new(Pool {
            address,
            idle: Mutex::new(Vec::new()),
            active: Arc::new(Semaphore::new(MAX_ACTIVE)),
            opening: Semaphore::new(MAX_OPENING),
        })
    }

    pub fn address(&self) -> &StoreAddress {
        &self.address
    }

    /// An idle connection if there is one, else a new one.
    pub async fn lease(self: &Arc<Self>) -> Result<Lease, StoreError> {
        let permit = self.permit().await;
        let idle = self.idle.lock().pop();
        let (conn, reused) = match idle {
            Some(conn) => (conn, true),
            None => (self.open().await?, false),
        };
        Ok(Lease { conn: Some(conn), pool: self.clone(), reused, _permit: permit })
    }

    /// A new connection, after dropping the idle ones: used when a pooled connection turned
    /// out stale, which usually means the daemon restarted and all of them are.
    pub async fn lease_fresh(self: &Arc<Self>) -> Result<Lease, StoreError> {
        self.idle.lock().clear();
        let permit = self.permit().await;
        let conn = self.open().await?;
        Ok(Lease { conn: Some(conn), pool: self.clone(), reused: false, _permit: permit })
    }

    async fn permit(&self) -> OwnedSemaphorePermit {
        self.active.clone().acquire_owned().await.expect("the pool semaphore is never closed")
    }

    async fn open(&self) -> Result<Connection<UnixStream>, StoreError> {
        let socket: Arc<Path> = self.address.socket_path().into();
        let connect_err = |cause| StoreError::Connect { socket: socket.to_path_buf(), cause };
        let connecting = async {
            let _opening = self.opening.acquire().await.expect("never closed");
            let mut pause = BACKLOG_RETRY.0;
            let stream = loop {
                match UnixStream::connect(&socket).await {
                    Ok(stream) => break stream,
                    // Bounded by CONNECT_TIMEOUT around this whole block.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(BACKLOG_RETRY.1);
                    }
                    Err(e) => return Err(connect_err(e)),
                }
            };
            Connection::handshake(stream, socket.clone()).await
        };
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(result) => result,
            Err(_) => Err(connect_err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no handshake within {} s", CONNECT_TIMEOUT.as_secs()),
            ))),
        }
    }
}

impl Lease {
    pub fn conn(&mut self) -> &mut Connection<UnixStream> {
        self.conn.as_mut().expect("a lease holds its connection until released or dropped")
    }

    /// Returns the connection to the pool. Call only between operations.
    pub fn release(mut self) {
        let Some(conn) = self.conn.take() else { return };
        let mut idle = self.pool.idle.lock();
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}
