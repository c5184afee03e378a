//! The trust rule for NAR bytes: Nix never receives a complete NAR that does not match the
//! signed narinfo.
//!
//! [`VerifiedNar`] passes a peer's chunks on as they arrive while hashing them, but holds back
//! the chunk that completes `NarSize` until the SHA-256 over all bytes equals `NarHash`. Any
//! fault (a wrong hash, more bytes than `NarSize`, an early end, a peer error, a stall) ends
//! the stream with an error instead, which makes hyper abort the connection: Nix sees fewer
//! bytes than `Content-Length` and a failed transfer. Memory is one chunk.
//!
//! Failover: when the holder sending fails mid-transfer (its stream breaks or ends early, or
//! it sends nothing for the idle timeout), the adapter asks the next holder for the rest, from
//! the byte offset reached ([`Reopen`]), and goes on hashing: the client sees one download.
//! Only with no holder left does the fault end the stream. Bytes that cannot match (more than
//! `NarSize`, a wrong hash at the end) are not failed over: the client already has them, and
//! Nix retries the download, which then goes first to a holder that did not fail.
//!
//! Parking: a client that stops reading must not hold a peer's stream (and with it the
//! peer's turns and NAR slots) while it does. A [`Parker`] lets the stream go from outside
//! (`nar_slots` does so once the client has taken nothing for a second); when the client
//! reads again, the adapter asks the same holder for the rest from the offset reached, as in
//! a failover, and the client sees one download. A parked transfer is no fault of the peer's.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use nixmesh_protocol::content_address::NarCheck;
use nixmesh_protocol::hash::{NixHash, NixHasher, Sha256Hasher};
use nixmesh_protocol::nar::{Event, NarParser};
use nixmesh_protocol::{Sha256, StorePathHash};
use thiserror::Error;
use tokio::time::{Instant, Sleep, sleep};
use tracing::{Span, debug, info, warn};

#[cfg(doc)]
use crate::config::Config;
use crate::health::PeerHealth;
use crate::source::{NarStream, SourceError};

/// Why a NAR transfer was cut off.
#[derive(Debug, Error)]
pub enum TransferError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("peer {peer}: no NAR bytes for {idle:?} at offset {offset}")]
    Stalled { peer: String, offset: u64, idle: Duration },
    #[error("peer {peer}: the NAR is longer than the {expected} bytes its narinfo says")]
    TooLong { peer: String, expected: u64 },
    #[error("peer {peer}: the NAR ended after {got} of {expected} bytes")]
    TooShort { peer: String, got: u64, expected: u64 },
    #[error("peer {peer}: the NAR hashes to {got}, its signed narinfo says {expected}")]
    WrongHash { peer: String, got: Sha256, expected: Sha256 },
    #[error("peer {peer}: the NAR does not match the path's content address: {reason}")]
    NotContent { peer: String, reason: String },
    #[error("peer {peer}: sends the NAR at {rate} B/s, under the {min_rate} B/s asked of a holder")]
    TooSlow { peer: String, rate: u64, min_rate: u64 },
    #[error("peer {peer}: could not go on with the NAR: {reason}")]
    Resume { peer: String, reason: String },
}

/// The NAR its verified narinfo promises.
#[derive(Debug, Clone)]
pub struct Expected {
    pub store_hash: StorePathHash,
    pub nar_hash: Sha256,
    pub nar_size: u64,
    /// For an unsigned content-addressed path, what else its bytes must hash to.
    pub check: Option<NarCheck>,
}

/// The check of a content address as the NAR passes: the whole NAR with another algorithm,
/// or the contents of the one regular file it must be.
enum ContentCheck {
    Nar { hasher: NixHasher, want: NixHash },
    File { parser: Box<NarParser>, hasher: NixHasher, want: NixHash, root_is_file: bool },
}

impl ContentCheck {
    fn new(check: &NarCheck) -> Option<Self> {
        match check {
            NarCheck::NarHashIs(_) => None,
            NarCheck::Nar(want) => {
                Some(ContentCheck::Nar { hasher: NixHasher::new(want.algo()), want: want.clone() })
            }
            NarCheck::FileContents(want) => Some(ContentCheck::File {
                parser: Box::default(),
                hasher: NixHasher::new(want.algo()),
                want: want.clone(),
                root_is_file: false,
            }),
        }
    }

    fn update(&mut self, chunk: &[u8]) -> Result<(), String> {
        match self {
            ContentCheck::Nar { hasher, .. } => hasher.update(chunk),
            ContentCheck::File { parser, hasher, root_is_file, .. } => {
                let mut other_root = false;
                parser
                    .push(chunk, |event| match event {
                        Event::FileStart { path: [], .. } => *root_is_file = true,
                        Event::FileData(data) => hasher.update(data),
                        Event::DirectoryStart { path: [] } | Event::Symlink { path: [], .. } => {
                            other_root = true
                        }
                        _ => {}
                    })
                    .map_err(|e| e.to_string())?;
                if other_root {
                    return Err("it is not a single regular file".to_owned());
                }
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<(), String> {
        let (got, want) = match self {
            ContentCheck::Nar { hasher, want } => (hasher.finish(), want),
            ContentCheck::File { parser, hasher, want, root_is_file } => {
                parser.finish().map_err(|e| e.to_string())?;
                if !root_is_file {
                    return Err("it is not a single regular file".to_owned());
                }
                (hasher.finish(), want)
            }
        };
        match got == want {
            true => Ok(()),
            false => Err(format!("its contents hash to {got}, not {want}")),
        }
    }
}

/// Asks `peer` for the NAR from byte `offset` on: how a transfer goes on at another holder.
pub type Reopen<P> =
    Arc<dyn Fn(P, u64) -> BoxFuture<'static, Result<Option<NarStream>, SourceError>> + Send + Sync>;

/// The holders after the first, and what a transfer that fails over needs.
pub struct Others<P> {
    /// Holders not asked yet, best first.
    pub remaining: Vec<P>,
    /// How to ask one of them; `None`: no failover.
    pub reopen: Option<Reopen<P>>,
    /// Where a peer's faults are counted.
    pub health: Option<Arc<PeerHealth<P>>>,
}

impl<P> Others<P> {
    /// No failover and no health record: only `remaining` is kept, for the logs.
    pub fn none(remaining: Vec<P>) -> Self {
        Others { remaining, reopen: None, health: None }
    }
}

/// A peer's stream that a [`Parker`] may take away while the client does not read.
type SharedStream = Arc<Mutex<Option<NarStream>>>;

/// Lets a transfer's peer stream go while its client does not read (see the module docs).
#[derive(Clone)]
pub struct Parker {
    stream: Weak<Mutex<Option<NarStream>>>,
}

impl Parker {
    /// Drops the peer's stream, if the transfer still has one; whether it did.
    pub fn park(&self) -> bool {
        let Some(shared) = self.stream.upgrade() else {
            return false;
        };
        let stream = shared.lock().unwrap_or_else(|e| e.into_inner()).take();
        // Dropped outside the lock: closing a stream may take a little work.
        stream.is_some()
    }
}

/// A request to the next holder, under way.
struct Resuming<P> {
    peer: P,
    answer: BoxFuture<'static, Result<Option<NarStream>, SourceError>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Fewer than `nar_size` bytes received.
    Receiving,
    /// All bytes received and verified; the last chunk may still wait in `ready`.
    Verified,
    /// Ended, by success or by an error already handed out.
    Ended,
}

/// A peer's NAR stream, checked against its narinfo as it passes; see the module docs.
pub struct VerifiedNar<P> {
    expected: Expected,
    /// The peer the bytes come from now.
    peer: P,
    /// Holders not tried yet, best first.
    remaining: Vec<P>,
    /// The current peer's stream; `None` once parked.
    stream: SharedStream,
    reopen: Option<Reopen<P>>,
    health: Option<Arc<PeerHealth<P>>>,
    /// Waiting for the next holder's answer, after the current one failed.
    resuming: Option<Resuming<P>>,
    /// Whether a fault goes on at the next holder: once the response has started (before,
    /// the caller tries the holders one by one itself).
    started: bool,
    /// Bytes received from peers, all of them hashed; where a resumption would start.
    offset: u64,
    hasher: Sha256Hasher,
    /// The content address's own check, for an unsigned content-addressed path.
    content: Option<ContentCheck>,
    /// A chunk that passed the checks and is not yet handed out.
    ready: VecDeque<Bytes>,
    progress: Progress,
    idle_timeout: Duration,
    /// NARs up to this size are verified whole before [`VerifiedNar::first_bytes`] returns.
    verify_whole_up_to: u64,
    /// Armed when the peer first makes us wait after a chunk, so a client that reads slowly
    /// does not count against the peer.
    idle: Pin<Box<Sleep>>,
    waiting: bool,
    /// How fast the peer sends while we wait on it.
    pace: Pace,
    /// A holder found too slow with its last chunk: replaced before the next is read.
    too_slow: Option<TransferError>,
    span: Span,
}

/// The rate a holder sends at, over the time spent waiting on it (a client that reads slowly
/// does not count against the peer): below [`Pace::min_rate`] over a window of
/// [`Pace::window`] of waiting, it is too slow.
#[derive(Debug, Clone)]
struct Pace {
    min_rate: u64,
    window: Duration,
    waited: Duration,
    bytes: u64,
    since: Option<Instant>,
}

impl Pace {
    fn new(min_rate: u64, window: Duration) -> Self {
        Pace { min_rate, window, waited: Duration::ZERO, bytes: 0, since: None }
    }

    fn waiting(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    fn chunk(&mut self, len: usize) {
        if let Some(since) = self.since.take() {
            self.waited += since.elapsed();
        }
        self.bytes += len as u64;
    }

    /// The rate over the window just completed, if it was under the minimum.
    fn too_slow(&mut self) -> Option<u64> {
        if self.min_rate == 0 || self.waited < self.window {
            return None;
        }
        let rate = (self.bytes as f64 / self.waited.as_secs_f64()) as u64;
        *self = Pace::new(self.min_rate, self.window);
        (rate < self.min_rate).then_some(rate)
    }
}

impl<P: std::fmt::Display + Clone + Eq + Hash> VerifiedNar<P> {
    /// Wraps `stream`, the NAR from byte 0 as `peer` sends it. `others.remaining` are the other
    /// holders, best first, asked with `others.reopen` (if given) when a holder fails
    /// mid-transfer; faults that are the peer's are counted in `others.health`.
    /// Logs go to the current span.
    pub fn new(
        expected: Expected,
        peer: P,
        stream: NarStream,
        others: Others<P>,
        idle_timeout: Duration,
    ) -> Self {
        let Others { remaining, reopen, health } = others;
        let content = expected.check.as_ref().and_then(ContentCheck::new);
        VerifiedNar {
            content,
            expected,
            peer,
            remaining,
            stream: Arc::new(Mutex::new(Some(stream))),
            reopen,
            health,
            resuming: None,
            started: false,
            offset: 0,
            hasher: Sha256Hasher::new(),
            ready: VecDeque::new(),
            progress: Progress::Receiving,
            idle_timeout,
            verify_whole_up_to: 0,
            idle: Box::pin(sleep(idle_timeout)),
            waiting: false,
            pace: Pace::new(0, Duration::MAX),
            too_slow: None,
            span: Span::current(),
        }
    }

    /// Verifies NARs of up to `size` bytes whole before the response starts (see
    /// [`VerifiedNar::first_bytes`]); none by default.
    pub fn verify_whole_up_to(mut self, size: u64) -> Self {
        self.verify_whole_up_to = size;
        self
    }

    /// Goes on at the next holder when one sends at under `rate` bytes a second over `window`
    /// of waiting on it (0: never).
    pub fn min_rate(mut self, rate: u64, window: Duration) -> Self {
        self.pace = Pace::new(rate, window);
        self
    }

    /// Waits until the first bytes have arrived and passed the checks, so that a peer that
    /// fails before sending anything is found out before the response commits to `200`.
    ///
    /// A NAR of at most [`Config::nar_verified_whole_up_to`] bytes is read and verified whole
    /// before this
    /// returns: a holder with a damaged copy is found out while the next holder can still
    /// give the client the right one. (Most store paths are that small; the cost is a
    /// transfer's latency, which on a LAN is a millisecond.)
    pub async fn first_bytes(&mut self) -> Result<(), TransferError> {
        let whole = self.expected.nar_size <= self.verify_whole_up_to;
        loop {
            match poll_fn(|cx| self.poll_checked(cx)).await {
                // Let timeouts around this fire even if a source yields empty chunks forever.
                Some(Ok(chunk)) if chunk.is_empty() => tokio::task::yield_now().await,
                Some(Ok(chunk)) => {
                    self.ready.push_back(chunk);
                    if !whole {
                        self.started = true;
                        return Ok(());
                    }
                }
                Some(Err(e)) => return Err(e),
                None => {
                    self.started = true;
                    return Ok(());
                }
            }
        }
    }

    fn poll_checked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, TransferError>>> {
        loop {
            if self.progress != Progress::Receiving {
                return Poll::Ready(None);
            }
            if let Some(resuming) = &mut self.resuming {
                let broke = match resuming.answer.as_mut().poll(cx) {
                    Poll::Ready(Ok(Some(stream))) => {
                        let resuming = self.resuming.take().expect("polled just now");
                        self.span.in_scope(|| {
                            info!(peer = %resuming.peer, offset = self.offset, "NAR transfer resumed");
                        });
                        *self.stream.lock().unwrap_or_else(|e| e.into_inner()) = Some(stream);
                        (self.peer, self.waiting) = (resuming.peer, false);
                        self.pace = Pace::new(self.pace.min_rate, self.pace.window);
                        continue;
                    }
                    Poll::Ready(Ok(None)) => "it says it has no NAR for it".to_owned(),
                    Poll::Ready(Err(e)) => e.to_string(),
                    Poll::Pending if self.idle.as_mut().poll(cx).is_pending() => {
                        return Poll::Pending;
                    }
                    Poll::Pending => format!("no answer within {:?}", self.idle_timeout),
                };
                let resuming = self.resuming.take().expect("polled just now");
                self.peer = resuming.peer;
                let e = TransferError::Resume { peer: self.peer.to_string(), reason: broke };
                match self.fault(e) {
                    Some(e) => return Poll::Ready(Some(Err(e))),
                    None => continue,
                }
            }
            if let Some(e) = self.too_slow.take() {
                match self.fault(e) {
                    Some(e) => return Poll::Ready(Some(Err(e))),
                    None => continue,
                }
            }
            let polled = {
                let mut stream = self.stream.lock().unwrap_or_else(|e| e.into_inner());
                stream.as_mut().map(|s| s.poll_next_unpin(cx))
            };
            let Some(polled) = polled else {
                self.unpark();
                continue;
            };
            let e = match polled {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.waiting = false;
                    self.pace.chunk(chunk.len());
                    let taken = self.take(chunk);
                    let replaceable = self.started && !self.remaining.is_empty();
                    if let Some(rate) =
                        self.pace.too_slow().filter(|_| taken.is_ok() && replaceable)
                    {
                        let (peer, min_rate) = (self.peer.to_string(), self.pace.min_rate);
                        self.too_slow = Some(TransferError::TooSlow { peer, rate, min_rate });
                    }
                    return Poll::Ready(Some(taken));
                }
                Poll::Ready(Some(Err(e))) => e.into(),
                Poll::Ready(None) if self.offset == self.expected.nar_size => {
                    // Only an empty NAR gets here: any other completes in `take`.
                    return match self.verify() {
                        Ok(()) => Poll::Ready(None),
                        Err(e) => Poll::Ready(Some(Err(self.fail(e)))),
                    };
                }
                Poll::Ready(None) => {
                    let (got, expected) = (self.offset, self.expected.nar_size);
                    TransferError::TooShort { peer: self.peer.to_string(), got, expected }
                }
                Poll::Pending => {
                    if !self.waiting {
                        self.arm_idle();
                    }
                    self.pace.waiting();
                    if self.idle.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    TransferError::Stalled {
                        peer: self.peer.to_string(),
                        offset: self.offset,
                        idle: self.idle_timeout,
                    }
                }
            };
            if let Some(e) = self.fault(e) {
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    /// A handle that parks this transfer, if it can go on after being parked (it can ask a
    /// holder for the rest).
    pub fn parker(&self) -> Option<Parker> {
        self.reopen.as_ref()?;
        Some(Parker { stream: Arc::downgrade(&self.stream) })
    }

    /// The client reads again after the transfer was parked: asks the same peer for the rest.
    fn unpark(&mut self) {
        let reopen = self.reopen.clone().expect("only a transfer with a reopen is parked");
        self.span.in_scope(|| {
            debug!(peer = %self.peer, offset = self.offset, "the client reads again: resuming");
        });
        let answer = reopen(self.peer.clone(), self.offset);
        self.resuming = Some(Resuming { peer: self.peer.clone(), answer });
        self.pace = Pace::new(self.pace.min_rate, self.pace.window);
        self.arm_idle();
    }

    /// Starts the idle timer: the peer has made us wait.
    fn arm_idle(&mut self) {
        self.waiting = true;
        let deadline = Instant::now() + self.idle_timeout;
        self.idle.as_mut().reset(deadline);
    }

    /// The holder sending failed with `e` before the end: asks the next holder for the rest,
    /// or, with none left, ends the transfer with `e` (returned).
    fn fault(&mut self, e: TransferError) -> Option<TransferError> {
        let next_holder = self.started && !self.remaining.is_empty();
        let Some(reopen) = self.reopen.clone().filter(|_| next_holder) else {
            return Some(self.fail(e));
        };
        self.count_against_peer(&e);
        let next = self.remaining.remove(0);
        self.span.in_scope(|| {
            warn!(hash = %self.expected.store_hash, offset = self.offset, next = %next,
                "NAR transfer broke off, going on at the next holder: {e}");
        });
        let answer = reopen(next.clone(), self.offset);
        self.resuming = Some(Resuming { peer: next, answer });
        self.arm_idle();
        None
    }

    /// Accounts for `chunk`; it may be handed out unless this returns an error.
    fn take(&mut self, chunk: Bytes) -> Result<Bytes, TransferError> {
        let end = self.offset.saturating_add(chunk.len() as u64);
        if end > self.expected.nar_size {
            let expected = self.expected.nar_size;
            return Err(self.fail(TransferError::TooLong { peer: self.peer.to_string(), expected }));
        }
        self.hasher.update(&chunk);
        if let Some(Err(reason)) = self.content.as_mut().map(|c| c.update(&chunk)) {
            let peer = self.peer.to_string();
            return Err(self.fail(TransferError::NotContent { peer, reason }));
        }
        self.offset = end;
        if end == self.expected.nar_size {
            self.verify().map_err(|e| self.fail(e))?;
        }
        Ok(chunk)
    }

    fn verify(&mut self) -> Result<(), TransferError> {
        let got = std::mem::take(&mut self.hasher).finish();
        if got != self.expected.nar_hash {
            let peer = self.peer.to_string();
            return Err(TransferError::WrongHash { peer, got, expected: self.expected.nar_hash });
        }
        if let Some(Err(reason)) = self.content.take().map(ContentCheck::finish) {
            return Err(TransferError::NotContent { peer: self.peer.to_string(), reason });
        }
        self.progress = Progress::Verified;
        self.span.in_scope(|| debug!(peer = %self.peer, bytes = self.offset, "NAR verified"));
        Ok(())
    }

    /// Counts `e` against the peer sending if it is the peer's doing: bytes that cannot be the
    /// NAR, or a stall. (A peer that went away is not unhealthy, only gone.)
    fn count_against_peer(&self, e: &TransferError) {
        let theirs = matches!(
            e,
            TransferError::WrongHash { .. }
                | TransferError::TooLong { .. }
                | TransferError::NotContent { .. }
                | TransferError::Stalled { .. }
                | TransferError::TooSlow { .. }
        );
        if let Some(health) = self.health.as_ref().filter(|_| theirs) {
            health.fault(&self.peer, e.to_string());
        }
    }

    fn fail(&mut self, e: TransferError) -> TransferError {
        self.count_against_peer(&e);
        self.progress = Progress::Ended;
        self.ready.clear();
        self.span.in_scope(|| {
            warn!(peer = %self.peer, hash = %self.expected.store_hash, offset = self.offset,
                other_holders = self.remaining.len(), "NAR transfer cut off: {e}");
        });
        e
    }
}

// Nothing in the adapter is pinned structurally: the stream and the timer are boxed.
impl<P> Unpin for VerifiedNar<P> {}

impl<P: std::fmt::Display + Clone + Eq + Hash> Stream for VerifiedNar<P> {
    type Item = Result<Bytes, TransferError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        this.started = true;
        if let Some(chunk) = this.ready.pop_front() {
            return Poll::Ready(Some(Ok(chunk)));
        }
        if this.progress == Progress::Verified {
            this.progress = Progress::Ended;
        }
        this.poll_checked(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use nixmesh_protocol::hash::HashAlgo;

    const NAR: &[u8] = b"nix-archive-1 (pretend this is a whole NAR)";

    fn expected(nar: &[u8]) -> Expected {
        Expected {
            store_hash: StorePathHash([1; 20]),
            nar_hash: Sha256::digest(nar),
            nar_size: nar.len() as u64,
            check: None,
        }
    }

    /// What the client would get: the chunks handed out, and the error that ended them.
    async fn run(expected: Expected, chunks: &[&[u8]]) -> (Vec<u8>, Option<TransferError>) {
        let items: Vec<Result<Bytes, SourceError>> =
            chunks.iter().map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        let mut nar = VerifiedNar::new(
            expected,
            "peer-a",
            Box::pin(stream::iter(items)),
            Others::none(vec!["peer-b"]),
            Duration::from_secs(5),
        );
        let mut out = Vec::new();
        if let Err(e) = nar.first_bytes().await {
            return (out, Some(e));
        }
        while let Some(item) = nar.next().await {
            match item {
                Ok(chunk) => out.extend_from_slice(&chunk),
                Err(e) => return (out, Some(e)),
            }
        }
        (out, None)
    }

    #[tokio::test]
    async fn the_right_nar_passes_whole_however_it_is_cut() {
        for chunks in [vec![NAR], vec![&NAR[..1], &NAR[1..10], b"", &NAR[10..]]] {
            let (out, error) = run(expected(NAR), &chunks).await;
            assert_eq!((out.as_slice(), error.map(|e| e.to_string())), (NAR, None));
        }
    }

    #[tokio::test]
    async fn a_wrong_nar_of_the_right_size_loses_its_last_chunk() {
        let mut wrong = NAR.to_vec();
        wrong[3] ^= 1;
        let (out, error) = run(expected(NAR), &[&wrong[..20], &wrong[20..]]).await;
        assert_eq!(out, &wrong[..20]);
        assert!(matches!(error, Some(TransferError::WrongHash { .. })), "{error:?}");
    }

    #[tokio::test]
    async fn too_long_and_too_short_are_errors() {
        let long = [NAR, b"!"].concat();
        let (out, error) = run(expected(NAR), &[&long[..20], &long[20..]]).await;
        assert_eq!(out, &NAR[..20]);
        assert!(matches!(error, Some(TransferError::TooLong { expected: 43, .. })), "{error:?}");
        let (out, error) = run(expected(NAR), &[&NAR[..20], &NAR[20..42]]).await;
        assert_eq!(out, &NAR[..42]);
        assert!(matches!(error, Some(TransferError::TooShort { got: 42, .. })), "{error:?}");
    }

    #[tokio::test]
    async fn a_fault_before_any_byte_is_reported_by_first_bytes() {
        let (out, error) = run(expected(NAR), &[]).await;
        assert!(out.is_empty());
        assert!(matches!(error, Some(TransferError::TooShort { got: 0, .. })), "{error:?}");
    }

    fn file_nar(contents: &[u8]) -> Vec<u8> {
        let mut nar = Vec::new();
        let root = nixmesh_protocol::nar::writer::open(&mut nar).unwrap();
        root.file(false, contents.len() as u64, &mut &contents[..]).unwrap();
        nar
    }

    fn checked(nar: &[u8], check: NarCheck) -> Expected {
        Expected { check: Some(check), ..expected(nar) }
    }

    fn digest(algo: HashAlgo, bytes: &[u8]) -> NixHash {
        let mut hasher = NixHasher::new(algo);
        hasher.update(bytes);
        hasher.finish()
    }

    #[tokio::test]
    async fn a_content_address_is_checked_as_the_nar_passes() {
        let nar = file_nar(b"a fetchurl tarball");
        let right = NarCheck::FileContents(digest(HashAlgo::Sha256, b"a fetchurl tarball"));
        let cut = [&nar[..50], &nar[50..]];
        let (out, error) = run(checked(&nar, right), &cut).await;
        assert_eq!((out, error.map(|e| e.to_string())), (nar.clone(), None));

        // The NarHash matches (an unsigned narinfo says what its peer wants) but the contents
        // are not what the CA field states: the last chunk never goes out.
        let wrong = NarCheck::FileContents(digest(HashAlgo::Sha256, b"something else"));
        let (out, error) = run(checked(&nar, wrong), &cut).await;
        assert_eq!(out, &nar[..50]);
        assert!(matches!(error, Some(TransferError::NotContent { .. })), "{error:?}");

        // A flat content address is of one regular file, not of a directory.
        let mut dir = Vec::new();
        let mut root = nixmesh_protocol::nar::writer::open(&mut dir).unwrap().directory().unwrap();
        root.entry(b"f").unwrap().file(false, 1, &mut &b"x"[..]).unwrap();
        root.close().unwrap();
        let check = NarCheck::FileContents(digest(HashAlgo::Sha256, b"x"));
        let (_, error) = run(checked(&dir, check), &[&dir]).await;
        assert!(matches!(error, Some(TransferError::NotContent { .. })), "{error:?}");

        // fixed:r:sha1: the whole NAR, with the other algorithm.
        let sha1 = NarCheck::Nar(digest(HashAlgo::Sha1, &nar));
        assert!(run(checked(&nar, sha1), &cut).await.1.is_none());
        let sha1 = NarCheck::Nar(digest(HashAlgo::Sha1, b"not it"));
        assert!(run(checked(&nar, sha1), &cut).await.1.is_some());
    }
}
