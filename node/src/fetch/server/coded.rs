//! Sending a NAR as zstd blocks (fetch/3's `NarBlocks`), for an asker whose link to this node
//! is slower than compressing (see [`crate::fetch::link`]).
//!
//! Blocks of [`NAR_BLOCK_MAX`] NAR bytes are compressed on blocking threads, two ahead of the
//! one being written, so compressing overlaps sending. A block zstd does not shrink by a
//! tenth goes raw ([`encode_block`]). Whether compressing still pays is measured as the
//! transfer goes: once [`MEASURED_BLOCKS`] blocks past the first [`UNMEASURED_BLOCKS`] (which
//! the stream's window takes without waiting) have been sent, if the writer waited longer for
//! the compressor than for the link, the link is the faster of the two and the rest goes raw:
//! compressing never slows a fast link by more than those first blocks.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use nixmesh_protocol::mesh_messages::NAR_BLOCK_MAX;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::task::JoinHandle;
use tracing::debug;

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
/// The first blocks, which fill the stream's send window without waiting on the link.
const UNMEASURED_BLOCKS: u32 = 4;
/// Blocks measured before deciding whether compressing keeps up with the link.
const MEASURED_BLOCKS: u32 = 8;

/// A block being made: compressed on a blocking thread, or raw at once.
enum Making {
    Compressing(JoinHandle<Vec<u8>>),
    Raw(Vec<u8>),
}

/// Writes the NAR's bytes from `offset` on as blocks and then the end: exactly
/// `nar_size - offset` NAR bytes, or an error that ends the session (as `send_nar`).
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
    let mut rule = CodingRule::default();
    let mut exhausted = false;
    loop {
        while making.len() <= AHEAD && !exhausted {
            match blocks.next().await? {
                Some(block) if rule.compressing => {
                    let encode = move || encode_block(&block, Some(LEVEL));
                    making.push_back(Making::Compressing(tokio::task::spawn_blocking(encode)));
                }
                Some(block) => making.push_back(Making::Raw(encode_block(&block, None))),
                None => exhausted = true,
            }
        }
        let Some(next) = making.pop_front() else { break };
        let waiting = Instant::now();
        let wire = match next {
            Making::Compressing(work) => work.await.map_err(std::io::Error::other)?,
            Making::Raw(wire) => wire,
        };
        let for_compressor = waiting.elapsed();
        let writing = Instant::now();
        stream.write_bytes(&wire).await?;
        rule.sent(for_compressor, writing.elapsed());
    }
    stream.write_bytes(&END).await?;
    stream.flush().await
}

/// Whether compressing keeps ahead of the link, as measured so far; see the module docs.
struct CodingRule {
    compressing: bool,
    blocks: u32,
    for_compressor: Duration,
    for_link: Duration,
}

impl Default for CodingRule {
    fn default() -> Self {
        CodingRule {
            compressing: true,
            blocks: 0,
            for_compressor: Duration::ZERO,
            for_link: Duration::ZERO,
        }
    }
}

impl CodingRule {
    /// A block was written after waiting `for_compressor` for it and `for_link` to write it.
    fn sent(&mut self, for_compressor: Duration, for_link: Duration) {
        self.blocks += 1;
        if !self.compressing || self.blocks <= UNMEASURED_BLOCKS {
            return;
        }
        self.for_compressor += for_compressor;
        self.for_link += for_link;
        if self.blocks == UNMEASURED_BLOCKS + MEASURED_BLOCKS && self.for_compressor > self.for_link
        {
            debug!(compressor = ?self.for_compressor, link = ?self.for_link,
                "the link keeps up with zstd: the rest of the NAR goes raw");
            self.compressing = false;
        }
    }
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
