//! Client connections that cannot hold the substituter forever: each accepted socket is
//! wrapped so that a read or a write that makes no progress for the stall limit fails, and
//! hyper then closes the connection, giving back its request permit, its NAR stream and its
//! descriptor.
//!
//! "Progress" is any byte moving either way: a keep-alive connection waiting for its next
//! request is idle once nothing has moved for the limit; a NAR download stalls once the
//! client has taken nothing for the limit (its socket buffer full); a request being answered
//! is neither, since its request bytes just moved. The limit must be longer than the longest
//! time a response may take to start (the narinfo and NAR start deadlines).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tracing::{debug, warn};

/// How long accepting pauses after an error such as running out of file descriptors (which
/// would otherwise fail again at once, in a busy loop).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// A listener whose connections have a stall limit (and TCP_NODELAY).
pub struct StallLimitedListener {
    inner: TcpListener,
    stall: Duration,
    /// When a refusal was last logged, so that a flood logs a line a second, not a line a
    /// connection.
    last_warning: Option<Instant>,
}

impl StallLimitedListener {
    pub fn new(inner: TcpListener, stall: Duration) -> Self {
        StallLimitedListener { inner, stall, last_warning: None }
    }
}

impl axum::serve::Listener for StallLimitedListener {
    type Io = StallLimited<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((tcp, addr)) => {
                    // Without TCP_NODELAY a small NAR's body, written after its headers,
                    // waits for the client's delayed ACK (Nagle): a 40 ms stall per path.
                    if let Err(e) = tcp.set_nodelay(true) {
                        debug!("cannot set TCP_NODELAY: {e}");
                    }
                    return (StallLimited::new(tcp, self.stall), addr);
                }
                Err(e) => {
                    let now = Instant::now();
                    if self.last_warning.is_none_or(|t| now - t > Duration::from_secs(1)) {
                        warn!("cannot accept a connection ({e}); clients are refused meanwhile");
                        self.last_warning = Some(now);
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// `inner`, with reads and writes that fail once nothing has moved for `stall`.
pub struct StallLimited<T> {
    inner: T,
    stall: Duration,
    last_progress: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<T> StallLimited<T> {
    pub fn new(inner: T, stall: Duration) -> Self {
        let now = Instant::now();
        StallLimited {
            inner,
            stall,
            last_progress: now,
            timer: Box::pin(tokio::time::sleep_until(now + stall)),
        }
    }

    fn moved(&mut self) {
        self.last_progress = Instant::now();
    }

    /// A write's outcome, with progress recorded and a stall turned into an error.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    self.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.check(cx, "writing the response").map(|r| r.map(|()| 0)),
        }
    }

    /// Called when the inner I/O is pending: an error once nothing moved for `stall`.
    fn check(&mut self, cx: &mut Context<'_>, doing: &str) -> Poll<io::Result<()>> {
        let deadline = self.last_progress + self.stall;
        if self.timer.deadline() != deadline {
            self.timer.as_mut().reset(deadline);
        }
        ready!(self.timer.as_mut().poll(cx));
        debug!(stall = ?self.stall, "closing a client connection: {doing} made no progress");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{doing}: nothing moved for {:?}", self.stall),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallLimited<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check(cx, "reading the request"),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallLimited<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, bytes);
        this.after_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(result) => Poll::Ready(result),
            Poll::Pending => this.check(cx, "writing the response"),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn a_silent_peer_times_out_and_a_talking_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut limited = StallLimited::new(a, Duration::from_millis(100));
        let mut buf = [0u8; 8];
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(60)).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(limited.read(&mut buf).await.unwrap(), 1, "bytes keep it alive");
        }
        let err = limited.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_reader_that_stops_reading_fails_the_writer() {
        let (a, _b) = tokio::io::duplex(1024);
        let mut limited = StallLimited::new(a, Duration::from_millis(100));
        let started = Instant::now();
        let err = limited.write_all(&vec![0u8; 64 * 1024]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(100));
    }
}
