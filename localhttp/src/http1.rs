//! Each client connection served by hyper's HTTP/1.1, with limits on a request's head (its
//! request line and headers) that axum's own `serve` leaves at hyper's defaults:
//! - the head must be whole within the stall limit, counted from when the connection began
//!   to wait for it (accepted, or its last response ended), however it trickles in: the
//!   connection's own stall timer ([`crate::connection`]) is reset by every byte, so a
//!   client sending a header line every few seconds would otherwise hold it for ever
//!   (hyper's `header_read_timeout`);
//! - the head may take at most [`MAX_HEAD_BYTES`] ([`HeadLimited`]): hyper buffers a head
//!   until it ends, by default up to about 400 kB a connection (1,000 clients sending
//!   endless headers took 425 MB).
//!
//! Past either, the connection is closed. Nix's heads are a few hundred bytes, sent at once.
//! Every request carries its client connection ([`crate::connection::ClientConnection`]) as
//! axum's `ConnectInfo`, for the in-flight mark and the NAR slots.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tower_service::Service;
use tracing::debug;

use crate::connection::{StallLimited, StallLimitedListener};

/// The most a request's head may take: far above Nix's (under 1 KiB), and above a long URI's
/// (one of 100,000 bytes, say), which gets its `414` from the router rather than a connection
/// closed unanswered; a quarter of hyper's default buffer, so 1,000 clients sending endless
/// heads hold 128 MiB at most, given back when they go (`trim.rs`).
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// Serves `router` on the connections of `listener` until `shutdown` completes; then stops
/// accepting, lets each connection finish the request it is answering, and returns once all
/// have closed. A request's head must arrive within `head_limit` (see the module docs).
pub(crate) async fn serve_until(
    mut listener: StallLimitedListener,
    router: Router,
    head_limit: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(head_limit);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let io = tokio::select! {
            (io, _) = listener.accept() => io,
            () = &mut shutdown => break,
        };
        let connection = io.client().cloned();
        let router = router.clone();
        let service = service_fn(move |mut request: hyper::Request<Incoming>| {
            if let Some(connection) = &connection {
                request.extensions_mut().insert(ConnectInfo(connection.clone()));
            }
            router.clone().call(request.map(Body::new))
        });
        let io = HeadLimited { inner: io, arrived: 0, head: 0 };
        let served = graceful.watch(builder.serve_connection(TokioIo::new(io), service));
        tokio::spawn(async move {
            if let Err(e) = served.await {
                debug!("client connection ended: {e}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// A connection whose reading fails once a request's head passes [`MAX_HEAD_BYTES`]: the
/// bytes read while no request is in flight, since the last one arrived, are the next one's
/// head. (Hyper's own bound, `max_buf_size`, also bounds what it queues of a response before
/// writing it out; at 32 KiB, stalled NAR downloads were then not always cut off at their
/// write limit, so the bound is kept here, on the reading alone.) Pipelined requests read
/// while one is in flight are not counted: hyper's default bound is theirs.
struct HeadLimited {
    inner: StallLimited<TcpStream>,
    /// The requests arrived when the head being counted began.
    arrived: u64,
    head: usize,
}

impl AsyncRead for HeadLimited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let Some(connection) = this.inner.client() else {
            return Poll::Ready(Ok(()));
        };
        let (arrived, in_flight) = connection.requests_seen();
        if arrived != this.arrived {
            (this.arrived, this.head) = (arrived, 0);
        }
        if !in_flight {
            this.head += buf.filled().len() - before;
            if this.head > MAX_HEAD_BYTES {
                debug!(remote = %connection.remote(), "closing a client connection: a request head over {MAX_HEAD_BYTES} bytes");
                let e = format!("a request head over {MAX_HEAD_BYTES} bytes");
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for HeadLimited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, bytes)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
