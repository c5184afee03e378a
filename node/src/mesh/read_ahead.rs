//! Large reads from a connection's socket, whatever size its readers ask for.
//!
//! libp2p's noise reads its frames through a codec that asks the socket for 8 KiB at a time,
//! so a NAR arriving at wire speed costs a `recvmsg` every 8 KiB (131,072 system calls a
//! GiB), rustls reads at most 4 KiB at a time under TLS, and pnet reads in whatever size the
//! protocol above it asks. [`ReadAhead`] sits right on the TCP socket: when its buffer is
//! empty it reads up to [`READ_AHEAD`] bytes at once and hands them out from memory, so the
//! same GiB takes a few thousand reads. A read at least as large as the buffer bypasses it.
//! Writes pass straight through.
//!
//! The buffer starts at [`READ_MIN`] and doubles, up to [`READ_AHEAD`], each time one read
//! fills it; a read that fills less than an eighth of a grown buffer shrinks it back. A busy
//! connection so reads in large pieces and a quiet one (pings, narinfos) holds 32 KiB.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures::{AsyncRead, AsyncWrite};

/// How much one read from the socket may take, at most.
pub const READ_AHEAD: usize = 256 * 1024;
/// The buffer of a connection that carries little.
pub const READ_MIN: usize = 32 * 1024;

/// A socket whose small reads are served from one large one.
#[derive(Debug)]
pub struct ReadAhead<S> {
    inner: S,
    buffer: Box<[u8]>,
    /// The unread bytes are `buffer[start..end]`.
    start: usize,
    end: usize,
}

impl<S> ReadAhead<S> {
    pub fn new(inner: S) -> Self {
        ReadAhead { inner, buffer: Box::default(), start: 0, end: 0 }
    }

    fn copy_out(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.end - self.start);
        buf[..n].copy_from_slice(&self.buffer[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        n
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.start < this.end {
            return Poll::Ready(Ok(this.copy_out(buf)));
        }
        if buf.len() >= READ_AHEAD {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.buffer.is_empty() {
            this.buffer = vec![0; READ_MIN].into_boxed_slice();
        }
        let n = ready!(Pin::new(&mut this.inner).poll_read(cx, &mut this.buffer))?;
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        this.end = n;
        let copied = this.copy_out(buf);
        let size = this.buffer.len();
        let resize = if n == size && size < READ_AHEAD {
            Some(size * 2)
        } else if n < size / 8 && size > READ_MIN {
            Some(READ_MIN)
        } else {
            None
        };
        if let Some(new_size) = resize {
            let mut grown = vec![0; new_size.max(this.end - this.start)].into_boxed_slice();
            let left = this.end - this.start;
            grown[..left].copy_from_slice(&this.buffer[this.start..this.end]);
            this.buffer = grown;
            this.start = 0;
            this.end = left;
        }
        Poll::Ready(Ok(copied))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::{AsyncReadExt, Cursor};

    /// Reads `data` through a [`ReadAhead`] in pieces of `piece` bytes.
    fn read_all(data: &[u8], piece: usize) -> Vec<u8> {
        let mut reader = ReadAhead::new(Cursor::new(data.to_vec()));
        let mut out = Vec::new();
        let mut buf = vec![0; piece];
        futures::executor::block_on(async {
            for _ in 0..data.len() + 1 {
                let n = reader.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
        });
        out
    }

    #[test]
    fn every_byte_in_order_whatever_the_read_size() {
        let data: Vec<u8> = (0..READ_AHEAD * 3 + 12_345).map(|i| (i * 7 % 251) as u8).collect();
        for piece in [1, 7, 8 * 1024, READ_AHEAD - 1, READ_AHEAD, READ_AHEAD * 2] {
            assert_eq!(read_all(&data, piece), data, "reads of {piece} bytes");
        }
    }

    #[test]
    fn the_buffer_grows_while_reads_fill_it() {
        let data = vec![1u8; READ_AHEAD * 4];
        let mut reader = ReadAhead::new(Cursor::new(data));
        let mut buf = vec![0; 8 * 1024];
        futures::executor::block_on(async {
            for _ in 0..READ_AHEAD * 2 / buf.len() {
                assert_eq!(reader.read(&mut buf).await.unwrap(), buf.len());
            }
        });
        assert_eq!(reader.buffer.len(), READ_AHEAD);
    }

    #[test]
    fn a_small_read_shrinks_a_grown_buffer() {
        let mut reader = ReadAhead::new(Cursor::new(b"ping".to_vec()));
        reader.buffer = vec![0; READ_AHEAD].into_boxed_slice();
        let mut buf = [0; 2];
        futures::executor::block_on(async {
            assert_eq!(reader.read(&mut buf).await.unwrap(), 2);
            assert_eq!(reader.buffer.len(), READ_MIN);
            assert_eq!(reader.read(&mut buf).await.unwrap(), 2);
            assert_eq!(&buf, b"ng");
            assert_eq!(reader.read(&mut buf).await.unwrap(), 0);
        });
    }
}
