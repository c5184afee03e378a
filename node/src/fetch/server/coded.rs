//! Sending a NAR as zstd blocks (fetch/3's `NarBlocks`), for an asker whose link to this node
//! is slower than compressing (see [`crate::fetch::link`]).
//!
//! Blocks of [`NAR_BLOCK_MAX`] NAR bytes are compressed on blocking threads, two ahead of the
//! one being written, so compressing overlaps sending. A block zstd does not shrink by a
//! tenth goes raw ([`encode_block`]). Whether to compress at all is the asker's measure of
//! the link and the holder's of its CPU (`crate::fetch::link`): the holder's own writes say
//! nothing of the link until megabytes of buffers are full.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use nixmesh_protocol::mesh_messages::NAR_BLOCK_MAX;
use tokio::io::{AsyncRead, AsyncWrite};

use super::NarBytes;
use crate::fetch::zstd_blocks::{END, encode_block};
use crate::mesh::framed::{FrameError, FramedStream};

/// NARs (the part asked for) shorter than this are sent raw: one block's compressing would
/// add more latency than its bytes take on any link.
pub(super) const WORTH_CODING: u64 = 64 * 1024;
/// zstd's level, Nix's default for its own zstd NARs.
const LEVEL: i32 = 3;
/// Blocks compressed ahead of the one being written.
const AHEAD: usize = 2;

/// Writes the NAR's bytes from `offset` on as blocks and then the end: exactly
/// `nar_size - offset` NAR bytes, or an error that ends the session (as `send::nar`).
pub(super) async fn send_blocks<S>(
    stream: &mut FramedStream<S>,
    nar: NarBytes,
    nar_size: u64,
    offset: u64,
) -> Result<(), FrameError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut blocks =
        RawBlocks { nar: nar.fuse(), to_skip: offset, made: 0, nar_size, pending: Bytes::new() };
    let mut making = VecDeque::with_capacity(AHEAD + 1);
    let mut exhausted = false;
    loop {
        while making.len() <= AHEAD && !exhausted {
            match blocks.next().await? {
                Some(block) => {
                    let encode = move || encode_block(&block, Some(LEVEL));
                    making.push_back(tokio::task::spawn_blocking(encode));
                }
                None => exhausted = true,
            }
        }
        let Some(next) = making.pop_front() else { break };
        let wire = next.await.map_err(std::io::Error::other)?;
        stream.write_bytes(&wire).await?;
    }
    stream.write_bytes(&END).await?;
    stream.flush().await
}

/// The NAR from its start, cut into blocks of [`NAR_BLOCK_MAX`] from `to_skip` on, its size
/// checked as it goes.
struct RawBlocks {
    /// Fused: asked again after its end when the last block was full.
    nar: futures::stream::Fuse<NarBytes>,
    to_skip: u64,
    made: u64,
    nar_size: u64,
    /// Bytes read and not yet in a block.
    pending: Bytes,
}

impl RawBlocks {
    /// The next block, `None` at the NAR's end.
    async fn next(&mut self) -> Result<Option<Bytes>, FrameError> {
        let nar_size = self.nar_size;
        let other_size = |made| {
            let message =
                format!("the NAR is {made}+ bytes, not the {nar_size} its path info says");
            FrameError::Io(std::io::Error::other(message))
        };
        let mut block = BytesMut::new();
        // Each turn fills the block or takes the next chunk: bounded by the NAR's chunks.
        while block.len() < NAR_BLOCK_MAX {
            if self.pending.is_empty() {
                let Some(chunk) = self.nar.next().await else {
                    if self.made != nar_size {
                        return Err(other_size(self.made));
                    }
                    break;
                };
                let mut chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()))?;
                self.made += chunk.len() as u64;
                if self.made > nar_size {
                    return Err(other_size(self.made));
                }
                let skip = self.to_skip.min(chunk.len() as u64);
                self.to_skip -= skip;
                let _ = chunk.split_to(skip as usize);
                self.pending = chunk;
                continue;
            }
            let take = (NAR_BLOCK_MAX - block.len()).min(self.pending.len());
            block.extend_from_slice(&self.pending.split_to(take));
        }
        Ok((!block.is_empty()).then(|| block.freeze()))
    }
}
