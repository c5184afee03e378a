//! `/log/<drv>`: a derivation's build log from whichever machine of the mesh has it, which is
//! what `nix log --store http://…` asks for (by the derivation's base name; for an output
//! path, Nix first reads the deriver from its narinfo).
//!
//! Logs are not advertised, so the connected peers the source names
//! ([`PathSource::log_holders`], a bounded number) are asked at once, and the first that has
//! the log answers; the request's time limit (`request_timeout`, a `404` past it) bounds the
//! wait. Only peers that serve their logs (`serve_logs`) have any. A log is not signed: it is
//! the word of a peer of the mesh, shown as text, never run.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{debug, warn};

use crate::answer::{malformed, miss};
use crate::source::PathSource;
use crate::substituter::Substituter;
use crate::target::{RequestPathError, Target};

pub async fn build_log<S: PathSource>(
    State(sub): State<Arc<Substituter<S>>>,
    uri: Uri,
) -> Response {
    let drv = match Target::parse(uri.path()) {
        Ok(Target::BuildLog(drv)) => drv,
        Ok(_) | Err(RequestPathError::NotFound) => return miss("no such file"),
        Err(e) => return malformed(e),
    };
    let peers = sub.source.log_holders();
    if peers.is_empty() {
        return miss("no connected peer to ask for build logs");
    }
    let mut asked: FuturesUnordered<_> = peers
        .iter()
        .map(|peer| {
            let (sub, drv) = (&sub, &drv);
            async move { (peer, sub.source.fetch_build_log(peer, drv).await) }
        })
        .collect();
    while let Some((peer, answer)) = asked.next().await {
        match answer {
            Ok(Some(log)) => {
                debug!(%peer, %drv, len = log.len(), "build log");
                let text = HeaderValue::from_static("text/plain; charset=utf-8");
                return ([(CONTENT_TYPE, text)], log).into_response();
            }
            Ok(None) => {}
            Err(e) => warn!(%peer, %drv, "build log from peer not used: {e}"),
        }
    }
    miss("no connected peer gave a build log of this derivation")
}
