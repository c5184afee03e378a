//! `/<hash>.ls`: a path's NAR listing (the JSON Nix writes with `write-nar-listing`), for
//! tools that look inside a path without downloading it.
//!
//! The narinfo comes first, by the same rule as `/<hash>.narinfo` (a listing is served only
//! for a path whose narinfo verifies); then the listing of exactly that NAR is asked of its
//! holders, the one that gave the narinfo first. A holder makes it from its store's files, so
//! only the listing crosses the mesh. What can be checked without the NAR is checked (the
//! JSON's shape, and that every file lies within the signed `NarSize`); the rest is the
//! holder's word, as a listing in any binary cache is its server's. Listings are remembered
//! beside the narinfos, for their `NarHash` only ([`cache::ListingCache`]).

pub mod cache;

use std::sync::Arc;

use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use nixmesh_protocol::StorePathHash;
use thiserror::Error;
use tokio::time::Instant;
use tracing::debug;

use cache::{BadListing, check};

use crate::answer::{Outcome, miss};
use crate::holders::{Miss, first_of};
use crate::metrics::result;
use crate::source::{PathSource, SourceError};
use crate::substituter::Substituter;

/// Answers `/<hash>.ls`; see the module docs.
pub async fn listing<S: PathSource>(sub: Arc<Substituter<S>>, hash: StorePathHash) -> Response {
    let started = Instant::now();
    let holders = sub.holders_or_reconnecting(&hash).await;
    if holders.is_empty() {
        return miss("no connected peer has this path");
    }
    let Some(verified) = sub.narinfo(hash, &holders).await else {
        let mut response = miss("no peer gave a narinfo with a trusted signature for this path");
        response.extensions_mut().insert(Outcome(result::REFUSED));
        return response;
    };
    let (nar_hash, nar_size) = (verified.narinfo.nar_hash, verified.narinfo.nar_size);
    if let Some(body) = sub.listings.get(&hash, &nar_hash) {
        return json(body);
    }
    // The peer whose narinfo verified holds that NarHash; the others likely do too.
    let mut order = vec![verified.peer.clone()];
    order.extend(holders.into_iter().filter(|p| *p != verified.peer));
    let deadline = sub.config.request_timeout.saturating_sub(started.elapsed());
    let ask = |peer: &S::Peer, _: &[S::Peer]| {
        let (peer, sub) = (peer.clone(), &sub);
        async move {
            let answer = sub.source.fetch_listing(&peer, hash, nar_hash).await;
            let body = answer.map_err(|e| Miss::Because(NoListing::Source(e)))?;
            let body = body.ok_or(Miss::Because(NoListing::NotHeld))?;
            check(&body, nar_size).map_err(|e| Miss::Because(NoListing::Bad(e)))?;
            Ok::<_, Miss<NoListing>>(body)
        }
    };
    let per_holder = sub.config.narinfo_deadline;
    match first_of(&order, hash, "listing", per_holder, deadline, ask).await {
        Some((peer, body)) => {
            debug!(%peer, len = body.len(), "listing");
            sub.listings.insert(hash, nar_hash, body.clone());
            json(body)
        }
        None => miss("no holder gave a listing of this path"),
    }
}

fn json(body: Bytes) -> Response {
    ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

/// Why a holder's listing was not used.
#[derive(Debug, Error)]
enum NoListing {
    #[error(transparent)]
    Source(SourceError),
    #[error("it says it has no listing")]
    NotHeld,
    #[error("a bad listing: {0}")]
    Bad(BadListing),
}
