//! [`FramedStream`]: one mesh stream with its read buffer, its deadlines and its frame limit,
//! the one way the node reads and writes [`nixmesh_protocol::mesh_messages`] frames.
//!
//! The frame format lives in `protocol`; this module only does the I/O, the way mini-redis's
//! `Connection` owns its socket: bytes are read into a buffer, and a frame is decoded from it
//! once the buffer holds all of it. Raw bytes may follow a frame on the same stream (a NAR after
//! its `Nar` answer), so the stream also hands out raw bytes, the buffered ones first. That is
//! why this is not `tokio_util`'s `Framed` with a length-delimited codec: its buffer would take
//! NAR bytes for frames.
//!
//! Every operation has a deadline: a session may sit idle between frames for
//! [`FrameLimits::idle`], and once a frame's first byte has arrived the rest of it must arrive
//! within [`FrameLimits::read`]; a write, and each read of raw bytes, gets
//! [`FrameLimits::write`] and [`FrameLimits::read`]. No frame longer than
//! [`FrameLimits::max_frame`] is buffered: its header is refused before its body is read.

use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use nixmesh_protocol::mesh_messages::{self, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

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

/// The deadlines and the frame limit of one stream.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// How long a read may wait for a frame to begin.
    pub idle: Duration,
    /// How long the rest of a frame may take once begun, and each read of raw bytes.
    pub read: Duration,
    /// How long a write (and its flush) may take.
    pub write: Duration,
    /// The longest frame body read (at most [`mesh_messages::MAX_FRAME_LEN`]).
    pub max_frame: usize,
}

/// A libp2p stream, as the node frames it.
pub type MeshStream = FramedStream<Compat<libp2p::Stream>>;

/// A byte stream carrying frames, and raw bytes between them; see the module docs.
pub struct FramedStream<S> {
    stream: S,
    /// Bytes read and not yet handed out.
    buffer: BytesMut,
    limits: FrameLimits,
}

/// What a read asks of the stream at least, so small frames cost one read.
const READ_AHEAD: usize = 4096;

impl MeshStream {
    /// Frames `stream` with `limits`.
    pub fn mesh(stream: libp2p::Stream, limits: FrameLimits) -> Self {
        FramedStream::new(stream.compat(), limits)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedStream<S> {
    pub fn new(stream: S, limits: FrameLimits) -> Self {
        FramedStream { stream, buffer: BytesMut::new(), limits }
    }

    /// Changes how long reads wait for a frame to begin (a session is allowed to sit idle
    /// longer once it has begun).
    pub fn set_idle(&mut self, idle: Duration) {
        self.limits.idle = idle;
    }

    /// Reads one frame. `Closed` if the stream ended cleanly before a frame began.
    pub async fn read<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        let FrameLimits { idle, read, max_frame, .. } = self.limits;
        if self.buffer.is_empty() {
            match tokio::time::timeout(idle, self.fill(READ_AHEAD)).await {
                Err(_) => return Err(FrameError::TimedOut(idle)),
                Ok(Ok(0)) => return Err(FrameError::Closed),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        tokio::time::timeout(read, async {
            loop {
                if let Some((message, used)) = mesh_messages::decode_frame(&self.buffer, max_frame)?
                {
                    self.buffer.advance(used);
                    return Ok(message);
                }
                let want = match self.buffer.get(..4) {
                    Some(header) => {
                        let header = header.try_into().expect("four bytes");
                        4 + mesh_messages::frame_len(header, max_frame)? - self.buffer.len()
                    }
                    None => READ_AHEAD,
                };
                if self.fill(want).await? == 0 {
                    let e = std::io::ErrorKind::UnexpectedEof;
                    return Err(std::io::Error::new(e, "the stream ended inside a frame").into());
                }
            }
        })
        .await
        .map_err(|_| FrameError::TimedOut(read))?
    }

    /// Writes and flushes one frame.
    pub async fn write<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        self.write_with(message, &[]).await
    }

    /// Writes one frame and the raw bytes that follow it in one write, and flushes: one
    /// yamux frame and one cipher frame for a small NAR and its answer, where a write of
    /// each would make two of both. For bodies small enough to copy (the caller's bound).
    pub async fn write_with<T: Serialize>(
        &mut self,
        message: &T,
        body: &[u8],
    ) -> Result<(), FrameError> {
        let mut frame = mesh_messages::encode_frame(message)?;
        frame.extend_from_slice(body);
        let write = self.limits.write;
        tokio::time::timeout(write, async {
            self.stream.write_all(&frame).await?;
            self.stream.flush().await
        })
        .await
        .map_err(|_| FrameError::TimedOut(write))??;
        Ok(())
    }

    /// Writes raw bytes, unflushed (see [`FramedStream::flush`]).
    pub async fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), FrameError> {
        let write = self.limits.write;
        tokio::time::timeout(write, self.stream.write_all(bytes))
            .await
            .map_err(|_| FrameError::TimedOut(write))??;
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), FrameError> {
        let write = self.limits.write;
        tokio::time::timeout(write, self.stream.flush())
            .await
            .map_err(|_| FrameError::TimedOut(write))??;
        Ok(())
    }

    /// Closes the writing half: the peer reads the end of the stream after what was written.
    pub async fn close(&mut self) -> Result<(), FrameError> {
        let write = self.limits.write;
        tokio::time::timeout(write, self.stream.shutdown())
            .await
            .map_err(|_| FrameError::TimedOut(write))??;
        Ok(())
    }

    /// Reads up to `max` raw bytes (buffered ones first); empty when the stream has ended.
    pub async fn read_bytes(&mut self, max: usize) -> Result<Bytes, FrameError> {
        if !self.buffer.is_empty() {
            let n = max.min(self.buffer.len());
            return Ok(self.buffer.split_to(n).freeze());
        }
        let read = self.limits.read;
        let mut chunk = BytesMut::with_capacity(max);
        let mut part = (&mut self.stream).take(max as u64);
        tokio::time::timeout(read, part.read_buf(&mut chunk))
            .await
            .map_err(|_| FrameError::TimedOut(read))??;
        Ok(chunk.freeze())
    }

    /// Waits until the peer ends the stream or breaks it, on a stream where the peer has
    /// nothing more to say (a subscription, once asked for): `Closed` when it ended,
    /// `Io` when it broke or the peer sent anything more. No deadline: the caller stops
    /// waiting when it has something to write. Cancel-safe.
    pub async fn ended(&mut self) -> FrameError {
        match self.fill(READ_AHEAD).await {
            Ok(0) => FrameError::Closed,
            Ok(_) => {
                let e = std::io::ErrorKind::InvalidData;
                std::io::Error::new(e, "bytes where the peer had nothing to send").into()
            }
            Err(e) => e.into(),
        }
    }

    /// Reads into the buffer, asking for at least `want` bytes of room; 0 at the stream's end.
    async fn fill(&mut self, want: usize) -> std::io::Result<usize> {
        self.buffer.reserve(want.max(READ_AHEAD));
        self.stream.read_buf(&mut self.buffer).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixmesh_protocol::StorePathHash;
    use nixmesh_protocol::mesh_messages::{FetchRequest, FetchResponse};

    fn limits(t: Duration) -> FrameLimits {
        FrameLimits { idle: t, read: t, write: t, max_frame: 1024 }
    }

    fn pair(
        t: Duration,
    ) -> (FramedStream<tokio::io::DuplexStream>, FramedStream<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(64);
        (FramedStream::new(a, limits(t)), FramedStream::new(b, limits(t)))
    }

    #[tokio::test]
    async fn frames_cross_a_pipe() {
        let (mut a, mut b) = pair(Duration::from_secs(5));
        let sent = FetchRequest::Nar {
            hash: StorePathHash([3; 20]),
            nar_hash: nixmesh_protocol::Sha256([4; 32]),
            offset: 9,
        };
        let (w, r) = tokio::join!(a.write(&sent), b.read::<FetchRequest>());
        w.unwrap();
        assert_eq!(r.unwrap(), sent);
        drop(a);
        assert!(matches!(b.read::<FetchRequest>().await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn raw_bytes_after_a_frame_are_not_lost_in_the_buffer() {
        let (mut a, mut b) = pair(Duration::from_secs(5));
        let header = FetchResponse::Nar { nar_size: 5000, offset: 0 };
        let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let sending = async {
            // Frame and raw bytes in one write, as they may arrive in one read.
            let mut all = mesh_messages::encode_frame(&header).unwrap();
            all.extend(&body);
            a.write_bytes(&all).await.unwrap();
            a.flush().await.unwrap();
            a.write(&FetchResponse::NotFound).await.unwrap();
        };
        let receiving = async {
            assert_eq!(b.read::<FetchResponse>().await.unwrap(), header);
            let mut got = Vec::new();
            while got.len() < body.len() {
                let chunk = b.read_bytes(body.len() - got.len()).await.unwrap();
                assert!(!chunk.is_empty());
                got.extend(chunk);
            }
            assert_eq!(got, body);
            assert_eq!(b.read::<FetchResponse>().await.unwrap(), FetchResponse::NotFound);
        };
        tokio::join!(sending, receiving);
    }

    /// A writer that counts the writes and flushes it is given.
    #[derive(Default)]
    struct Counting {
        written: Vec<u8>,
        writes: usize,
        flushes: usize,
    }

    impl tokio::io::AsyncRead for Counting {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    impl AsyncWrite for Counting {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            bytes: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            self.writes += 1;
            self.written.extend_from_slice(bytes);
            std::task::Poll::Ready(Ok(bytes.len()))
        }

        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            self.flushes += 1;
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_frame_with_its_body_is_one_write_and_one_flush() {
        let mut stream = FramedStream::new(Counting::default(), limits(Duration::from_secs(5)));
        let answer = FetchResponse::Nar { nar_size: 3000, offset: 0 };
        let body = vec![9u8; 3000];
        stream.write_with(&answer, &body).await.unwrap();
        let Counting { written, writes, flushes } = stream.stream;
        assert_eq!((writes, flushes), (1, 1));
        let mut expected = mesh_messages::encode_frame(&answer).unwrap();
        expected.extend(&body);
        assert_eq!(written, expected);
    }

    #[tokio::test]
    async fn ended_waits_for_the_peer_to_close_and_not_for_a_deadline() {
        let (a, mut b) = pair(Duration::from_millis(10));
        let waiting = tokio::time::timeout(Duration::from_millis(50), b.ended()).await;
        assert!(waiting.is_err(), "an open, silent stream has not ended");
        drop(a);
        assert!(matches!(b.ended().await, FrameError::Closed));
        let (mut a, mut b) = pair(Duration::from_secs(5));
        a.write_bytes(b"x").await.unwrap();
        a.flush().await.unwrap();
        assert!(matches!(b.ended().await, FrameError::Io(_)), "a peer that says more");
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() {
        let (_a, mut b) = pair(Duration::from_millis(20));
        let r = b.read::<FetchRequest>().await;
        assert!(matches!(r, Err(FrameError::TimedOut(_))));
    }

    #[tokio::test]
    async fn an_oversized_header_is_refused_before_its_body() {
        let (mut a, mut b) = pair(Duration::from_secs(5));
        a.write_bytes(&2000u32.to_be_bytes()).await.unwrap();
        a.flush().await.unwrap();
        let r = b.read::<FetchRequest>().await;
        assert!(matches!(r, Err(FrameError::Wire(WireError::TooLarge { len: 2000, .. }))));
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_close() {
        let (mut a, mut b) = pair(Duration::from_secs(5));
        a.write_bytes(&10u32.to_be_bytes()).await.unwrap();
        a.write_bytes(&[1, 2]).await.unwrap();
        a.flush().await.unwrap();
        drop(a);
        let r = b.read::<FetchRequest>().await;
        assert!(matches!(r, Err(FrameError::Io(_))), "{r:?}");
    }
}
