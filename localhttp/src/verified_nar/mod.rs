//! The trust rule for NAR bytes: Nix never receives a complete NAR that does not match the
//! signed narinfo.
//!
//! [`VerifiedNar`] passes a peer's chunks on as they arrive, feeding each to a [`NarVerifier`]
//! (`check.rs`, sans-IO: it decides which bytes may go out) and holding back the chunk that
//! completes `NarSize` until the SHA-256 over all bytes equals `NarHash`. Any fault (a wrong
//! hash, more bytes than `NarSize`, an early end, a peer error, a stall) ends the stream with
//! an error instead, which makes hyper abort the connection: Nix sees fewer bytes than
//! `Content-Length` and a failed transfer. Memory is one chunk.
//!
//! Around the verifier, each in its own file:
//! - Failover (`failover.rs`): when the holder sending fails mid-transfer (its stream breaks
//!   or ends early, or it sends nothing for the idle timeout), the adapter asks the next
//!   holder for the rest, from the byte offset reached ([`Reopen`]), and goes on hashing: the
//!   client sees one download. Only with no holder left does the fault end the stream. Bytes
//!   that cannot match (more than `NarSize`, a wrong hash at the end) are not failed over: the
//!   client already has them, and Nix retries the download, which then goes first to a holder
//!   that did not fail.
//! - Parking (`park.rs`): a [`Parker`] lets the peer's stream go while the client does not
//!   read; when it reads again, the adapter asks the same holder for the rest, as in a
//!   failover.
//! - Pacing (`pace.rs`): a holder that sends nothing for the idle timeout, or under a minimum
//!   rate, while the adapter waits on it is replaced like one that broke off.

mod check;
mod content;
mod failover;
mod pace;
mod park;

use std::collections::VecDeque;
use std::future::poll_fn;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use nixmesh_protocol::content_address::NarCheck;
use nixmesh_protocol::{Sha256, StorePathHash};
use thiserror::Error;
use tracing::{Span, debug, info, warn};

pub use check::{NarVerifier, Passed, VerifyError};
pub use content::ContentError;
use failover::Holders;
pub use failover::{Others, Reopen, ResumeError};
use pace::{Idle, Pace};
pub use park::Parker;
use park::PeerStream;

#[cfg(doc)]
use crate::config::Config;
use crate::source::{NarStream, SourceError};

/// Why a NAR transfer was cut off. Every variant names the peer in its message.
#[derive(Debug, Error)]
pub enum TransferError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("peer {peer}: no NAR bytes for {idle:?} at offset {offset}")]
    Stalled { peer: String, offset: u64, idle: Duration },
    /// The peer's bytes are not the NAR (or too few of them).
    #[error("peer {peer}: {error}")]
    Nar {
        peer: String,
        #[source]
        error: VerifyError,
    },
    #[error("peer {peer}: sends the NAR at {rate} B/s, under the {min_rate} B/s asked of a holder")]
    TooSlow { peer: String, rate: u64, min_rate: u64 },
    #[error("peer {peer}: could not go on with the NAR: {error}")]
    Resume {
        peer: String,
        #[source]
        error: ResumeError,
    },
}

impl TransferError {
    /// Whether the peer sending is to blame, so its health record counts it: bytes that cannot
    /// be the NAR, a stall or a trickle. (A peer that went away, or whose stream ended early,
    /// is not unhealthy, only gone.)
    pub fn is_peers_fault(&self) -> bool {
        match self {
            TransferError::Nar { error, .. } => error.is_wrong_bytes(),
            TransferError::Stalled { .. } | TransferError::TooSlow { .. } => true,
            TransferError::Source(_) | TransferError::Resume { .. } => false,
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Fewer than `nar_size` bytes received.
    Receiving,
    /// All bytes received and verified; the last chunk may still wait in `ready`.
    Verified,
    /// Ended, by success or by an error already handed out.
    Ended,
}

/// What one look at the holders gave [`VerifiedNar::poll_checked`].
enum Step {
    /// Nothing yet; the task is woken when there is.
    Pending,
    /// Something changed (a holder answered, a parked transfer asks again): look again.
    Again,
    /// What the stream yields.
    Out(Option<Result<Bytes, TransferError>>),
    /// The holder sending failed: go on at the next, or end with this.
    Fault(TransferError),
}

/// A peer's NAR stream, checked against its narinfo as it passes; see the module docs.
pub struct VerifiedNar<P> {
    expected: Expected,
    /// Decides which bytes may go out; its offset is where a resumption would start.
    verifier: NarVerifier,
    holders: Holders<P>,
    /// The current holder's stream; taken away while parked.
    stream: PeerStream,
    /// Whether a fault goes on at the next holder: once the response has started (before,
    /// the caller tries the holders one by one itself).
    started: bool,
    /// A chunk that passed the checks and is not yet handed out.
    ready: VecDeque<Bytes>,
    progress: Progress,
    /// NARs up to this size are verified whole before [`VerifiedNar::first_bytes`] returns.
    verify_whole_up_to: u64,
    /// Armed when the peer first makes us wait after a chunk, so a client that reads slowly
    /// does not count against the peer.
    idle: Idle,
    /// How fast the peer sends while we wait on it.
    pace: Pace,
    /// A holder found too slow with its last chunk: replaced before the next is read.
    too_slow: Option<TransferError>,
    span: Span,
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
        let verifier =
            NarVerifier::new(expected.nar_hash, expected.nar_size, expected.check.as_ref());
        VerifiedNar {
            expected,
            verifier,
            holders: Holders::new(peer, others),
            stream: PeerStream::new(stream),
            started: false,
            ready: VecDeque::new(),
            progress: Progress::Receiving,
            verify_whole_up_to: 0,
            idle: Idle::new(idle_timeout),
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

    /// A handle that parks this transfer, if it can go on after being parked (it can ask a
    /// holder for the rest).
    pub fn parker(&self) -> Option<Parker> {
        self.holders.can_resume().then(|| self.stream.parker())
    }

    /// The next chunk that passed the checks, from whichever holder sends now.
    fn poll_checked(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, TransferError>>> {
        loop {
            if self.progress != Progress::Receiving {
                return Poll::Ready(None);
            }
            let step = if self.holders.is_resuming() {
                self.poll_resumed(cx)
            } else if let Some(e) = self.too_slow.take() {
                Step::Fault(e)
            } else {
                self.poll_peer(cx)
            };
            match step {
                Step::Pending => return Poll::Pending,
                Step::Again => {}
                Step::Out(item) => return Poll::Ready(item),
                Step::Fault(e) => {
                    if let Some(e) = self.fault(e) {
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
        }
    }

    /// Waits on the holder asked for the rest, within the idle timeout.
    fn poll_resumed(&mut self, cx: &mut Context<'_>) -> Step {
        match self.holders.poll_answer(cx, &mut self.idle) {
            Poll::Pending => Step::Pending,
            Poll::Ready(Ok(stream)) => {
                let offset = self.verifier.offset();
                self.span.in_scope(|| {
                    info!(peer = %self.holders.peer, offset, "NAR transfer resumed");
                });
                self.stream.replace(stream);
                self.idle.stop();
                self.pace.reset();
                Step::Again
            }
            Poll::Ready(Err(error)) => {
                Step::Fault(TransferError::Resume { peer: self.holders.peer.to_string(), error })
            }
        }
    }

    /// Waits on the holder sending, within the idle timeout; asks it again if parked.
    fn poll_peer(&mut self, cx: &mut Context<'_>) -> Step {
        let Some(polled) = self.stream.poll_next(cx) else {
            self.unpark();
            return Step::Again;
        };
        match polled {
            Poll::Ready(Some(Ok(chunk))) => Step::Out(Some(self.on_chunk(chunk))),
            Poll::Ready(Some(Err(e))) => Step::Fault(e.into()),
            Poll::Ready(None) => self.on_end(),
            Poll::Pending => {
                self.idle.arm_unless_waiting();
                self.pace.waiting();
                if !self.idle.expired(cx) {
                    return Step::Pending;
                }
                let (peer, offset) = (self.holders.peer.to_string(), self.verifier.offset());
                Step::Fault(TransferError::Stalled { peer, offset, idle: self.idle.timeout })
            }
        }
    }

    /// The holder sent `chunk`: handed out if it passes the checks, and the holder's pace
    /// judged.
    fn on_chunk(&mut self, chunk: Bytes) -> Result<Bytes, TransferError> {
        self.idle.stop();
        self.pace.chunk(chunk.len());
        let taken = match self.verifier.push(&chunk) {
            Ok(Passed::Part) => Ok(chunk),
            Ok(Passed::Whole) => {
                self.verified();
                Ok(chunk)
            }
            Err(e) => Err(self.fail_nar(e)),
        };
        let replaceable = self.started && self.holders.left() > 0;
        if let Some(rate) = self.pace.too_slow().filter(|_| taken.is_ok() && replaceable) {
            let (peer, min_rate) = (self.holders.peer.to_string(), self.pace.min_rate);
            self.too_slow = Some(TransferError::TooSlow { peer, rate, min_rate });
        }
        taken
    }

    /// The holder's stream ended: the NAR is whole (only an empty one is found so here: any
    /// other completes with its last chunk), or short, which the next holder may make up.
    fn on_end(&mut self) -> Step {
        match self.verifier.at_end() {
            Ok(()) => {
                self.verified();
                Step::Out(None)
            }
            Err(e) if e.is_wrong_bytes() => Step::Out(Some(Err(self.fail_nar(e)))),
            Err(error) => {
                Step::Fault(TransferError::Nar { peer: self.holders.peer.to_string(), error })
            }
        }
    }

    /// The client reads again after the transfer was parked: asks the same peer for the rest.
    fn unpark(&mut self) {
        let offset = self.verifier.offset();
        self.span.in_scope(|| {
            debug!(peer = %self.holders.peer, offset, "the client reads again: resuming");
        });
        self.holders.ask_again(offset);
        self.pace.reset();
        self.idle.arm();
    }

    /// The holder sending failed with `e` before the end: asks the next holder for the rest,
    /// or, with none left, ends the transfer with `e` (returned).
    fn fault(&mut self, e: TransferError) -> Option<TransferError> {
        if !self.started || !self.holders.can_fail_over() {
            return Some(self.fail(e));
        }
        self.holders.count_against_peer(&e);
        let offset = self.verifier.offset();
        let next = self.holders.fail_over(offset).expect("a next holder, checked above");
        self.span.in_scope(|| {
            warn!(hash = %self.expected.store_hash, offset, next = %next,
                "NAR transfer broke off, going on at the next holder: {e}");
        });
        self.idle.arm();
        None
    }

    fn verified(&mut self) {
        self.progress = Progress::Verified;
        let (peer, bytes) = (&self.holders.peer, self.verifier.offset());
        self.span.in_scope(|| debug!(%peer, bytes, "NAR verified"));
    }

    /// Ends the transfer: the bytes cannot be the NAR.
    fn fail_nar(&mut self, error: VerifyError) -> TransferError {
        self.fail(TransferError::Nar { peer: self.holders.peer.to_string(), error })
    }

    fn fail(&mut self, e: TransferError) -> TransferError {
        self.holders.count_against_peer(&e);
        self.progress = Progress::Ended;
        self.ready.clear();
        self.span.in_scope(|| {
            warn!(peer = %self.holders.peer, hash = %self.expected.store_hash,
                offset = self.verifier.offset(), other_holders = self.holders.left(),
                "NAR transfer cut off: {e}");
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
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;
    use futures::{StreamExt, stream};
    use nixmesh_protocol::hash::{HashAlgo, NixHash, NixHasher};

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
        assert!(
            matches!(error, Some(TransferError::Nar { error: VerifyError::WrongHash { .. }, .. })),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn too_long_and_too_short_are_errors() {
        let long = [NAR, b"!"].concat();
        let (out, error) = run(expected(NAR), &[&long[..20], &long[20..]]).await;
        assert_eq!(out, &NAR[..20]);
        assert!(
            matches!(
                error,
                Some(TransferError::Nar { error: VerifyError::TooLong { expected: 43 }, .. })
            ),
            "{error:?}"
        );
        let (out, error) = run(expected(NAR), &[&NAR[..20], &NAR[20..42]]).await;
        assert_eq!(out, &NAR[..42]);
        assert!(
            matches!(
                error,
                Some(TransferError::Nar { error: VerifyError::TooShort { got: 42, .. }, .. })
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn a_fault_before_any_byte_is_reported_by_first_bytes() {
        let (out, error) = run(expected(NAR), &[]).await;
        assert!(out.is_empty());
        assert!(
            matches!(
                error,
                Some(TransferError::Nar { error: VerifyError::TooShort { got: 0, .. }, .. })
            ),
            "{error:?}"
        );
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
        assert!(
            matches!(error, Some(TransferError::Nar { error: VerifyError::NotContent(_), .. })),
            "{error:?}"
        );

        // A flat content address is of one regular file, not of a directory.
        let mut dir = Vec::new();
        let mut root = nixmesh_protocol::nar::writer::open(&mut dir).unwrap().directory().unwrap();
        root.entry(b"f").unwrap().file(false, 1, &mut &b"x"[..]).unwrap();
        root.close().unwrap();
        let check = NarCheck::FileContents(digest(HashAlgo::Sha256, b"x"));
        let (_, error) = run(checked(&dir, check), &[&dir]).await;
        assert!(
            matches!(error, Some(TransferError::Nar { error: VerifyError::NotContent(_), .. })),
            "{error:?}"
        );

        // fixed:r:sha1: the whole NAR, with the other algorithm.
        let sha1 = NarCheck::Nar(digest(HashAlgo::Sha1, &nar));
        assert!(run(checked(&nar, sha1), &cut).await.1.is_none());
        let sha1 = NarCheck::Nar(digest(HashAlgo::Sha1, b"not it"));
        assert!(run(checked(&nar, sha1), &cut).await.1.is_some());
    }

    /// Whom a test's reopen asked, from which offset, in order.
    type Asked = Arc<Mutex<Vec<(&'static str, u64)>>>;

    /// A reopen that records whom it asked from where, each answering with the rest of `nar`.
    fn recording_reopen(nar: &'static [u8]) -> (Reopen<&'static str>, Asked) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let record = asked.clone();
        let reopen: Reopen<&'static str> = Arc::new(move |peer, offset| {
            record.lock().push((peer, offset));
            let rest = Bytes::from_static(&nar[offset as usize..]);
            let stream: NarStream = Box::pin(stream::iter([Ok(rest)]));
            Box::pin(async move { Ok(Some(stream)) })
        });
        (reopen, asked)
    }

    async fn rest_of(nar: &mut VerifiedNar<&'static str>) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(chunk) = nar.next().await {
            out.extend_from_slice(&chunk.expect("the rest passes"));
        }
        out
    }

    #[tokio::test]
    async fn a_holder_ending_early_is_replaced_by_the_next_at_the_offset_reached() {
        let (reopen, asked) = recording_reopen(NAR);
        let first: NarStream = Box::pin(stream::iter([Ok(Bytes::from_static(&NAR[..20]))]));
        let others = Others { remaining: vec!["peer-b"], reopen: Some(reopen), health: None };
        let idle = Duration::from_secs(5);
        let mut nar = VerifiedNar::new(expected(NAR), "peer-a", first, others, idle);
        nar.first_bytes().await.unwrap();
        assert_eq!(rest_of(&mut nar).await, NAR);
        assert_eq!(*asked.lock(), [("peer-b", 20)]);
    }

    #[tokio::test]
    async fn a_parked_transfer_asks_the_same_holder_for_the_rest() {
        let (reopen, asked) = recording_reopen(NAR);
        let first = stream::iter([Ok(Bytes::from_static(&NAR[..20]))]).chain(stream::pending());
        let others = Others { remaining: vec!["peer-b"], reopen: Some(reopen), health: None };
        let idle = Duration::from_secs(5);
        let mut nar = VerifiedNar::new(expected(NAR), "peer-a", Box::pin(first), others, idle);
        nar.first_bytes().await.unwrap();
        let parker = nar.parker().expect("a transfer with a reopen can be parked");
        assert!(parker.park());
        assert!(!parker.park(), "nothing left to park");
        assert_eq!(rest_of(&mut nar).await, NAR);
        assert_eq!(*asked.lock(), [("peer-a", 20)]);
        drop(nar);
        assert!(!parker.park(), "the transfer is gone");
    }
}
