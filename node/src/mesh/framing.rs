//! Frames on a libp2p stream: [`nixmesh_protocol::wire`]'s framing with timeouts, over any
//! tokio reader/writer. The frame format lives in `protocol`; this module only does the I/O.

use std::time::Duration;

use nixmesh_protocol::wire::{self, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// A frame could not be sent or received.
#[derive(Debug, Error)]
pub enum FrameError {
    #[error("stream closed")]
    Closed,
    #[error("timed out after {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] WireError),
}

/// Reads one frame of at most `max_len` bytes, waiting at most `timeout` for all of it.
/// `Closed` if the stream ended cleanly before a frame began.
pub async fn read_frame<T, R>(
    reader: &mut R,
    timeout: Duration,
    max_len: usize,
) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    read_frame_after_idle(reader, timeout, timeout, max_len).await
}

/// Reads one frame of at most `max_len` bytes on a stream that may sit idle between frames:
/// its first byte may take up to `idle`, and the rest of the frame at most `timeout` after
/// that. `Closed` if the stream ended cleanly before a frame began.
pub async fn read_frame_after_idle<T, R>(
    reader: &mut R,
    idle: Duration,
    timeout: Duration,
    max_len: usize,
) -> Result<T, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let mut header = [0u8; 4];
    match tokio::time::timeout(idle, reader.read(&mut header[..1])).await {
        Err(_) => return Err(FrameError::TimedOut(idle)),
        Ok(Ok(0)) => return Err(FrameError::Closed),
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(e.into()),
    }
    tokio::time::timeout(timeout, async {
        reader.read_exact(&mut header[1..]).await?;
        let len = wire::frame_len(header, max_len)?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body).await?;
        Ok(wire::decode_body(&body)?)
    })
    .await
    .map_err(|_| FrameError::TimedOut(timeout))?
}

/// Writes and flushes one frame, waiting at most `timeout`.
pub async fn write_frame<T, W>(
    writer: &mut W,
    message: &T,
    timeout: Duration,
) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let frame = wire::encode_frame(message)?;
    tokio::time::timeout(timeout, async {
        writer.write_all(&frame).await?;
        writer.flush().await
    })
    .await
    .map_err(|_| FrameError::TimedOut(timeout))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixmesh_protocol::StorePathHash;
    use nixmesh_protocol::wire::FetchRequest;

    #[tokio::test]
    async fn frames_cross_a_pipe() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let sent = FetchRequest::Nar {
            hash: StorePathHash([3; 20]),
            nar_hash: nixmesh_protocol::Sha256([4; 32]),
            offset: 9,
        };
        let t = Duration::from_secs(5);
        let (w, r) = tokio::join!(
            write_frame(&mut a, &sent, t),
            read_frame::<FetchRequest, _>(&mut b, t, 1024)
        );
        w.unwrap();
        assert_eq!(r.unwrap(), sent);
        drop(a);
        assert!(matches!(
            read_frame::<FetchRequest, _>(&mut b, t, 1024).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (_a, mut b) = tokio::io::duplex(64);
        let r = read_frame::<FetchRequest, _>(&mut b, Duration::from_millis(20), 1024).await;
        assert!(matches!(r, Err(FrameError::TimedOut(_))));
    }
}
