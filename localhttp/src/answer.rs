//! The plain answers every route gives: a miss, a malformed request, JSON, and the mark of
//! how a response counts in the metrics. Below the routes, so each route's module (the
//! narinfo's, the NAR's, the listing's, the logs', `why`'s) takes them from here rather than
//! from the module that dispatches to it.

use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tracing::debug;

use crate::target::RequestPathError;

/// The `result` a response counts under in the metrics, when its status alone does not say
/// (see `server::counted`).
#[derive(Debug, Clone, Copy)]
pub struct Outcome(pub &'static str);

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
