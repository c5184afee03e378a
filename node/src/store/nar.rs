//! Streaming a NAR out of a `NarFromPath` answer.
//!
//! Nix 2.8 writes the NAR raw after `STDERR_LAST`, with no length, so we read exactly the size
//! the caller got from the path info. Two cheap checks keep a wrong size from leaving NAR
//! bytes on a pooled connection: the first bytes must be the NAR header (checked before the
//! stream is returned) and the last 16 must be the `)` that closes every NAR. Only then does
//! the connection go back to the pool; on any failure, or if the stream is dropped early, it
//! is closed.

use std::io;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use nixmesh_protocol::StorePath;
use tracing::{Instrument, Span};

use super::StoreError;
use super::connection::{NAR_HEADER, NAR_TRAILER};
use super::pool::Lease;

/// The size of the chunks the stream yields (the last one may be shorter).
pub const CHUNK_SIZE: usize = 64 << 10;
/// The smallest size a NAR can claim: its header and its closing parenthesis.
pub const MIN_NAR_SIZE: u64 = (NAR_HEADER.len() + NAR_TRAILER.len()) as u64;
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
    /// The last 16 bytes seen so far.
    tail: [u8; 16],
}

/// The rest of the NAR on `lease`, whose header was read and checked, as chunks.
pub fn stream(
    lease: Lease,
    path: StorePath,
    nar_size: u64,
    span: Span,
) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
    debug_assert!(nar_size >= MIN_NAR_SIZE);
    let mut tail = [0u8; 16];
    push_tail(&mut tail, &NAR_HEADER);
    let state = Reading {
        lease,
        path,
        nar_size,
        remaining: nar_size - NAR_HEADER.len() as u64,
        header_pending: true,
        tail,
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
    push_tail(&mut state.tail, &chunk[start..]);
    state.remaining -= want as u64;
    if state.remaining == 0 && state.tail != NAR_TRAILER {
        return Err(StoreError::Protocol {
            socket: state.lease.conn().socket().to_path_buf(),
            problem: format!(
                "the NAR of {} does not end after {} bytes: its NarSize is wrong",
                state.path, state.nar_size
            ),
        });
    }
    Ok(chunk.freeze())
}

/// Keeps the last 16 bytes of everything pushed.
fn push_tail(tail: &mut [u8; 16], bytes: &[u8]) {
    const LEN: usize = 16;
    if bytes.len() >= LEN {
        tail.copy_from_slice(&bytes[bytes.len() - LEN..]);
    } else {
        tail.copy_within(bytes.len().., 0);
        tail[LEN - bytes.len()..].copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_sixteen_bytes_across_pushes() {
        let data: Vec<u8> = (0..100).collect();
        for split in [0, 1, 5, 15, 16, 17, 50, 99, 100] {
            let mut tail = [0u8; 16];
            for piece in data[..split].chunks(7).chain(data[split..].chunks(3)) {
                push_tail(&mut tail, piece);
            }
            assert_eq!(tail, data[84..], "split at {split}");
        }
    }
}
