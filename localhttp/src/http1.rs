//! Each client connection served by hyper's HTTP/1.1, with the limits on a request's head
//! (its request line and headers) that axum's own `serve` leaves at hyper's defaults:
//! - the head must be whole within the stall limit, counted from when the connection began
//!   to wait for it (accepted, or its last response ended), however it trickles in: the
//!   connection's own stall timer ([`crate::connection`]) is reset by every byte, so a
//!   client sending a header line every few seconds would otherwise hold it for ever;
//! - the head may take at most [`MAX_HEAD_BYTES`]: hyper buffers a head until it ends, by
//!   default up to about 400 kB a connection (1,000 clients sending endless headers took
//!   425 MB).
//!
//! Past either, hyper closes the connection (after a `431` for a head too large). Nix's
//! heads are a few hundred bytes, sent at once. Every request carries its client connection
//! ([`crate::connection::ClientConnection`]) as axum's `ConnectInfo`, for the in-flight mark
//! and the NAR slots.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::serve::Listener;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tower_service::Service;
use tracing::debug;

use crate::connection::StallLimitedListener;

/// The most a request's head may take. Above [`crate::server::MAX_URI_BYTES`], so that a long
/// URI still gets its `414`, and far above Nix's (under 1 KiB); hyper's buffer for a
/// connection's reading grows to this at most (it also bounds what a response queues before
/// hyper writes it out, which costs a NAR nothing: its chunks are written one by one anyway).
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

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
    builder.timer(TokioTimer::new()).header_read_timeout(head_limit).max_buf_size(MAX_HEAD_BYTES);
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
