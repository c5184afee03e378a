//! The small routes: `/nix-cache-info`, `/<hash>.narinfo`, and the `/_nixmesh/*` JSON the CLI
//! reads. (`/nar/...` streams, and lives in `nar.rs`.)

use std::sync::Arc;

use axum::Extension;
use axum::extract::{ConnectInfo, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::debug;

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

/// The `result` a response counts under in the metrics, when its status alone does not say
/// (see `server::counted`).
#[derive(Debug, Clone, Copy)]
pub struct Outcome(pub &'static str);

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

/// `404` with the reason as text; Nix reads any 404 as "this cache does not have it".
pub fn miss(reason: &str) -> Response {
    debug!(reason, "not found");
    (StatusCode::NOT_FOUND, format!("{reason}\n")).into_response()
}

/// `400` for a path of the right kind in the wrong shape.
pub fn malformed(e: RequestPathError) -> Response {
    debug!("malformed request: {e}");
    (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response()
}

pub fn json(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            ([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode JSON: {e}\n"))
            .into_response(),
    }
}
