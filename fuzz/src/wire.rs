//! The mesh's wire messages (`nixmesh_protocol::mesh_messages`): every frame a node reads comes from a
//! peer, possibly hostile.
//!
//! The input is read as a stream of frames, once as each message type a node reads, under
//! both frame limits a node uses. A frame is never longer than the limit or the input, and
//! every message decoded encodes to a frame that decodes to the same message.

use std::fmt::Debug;

use nixmesh_protocol::mesh_messages::{
    AdvertMessage, AdvertRequest, FetchRequest, FetchResponse, MAX_FRAME_LEN,
    MAX_REQUEST_FRAME_LEN, WireError, decode_frame, encode_frame,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub fn check(data: &[u8]) {
    for limit in [MAX_REQUEST_FRAME_LEN, MAX_FRAME_LEN] {
        frames::<FetchRequest>(data, limit);
        frames::<FetchResponse>(data, limit);
        frames::<AdvertRequest>(data, limit);
        frames::<AdvertMessage>(data, limit);
    }
}

/// Decodes frames of `T` from `data` until it runs out or a frame is refused, as a stream
/// reader does.
fn frames<T>(mut data: &[u8], limit: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    loop {
        match decode_frame::<T>(data, limit) {
            Ok(Some((message, used))) => {
                assert!(used >= 4 && used <= data.len(), "used {used} of {}", data.len());
                assert!(used - 4 <= limit, "a frame of {used} bytes passed the limit {limit}");
                let frame = encode_frame(&message).expect("a decoded message encodes");
                let again = decode_frame::<T>(&frame, MAX_FRAME_LEN).expect("its frame decodes");
                assert_eq!(again, Some((message, frame.len())), "encode, then decode, changed it");
                data = &data[used..];
            }
            Ok(None) => return,
            Err(WireError::TooLarge { len, limit: refused_at }) => {
                assert!(len > refused_at && refused_at <= limit);
                return;
            }
            Err(error) => {
                assert!(!error.to_string().is_empty());
                return;
            }
        }
    }
}
