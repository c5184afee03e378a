//! Why an upstream gave nothing usable, by the kinds [`super::Upstreams`] decides on.

use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use nixmesh_protocol::StorePath;
use nixmesh_protocol::narinfo::NarInfoError;
use thiserror::Error;

use super::compression::UnsupportedCompression;

/// Why an upstream gave nothing usable, by the kinds decided on: a cache that cannot be
/// reached or does not answer in time is skipped for a while ([`UpstreamError::is_unreachable`]);
/// one that answers badly is not. Each names the URL (clonable: a lookup's answer is shared
/// by every request waiting on it).
#[derive(Debug, Clone, Error)]
pub enum UpstreamError {
    /// No connection could be made (refused, no route, TLS failed).
    #[error("{url}: {}", describe(source))]
    Unreachable { url: String, source: Arc<hyper_util::client::legacy::Error> },
    /// The request failed once connected (the connection reset, a response that is not HTTP).
    #[error("{url}: {}", describe(source))]
    Request { url: String, source: Arc<hyper_util::client::legacy::Error> },
    /// An answer that is neither the file nor a "not here".
    #[error("{url}: answered {status}")]
    Status { url: String, status: StatusCode },
    #[error("{url}: no answer within {limit:?}")]
    TimedOut { url: String, limit: Duration },
    /// A narinfo that cannot be used, with what was read.
    #[error("{url}: {problem}")]
    BadNarInfo { url: String, problem: BadNarInfo },
    /// The narinfo names a compression this node cannot undo.
    #[error("{url}: {source}")]
    Compression { url: String, source: Arc<UnsupportedCompression> },
    /// The NAR's bytes broke off, or do not decompress.
    #[error("{url}: {source}")]
    Body { url: String, source: Arc<std::io::Error> },
    /// A narinfo's `URL` outside every configured cache: never downloaded, whoever wrote it
    /// (a signature does not cover the URL).
    #[error("{url}: not a file under any of this node's upstreams")]
    NotUpstream { url: String },
    /// Every cache is being skipped after failing to answer: none asked.
    #[error("{url}: every upstream is being skipped after failing to answer")]
    AllSkipped { url: String },
    /// The lookup's task ended without an answer (it panicked).
    #[error("{url}: lookup failed: {source}")]
    Lookup { url: String, source: Arc<tokio::task::JoinError> },
    /// Asked by way of the mesh (the path's claimer, then this node's own caches): no answer
    /// within the upstream deadline.
    #[error("no upstream answered within {limit:?}")]
    NoAnswer { limit: Duration },
}

impl UpstreamError {
    /// Whether the cache could not be reached at all (rather than answered badly): it is
    /// then skipped for a while.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, UpstreamError::TimedOut { .. } | UpstreamError::Unreachable { .. })
    }

    /// Whether nothing answered in the time allowed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, UpstreamError::TimedOut { .. } | UpstreamError::NoAnswer { .. })
    }
}

/// What is wrong with a narinfo an upstream sent.
#[derive(Debug, Clone, Error)]
pub enum BadNarInfo {
    /// The body broke off, or is over the bound a narinfo may have.
    #[error("reading: {0}")]
    Reading(Arc<dyn std::error::Error + Send + Sync>),
    #[error("the narinfo is not UTF-8")]
    NotUtf8,
    #[error("bad narinfo: {0}")]
    Parse(#[from] NarInfoError),
    #[error("the narinfo is for {0}")]
    OtherPath(Box<StorePath>),
}

/// A client error with its causes, `cannot connect: …` when it never reached the server.
fn describe(e: &hyper_util::client::legacy::Error) -> String {
    let mut text = if e.is_connect() { "cannot connect".to_owned() } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
