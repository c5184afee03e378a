//! The small routes: `/nix-cache-info`, `/<hash>.narinfo`, and the `/_nixmesh/*` JSON the CLI
//! reads. (`/nar/...` streams, and lives in `nar.rs`.)

use std::sync::Arc;

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, Uri};
use axum::response::{IntoResponse, Response};

use crate::answer::{Outcome, json, malformed, miss};
use crate::connection::ClientConnection;
use crate::metrics::{Metrics, result};
use crate::node_view::NodeView;
use crate::source::PathSource;
use crate::substituter::Substituter;
use crate::target::{RequestPathError, Target};

pub async fn cache_info<S: PathSource>(State(sub): State<Arc<Substituter<S>>>) -> Response {
    let body = format!(
        "StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n",
        nixmesh_protocol::store_path::STORE_DIR,
        sub.config.priority
    );
    ([(CONTENT_TYPE, HeaderValue::from_static("text/x-nix-cache-info"))], body).into_response()
}

/// A narinfo miss is answered from the source's local state alone, before any network wait,
/// except while a peer that holds the path is expected back (see
/// [`PathSource::holders_reconnecting`]).
pub async fn narinfo<S: PathSource>(
    State(sub): State<Arc<Substituter<S>>>,
    uri: Uri,
    client: Option<Extension<ConnectInfo<ClientConnection>>>,
) -> Response {
    let hash = match Target::parse(uri.path()) {
        Ok(Target::NarInfo(hash)) => hash,
        // `/<hash>.ls` shares the route's shape.
        Ok(Target::Listing(hash)) => return crate::listing::listing(sub, hash).await,
        Ok(_) | Err(RequestPathError::NotFound) => return miss("no such file"),
        Err(e) => return malformed(e),
    };
    let holders = sub.holders_or_reconnecting(&hash).await;
    if holders.is_empty() {
        return miss("no connected peer has this path");
    }
    match sub.narinfo(hash, &holders).await {
        Some(verified) => {
            let host = client.map(|Extension(ConnectInfo(c))| c.remote().ip());
            sub.prefetch.narinfo_asked(host, &verified);
            let text = verified.for_nix.clone();
            ([(CONTENT_TYPE, HeaderValue::from_static("text/x-nix-narinfo"))], text).into_response()
        }
        None => {
            let mut response =
                miss("no peer gave a narinfo with a trusted signature for this path");
            response.extensions_mut().insert(Outcome(result::REFUSED));
            response
        }
    }
}

/// What the status pages read.
pub type Pages = (Arc<dyn NodeView>, Arc<Metrics>);

pub async fn peers(State((view, _)): State<Pages>) -> Response {
    json(&view.peers())
}

pub async fn status(State((view, metrics)): State<Pages>) -> Response {
    json(&crate::node_view::NodeStatus { requests: metrics.request_counts(), ..view.status() })
}

/// `GET /metrics`: Prometheus' scrape, in the OpenMetrics text format.
pub async fn metrics(State((view, metrics)): State<Pages>) -> Response {
    let text = metrics.encode(&view.status());
    let kind = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(CONTENT_TYPE, HeaderValue::from_static(kind))], text).into_response()
}

pub async fn not_found() -> Response {
    miss("no such file")
}
