//! Streaming a NAR out of a `NarFromPath` answer.
//!
//! Nix 2.8 writes the NAR raw after `STDERR_LAST`, with no length, so we read exactly the size
//! the caller got from the path info, and check the bytes with the NAR reader
//! ([`NarValidator`]) as they pass: the NAR must be valid and end exactly there, which is how
//! Nix itself finds a NAR's end. So a wrong size never leaves NAR bytes on a pooled connection,
//! and a daemon's garbage never reaches a peer. Only then does the connection go back to the
//! pool; on any failure, or if the stream is dropped early, it is closed.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use nixmesh_protocol::StorePath;
use nixmesh_protocol::nar::NarValidator;
use nixmesh_protocol::nar::format::NAR_HEADER;
use tracing::{Instrument, Span};

use super::StoreError;
use super::pool::Lease;

/// The size of the chunks the stream yields (the last one may be shorter).
pub const CHUNK_SIZE: usize = 64 << 10;
/// Less than any NAR's size: its header and the `)` that closes it (16 bytes).
pub const MIN_NAR_SIZE: u64 = NAR_HEADER.len() as u64 + 16;
/// How long the daemon may send nothing in the middle of a NAR before we give up on it.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);

struct Reading {
    lease: Lease,
    path: StorePath,
    nar_size: u64,
    /// Bytes still to read from the socket.
    remaining: u64,
    /// The header, already read by `start_nar_from_path`, to put in front of the first chunk.
    header_pending: bool,
    /// Checks the bytes read so far.
    validator: NarValidator,
}

/// The rest of the NAR on `lease`, whose header was read and checked, as chunks.
pub fn stream(
    lease: Lease,
    path: StorePath,
    nar_size: u64,
    span: Span,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
    debug_assert!(nar_size >= MIN_NAR_SIZE);
    let mut validator = NarValidator::new();
    validator.push(&NAR_HEADER).expect("the header starts a NAR");
    let state = Reading {
        lease,
        path,
        nar_size,
        remaining: nar_size - NAR_HEADER.len() as u64,
        header_pending: true,
        validator,
    };
    futures::stream::unfold(Some(state), move |state| {
        async move {
            let mut state = state?;
            match next_chunk(&mut state).await {
                Ok(chunk) if state.remaining > 0 => Some((Ok(chunk), Some(state))),
                Ok(chunk) => {
                    state.lease.release();
                    Some((Ok(chunk), None))
                }
                // Dropping the state closes the connection.
                Err(e) => Some((Err(e), None)),
            }
        }
        .instrument(span.clone())
    })
}

async fn next_chunk(state: &mut Reading) -> Result<Bytes, StoreError> {
    let mut chunk = BytesMut::with_capacity(CHUNK_SIZE);
    if state.header_pending {
        chunk.extend_from_slice(&NAR_HEADER);
        state.header_pending = false;
    }
    let start = chunk.len();
    let want = (CHUNK_SIZE - start).min(usize::try_from(state.remaining).unwrap_or(usize::MAX));
    chunk.resize(start + want, 0);
    let read = state.lease.conn().read_raw(&mut chunk[start..]);
    match tokio::time::timeout(STALL_TIMEOUT, read).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(StoreError::Io {
                socket: state.lease.conn().socket().to_path_buf(),
                cause: io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "the NAR of {} stalled: no data for {} s",
                        state.path,
                        STALL_TIMEOUT.as_secs()
                    ),
                ),
            });
        }
    }
    state.remaining -= want as u64;
    let checked = match state.validator.push(&chunk[start..]) {
        Ok(()) if state.remaining == 0 => state.validator.finish().map(drop),
        other => other,
    };
    if let Err(e) = checked {
        return Err(StoreError::Protocol {
            socket: state.lease.conn().socket().to_path_buf(),
            problem: format!(
                "the NAR of {} does not end after {} bytes as one valid NAR: its NarSize is wrong, \
                 or the daemon sent garbage ({e})",
                state.path, state.nar_size
            ),
        });
    }
    Ok(chunk.freeze())
}
