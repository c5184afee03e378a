//! Serving one of the node's protocols to peers: every inbound stream on a task of its own,
//! within limits, without ever stalling the accept loop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::{PeerId, Stream};
use tokio::sync::{Semaphore, watch};
use tracing::{Instrument, Span, debug, warn};

use super::Mesh;

/// How many streams of one protocol are served at once, and how many more may wait (each
/// for at most `max_wait`) for a turn. A stream beyond both is closed at once, so the peer
/// learns right away to try elsewhere instead of finding out by a time-out.
#[derive(Debug, Clone, Copy)]
pub struct StreamLimits {
    pub concurrent: usize,
    pub waiting: usize,
    pub max_wait: Duration,
}

/// Accepts `protocol`'s streams until `shutdown` and runs `handle` on each (in `span(peer)`),
/// within `limits`.
pub async fn serve_streams<H, F>(
    mesh: &Mesh,
    protocol: &'static str,
    limits: StreamLimits,
    mut shutdown: watch::Receiver<bool>,
    span: impl Fn(PeerId) -> Span,
    handle: H,
) where
    H: Fn(PeerId, Stream) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut incoming = match mesh.control().accept(Mesh::protocol(protocol)) {
        Ok(incoming) => incoming,
        Err(e) => return warn!(protocol, "cannot accept streams: {e}"),
    };
    let admitted = Arc::new(Semaphore::new(limits.concurrent + limits.waiting));
    let running = Arc::new(Semaphore::new(limits.concurrent));
    loop {
        let (peer, stream) = tokio::select! {
            _ = shutdown.changed() => return,
            next = incoming.next() => match next {
                Some(next) => next,
                None => return,
            },
        };
        let Ok(admission) = admitted.clone().try_acquire_owned() else {
            warn!(%peer, protocol, "refusing a stream: {} served or waiting", limits.concurrent + limits.waiting);
            continue;
        };
        let running = running.clone();
        let work = handle(peer, stream);
        tokio::spawn(
            async move {
                let Ok(Ok(turn)) =
                    tokio::time::timeout(limits.max_wait, running.acquire_owned()).await
                else {
                    return debug!("dropped: no turn within {:?}", limits.max_wait);
                };
                work.await;
                drop((turn, admission));
            }
            .instrument(span(peer)),
        );
    }
}
