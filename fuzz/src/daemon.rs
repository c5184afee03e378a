//! The node's nix-daemon client reading the daemon's replies: the handshake, the stderr
//! messages before each answer (log lines, activities, errors) and the answers of the four
//! operations the node sends.
//!
//! This is the node's own code, not a copy: the files of `node/src/local/store/` that make up the
//! client are compiled here as they are (the `#[path]` modules below). Depending on the node
//! crate instead would instrument libp2p, redb and axum in every fuzz build, many minutes on
//! CI's two cores, for code that never touches a daemon's bytes. These files may therefore use
//! only each other, `nixmesh_protocol`, tokio's I/O traits, `tracing` and `thiserror`: the
//! fuzz build fails, in CI, if one starts to need more.
//!
//! The daemon's side of the conversation is the input (after two bytes that choose the
//! operations and how many bytes each read gets); whatever the client writes is dropped. The
//! client must never panic, never wait (everything the daemon will ever send is there), and
//! every error must name the daemon's socket; error text from the daemon reaches the log with
//! its terminal escapes removed.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use nixmesh_protocol::nix_daemon::worker_protocol::{MAX_MINOR, MIN_MINOR};
use nixmesh_protocol::{StorePath, StorePathHash};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

// Formatted with the node crate (and rustfmt would look for its unit tests, not built here).
#[rustfmt::skip]
#[allow(dead_code)]
#[path = "../../node/src/local/store/connection.rs"]
mod connection;
#[path = "../../node/src/local/store/daemon_reader.rs"]
mod daemon_reader;
#[allow(dead_code)]
#[path = "../../node/src/local/store/error.rs"]
mod error;
#[path = "../../node/src/local/store/path_info.rs"]
mod path_info;

use connection::Connection;
use error::StoreError;
use path_info::PathInfo;

const SOCKET: &str = "/fuzz/daemon.socket";
/// The path the operations ask about (a daemon's answer may name others, which is an error
/// for `QueryPathFromHashPart`): the one `fuzz/record-daemon` adds to the real daemon whose
/// replies seed the corpus.
const PATH: &str = "/nix/store/9khp9q6fld0ypa1lvl9n9lasrjn4mrf0-tree";

/// One operation of the client, chosen by two bits of the plan.
#[derive(Debug, Clone, Copy)]
enum Op {
    QueryPathInfo,
    QueryAllValidPaths,
    QueryPathFromHashPart,
    NarFromPath,
}

pub fn check(data: &[u8]) {
    let [plan, read_size, replies @ ..] = data else { return };
    let ops = (0..4).map(|i| match (plan >> (2 * i)) & 3 {
        0 => Op::QueryPathInfo,
        1 => Op::QueryAllValidPaths,
        2 => Op::QueryPathFromHashPart,
        _ => Op::NarFromPath,
    });
    // Reads of 1 to 255 bytes, or as many as asked (0): a socket may return any amount.
    let daemon = Daemon { replies, read_size: usize::from(*read_size) };
    complete(converse(daemon, ops.collect()));
}

async fn converse(daemon: Daemon<'_>, ops: Vec<Op>) {
    let socket: Arc<Path> = Arc::from(Path::new(SOCKET));
    let mut conn = match Connection::handshake(daemon, socket).await {
        Ok(conn) => conn,
        Err(error) => return check_error(&error),
    };
    assert!((MIN_MINOR..=MAX_MINOR).contains(&conn.minor()), "minor {}", conn.minor());
    let path = StorePath::parse(PATH).expect("a valid store path");
    for op in ops {
        // An operation that fails leaves the connection unusable: the node drops it.
        if let Err(error) = operation(&mut conn, op, &path).await {
            return check_error(&error);
        }
    }
}

async fn operation(
    conn: &mut Connection<Daemon<'_>>,
    op: Op,
    path: &StorePath,
) -> Result<(), StoreError> {
    match op {
        Op::QueryPathInfo => {
            if let Some(PathInfo { path: answered, .. }) = conn.query_path_info(path).await? {
                assert_eq!(&answered, path, "path info for another path");
            }
        }
        Op::QueryAllValidPaths => drop(conn.query_all_valid_paths().await?),
        Op::QueryPathFromHashPart => {
            let hash: StorePathHash = path.hash();
            if let Some(found) = conn.query_path_from_hash_part(&hash).await? {
                assert_eq!(found.hash(), hash, "a path with another hash");
            }
        }
        Op::NarFromPath => {
            conn.start_nar_from_path(path).await?;
            // The NAR's bytes follow raw; the node reads them as the NAR reader checks them
            // (the `nar` target). Read some, as the node does.
            let mut chunk = [0u8; 64];
            conn.read_raw(&mut chunk).await?;
        }
    }
    Ok(())
}

fn check_error(error: &StoreError) {
    let text = error.to_string();
    assert!(text.contains(SOCKET), "an error that does not name the socket: {text}");
    if let StoreError::Daemon { message, .. } = error {
        assert!(!message.contains('\x1b'), "a terminal escape left in {message:?}");
    }
}

/// Runs the client to the end in one poll: it reads from memory, so waiting would be a hang.
fn complete<F: Future<Output = ()>>(future: F) {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(()) => {}
        Poll::Pending => panic!("the client waits for a daemon that has sent everything"),
    }
}

/// The daemon's end of the socket: replies from the input, in reads of at most `read_size`
/// bytes (any size when 0), then end of file; writes are taken and dropped.
struct Daemon<'a> {
    replies: &'a [u8],
    read_size: usize,
}

impl AsyncRead for Daemon<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let limit = if self.read_size == 0 { usize::MAX } else { self.read_size };
        let n = buf.remaining().min(self.replies.len()).min(limit);
        buf.put_slice(&self.replies[..n]);
        self.replies = &self.replies[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Daemon<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
