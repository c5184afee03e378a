//! Writing a NAR answer and its bytes on a fetch session: a small NAR whole, with its answer,
//! in one write; a larger one (or a relayed one) chunk by chunk as it is made, flushed at
//! the end. Either way exactly the bytes the answer announced, or the session ends.

use futures::StreamExt;
use nixmesh_protocol::mesh_messages::FetchResponse;
use tokio::io::{AsyncRead, AsyncWrite};

use super::relay::RelayedBytes;
use super::{NarBytes, SMALL_NAR};
use crate::mesh::framed::{FrameError, FramedStream};

/// Writes the `Nar` answer and the NAR's bytes from `offset` on (the NAR always comes from
/// its start), exactly `nar_size - offset` of them: the asker reads that many and then its
/// next answer, so a NAR of another size (files changed on disk) ends the session rather
/// than garble it. A NAR of at most [`SMALL_NAR`] bytes is gathered first and goes out with
/// its answer in one write and one flush (one yamux frame, one cipher frame, one `sendmsg`,
/// where answer and body apart cost two of each); a NAR found to have another size then
/// ends the session before its answer is written.
pub(super) async fn nar<S>(
    stream: &mut FramedStream<S>,
    mut nar: NarBytes,
    nar_size: u64,
    offset: u64,
) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let answer = FetchResponse::Nar { nar_size, offset };
    let other_size = |made| {
        let message = format!("the NAR is {made}+ bytes, not the {nar_size} its path info says");
        FrameError::Io(std::io::Error::other(message))
    };
    let broken =
        |e: crate::local::store::StoreError| FrameError::Io(std::io::Error::other(e.to_string()));
    if nar_size <= SMALL_NAR {
        // Bounded by SMALL_NAR: a longer NAR is refused as soon as a chunk passes it.
        let mut whole = Vec::with_capacity(nar_size as usize);
        while let Some(chunk) = nar.next().await {
            whole.extend_from_slice(&chunk.map_err(broken)?);
            if whole.len() as u64 > nar_size {
                return Err(other_size(whole.len() as u64));
            }
        }
        if whole.len() as u64 != nar_size {
            return Err(other_size(whole.len() as u64));
        }
        return stream.write_with(&answer, &whole[offset as usize..]).await;
    }
    stream.write(&answer).await?;
    let mut to_skip = offset;
    let mut made = 0u64;
    while let Some(chunk) = nar.next().await {
        let mut chunk = chunk.map_err(broken)?;
        made += chunk.len() as u64;
        if made > nar_size {
            return Err(other_size(made));
        }
        if to_skip > 0 {
            let skip = to_skip.min(chunk.len() as u64);
            to_skip -= skip;
            let _ = chunk.split_to(skip as usize);
            if chunk.is_empty() {
                continue;
            }
        }
        stream.write_bytes(&chunk).await?;
    }
    if made != nar_size {
        return Err(other_size(made));
    }
    stream.flush().await
}

/// Writes the `Nar` answer and the `nar_size - offset` bytes of a relayed NAR, exactly: more
/// or fewer ends the session.
pub(super) async fn relayed<S>(
    stream: &mut FramedStream<S>,
    mut nar: RelayedBytes,
    nar_size: u64,
    offset: u64,
) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write(&FetchResponse::Nar { nar_size, offset }).await?;
    let len = nar_size - offset;
    let mut sent = 0u64;
    while let Some(chunk) = nar.next().await {
        let chunk = chunk.map_err(FrameError::Io)?;
        sent += chunk.len() as u64;
        if sent > len {
            return Err(FrameError::Io(std::io::Error::other("the relayed NAR is too long")));
        }
        stream.write_bytes(&chunk).await?;
    }
    if sent != len {
        let message = format!("the relayed NAR ended after {sent} of {len} bytes");
        return Err(FrameError::Io(std::io::Error::other(message)));
    }
    stream.flush().await
}
