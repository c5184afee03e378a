//! The router with its limits, and serving it until shutdown.
//!
//! Limits, outermost first: request URIs over [`MAX_URI_BYTES`] get `414`; a span per request
//! carries its method, kind and store hash; each request is marked in flight on its
//! connection until its response's body ends (so a connection is known to be quiet, see
//! [`crate::connection`]); every route but the NAR download answers within
//! `request_timeout`, and past it a narinfo is a `404` (Nix reads a `5xx` as a broken cache,
//! and a request not answered in time is a path not found in time), the status pages a
//! `503`. All of these are one layer (`front`). Nothing waits for a permit but the work that
//! needs one: narinfo requests that ask peers (at most `max_concurrent_requests` at once, the
//! wait counted in the narinfo deadline), and NAR downloads (`max_concurrent_nars` slots, each
//! held until its body ends; see [`crate::nar_slots`]). Misses, remembered narinfos,
//! `/nix-cache-info` and the status pages never queue behind either. A NAR download starts
//! within the narinfo deadline plus the NAR start deadline, or is a miss; once started, it
//! goes on at the next holder when one stalls or trickles (see [`crate::verified_nar`]).
//! On the listener open to the LAN, every request first waits its turn while the machine's own
//! Nix is at work on the localhost one, within a bound and before any of the time limits above
//! start ([`crate::local_first`]). Under all of these, a client connection on which nothing
//! moves for the stall limit is closed, and what it held is given back
//! ([`crate::connection`]); so is one whose request's head is not whole within that limit, or
//! grows past 128 KiB ([`crate::http1`]).
//!
//! Every request is counted by kind and result in [`Metrics`] (a NAR once its body has ended
//! or been cut off), and the time to a narinfo hit or a NAR's first bytes is recorded.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_LENGTH;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body::{Frame, SizeHint};
use tokio::net::TcpListener;
use tracing::{Instrument, debug, field, info_span, warn};

use crate::answer::{self, Outcome};
use crate::config::Config;
use crate::connection::{ClientConnection, StallLimitedListener, connections_for_open_file_limit};
use crate::health::PeerHealth;
use crate::held_body::Holding;
use crate::local_first::{LocalFirst, Role, Yielding};
use crate::metrics::{Metrics, kind, result, stage};
use crate::node_view::NodeView;
use crate::source::PathSource;
use crate::substituter::Substituter;
use crate::target::{RequestPathError, Target};
use crate::{build_log, http1, nar, routes, trim, why};

/// The longest request URI accepted; Nix's are under 100 bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// How long [`serve`] waits, after the shutdown signal, for requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The substituter's routes over `source`, and the status pages and `/metrics` over `view`,
/// with the limits in the module docs, counting into `metrics`; faults of peers are counted in
/// `health`.
pub fn router<S: PathSource>(
    source: Arc<S>,
    view: Arc<dyn NodeView>,
    health: Arc<PeerHealth<S::Peer>>,
    config: Config,
    metrics: Arc<Metrics>,
) -> Router {
    let (request_timeout, status_pages) = (config.request_timeout, config.status_pages);
    let (local_first, role) = (config.local_first.clone(), config.role);
    let substituter = Arc::new(Substituter::new(source, health, config));
    let prefix = if role == Role::Lan { "lan_" } else { "" };
    substituter.prefetch.metrics().register(&metrics, prefix);
    let pages = Router::new()
        .route("/_nixmesh/peers", get(routes::peers))
        .route("/_nixmesh/status", get(routes::status))
        .route("/metrics", get(routes::metrics))
        .with_state((view.clone(), metrics.clone()));
    let why_state = why::WhyState {
        sub: substituter.clone(),
        view,
        limits: Default::default(),
        refused: Default::default(),
    };
    let why = Router::new()
        .route("/_nixmesh/why/{hash}", get(why::why::<S>))
        .with_state(Arc::new(why_state));
    // Every route but the NAR download is answered within `request_timeout` (by `front`).
    let mut answered_in_time = Router::new()
        .route("/nix-cache-info", get(routes::cache_info::<S>))
        .route("/{file}", get(routes::narinfo::<S>))
        .route("/log/{drv}", get(build_log::build_log::<S>))
        .fallback(routes::not_found)
        .with_state(substituter.clone());
    if status_pages {
        answered_in_time = answered_in_time.merge(pages).merge(why);
    }
    // NAR downloads take a slot of their own in the handler, after the index has said the
    // path is held: however many are under way, nothing else queues behind them.
    let nar_routes = get(nar::nar::<S>).head(nar::head::<S>);
    let nars = Router::new().route("/nar/{file}", nar_routes).with_state(substituter);
    let front_state = Front { metrics, limit: request_timeout, local_first, role };
    nars.merge(answered_in_time).layer(from_fn_with_state(Arc::new(front_state), front))
}

/// What [`front`] needs besides the request.
struct Front {
    metrics: Arc<Metrics>,
    /// `request_timeout`.
    limit: Duration,
    local_first: LocalFirst,
    role: Role,
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting and waits
/// up to [`SHUTDOWN_GRACE`] for requests in flight. A connection on which nothing moves for
/// `client_stall`, or whose request's head is not whole within it, is closed; at most as many
/// are open at once as the open-file limit leaves room for (see [`crate::connection`] and
/// [`crate::http1`]); the heap is trimmed after bursts of them (`trim.rs`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    client_stall: Duration,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stopping, stopped) = tokio::sync::oneshot::channel();
    let signal = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let max_connections = connections_for_open_file_limit();
    let listener = StallLimitedListener::new(listener, client_stall, max_connections);
    let trim = trim::after_bursts(listener.connections().clone());
    let server = http1::serve_until(listener, router, client_stall, signal);
    let grace_over = async {
        if stopped.await.is_err() {
            // The server ended without a shutdown signal; it answers for itself below.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        () = server => Ok(()),
        () = trim => Ok(()),
        () = grace_over => {
            warn!(grace = ?SHUTDOWN_GRACE, "requests still in flight at shutdown are dropped");
            Ok(())
        }
    }
}

/// What every request goes through, in one layer (each layer of its own cost a clone of the
/// router and a boxed future a request, together a fifth of a narinfo miss's time): a URI
/// over [`MAX_URI_BYTES`] gets `414`; then a span with the method, kind and store hash; the
/// request marked in flight on its connection until its response's body ends; on the
/// localhost listener, marked as the machine's own Nix's until then too, and on the LAN's,
/// waiting first for the machine's own Nix ([`crate::local_first`]: before `limit` starts, so
/// a wait never makes a miss, and for a NAR before each chunk too); answered within `limit`
/// unless it is a NAR download ([`within`]); and counted in the metrics by kind and result
/// ([`count`]).
async fn front(State(front): State<Arc<Front>>, request: Request, next: Next) -> Response {
    let len = request.uri().path_and_query().map_or(0, |pq| pq.as_str().len());
    if len > MAX_URI_BYTES {
        debug!(len, "request URI too long");
        return (StatusCode::URI_TOO_LONG, "request URI too long\n").into_response();
    }
    let path = request.uri().path();
    let target = Target::parse(path);
    let kind = request_kind(path, &target);
    let (span_kind, hash) = match &target {
        Ok(target) => (target.kind(), target.store_hash()),
        Err(RequestPathError::Malformed { .. }) => ("malformed", None),
        Err(RequestPathError::NotFound) => ("unknown", None),
    };
    let span =
        info_span!("request", method = %request.method(), kind = span_kind, hash = field::Empty);
    if let Some(hash) = hash {
        span.record("hash", field::display(hash));
    }
    let connection =
        request.extensions().get::<ConnectInfo<ClientConnection>>().map(|c| c.0.clone());
    async move {
        let in_flight = connection.map(|c| c.request());
        let local = front.local_first.mark(front.role, kind);
        let lan = front.role == Role::Lan;
        if let Some(waited) = if lan { front.local_first.lan_turn().await } else { None } {
            front.metrics.lan_yielded(waited);
        }
        let started = Instant::now();
        let mut response = match kind {
            kind::NAR => next.run(request).await,
            _ => within(front.limit, kind, next.run(request)).await,
        };
        debug!(status = response.status().as_u16(), "responded");
        if lan && kind == kind::NAR {
            let (parts, body) = response.into_parts();
            let (gate, metrics) = (front.local_first.clone(), front.metrics.clone());
            response = Response::from_parts(parts, Body::new(Yielding::new(body, gate, metrics)));
        }
        let response = count(&front.metrics, kind, started, response);
        match (in_flight, local) {
            (None, None) => response,
            held => {
                let (parts, body) = response.into_parts();
                Response::from_parts(parts, Body::new(Holding { body, _held: held }))
            }
        }
    }
    .instrument(span)
    .await
}

/// What `path` asks for, as the metrics' `kind` label says it.
fn request_kind(path: &str, target: &Result<Target, RequestPathError>) -> &'static str {
    match target {
        Ok(Target::NarInfo(_)) | Err(RequestPathError::Malformed { kind: "narinfo", .. }) => {
            kind::NARINFO
        }
        Ok(Target::Nar(_)) | Err(RequestPathError::Malformed { kind: "NAR", .. }) => kind::NAR,
        Ok(Target::CacheInfo) => kind::CACHE_INFO,
        Ok(Target::Listing(_)) | Err(RequestPathError::Malformed { kind: "listing", .. }) => {
            kind::LISTING
        }
        Ok(Target::BuildLog(_)) | Err(RequestPathError::Malformed { kind: "log", .. }) => {
            kind::BUILD_LOG
        }
        Ok(Target::Peers | Target::Status) => kind::STATUS_PAGE,
        _ if path == "/metrics" || path.starts_with("/_nixmesh/") => kind::STATUS_PAGE,
        _ => kind::OTHER,
    }
}

/// The `result` of a response whose handler did not say (with an [`Outcome`]).
fn result_of(kind: &'static str, status: StatusCode) -> &'static str {
    match status {
        StatusCode::OK if kind == kind::NARINFO => result::HIT,
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => result::OK,
        StatusCode::NOT_FOUND => result::MISS,
        s if s.is_client_error() => result::MALFORMED,
        _ => result::ERROR,
    }
}

/// Counts each request by kind and result, and times narinfo hits and NARs' first bytes. A
/// NAR that starts is counted when its body ends ([`CountedNar`]).
fn count(
    metrics: &Arc<Metrics>,
    kind: &'static str,
    started: Instant,
    response: Response,
) -> Response {
    let status = response.status();
    let result = match response.extensions().get::<Outcome>() {
        Some(Outcome(result)) => result,
        None => result_of(kind, status),
    };
    let seconds = started.elapsed().as_secs_f64();
    // A NAR or a part of one is counted once its body ends; a handler's own outcome (`HEAD`,
    // no body) at once.
    let streamed = matches!(status, StatusCode::OK | StatusCode::PARTIAL_CONTENT);
    if kind == kind::NAR && streamed && response.extensions().get::<Outcome>().is_none() {
        metrics.fetched(stage::NAR_FIRST_BYTE, seconds);
        let length = response.headers().get(CONTENT_LENGTH);
        let length = length.and_then(|l| l.to_str().ok()?.parse().ok());
        let (parts, body) = response.into_parts();
        let metrics = metrics.clone();
        let body = CountedNar { body, metrics, length, passed: 0, counted: false };
        return Response::from_parts(parts, Body::new(body));
    }
    if kind == kind::NARINFO && result == result::HIT {
        metrics.fetched(stage::NARINFO, seconds);
    }
    metrics.request(kind, result);
    response
}

/// A NAR's response body that counts the request once it ends: `ok` when every byte of its
/// `Content-Length` went out (the verified NAR holds its last bytes back until they match),
/// `aborted` when it failed or was dropped before.
struct CountedNar {
    body: Body,
    metrics: Arc<Metrics>,
    length: Option<u64>,
    passed: u64,
    counted: bool,
}

impl CountedNar {
    fn count(&mut self, result: &'static str) {
        if !self.counted {
            self.counted = true;
            self.metrics.request(kind::NAR, result);
        }
    }
}

impl Drop for CountedNar {
    fn drop(&mut self) {
        let whole = self.length.is_some_and(|l| l == self.passed);
        self.count(if whole { result::OK } else { result::ABORTED });
    }
}

impl HttpBody for CountedNar {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.passed += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            Poll::Ready(Some(Err(_))) => this.count(result::ABORTED),
            Poll::Ready(None) if this.length.is_none_or(|l| l == this.passed) => {
                this.count(result::OK)
            }
            Poll::Ready(None) => this.count(result::ABORTED),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The request, answered within `limit`; past it a miss for what Nix asks (a server error
/// would make Nix give up on the cache), a `503` for the status pages, which only people and
/// the CLI read.
async fn within(
    limit: Duration,
    kind: &'static str,
    answer: impl Future<Output = Response>,
) -> Response {
    match tokio::time::timeout(limit, answer).await {
        Ok(response) => response,
        Err(_) if kind == kind::STATUS_PAGE => {
            warn!(?limit, "status page not ready in time");
            (StatusCode::SERVICE_UNAVAILABLE, "not ready in time\n").into_response()
        }
        Err(_) => {
            warn!(?limit, "request not answered in time: a miss");
            let mut response = answer::miss("not found in time");
            response.extensions_mut().insert(Outcome(result::MISS));
            response
        }
    }
}
