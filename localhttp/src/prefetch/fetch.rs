//! One prefetch transfer: the NAR from one holder, read whole through [`VerifiedNar`] (the
//! checks of a NAR Nix asks for itself) and then held; any failure drops the entry, silently
//! but for a metric and a debug log, and Nix's own request goes the normal way.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use thiserror::Error;
use tracing::debug;

use super::Inner;
use crate::cache::Verified;
use crate::source::{PathSource, SourceError};
use crate::verified_nar::{Expected, Others, TransferError, VerifiedNar};

/// Why a prefetch transfer gave nothing.
#[derive(Debug, Error)]
enum Failed {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the peer says it has no NAR for it")]
    NotHeld,
    #[error(transparent)]
    Transfer(#[from] TransferError),
    #[error("not whole within {0:?}")]
    TimedOut(std::time::Duration),
}

/// Fetches `verified`'s NAR from `peer` and holds it, or drops its entry.
pub(super) async fn run<S: PathSource>(
    inner: Arc<Inner<S>>,
    verified: Arc<Verified<S::Peer>>,
    peer: S::Peer,
    ended: tokio::sync::watch::Sender<bool>,
) {
    let limit = inner.limits.transfer_timeout;
    let result = match tokio::time::timeout(limit, whole(&inner, &verified, &peer)).await {
        Ok(result) => result,
        Err(_) => Err(Failed::TimedOut(limit)),
    };
    let hash = verified.narinfo.store_path.hash();
    let Some(state) = &inner.state else { return };
    let mut state = state.lock();
    if let Some(busy) = state.in_flight.get_mut(&peer) {
        *busy -= 1;
        if *busy == 0 {
            state.in_flight.remove(&peer);
        }
    }
    state.in_flight_total -= 1;
    match result {
        Ok(bytes) => {
            if let Some(held) = state.nars.get_mut(&hash) {
                held.bytes = Some(bytes);
                held.at = tokio::time::Instant::now();
            }
        }
        Err(e) => {
            debug!(%peer, %hash, "prefetch of a NAR failed: {e}");
            if let Some(held) = state.nars.remove(&hash) {
                state.bytes -= held.size;
            }
            inner.metrics.failed(state.bytes);
        }
    }
    drop(state);
    let _ = ended.send(true);
}

/// The NAR, verified whole.
async fn whole<S: PathSource>(
    inner: &Inner<S>,
    verified: &Verified<S::Peer>,
    peer: &S::Peer,
) -> Result<Bytes, Failed> {
    let narinfo = &verified.narinfo;
    let expected = Expected {
        store_hash: narinfo.store_path.hash(),
        nar_hash: narinfo.nar_hash,
        nar_size: narinfo.nar_size,
        check: verified.check.clone(),
    };
    let stream = inner.source.fetch_nar(peer, expected.store_hash, expected.nar_hash, 0).await?;
    let stream = stream.ok_or(Failed::NotHeld)?;
    // No failover: a failure drops the entry, and Nix's own request tries every holder.
    // Nor a health fault: Nix's own request for the same NAR comes next and records the
    // holder's fault itself, once, as without prefetch. Counted here too, one damaged copy
    // would be two faults, and its holder skipped instead of asked last (a holder's first
    // fault may be a one-off; `PeerHealth` skips it only at the second).
    let others = Others { remaining: Vec::new(), reopen: None, health: None };
    let size = expected.nar_size;
    let mut nar = VerifiedNar::new(expected, peer.clone(), stream, others, inner.idle_timeout)
        .verify_whole_up_to(size);
    nar.first_bytes().await?;
    let mut buffer = BytesMut::with_capacity(usize::try_from(size).unwrap_or(0));
    while let Some(chunk) = nar.next().await {
        buffer.extend_from_slice(&chunk?);
    }
    Ok(buffer.freeze())
}
