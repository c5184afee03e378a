//! A NAR's bytes as they come from the holder, raw or as zstd blocks, handed on as a stream
//! of chunks; the session goes back for reuse as soon as the answer is read whole, and the
//! transfer is measured for [`super::LinkStats`].

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use nixmesh_protocol::mesh_messages::NAR_BLOCK_WIRE_MAX;

use super::super::NAR_CHUNK;
use super::super::link::TransferClock;
use super::super::zstd_blocks::BlockDecoder;
use super::{FetchError, FetchFailure, NarBody, Session, Violation, disconnected, unless_gone};
use crate::mesh::framed::FrameError;

/// A transfer under way: its session (until read whole) and its measure.
struct Transfer {
    session: Option<Session>,
    clock: TransferClock,
}

impl Transfer {
    fn new(session: Session) -> Self {
        Transfer { session: Some(session), clock: TransferClock::default() }
    }

    /// Up to `max` bytes, timed; `None` if the peer is gone meanwhile.
    async fn read(&mut self, max: usize) -> Option<Result<Bytes, FrameError>> {
        let session = self.session.as_mut().expect("read only while the session is held");
        let gone = session.gone.clone();
        let began = Instant::now();
        let read = unless_gone(gone.as_ref(), session.stream.read_bytes(max)).await?;
        if let Ok(bytes) = &read {
            self.clock.read(began, bytes.len() as u64);
        }
        Some(read)
    }

    /// Exactly `len` bytes, or why not.
    async fn read_exact(&mut self, len: usize) -> Result<Bytes, FetchFailure> {
        let mut whole = BytesMut::with_capacity(len);
        while whole.len() < len {
            let Some(read) = self.read(len - whole.len()).await else {
                return Err(FetchFailure::Disconnected);
            };
            let chunk = read?;
            if chunk.is_empty() {
                let (got, expected) = (whole.len() as u64, len as u64);
                return Err(Violation::EndedEarly { got, expected }.into());
            }
            whole.extend_from_slice(&chunk);
        }
        Ok(whole.freeze())
    }

    /// The answer was read whole: the session goes back for reuse.
    fn finish(&mut self) {
        if let Some(session) = self.session.take() {
            let links = session.sessions.links.clone();
            let peer = session.peer;
            session.finished();
            links.ended(peer, &self.clock);
        }
    }

    /// The transfer failed: the session is dropped (its stream closed), the bytes counted.
    fn fail(&mut self) {
        if let Some(session) = self.session.take() {
            session.sessions.links.ended(session.peer, &self.clock);
        }
    }
}

/// The `len` NAR bytes that follow a `Nar` answer.
pub(super) fn raw(session: Session, len: u64) -> NarBody {
    let peer = session.peer;
    let state = (Transfer::new(session), len);
    let chunks = futures::stream::unfold(state, move |(mut transfer, left)| async move {
        transfer.session.as_ref()?;
        let failed = |failure: FetchFailure| FetchError { peer, operation: "NAR", failure };
        if left == 0 {
            transfer.finish();
            return None;
        }
        let want = left.min(NAR_CHUNK as u64) as usize;
        let Some(read) = transfer.read(want).await else {
            transfer.fail();
            return Some((Err(disconnected(peer, "NAR")), (transfer, left)));
        };
        match read {
            Ok(chunk) if chunk.is_empty() => {
                transfer.fail();
                let early = Violation::EndedEarly { got: len - left, expected: len };
                Some((Err(failed(early.into())), (transfer, left)))
            }
            Ok(chunk) => {
                let left = left - chunk.len() as u64;
                transfer.clock.decoded(chunk.len() as u64, false);
                if left == 0 {
                    transfer.finish();
                }
                Some((Ok(chunk), (transfer, left)))
            }
            Err(e) => {
                transfer.fail();
                Some((Err(failed(e.into())), (transfer, left)))
            }
        }
    });
    Box::pin(chunks)
}

/// The `len` NAR bytes that follow a `NarBlocks` answer, each block checked whole before any
/// of its bytes are handed on (see [`super::super::zstd_blocks`]).
pub(super) fn blocks(session: Session, len: u64) -> NarBody {
    let peer = session.peer;
    let state = (Transfer::new(session), BlockDecoder::new(len));
    let chunks = futures::stream::unfold(state, move |(mut transfer, mut decoder)| async move {
        transfer.session.as_ref()?;
        match next_block(&mut transfer, &mut decoder).await {
            Ok(Some(nar)) => Some((Ok(nar), (transfer, decoder))),
            Ok(None) => None,
            Err(failure) => {
                transfer.fail();
                let error = FetchError { peer, operation: "NAR", failure };
                Some((Err(error), (transfer, decoder)))
            }
        }
    });
    Box::pin(chunks)
}

/// The next block's NAR bytes, or `None` after the end; the end is read right after the
/// block that completes the NAR, so the session goes back before its last bytes are handed on.
async fn next_block(
    transfer: &mut Transfer,
    decoder: &mut BlockDecoder,
) -> Result<Option<Bytes>, FetchFailure> {
    let block = |e| FetchFailure::from(Violation::Block(e));
    let header = transfer.read_exact(4).await?;
    let Some(wire_len) = decoder.header(header[..].try_into().expect("4 bytes")).map_err(block)?
    else {
        transfer.finish();
        return Ok(None);
    };
    debug_assert!(wire_len <= NAR_BLOCK_WIRE_MAX);
    let wire = transfer.read_exact(wire_len).await?;
    let zstd = super::super::zstd_blocks::is_zstd_body(&wire);
    let nar = decoder.decode(wire).map_err(block)?;
    transfer.clock.decoded(nar.len() as u64, zstd);
    if decoder.left() == 0 {
        let end = transfer.read_exact(4).await?;
        // With nothing left, only the end passes: a block past it is an error.
        decoder.header(end[..].try_into().expect("4 bytes")).map_err(block)?;
        transfer.finish();
    }
    Ok(Some(nar))
}
