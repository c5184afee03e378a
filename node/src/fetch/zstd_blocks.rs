//! NAR bytes as blocks, the body of a fetch/3 `NarBlocks` answer: each block is a 4-byte
//! big-endian length, a kind byte and the block's bytes, raw or one zstd frame; a length of 0
//! ends them (see [`nixmesh_protocol::mesh_messages::FetchResponse::NarBlocks`]).
//!
//! Sans-IO, as the frame format is: [`encode_block`] makes one block's wire bytes, and
//! [`BlockDecoder`] checks each block before it allocates for it and yields its NAR bytes only
//! once the whole block checked. The decoder's guarantees, which make a hostile or broken
//! holder an error and never a wrong or an unbounded byte:
//! - a block's wire length is at most [`NAR_BLOCK_WIRE_MAX`], checked on its header;
//! - a zstd block is exactly one frame that states its content size, at most
//!   [`NAR_BLOCK_MAX`] and at most the bytes still due, checked before the buffer for it is
//!   allocated; its content checksum (the encoder always writes one) is checked by zstd
//!   before any of its bytes are handed out, so a flipped byte is an error, not output;
//! - the blocks decode to exactly the bytes the answer announced: a block beyond them, or an
//!   end before them, is an error.
//!
//! The NarHash is not checked here: the substituter's verifier checks the decoded bytes as it
//! does raw ones.

use bytes::Bytes;
use nixmesh_protocol::mesh_messages::{BLOCK_RAW, BLOCK_ZSTD, NAR_BLOCK_MAX, NAR_BLOCK_WIRE_MAX};
use thiserror::Error;

/// A block is sent raw unless zstd makes it smaller by at least a tenth: decoding a frame
/// that saves less costs the asker more than the bytes saved.
const WORTH_IT: usize = 10;

/// What a block the holder sent breaks.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("a block of {len} bytes on the wire, over the limit of {limit}")]
    TooLong { len: usize, limit: usize },
    #[error("a block after the last of the {total} NAR bytes announced")]
    PastTheEnd { total: u64 },
    #[error("the blocks ended with {left} NAR bytes still due")]
    EndedEarly { left: u64 },
    #[error("a block of unknown kind {0}")]
    UnknownKind(u8),
    #[error("an empty block")]
    Empty,
    #[error("a block of {len} NAR bytes, more than {limit} (block limit or bytes still due)")]
    TooMuch { len: u64, limit: u64 },
    #[error("a zstd block that is not exactly one frame")]
    NotOneFrame,
    #[error("a zstd block whose frame does not state its content size")]
    NoContentSize,
    #[error("a zstd block that does not decode ({0})")]
    Corrupt(String),
    #[error("a zstd block that decoded to {got} bytes, not the {declared} it stated")]
    OtherSize { got: usize, declared: u64 },
}

/// The wire bytes of one block carrying `nar` (at most [`NAR_BLOCK_MAX`] bytes): zstd at
/// `level` with a content checksum when that saves a tenth, else raw. Blocking work (about
/// a millisecond per block at level 3): callers on the runtime use `spawn_blocking`.
pub fn encode_block(nar: &[u8], level: Option<i32>) -> Vec<u8> {
    assert!(!nar.is_empty() && nar.len() <= NAR_BLOCK_MAX, "a block holds 1..=NAR_BLOCK_MAX");
    if let Some(level) = level
        && let Some(frame) = compress(nar, level)
        && frame.len() <= nar.len() - nar.len() / WORTH_IT
    {
        return framed(BLOCK_ZSTD, &frame);
    }
    framed(BLOCK_RAW, nar)
}

/// Whether a block's wire bytes (as [`encode_block`] made them) are zstd's.
pub fn is_zstd(block: &[u8]) -> bool {
    block.get(4) == Some(&BLOCK_ZSTD)
}

/// Whether a block's body (its kind byte and bytes, after its length) is a zstd frame.
pub fn is_zstd_body(body: &[u8]) -> bool {
    body.first() == Some(&BLOCK_ZSTD)
}

/// The block that ends a `NarBlocks` answer.
pub const END: [u8; 4] = [0; 4];

fn framed(kind: u8, bytes: &[u8]) -> Vec<u8> {
    let mut block = Vec::with_capacity(5 + bytes.len());
    block.extend_from_slice(&((1 + bytes.len()) as u32).to_be_bytes());
    block.push(kind);
    block.extend_from_slice(bytes);
    block
}

fn compress(nar: &[u8], level: i32) -> Option<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    thread_local! {
        static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
            const { std::cell::RefCell::new(None) };
    }
    COMPRESSOR.with_borrow_mut(|slot| {
        if slot.as_ref().is_none_or(|(made_at, _)| *made_at != level) {
            let mut compressor = zstd::bulk::Compressor::new(level).ok()?;
            compressor.set_parameter(CParameter::ChecksumFlag(true)).ok()?;
            compressor.set_parameter(CParameter::ContentSizeFlag(true)).ok()?;
            *slot = Some((level, compressor));
        }
        let (_, compressor) = slot.as_mut()?;
        compressor.compress(nar).ok()
    })
}

/// Checks and decodes the blocks of one `NarBlocks` answer; see the module docs.
pub struct BlockDecoder {
    total: u64,
    left: u64,
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
}

impl BlockDecoder {
    /// A decoder for an answer announcing `len` NAR bytes.
    pub fn new(len: u64) -> Self {
        BlockDecoder { total: len, left: len, decompressor: None }
    }

    /// NAR bytes still due.
    pub fn left(&self) -> u64 {
        self.left
    }

    /// The wire length of the block whose `header` this is (its kind byte and bytes), or
    /// `None` for the end of the blocks.
    pub fn header(&self, header: [u8; 4]) -> Result<Option<usize>, BlockError> {
        let len = u32::from_be_bytes(header) as usize;
        match (len, self.left) {
            (0, 0) => Ok(None),
            (0, left) => Err(BlockError::EndedEarly { left }),
            (_, 0) => Err(BlockError::PastTheEnd { total: self.total }),
            (len, _) if len > NAR_BLOCK_WIRE_MAX => {
                Err(BlockError::TooLong { len, limit: NAR_BLOCK_WIRE_MAX })
            }
            (len, _) => Ok(Some(len)),
        }
    }

    /// The NAR bytes of one block (its kind byte and bytes, as long as its header said),
    /// whole and checked.
    pub fn decode(&mut self, mut block: Bytes) -> Result<Bytes, BlockError> {
        if block.is_empty() {
            return Err(BlockError::Empty);
        }
        let kind = block.split_to(1)[0];
        let limit = self.left.min(NAR_BLOCK_MAX as u64);
        let nar = match kind {
            BLOCK_RAW => {
                let len = block.len() as u64;
                if len > limit {
                    return Err(BlockError::TooMuch { len, limit });
                }
                block
            }
            BLOCK_ZSTD => self.decompress(&block, limit)?,
            other => return Err(BlockError::UnknownKind(other)),
        };
        if nar.is_empty() {
            return Err(BlockError::Empty);
        }
        self.left -= nar.len() as u64;
        Ok(nar)
    }

    fn decompress(&mut self, frame: &[u8], limit: u64) -> Result<Bytes, BlockError> {
        use zstd::zstd_safe;
        if zstd_safe::find_frame_compressed_size(frame) != Ok(frame.len()) {
            return Err(BlockError::NotOneFrame);
        }
        let declared = match zstd_safe::get_frame_content_size(frame) {
            Ok(Some(declared)) => declared,
            Ok(None) | Err(_) => return Err(BlockError::NoContentSize),
        };
        if declared > limit {
            return Err(BlockError::TooMuch { len: declared, limit });
        }
        // Bounded above: the buffer is at most NAR_BLOCK_MAX.
        let mut nar = Vec::with_capacity(declared as usize);
        let decompressor = match &mut self.decompressor {
            Some(decompressor) => decompressor,
            None => {
                let made = zstd::bulk::Decompressor::new();
                let made = made.map_err(|e| BlockError::Corrupt(e.to_string()))?;
                self.decompressor.insert(made)
            }
        };
        let decoded = decompressor.decompress_to_buffer(frame, &mut nar);
        let got = decoded.map_err(|e| BlockError::Corrupt(e.to_string()))?;
        if got as u64 != declared {
            return Err(BlockError::OtherSize { got, declared });
        }
        Ok(Bytes::from(nar))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes zstd shrinks about threefold, like a shared library's.
    fn compressible(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i / 7) % 13 + (i % 3)) as u8).collect()
    }

    /// Bytes zstd cannot shrink.
    fn random(len: usize) -> Vec<u8> {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// Decodes `wire` (blocks and the end) for an answer of `len` bytes.
    fn decode_all(wire: &[u8], len: u64) -> Result<Vec<u8>, BlockError> {
        let mut decoder = BlockDecoder::new(len);
        let (mut out, mut rest) = (Vec::new(), wire);
        loop {
            let header = rest[..4].try_into().unwrap();
            rest = &rest[4..];
            let Some(block_len) = decoder.header(header)? else { return Ok(out) };
            out.extend_from_slice(&decoder.decode(Bytes::copy_from_slice(&rest[..block_len]))?);
            rest = &rest[block_len..];
        }
    }

    fn encode_all(nar: &[u8]) -> Vec<u8> {
        let mut wire: Vec<u8> =
            nar.chunks(NAR_BLOCK_MAX).flat_map(|b| encode_block(b, Some(3))).collect();
        wire.extend(END);
        wire
    }

    #[test]
    fn blocks_round_trip_and_shrink() {
        let nar = compressible(3 * NAR_BLOCK_MAX + 1000);
        let wire = encode_all(&nar);
        assert!(wire.len() < nar.len() / 2, "{} wire bytes for {}", wire.len(), nar.len());
        assert_eq!(decode_all(&wire, nar.len() as u64).unwrap(), nar);
    }

    #[test]
    fn what_does_not_shrink_goes_raw() {
        let nar = random(NAR_BLOCK_MAX);
        let block = encode_block(&nar, Some(3));
        assert!(!is_zstd(&block));
        assert_eq!(block.len(), 5 + nar.len());
        assert!(!is_zstd(&encode_block(&compressible(1000), None)));
        let mut wire = block;
        wire.extend(END);
        assert_eq!(decode_all(&wire, nar.len() as u64).unwrap(), nar);
    }

    #[test]
    fn a_flipped_byte_is_an_error_and_yields_nothing() {
        let nar = compressible(NAR_BLOCK_MAX);
        let block = encode_block(&nar, Some(3));
        assert!(is_zstd(&block));
        // Every byte of the frame: its header, the content, the checksum. A flip zstd's
        // format leaves without effect may decode, but only to the right bytes.
        let mut refused = 0;
        for at in 5..block.len() {
            let mut bad = block.clone();
            bad[at] ^= 0x01;
            let mut decoder = BlockDecoder::new(nar.len() as u64);
            match decoder.decode(Bytes::copy_from_slice(&bad[4..])) {
                Err(_) => refused += 1,
                Ok(decoded) => assert_eq!(decoded, nar, "byte {at}: a wrong block decoded"),
            }
        }
        assert!(refused > (block.len() - 5) * 9 / 10, "{refused} of {} refused", block.len());
    }

    #[test]
    fn declared_sizes_are_checked_before_allocating() {
        // A frame stating more than a block may hold, and more than is due.
        let big = zstd::bulk::compress(&compressible(NAR_BLOCK_MAX + 1), 1).unwrap();
        let mut block = vec![BLOCK_ZSTD];
        block.extend(&big);
        let mut decoder = BlockDecoder::new(10 * NAR_BLOCK_MAX as u64);
        assert!(matches!(decoder.decode(block.into()), Err(BlockError::TooMuch { .. })));
        let small = encode_block(&compressible(1000), Some(3));
        let mut decoder = BlockDecoder::new(999);
        let too_much = decoder.decode(Bytes::copy_from_slice(&small[4..]));
        assert_eq!(too_much, Err(BlockError::TooMuch { len: 1000, limit: 999 }));
        let raw = encode_block(&random(1000), None);
        assert!(matches!(
            BlockDecoder::new(999).decode(Bytes::copy_from_slice(&raw[4..])),
            Err(BlockError::TooMuch { .. })
        ));
        let header = ((NAR_BLOCK_WIRE_MAX + 1) as u32).to_be_bytes();
        assert!(matches!(BlockDecoder::new(1).header(header), Err(BlockError::TooLong { .. })));
    }

    #[test]
    fn a_frame_without_a_content_size_is_refused() {
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        std::io::Write::write_all(&mut encoder, &compressible(1000)).unwrap();
        let frame = encoder.finish().unwrap();
        let mut block = vec![BLOCK_ZSTD];
        block.extend(&frame);
        let result = BlockDecoder::new(1000).decode(block.into());
        assert_eq!(result, Err(BlockError::NoContentSize));
    }

    #[test]
    fn two_frames_in_a_block_are_refused() {
        let one = zstd::bulk::compress(&compressible(100), 3).unwrap();
        let mut block = vec![BLOCK_ZSTD];
        block.extend(&one);
        block.extend(&one);
        assert_eq!(BlockDecoder::new(1000).decode(block.into()), Err(BlockError::NotOneFrame));
    }

    #[test]
    fn the_total_must_be_exactly_what_was_announced() {
        let nar = compressible(2000);
        let wire = encode_all(&nar);
        assert_eq!(decode_all(&wire, 2001), Err(BlockError::EndedEarly { left: 1 }));
        assert!(matches!(decode_all(&wire, 1999), Err(BlockError::TooMuch { .. })));
        let mut two = encode_block(&nar[..1000], Some(3));
        two.extend(encode_block(&nar[1000..], Some(3)));
        two.extend(END);
        assert_eq!(decode_all(&two, 1000), Err(BlockError::PastTheEnd { total: 1000 }));
        assert_eq!(decode_all(&two, 2000).unwrap(), nar);
        assert_eq!(
            BlockDecoder::new(5).decode(Bytes::from_static(&[BLOCK_RAW])),
            Err(BlockError::Empty)
        );
        assert_eq!(
            BlockDecoder::new(5).decode(Bytes::from_static(&[7, 1])),
            Err(BlockError::UnknownKind(7))
        );
    }
}
