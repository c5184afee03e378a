//! Upstream binary caches: where a path no peer holds comes from, once for the whole mesh.
//!
//! [`Upstreams`] asks the configured caches (`--upstream`, in order; by default nix.conf's
//! `substituters` other than this node) for narinfos, all of them within one deadline
//! (`upstream_timeout`, 2 s by default), and downloads NARs, decompressing what the narinfo
//! says (`xz`, `zstd`, `bzip2`, `none`; see [`compression`]). What it finds is remembered for
//! the NAR request that follows; what every cache says it does not have is remembered for
//! [`ABSENT_FOR`], so Nix's burst of narinfo requests for paths no cache has costs the
//! upstream link nothing twice. A cache that does not answer in time, or cannot be reached,
//! is skipped for a while (from [`FIRST_PAUSE`], doubling to [`LONGEST_PAUSE`]; then one
//! request tries it again): an unreachable upstream costs one deadline, not one per path.
//!
//! Trust is not decided here: the substituter checks an upstream's narinfo against the keys
//! it trusts, as it does a peer's, and the NAR's bytes against its `NarHash` as they pass.
//! Which node of the mesh downloads a NAR, and how the others share it, is [`flight`]'s;
//! where it is kept while it arrives, [`spool`]'s.

mod checked;
pub mod compression;
mod error;
pub mod flight;
mod holder;
pub mod spool;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{Stream, StreamExt, TryStreamExt};
use http_body_util::{BodyExt, Empty};
use hyper::StatusCode;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use nixmesh_protocol::nix_conf::SUBSTITUTERS;
use nixmesh_protocol::{NarInfo, StorePathHash};
use nixmesh_telemetry::Counter;
use parking_lot::Mutex;
use serde::Serialize;
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::local::nix_settings::{self, NixConfError};
pub use checked::NarMismatch;
use compression::Compression;
pub use error::{BadNarInfo, UpstreamError};
pub use holder::Holder;

/// How long an upstream's "not here" is believed. Short: a path may be pushed to the cache
/// at any time, and Nix remembers our 404 for its own negative TTL on top.
pub const ABSENT_FOR: Duration = Duration::from_secs(30);
/// How long a narinfo found upstream is remembered for the NAR request that follows.
const FOUND_FOR: Duration = Duration::from_secs(600);
/// How many of each are remembered.
const REMEMBERED: usize = 65_536;
/// The first pause after an upstream failed to answer, doubled at each failure after it.
pub const FIRST_PAUSE: Duration = Duration::from_secs(5);
pub const LONGEST_PAUSE: Duration = Duration::from_secs(60);
/// How long a NAR download may take to its response, and then wait for its next bytes.
const NAR_START_LIMIT: Duration = Duration::from_secs(15);
const NAR_IDLE_LIMIT: Duration = Duration::from_secs(30);
/// Connecting to an upstream (TCP, and TLS for https).
const CONNECT_LIMIT: Duration = Duration::from_secs(5);

/// A NAR's bytes from its start, decompressed.
pub type NarBytes = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// The upstreams could not be made from the settings.
#[derive(Debug, Error)]
pub enum UpstreamConfigError {
    #[error("reading the default upstreams from nix.conf: {0}")]
    NixConf(#[from] NixConfError),
    #[error("upstream {url:?}: {reason}")]
    BadUrl { url: String, reason: &'static str },
}

/// The upstreams from the settings: `configured` if given (empty: none), else nix.conf's
/// substituters that are `http(s)://` and not this node's own substituter at `own_http`.
pub fn resolve(
    configured: Option<&[String]>,
    own_http: std::net::SocketAddr,
) -> Result<Vec<String>, UpstreamConfigError> {
    let urls = match configured {
        Some(urls) => urls.to_vec(),
        None => {
            let listed = nix_settings::read_list(&nix_settings::default_path(), &SUBSTITUTERS)?;
            listed
                .into_iter()
                .filter(|url| {
                    let usable = url.starts_with("http://") || url.starts_with("https://");
                    if !usable {
                        info!(url, "not an upstream: only http(s) substituters are");
                    }
                    usable && !is_own(url, own_http)
                })
                .collect()
        }
    };
    urls.iter().map(|url| base_url(url)).collect()
}

/// Whether `url` is this node's own substituter: a loopback (or unspecified-address) host
/// on its port.
fn is_own(url: &str, own: std::net::SocketAddr) -> bool {
    let Ok(uri) = url.parse::<hyper::Uri>() else { return false };
    let local = match uri.host().map(|h| h.trim_start_matches('[').trim_end_matches(']')) {
        Some("localhost") => true,
        Some(host) => host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    local && port == own.port()
}

/// `url` without its query (Nix's `?priority=…`) and trailing slashes, checked to be
/// `http(s)://`.
fn base_url(url: &str) -> Result<String, UpstreamConfigError> {
    let bad = |reason| UpstreamConfigError::BadUrl { url: url.to_owned(), reason };
    let base = url.split(['?', '#']).next().unwrap_or(url).trim_end_matches('/');
    let uri: hyper::Uri = base.parse().map_err(|_| bad("not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(bad("must be http:// or https:// with a host"));
    }
    Ok(base.to_owned())
}

/// A narinfo an upstream has, its `URL` made absolute (the cache's URL before it), so that
/// any node of the mesh can download the NAR from it alone; the signature does not cover
/// the URL.
#[derive(Debug, Clone)]
pub struct Found {
    pub narinfo: NarInfo,
    /// The narinfo as it is passed on: the upstream's, with the absolute URL.
    pub text: String,
}

impl Found {
    /// `narinfo` from the cache at `cache`, its URL made absolute.
    fn new(cache: &str, mut narinfo: NarInfo) -> Found {
        let url = &narinfo.url;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            narinfo.url = format!("{cache}/{}", url.trim_start_matches('/'));
        }
        let text = narinfo.to_string();
        Found { narinfo, text }
    }
}

/// One cache, and whether it is being skipped after failing to answer.
struct Cache {
    url: String,
    pause: Mutex<Pause>,
}

#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    next: Duration,
}

impl Cache {
    fn available(&self) -> bool {
        let pause = self.pause.lock();
        pause.until.is_none_or(|until| Instant::now() >= until)
    }

    fn failed(&self, why: &UpstreamError) {
        let mut pause = self.pause.lock();
        let length = if pause.next.is_zero() { FIRST_PAUSE } else { pause.next };
        if pause.until.is_none_or(|until| Instant::now() >= until) {
            warn!(upstream = %self.url, "upstream skipped for {length:?}: {why}");
        }
        pause.until = Some(Instant::now() + length);
        pause.next = (length * 2).min(LONGEST_PAUSE);
    }

    fn answered(&self) {
        let mut pause = self.pause.lock();
        if pause.until.take().is_some() {
            info!(upstream = %self.url, "upstream answers again");
        }
        pause.next = Duration::ZERO;
    }
}

/// What the status page says of the upstreams.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct UpstreamStatus {
    /// Each cache's URL and whether it is being skipped.
    pub caches: Vec<CacheStatus>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CacheStatus {
    pub url: String,
    pub skipped: bool,
}

/// A narinfo lookup under way, awaited by every request for its path.
type Lookup = Shared<BoxFuture<'static, Result<Option<Found>, UpstreamError>>>;

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The upstream caches, and what they were last seen to have.
pub struct Upstreams {
    caches: Vec<Cache>,
    client: HttpClient,
    /// What asking for one narinfo may take, over every cache.
    deadline: Duration,
    found: Mutex<HashMap<StorePathHash, (Found, Instant)>>,
    /// Lookups under way, shared by the requests for the same path.
    in_flight: Mutex<HashMap<StorePathHash, Lookup>>,
    absent: Mutex<HashMap<StorePathHash, Instant>>,
    /// Bytes downloaded, as sent.
    downloaded: Counter,
}

impl Upstreams {
    /// The caches at `urls` (base URLs, see [`resolve`]), each narinfo asked within
    /// `deadline` over all of them, the bytes downloaded counted in `downloaded`.
    pub fn new(urls: Vec<String>, deadline: Duration, downloaded: Counter) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_LIMIT));
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(32)
            .build(connector);
        let caches = urls.into_iter().map(|url| Cache { url, pause: Mutex::default() }).collect();
        Upstreams {
            caches,
            client,
            deadline,
            found: Mutex::default(),
            in_flight: Mutex::default(),
            absent: Mutex::default(),
            downloaded,
        }
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.caches.is_empty()
    }

    /// Whether asking the upstreams for `hash` may find it: some cache is not being skipped,
    /// and they did not all say lately that they lack it; or its narinfo is remembered.
    /// Never waits on the network.
    pub fn may_have(&self, hash: &StorePathHash) -> bool {
        if !self.caches.iter().any(Cache::available) {
            // A narinfo found before the cache stopped answering is still answered from
            // memory (its NAR may be in a spool of the mesh, or the cache back by then).
            return self.remembered(hash).is_some();
        }
        let absent = self.absent.lock();
        absent.get(hash).is_none_or(|since| since.elapsed() >= ABSENT_FOR)
    }

    /// The narinfo the first cache that has `hash` has, or `None` when every cache asked said
    /// it has none; all within the deadline. Requests for the same path at the same time
    /// share one lookup, which runs to its end even if they all go away.
    pub async fn narinfo(
        self: &Arc<Self>,
        hash: StorePathHash,
    ) -> Result<Option<Found>, UpstreamError> {
        if let Some(found) = self.remembered(&hash) {
            return Ok(Some(found));
        }
        if !self.may_have(&hash) && self.caches.iter().any(Cache::available) {
            return Ok(None);
        }
        let lookup = {
            let mut in_flight = self.in_flight.lock();
            let lookup = in_flight.entry(hash).or_insert_with(|| {
                let this = self.clone();
                let task = tokio::spawn(async move {
                    let answer = this.lookup(hash).await;
                    this.in_flight.lock().remove(&hash);
                    answer
                });
                let url = self.caches.first().map_or_else(String::new, |c| c.url.clone());
                let joined = async move {
                    task.await
                        .unwrap_or_else(|e| Err(UpstreamError::Lookup { url, source: Arc::new(e) }))
                };
                joined.boxed().shared()
            });
            lookup.clone()
        };
        lookup.await
    }

    async fn lookup(&self, hash: StorePathHash) -> Result<Option<Found>, UpstreamError> {
        let end = tokio::time::Instant::now() + self.deadline;
        let mut failure = None;
        let available: Vec<&Cache> = self.caches.iter().filter(|c| c.available()).collect();
        if available.is_empty() {
            let url = self.caches.first().map_or_else(String::new, |c| c.url.clone());
            return Err(UpstreamError::AllSkipped { url });
        }
        for cache in available {
            let url = format!("{}/{hash}.narinfo", cache.url);
            let left = end.saturating_duration_since(tokio::time::Instant::now());
            let answer = match tokio::time::timeout(left, self.get_narinfo(&url, hash)).await {
                Ok(answer) => answer,
                Err(_) => Err(UpstreamError::TimedOut { url, limit: self.deadline }),
            };
            match answer {
                Ok(Some(narinfo)) => {
                    cache.answered();
                    let found = Found::new(&cache.url, narinfo);
                    remember(&self.found, hash, (found.clone(), Instant::now()));
                    return Ok(Some(found));
                }
                Ok(None) => cache.answered(),
                Err(e) => {
                    if e.is_unreachable() {
                        cache.failed(&e);
                    }
                    failure = Some(e);
                }
            }
        }
        match failure {
            // Not every cache answered: no "absent" to remember.
            Some(e) => Err(e),
            None => {
                remember(&self.absent, hash, Instant::now());
                Ok(None)
            }
        }
    }

    /// Remembers that the upstreams lack `hash`, as the path's claimer found (see
    /// [`flight`]): a "not here" shared by the mesh.
    pub fn absent(&self, hash: StorePathHash) {
        remember(&self.absent, hash, Instant::now());
    }

    /// The deadline for one narinfo over every cache.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    fn remembered(&self, hash: &StorePathHash) -> Option<Found> {
        let found = self.found.lock();
        found.get(hash).filter(|(_, at)| at.elapsed() < FOUND_FOR).map(|(f, _)| f.clone())
    }

    /// One cache's narinfo for `hash`: `None` for its "not here" (404, 403 or 410).
    async fn get_narinfo(
        &self,
        url: &str,
        hash: StorePathHash,
    ) -> Result<Option<NarInfo>, UpstreamError> {
        let bad = |problem| UpstreamError::BadNarInfo { url: url.to_owned(), problem };
        let response = self.get(url).await?;
        match response.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND | StatusCode::FORBIDDEN | StatusCode::GONE => return Ok(None),
            status => return Err(UpstreamError::Status { url: url.to_owned(), status }),
        }
        let limit = nixmesh_protocol::mesh_messages::MAX_NARINFO_LEN;
        let body = http_body_util::Limited::new(response.into_body(), limit);
        let bytes = body.collect().await.map_err(|e| bad(BadNarInfo::Reading(Arc::from(e))))?;
        let text =
            String::from_utf8(bytes.to_bytes().to_vec()).map_err(|_| bad(BadNarInfo::NotUtf8))?;
        let narinfo = NarInfo::parse(&text).map_err(|e| bad(e.into()))?;
        if narinfo.store_path.hash() != hash {
            return Err(bad(BadNarInfo::OtherPath(Box::new(narinfo.store_path))));
        }
        debug!(url, "narinfo found upstream");
        Ok(Some(narinfo))
    }

    async fn get(
        &self,
        url: &str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, UpstreamError> {
        // Every URL asked for was checked before: a cache's base URL at the start, a NAR's as
        // under one (`serves`); one that still does not make a request is outside them all.
        let not_upstream = || UpstreamError::NotUpstream { url: url.to_owned() };
        let uri: hyper::Uri = url.parse().map_err(|_| not_upstream())?;
        let request = hyper::Request::get(uri)
            .header(hyper::header::USER_AGENT, concat!("nixmesh/", env!("CARGO_PKG_VERSION")))
            .body(Empty::new())
            .map_err(|_| not_upstream())?;
        self.client.request(request).await.map_err(|e| {
            let (url, source) = (url.to_owned(), Arc::new(e));
            if source.is_connect() {
                UpstreamError::Unreachable { url, source }
            } else {
                UpstreamError::Request { url, source }
            }
        })
    }

    /// Whether `url` names a file under one of the caches (see [`is_under`]): the only URLs
    /// this node downloads.
    pub fn serves(&self, url: &str) -> bool {
        self.caches.iter().any(|cache| is_under(&cache.url, url))
    }

    /// `found`'s NAR, decompressed, from its start; never a URL outside the caches.
    pub async fn nar(&self, found: &Found) -> Result<NarBytes, UpstreamError> {
        let url = found.narinfo.url.clone();
        if !self.serves(&url) {
            return Err(UpstreamError::NotUpstream { url });
        }
        let compression = Compression::of(&found.narinfo)
            .map_err(|e| UpstreamError::Compression { url: url.clone(), source: Arc::new(e) })?;
        let limit = NAR_START_LIMIT;
        let response = match tokio::time::timeout(limit, self.get(&url)).await {
            Ok(response) => response?,
            Err(_) => return Err(UpstreamError::TimedOut { url, limit }),
        };
        if response.status() != StatusCode::OK {
            return Err(UpstreamError::Status { url, status: response.status() });
        }
        debug!(url, %compression, "downloading a NAR from upstream");
        let downloaded = self.downloaded.clone();
        let counted = response.into_body().into_data_stream().inspect_ok(move |chunk| {
            downloaded.inc_by(chunk.len() as u64);
        });
        let body = counted.map_err(std::io::Error::other);
        let decompressed = compression.decode(body);
        let idle = idle_limited(decompressed, NAR_IDLE_LIMIT);
        Ok(Box::pin(idle.map_err(move |e| {
            let url = url.clone();
            // Only the idle limit below gives this kind: the body's and the decoder's own
            // errors are `Other`.
            if e.kind() == std::io::ErrorKind::TimedOut {
                UpstreamError::TimedOut { url, limit: NAR_IDLE_LIMIT }
            } else {
                UpstreamError::Body { url, source: Arc::new(e) }
            }
        })))
    }

    /// The upstreams' state, for the status page.
    pub fn status(&self) -> UpstreamStatus {
        let caches = self
            .caches
            .iter()
            .map(|c| CacheStatus { url: c.url.clone(), skipped: !c.available() })
            .collect();
        UpstreamStatus { caches }
    }
}

/// Whether `url` names a file under the cache at `base`: the same scheme, host and port (no
/// user info), a path below the cache's own, no query, and no `.` or `..` segment nor a
/// percent-encoded dot, slash or backslash that a server might resolve to a file outside it.
/// A narinfo's `URL` is chosen by whoever wrote the text, so this is what stands between a
/// peer and the node's HTTP client (a service on the node's loopback, say).
fn is_under(base: &str, url: &str) -> bool {
    let (Ok(base), Ok(file)) = (base.parse::<hyper::Uri>(), url.parse::<hyper::Uri>()) else {
        return false;
    };
    let port = |uri: &hyper::Uri| match (uri.port_u16(), uri.scheme_str()) {
        (Some(port), _) => Some(port),
        (None, Some("http")) => Some(80),
        (None, Some("https")) => Some(443),
        (None, _) => None,
    };
    let same_origin = file.scheme().is_some()
        && base.scheme() == file.scheme()
        && file.authority().is_some_and(|a| !a.as_str().contains('@'))
        && matches!((base.host(), file.host()), (Some(b), Some(f)) if b.eq_ignore_ascii_case(f))
        && port(&base).is_some()
        && port(&base) == port(&file);
    let prefix = base.path().trim_end_matches('/');
    let Some(rest) = file.path().strip_prefix(prefix).and_then(|rest| rest.strip_prefix('/'))
    else {
        return false;
    };
    let lower = rest.to_ascii_lowercase();
    let plain_segments = rest.split('/').all(|s| !s.is_empty() && s != "." && s != "..");
    let encoded = ["%2e", "%2f", "%5c"].iter().any(|e| lower.contains(e)) || rest.contains('\\');
    same_origin && file.query().is_none() && plain_segments && !encoded
}

/// Remembers `value` under `hash`, forgetting everything first when full: a bound, not an
/// LRU (what is remembered is cheap to ask again).
fn remember<V>(map: &Mutex<HashMap<StorePathHash, V>>, hash: StorePathHash, value: V) {
    let mut map = map.lock();
    if map.len() >= REMEMBERED {
        map.clear();
    }
    map.insert(hash, value);
}

/// `stream`, failing when it gives nothing for `limit`.
fn idle_limited<S>(stream: S, limit: Duration) -> impl Stream<Item = std::io::Result<Bytes>>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send,
{
    futures::stream::unfold(Some(Box::pin(stream)), move |state| async move {
        let mut stream = state?;
        match tokio::time::timeout(limit, stream.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(stream))),
            Ok(Some(Err(e))) => Some((Err(e), None)),
            Ok(None) => None,
            Err(_) => {
                let e = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no bytes for {limit:?}"),
                );
                Some((Err(e), None))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_lose_queries_and_slashes_and_must_be_http() {
        assert_eq!(base_url("https://cache.nixos.org/").unwrap(), "https://cache.nixos.org");
        assert_eq!(
            base_url("http://10.0.0.1:8080/c/?priority=30").unwrap(),
            "http://10.0.0.1:8080/c"
        );
        assert!(base_url("s3://bucket").is_err());
        assert!(base_url("http://").is_err());
    }

    #[test]
    fn only_files_under_a_configured_cache_are_upstream_files() {
        let base = "http://127.0.0.1:8080/cache";
        let nar = "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz";
        assert!(is_under(base, &format!("{base}/{nar}")));
        assert!(is_under(base, &format!("HTTP://127.0.0.1:8080/cache/{nar}")), "scheme case");
        assert!(is_under("https://cache.nixos.org", &format!("https://CACHE.nixos.org:443/{nar}")));
        assert!(is_under("http://[::1]:80/", &format!("http://[::1]/{nar}")));
        for outside in [
            format!("http://127.0.0.1:8081/cache/{nar}"),
            format!("https://127.0.0.1:8080/cache/{nar}"),
            format!("http://127.0.0.2:8080/cache/{nar}"),
            format!("http://localhost:8080/cache/{nar}"),
            format!("http://127.0.0.1:8080/cachex/{nar}"),
            format!("http://127.0.0.1:8080/{nar}"),
            "http://127.0.0.1:8080/cache".to_owned(),
            "http://127.0.0.1:8080/cache/".to_owned(),
            "http://127.0.0.1:8080/cache/../secret".to_owned(),
            "http://127.0.0.1:8080/cache/nar/./../../secret".to_owned(),
            "http://127.0.0.1:8080/cache/%2E%2E/secret".to_owned(),
            "http://127.0.0.1:8080/cache/nar%2F..%2F..%2Fsecret".to_owned(),
            "http://127.0.0.1:8080/cache/nar//x".to_owned(),
            format!("http://127.0.0.1:8080/cache/{nar}?x=1"),
            format!("http://user@127.0.0.1:8080/cache/{nar}"),
            format!("/cache/{nar}"),
            nar.to_owned(),
            "file:///etc/passwd".to_owned(),
            "garbage with spaces".to_owned(),
        ] {
            assert!(!is_under(base, &outside), "{outside} is not under {base}");
        }
    }

    #[tokio::test]
    async fn a_nar_outside_the_caches_is_never_asked_for() {
        // A listener that would see the request: nothing may connect to it.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        other.set_nonblocking(true).unwrap();
        let cache = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let urls = vec![format!("http://{cache}")];
        let upstreams = Upstreams::new(urls, Duration::from_secs(2), Counter::default());
        let text = format!(
            "StorePath: /nix/store/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-hello\n\
             URL: http://{}/big_secret.txt\nCompression: none\n\
             NarHash: sha256:{}\nNarSize: 1\nReferences: \n",
            other.local_addr().unwrap(),
            "0".repeat(52)
        );
        let found = Found { narinfo: NarInfo::parse(&text).unwrap(), text };
        let refused = upstreams.nar(&found).await.err().expect("refused");
        assert!(matches!(refused, UpstreamError::NotUpstream { .. }), "{refused}");
        assert!(other.accept().is_err(), "nothing connected to the other server");
    }

    /// A cache that takes each connection and resets it at once.
    fn resetting_cache() -> std::net::SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for connection in listener.incoming().take(16) {
                let Ok(mut connection) = connection else { return };
                let mut request = [0u8; 1024];
                let _ = std::io::Read::read(&mut connection, &mut request);
                // SO_LINGER 0: the close is a reset.
                let linger = libc::linger { l_onoff: 1, l_linger: 0 };
                // SAFETY: a valid socket and a linger struct of the size given.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&connection),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        (&raw const linger).cast(),
                        size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                drop(connection);
            }
        });
        address
    }

    #[tokio::test]
    async fn a_cache_that_resets_is_an_answer_not_a_deadline() {
        let cache = resetting_cache();
        let urls = vec![format!("http://{cache}")];
        let deadline = Duration::from_secs(2);
        let upstreams = Arc::new(Upstreams::new(urls, deadline, Counter::default()));
        let hash = StorePathHash::parse("0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj").unwrap();
        let asked = tokio::time::timeout(deadline / 2, upstreams.narinfo(hash));
        let reset = asked.await.expect("before the deadline").unwrap_err();
        assert!(
            matches!(reset, UpstreamError::Request { .. }),
            "an answer, not unreachable: {reset}"
        );
        assert!(upstreams.may_have(&hash), "a cache that answers, however badly, is not skipped");
        let text = format!(
            "StorePath: /nix/store/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-hello\n\
             URL: http://{cache}/nar/x.nar\nCompression: none\n\
             NarHash: sha256:{}\nNarSize: 1\nReferences: \n",
            "0".repeat(52)
        );
        let found = Found { narinfo: NarInfo::parse(&text).unwrap(), text };
        let asked = tokio::time::timeout(deadline / 2, upstreams.nar(&found));
        assert!(asked.await.expect("before the NAR's start limit").is_err());
    }

    #[tokio::test]
    async fn a_narinfo_found_before_a_cache_is_skipped_is_still_answered() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let urls = vec![format!("http://{closed}")];
        let upstreams = Arc::new(Upstreams::new(urls, Duration::from_secs(2), Counter::default()));
        let found_hash = StorePathHash::parse("0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj").unwrap();
        let text = format!(
            "StorePath: /nix/store/{found_hash}-hello\nURL: http://{closed}/nar/x.nar\n\
             Compression: none\nNarHash: sha256:{}\nNarSize: 1\nReferences: \n",
            "0".repeat(52)
        );
        let found = Found { narinfo: NarInfo::parse(&text).unwrap(), text };
        remember(&upstreams.found, found_hash, (found, Instant::now()));
        let other = StorePathHash::parse("1b9p07z77phvv2hf6gm9f28syp39f1ag").unwrap();
        assert!(upstreams.narinfo(other).await.is_err(), "the cache is refused");
        assert!(!upstreams.may_have(&other), "skipped");
        assert!(upstreams.may_have(&found_hash), "but what it gave is remembered");
        assert!(upstreams.narinfo(found_hash).await.unwrap().is_some());
    }

    #[test]
    fn the_nodes_own_substituter_is_not_its_upstream() {
        let own: std::net::SocketAddr = "127.0.0.1:7373".parse().unwrap();
        assert!(is_own("http://127.0.0.1:7373?priority=10", own));
        assert!(is_own("http://localhost:7373/", own));
        assert!(is_own("http://[::1]:7373", own));
        assert!(!is_own("http://127.0.0.1:8080", own));
        assert!(!is_own("https://cache.nixos.org", own));
        let urls = vec!["http://192.0.2.1/".to_owned()];
        assert_eq!(resolve(Some(&urls), own).unwrap(), ["http://192.0.2.1"]);
        assert!(resolve(Some(&[]), own).unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_cache_that_cannot_be_reached_is_skipped_after_one_deadline() {
        // A port nothing listens on, on loopback: refused at once.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let urls = vec![format!("http://{closed}")];
        let upstreams = Arc::new(Upstreams::new(urls, Duration::from_secs(2), Counter::default()));
        let hash = StorePathHash::parse("0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj").unwrap();
        assert!(upstreams.may_have(&hash));
        let refused = upstreams.narinfo(hash).await.unwrap_err();
        assert!(matches!(refused, UpstreamError::Unreachable { .. }), "{refused}");
        assert!(refused.to_string().contains("cannot connect"), "{refused}");
        assert!(!upstreams.may_have(&hash), "skipped now");
        assert!(upstreams.status().caches[0].skipped);
    }
}
