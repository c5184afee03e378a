//! The messages nodes exchange, and their framing.
//!
//! Each kind of conversation is its own libp2p protocol, so a new version is a new protocol
//! name that old nodes simply do not speak (multistream-select negotiates it):
//!
//! - [`FETCH_PROTOCOL`]: a session of requests on one stream. The asker sends a
//!   [`FetchRequest`], the holder answers with one [`FetchResponse`]; after
//!   [`FetchResponse::Nar`] the raw NAR bytes follow on the same stream, from the offset asked
//!   for to the end; after [`FetchResponse::Listing`] and [`FetchResponse::BuildLog`], the
//!   `len` bytes they announce. Then the asker may send its next request on the stream, or
//!   close it.
//! - [`FETCH_PROTOCOL_V3`]: the same session, and the requests appended after fetch/2's
//!   ([`FetchRequest::NarCoded`], answered with [`FetchResponse::NarBlocks`] or a raw
//!   `Nar`). An asker offers `[fetch/3, fetch/2]` and sends the new requests only on a
//!   stream where fetch/3 was agreed: a fetch/2 node cannot decode them.
//! - [`ADVERTS_PROTOCOL`]: a long-lived stream. The subscriber sends one [`AdvertRequest`];
//!   the holder answers with a snapshot of the store paths it holds (in chunks), then a
//!   [`AdvertMessage::Delta`] each time its store changes, for as long as the stream lives.
//! - [`peers::PEERS_PROTOCOL`]: peer exchange, one question and one answer per stream (see
//!   [`peers`]).
//!
//! A frame is a 4-byte big-endian length and a postcard-encoded body. Decoding checks the
//! length against [`MAX_FRAME_LEN`] before anything is allocated, so a hostile peer cannot
//! make a node allocate more than that per frame.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::{Sha256, StorePathHash};

pub mod peers;

/// Fetching narinfos and NARs, version 2 (a session of requests per stream).
pub const FETCH_PROTOCOL: &str = "/nixmesh/fetch/2";
/// Fetching, version 3: fetch/2's session and messages, plus the variants after
/// [`FetchRequest::BuildLog`] and [`FetchResponse::BuildLog`], sent only on fetch/3 streams.
pub const FETCH_PROTOCOL_V3: &str = "/nixmesh/fetch/3";
/// Advertising held store paths, version 1.
pub const ADVERTS_PROTOCOL: &str = "/nixmesh/adverts/1";

/// The largest frame body either side accepts.
pub const MAX_FRAME_LEN: usize = 4 << 20;
/// The largest request frame (a [`FetchRequest`] or an [`AdvertRequest`]) a node reads:
/// requests are a few dozen bytes, and a node should not hold megabytes for a stream that
/// has not yet said what it wants.
pub const MAX_REQUEST_FRAME_LEN: usize = 1024;
/// The most hashes one snapshot chunk or delta carries (well inside [`MAX_FRAME_LEN`]).
pub const MAX_HASHES_PER_FRAME: usize = 65_536;
/// The largest narinfo text a node sends or accepts.
pub const MAX_NARINFO_LEN: usize = 1 << 20;
/// The largest build log (decompressed) a node sends or accepts: the asker holds it whole.
pub const MAX_BUILD_LOG_LEN: usize = 64 << 20;
/// The longest derivation name a [`FetchRequest::BuildLog`] carries: a store path's base
/// name, `<32-char hash>-<name>.drv`.
pub const MAX_DRV_NAME_LEN: usize = 32 + 1 + crate::store_path::MAX_NAME_LEN;

/// A frame that cannot be encoded or decoded.
#[derive(Debug, Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(#[from] postcard::Error),
    #[error("{len} exceeds the limit of {limit}")]
    TooMany { len: usize, limit: usize },
    #[error("the peer does not speak the protocol: {0}")]
    Unsupported(String),
}

/// One request on a fetch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchRequest {
    /// The narinfo of the path with this hash.
    NarInfo { hash: StorePathHash },
    /// The NAR of the path with this hash, from byte `offset` on (to resume a transfer), if
    /// the holder's NAR has `nar_hash` (the one the asker's verified narinfo names): a holder
    /// of another build of the path answers `NotFound` rather than send bytes that cannot
    /// verify.
    Nar { hash: StorePathHash, nar_hash: Sha256, offset: u64 },
    /// The NAR with `nar_hash` of the path with this hash from an upstream cache, by way of
    /// the node asked (its claimer for the whole mesh: it downloads it once and relays it
    /// to every asker as it arrives), from byte `offset` on. Answered like `Nar`, or with
    /// `NotFound` when the node has no upstream with that build of the path.
    UpstreamNar { hash: StorePathHash, nar_hash: Sha256, offset: u64 },
    /// The narinfo of the path with this hash from the upstream caches of the node asked (the
    /// path's claimer: the mesh asks its upstreams once, and shares the answer, a "not here"
    /// included). Answered like `NarInfo`, with the upstream's text as it is.
    UpstreamNarInfo { hash: StorePathHash },
    // New variants go last, as in `FetchResponse`.
    /// The listing (`<hash>.ls`, see [`crate::nar::listing`]) of the path with this hash, if
    /// the holder's NAR of it has `nar_hash`; served under the same rule as its narinfo.
    /// Answered with [`FetchResponse::Listing`], or `NotFound`.
    Listing { hash: StorePathHash, nar_hash: Sha256 },
    /// The build log of the derivation whose store path's base name is `drv`
    /// (`<hash>-<name>.drv`, at most [`MAX_DRV_NAME_LEN`] bytes), decompressed: answered
    /// with [`FetchResponse::BuildLog`] by a node that serves its logs and has this one,
    /// else `NotFound`.
    BuildLog { drv: String },
    // fetch/3 only, from here on: a fetch/2 holder cannot decode these. A fetch/3 holder
    // closes a stream on a request it cannot decode, as fetch/2's does, so a request added
    // after these (a closure of narinfos, say) comes with its own protocol name, fetch/4,
    // offered before fetch/3: `FetchVersion` and the lists the asker offers and the holder
    // accepts take one more entry.
    /// As [`FetchRequest::Nar`]; with `zstd` the asker accepts the bytes as blocks
    /// ([`FetchResponse::NarBlocks`]). The holder may answer with a raw `Nar` all the same.
    NarCoded { hash: StorePathHash, nar_hash: Sha256, offset: u64, zstd: bool },
}

/// The answer to one request on a fetch stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchResponse {
    /// The narinfo text, with the signatures its store holds (and the node's own, if it signs).
    NarInfo { text: String },
    /// Bytes `offset..nar_size` of the NAR follow as raw bytes; then the next request.
    Nar { nar_size: u64, offset: u64 },
    /// The node does not hold the path.
    NotFound,
    /// The node holds it but could not serve it; the message says why.
    Failed { message: String },
    // New variants go last: postcard numbers variants by their place, and older nodes must
    // read the ones above as they always did.
    /// `len` bytes of the listing asked for follow (at most
    /// [`crate::nar::listing::MAX_LISTING_LEN`]).
    Listing { len: u64 },
    /// `len` bytes of the build log asked for follow (at most [`MAX_BUILD_LOG_LEN`]).
    BuildLog { len: u64 },
    // fetch/3 only, from here on.
    /// Bytes `offset..nar_size` of the NAR follow as blocks (see [`NAR_BLOCK_MAX`]): each a
    /// 4-byte big-endian length of what follows, a kind byte ([`BLOCK_RAW`] or
    /// [`BLOCK_ZSTD`]) and the block's bytes; a length of 0 ends them. Then the next request.
    NarBlocks { nar_size: u64, offset: u64 },
}

/// The most NAR bytes one block of a [`FetchResponse::NarBlocks`] answer carries, decoded.
pub const NAR_BLOCK_MAX: usize = 256 * 1024;
/// The most bytes a block takes on the wire after its length: its kind byte and a zstd
/// frame of [`NAR_BLOCK_MAX`] bytes that did not shrink (zstd's bound, with room to spare).
pub const NAR_BLOCK_WIRE_MAX: usize = 1 + NAR_BLOCK_MAX + NAR_BLOCK_MAX / 128 + 1024;
/// A block's kind: its bytes are the NAR's, as they are.
pub const BLOCK_RAW: u8 = 0;
/// A block's kind: its bytes are one zstd frame stating its content size, with a checksum.
pub const BLOCK_ZSTD: u8 = 1;

/// Where a subscriber's copy of a holder's advertisement stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdvertPosition {
    /// Changes when the holder's advertisement log starts anew (e.g. it restarted).
    pub epoch: u64,
    /// Counts the holder's changes within an epoch.
    pub generation: u64,
}

/// The subscriber's one message on an adverts stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdvertRequest {
    /// Send what changed since `resume`, or a snapshot if that is unknown or too old.
    Subscribe { resume: Option<AdvertPosition> },
}

/// What a holder sends on an adverts stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AdvertMessage {
    /// A part of a full snapshot at `position`; the snapshot is complete at `last`.
    Snapshot { position: AdvertPosition, hashes: Vec<StorePathHash>, last: bool },
    /// The changes from generation `from` to `position.generation`.
    Delta {
        position: AdvertPosition,
        from: u64,
        added: Vec<StorePathHash>,
        removed: Vec<StorePathHash>,
    },
}

/// Encodes `message` as one frame: length prefix and body.
pub fn encode_frame<T: Serialize>(message: &T) -> Result<Vec<u8>, WireError> {
    let mut frame = postcard::to_extend(message, vec![0u8; 4])?;
    let len = frame.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(WireError::TooLarge { len, limit: MAX_FRAME_LEN });
    }
    frame[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(frame)
}

/// The body length a frame header announces, if within `limit` (at most [`MAX_FRAME_LEN`]).
pub fn frame_len(header: [u8; 4], limit: usize) -> Result<usize, WireError> {
    let len = u32::from_be_bytes(header) as usize;
    let limit = limit.min(MAX_FRAME_LEN);
    if len > limit {
        return Err(WireError::TooLarge { len, limit });
    }
    Ok(len)
}

/// Decodes a frame body (without its length prefix).
fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, WireError> {
    Ok(postcard::from_bytes(body)?)
}

/// Decodes the first frame in `buf`, if it is complete: the message and the bytes it used.
/// A header announcing a body longer than `limit` is an error as soon as it is complete.
pub fn decode_frame<T: DeserializeOwned>(
    buf: &[u8],
    limit: usize,
) -> Result<Option<(T, usize)>, WireError> {
    let Some(header) = buf.get(..4) else { return Ok(None) };
    let len = frame_len(header.try_into().expect("four bytes"), limit)?;
    let Some(body) = buf.get(4..4 + len) else { return Ok(None) };
    Ok(Some((decode_body(body)?, 4 + len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hash(n: u8) -> StorePathHash {
        StorePathHash([n; 20])
    }

    #[test]
    fn frames_round_trip() {
        let messages = vec![
            AdvertMessage::Snapshot {
                position: AdvertPosition { epoch: 7, generation: 1 },
                hashes: vec![hash(1), hash(2)],
                last: true,
            },
            AdvertMessage::Delta {
                position: AdvertPosition { epoch: 7, generation: 3 },
                from: 1,
                added: vec![hash(3)],
                removed: vec![hash(1)],
            },
        ];
        let mut stream = Vec::new();
        for m in &messages {
            stream.extend(encode_frame(m).unwrap());
        }
        let mut rest = &stream[..];
        for m in &messages {
            let (decoded, used) =
                decode_frame::<AdvertMessage>(rest, MAX_FRAME_LEN).unwrap().unwrap();
            assert_eq!(&decoded, m);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn incomplete_frames_wait_for_more() {
        let frame = encode_frame(&FetchRequest::NarInfo { hash: hash(9) }).unwrap();
        for cut in 0..frame.len() {
            assert!(decode_frame::<FetchRequest>(&frame[..cut], MAX_FRAME_LEN).unwrap().is_none());
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let header = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes();
        let too_large = |r| matches!(r, Err(WireError::TooLarge { .. }));
        assert!(too_large(frame_len(header, usize::MAX)));
        assert!(matches!(
            decode_frame::<FetchRequest>(&header, MAX_FRAME_LEN),
            Err(WireError::TooLarge { .. })
        ));
        let request = ((MAX_REQUEST_FRAME_LEN + 1) as u32).to_be_bytes();
        assert!(too_large(frame_len(request, MAX_REQUEST_FRAME_LEN)));
    }

    #[test]
    fn the_largest_requests_fit_a_request_frame() {
        let nar =
            FetchRequest::Nar { hash: hash(1), nar_hash: Sha256([0xff; 32]), offset: u64::MAX };
        let position = AdvertPosition { epoch: u64::MAX, generation: u64::MAX };
        let subscribe = AdvertRequest::Subscribe { resume: Some(position) };
        assert!(encode_frame(&nar).unwrap().len() <= 4 + MAX_REQUEST_FRAME_LEN);
        assert!(encode_frame(&subscribe).unwrap().len() <= 4 + MAX_REQUEST_FRAME_LEN);
        let log = FetchRequest::BuildLog { drv: "x".repeat(MAX_DRV_NAME_LEN) };
        assert!(encode_frame(&log).unwrap().len() <= 4 + MAX_REQUEST_FRAME_LEN);
    }

    #[test]
    fn the_older_messages_keep_their_encoding() {
        // What nodes without listings and build logs send and read: the variants' places.
        let body = |frame: Vec<u8>| frame[4..].to_vec();
        assert_eq!(body(encode_frame(&FetchResponse::NotFound).unwrap()), [2]);
        let failed = FetchResponse::Failed { message: "x".into() };
        assert_eq!(body(encode_frame(&failed).unwrap()), [3, 1, b'x']);
        let upstream = FetchRequest::UpstreamNarInfo { hash: hash(0) };
        assert_eq!(body(encode_frame(&upstream).unwrap())[0], 3);
        assert_eq!(body(encode_frame(&FetchResponse::Listing { len: 1 }).unwrap()), [4, 1]);
        let log = FetchRequest::BuildLog { drv: String::new() };
        assert_eq!(body(encode_frame(&log).unwrap()), [5, 0]);
        // fetch/2's own, as fetch/2 nodes read them.
        let nar = FetchRequest::Nar { hash: hash(0), nar_hash: Sha256([0; 32]), offset: 1 };
        let mut expected = vec![1];
        expected.extend([0; 20]);
        expected.extend([0; 32]);
        expected.push(1);
        assert_eq!(body(encode_frame(&nar).unwrap()), expected);
        let answer = FetchResponse::Nar { nar_size: 2, offset: 1 };
        assert_eq!(body(encode_frame(&answer).unwrap()), [1, 2, 1]);
    }

    #[test]
    fn fetch3_variants_come_after_fetch2s() {
        let body = |frame: Vec<u8>| frame[4..].to_vec();
        let coded = FetchRequest::NarCoded {
            hash: hash(0),
            nar_hash: Sha256([0; 32]),
            offset: 0,
            zstd: true,
        };
        let coded = body(encode_frame(&coded).unwrap());
        assert_eq!((coded[0], coded.len()), (6, 1 + 20 + 32 + 1 + 1));
        let blocks = FetchResponse::NarBlocks { nar_size: 3, offset: 1 };
        assert_eq!(body(encode_frame(&blocks).unwrap()), [6, 3, 1]);
        let largest = FetchRequest::NarCoded {
            hash: hash(1),
            nar_hash: Sha256([0xff; 32]),
            offset: u64::MAX,
            zstd: true,
        };
        assert!(encode_frame(&largest).unwrap().len() <= 4 + MAX_REQUEST_FRAME_LEN);
    }

    #[test]
    fn a_full_chunk_fits_in_a_frame() {
        let chunk = AdvertMessage::Snapshot {
            position: AdvertPosition { epoch: u64::MAX, generation: u64::MAX },
            hashes: vec![hash(0xff); MAX_HASHES_PER_FRAME],
            last: false,
        };
        assert!(encode_frame(&chunk).is_ok());
    }

    proptest! {
        #[test]
        fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_frame::<FetchResponse>(&bytes, MAX_FRAME_LEN);
            let _ = decode_frame::<AdvertMessage>(&bytes, MAX_FRAME_LEN);
            let _ = decode_body::<FetchRequest>(&bytes);
        }
    }
}
