//! `GET /nar/<hash>-<narhash>.nar`: the NAR of a verified narinfo, streamed from a holder
//! through [`VerifiedNar`], holding one of the NAR slots (taken only once the path is known
//! to be held, so a miss never waits for one) until its body ends; or one byte range of it
//! ([`crate::nar_range`]). `HEAD` answers from the verified narinfo, with no transfer.

use std::ops::Range;
use std::sync::Arc;

use axum::Extension;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use thiserror::Error;
use tracing::debug;

use crate::answer::{Outcome, malformed, miss};
use crate::cache::Verified;
use crate::connection::ClientConnection;
use crate::held_body::Holding;
use crate::holders::{Miss, first_of};
use crate::metrics::result;
use crate::nar_range::{self, Ask, PartOf};
use crate::source::{PathSource, SourceError};
use crate::substituter::Substituter;
use crate::target::{NarFile, RequestPathError, Target};
use crate::verified_nar::{Expected, Others, Reopen, VerifiedNar};

/// Why a holder's NAR was not used before the response started.
#[derive(Debug, Error)]
enum Unused {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the peer says it has no NAR for it")]
    NotHeld,
}

/// `GET`: the NAR, or the part of it a `Range` asks for (see [`crate::nar_range`]).
pub async fn nar<S: PathSource>(
    State(sub): State<Arc<Substituter<S>>>,
    uri: Uri,
    request_headers: HeaderMap,
    client: Option<Extension<ConnectInfo<ClientConnection>>>,
) -> Response {
    let (file, verified, holders) = match lookup(&sub, &uri).await {
        Ok(found) => found,
        Err(miss) => return miss,
    };
    let expected = Expected {
        store_hash: file.store_hash,
        nar_hash: verified.narinfo.nar_hash,
        nar_size: verified.narinfo.nar_size,
        check: verified.check.clone(),
    };
    let nar_size = expected.nar_size;
    let part = match Ask::of(&request_headers, nar_size) {
        Ask::Unsatisfiable => return nar_range::unsatisfiable(nar_size),
        Ask::Part(part) if nar_range::servable(&part, nar_size) => Some(part),
        Ask::Part(_) | Ask::Whole => None,
    };
    let host = client.as_ref().map(|Extension(ConnectInfo(c))| c.remote().ip());
    let prefetched = sub.prefetch.take(&file).await;
    sub.prefetch.nar_asked(host, &verified);
    if let Some(bytes) = prefetched {
        return from_memory(bytes, part, nar_size);
    }
    let slot = sub.nar_slots.acquire(client.map(|Extension(ConnectInfo(c))| c)).await;
    let Some(nar) =
        open(&sub, expected, sub.health.order(preferred_first(holders, &verified.peer))).await
    else {
        return miss("no holder sent the NAR");
    };
    if let Some(parker) = nar.parker() {
        slot.parks(parker);
    }
    let mut headers = nar_headers(nar_size);
    let (status, body) = match part {
        Some(part) => {
            headers.insert(CONTENT_RANGE, nar_range::content_range(&part, nar_size));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(part.end - part.start));
            let body = Body::from_stream(PartOf::new(nar, part, nar_size));
            (StatusCode::PARTIAL_CONTENT, body)
        }
        None => (StatusCode::OK, Body::from_stream(nar)),
    };
    let body = Holding { body, _held: slot };
    (status, headers, Body::new(body)).into_response()
}

/// A prefetched NAR (verified whole, see [`crate::prefetch`]), or `part` of it: no holder
/// asked and no NAR slot taken.
fn from_memory(bytes: Bytes, part: Option<Range<u64>>, nar_size: u64) -> Response {
    let mut headers = nar_headers(nar_size);
    match part {
        Some(part) => {
            headers.insert(CONTENT_RANGE, nar_range::content_range(&part, nar_size));
            headers.insert(CONTENT_LENGTH, HeaderValue::from(part.end - part.start));
            // `servable` checked the part against `nar_size`, the length of `bytes`.
            let body = bytes.slice(part.start as usize..part.end as usize);
            (StatusCode::PARTIAL_CONTENT, headers, body).into_response()
        }
        None => (StatusCode::OK, headers, bytes).into_response(),
    }
}

/// `HEAD`: the headers `GET` of the whole NAR would have, from the verified narinfo alone:
/// nothing is asked of a holder but the narinfo (if not remembered), no NAR slot taken.
pub async fn head<S: PathSource>(State(sub): State<Arc<Substituter<S>>>, uri: Uri) -> Response {
    match lookup(&sub, &uri).await {
        Ok((_, verified, _)) => {
            let mut response =
                (nar_headers(verified.narinfo.nar_size), Body::empty()).into_response();
            response.extensions_mut().insert(Outcome(result::OK));
            response
        }
        Err(miss) => miss,
    }
}

/// The headers of the whole NAR of `nar_size` bytes, as `GET` and `HEAD` answer them.
fn nar_headers(nar_size: u64) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/x-nix-nar"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(nar_size));
    headers.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers
}

/// The NAR `uri` names, its verified narinfo and its holders; or the response for a miss or a
/// malformed path. Never waits for a NAR slot.
async fn lookup<S: PathSource>(
    sub: &Substituter<S>,
    uri: &Uri,
) -> Result<(NarFile, Arc<Verified<S::Peer>>, Vec<S::Peer>), Response> {
    let file = match Target::parse(uri.path()) {
        Ok(Target::Nar(file)) => file,
        Ok(_) | Err(RequestPathError::NotFound) => return Err(miss("no such file")),
        Err(e) => return Err(malformed(e)),
    };
    let holders = sub.holders_or_reconnecting(&file.store_hash).await;
    if holders.is_empty() {
        return Err(miss("no connected peer has this path"));
    }
    let Some(verified) = sub.narinfo(file.store_hash, &holders).await else {
        return Err(miss("no peer gave a narinfo with a trusted signature for this path"));
    };
    if verified.narinfo.nar_hash != file.nar_hash {
        return Err(miss("this is not the NAR hash of the signed narinfo"));
    }
    Ok((file, verified, holders))
}

/// The NAR from the first of `holders` that starts sending it within the first-byte timeout,
/// all of them within the start deadline.
async fn open<S: PathSource>(
    sub: &Substituter<S>,
    expected: Expected,
    holders: Vec<S::Peer>,
) -> Option<VerifiedNar<S::Peer>> {
    let (store_hash, nar_hash) = (expected.store_hash, expected.nar_hash);
    let source = sub.source.clone();
    let reopen: Reopen<S::Peer> = Arc::new(move |peer: S::Peer, offset| {
        let source = source.clone();
        Box::pin(async move { source.fetch_nar(&peer, store_hash, nar_hash, offset).await })
    });
    let attempt = |peer: &S::Peer, remaining: &[S::Peer]| {
        let (peer, remaining, expected) = (peer.clone(), remaining.to_vec(), expected.clone());
        let reopen = Some(reopen.clone());
        async move {
            let stream = sub.source.fetch_nar(&peer, expected.store_hash, expected.nar_hash, 0);
            let stream = stream.await.map_err(|e| Miss::Because(Unused::Source(e)))?;
            let stream = stream.ok_or(Miss::Because(Unused::NotHeld))?;
            let idle = sub.config.nar_idle_timeout;
            let health = Some(sub.health.clone());
            let others = Others { remaining, reopen, health };
            let mut nar = VerifiedNar::new(expected, peer, stream, others, idle)
                .verify_whole_up_to(sub.config.nar_verified_whole_up_to)
                .min_rate(sub.config.nar_min_rate, sub.config.nar_rate_window);
            // The adapter logs its own refusals.
            nar.first_bytes().await.map_err(|_| Miss::Logged)?;
            Ok(nar)
        }
    };
    let (peer, nar) = first_of(
        &holders,
        store_hash,
        "NAR",
        sub.config.nar_first_byte_timeout,
        sub.config.nar_start_deadline,
        attempt,
    )
    .await?;
    debug!(%peer, "NAR transfer started");
    Some(nar)
}

/// `holders` with `preferred` (the peer whose narinfo was verified) first, the others in their
/// order.
fn preferred_first<P: PartialEq>(mut holders: Vec<P>, preferred: &P) -> Vec<P> {
    if let Some(at) = holders.iter().position(|p| p == preferred) {
        holders[..=at].rotate_right(1);
    }
    holders
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verified_peer_goes_first_when_it_still_holds_the_path() {
        assert_eq!(preferred_first(vec!["a", "b", "c", "d"], &"c"), ["c", "a", "b", "d"]);
        assert_eq!(preferred_first(vec!["a", "b"], &"a"), ["a", "b"]);
        assert_eq!(preferred_first(vec!["a", "b"], &"gone"), ["a", "b"]);
    }
}
