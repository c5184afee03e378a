//! Asking peers for narinfos and NARs, over fetch sessions kept per peer.
//!
//! A request takes an idle stream to the peer if there is one young enough, else opens a
//! new one; after a complete answer (for a NAR: its last byte read) the stream goes back to
//! the peer's idle list. At most [`STREAMS_PER_PEER`] streams to one peer are in use at
//! once, below the holder's per-peer session limit, so a busy node waits its turn instead of
//! being refused.
//!
//! A request whose stream closes before any answer arrives is asked again on a new stream:
//! right away when the stream was a reused one (the holder closed it while idle), after a
//! short back-off when it was new (the holder's queue of inbound streams was full and closed
//! it, [`crate::mesh::streams`]), up to [`NEW_STREAM_ATTEMPTS`] times. A time-out or a
//! malformed answer is not retried: the peer is there but slow or broken, and the caller goes
//! on to another holder.
//!
//! A request or a NAR's stream whose peer the mesh reports gone (disconnected, or being
//! dropped for not answering pings) fails at once ([`FetchFailure::Disconnected`]), instead of
//! waiting out its time-out on a stream nothing will wake: the caller moves on to the next
//! holder as soon as the mesh knows.
//!
//! Streams are opened offering fetch/3 before fetch/2 and keep the version agreed: a NAR is
//! asked for zstd-compressed (`NarCoded`) only on a fetch/3 stream, and only when this node's
//! measure of the peer's link says it pays ([`super::link`]); a fetch/2 peer gets fetch/2's
//! `Nar`, and its raw answer, as before.
//!
//! Failures keep their kind ([`FetchFailure`]) up to where a decision is made on them: the
//! substituter's source turns a time-out into `SourceError::TimedOut`, and the rest into
//! text only there.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use libp2p::PeerId;
use nixmesh_protocol::mesh_messages::{
    FETCH_PROTOCOL, FETCH_PROTOCOL_V3, FetchRequest, FetchResponse, MAX_FRAME_LEN, MAX_NARINFO_LEN,
    WireError,
};
use nixmesh_protocol::{Sha256, StorePathHash};
use parking_lot::Mutex;
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::link::{LinkStats, MeshCompression};
use super::zstd_blocks::BlockError;
use super::{FRAME_TIMEOUT, FetchVersion, REUSE_WITHIN};
use crate::mesh::Mesh;
use crate::mesh::framed::{FrameError, FrameLimits, MeshStream};
use crate::mesh::share::{PeerShare, PeerShares};
use crate::mesh::streams::OpenStreamError;

mod body;

/// Streams to one peer in use at once (the holder allows more sessions than this per peer).
pub const STREAMS_PER_PEER: usize = 48;
/// Idle streams kept per peer for reuse.
const IDLE_PER_PEER: usize = 32;
/// How often a request is tried on a new stream that closes unanswered, and the first pause
/// between tries (doubled each time).
pub const NEW_STREAM_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// A fetch that failed; says which peer, which operation, and what went wrong as a kind
/// the caller can decide on.
#[derive(Debug, Clone, Error)]
#[error("peer {peer}: {operation} failed: {failure}")]
pub struct FetchError {
    pub peer: PeerId,
    pub operation: &'static str,
    pub failure: FetchFailure,
}

/// What went wrong in a fetch, by the kinds callers decide on: a time-out or a peer gone is
/// no fault of what the peer sent; a protocol violation is.
#[derive(Debug, Clone, Error)]
pub enum FetchFailure {
    /// No answer, or no NAR bytes, within the time allowed: the peer is there but slow.
    #[error("nothing within {0:?}")]
    TimedOut(Duration),
    /// The mesh reported the peer gone (disconnected, or dropped for not answering pings).
    #[error("the peer disconnected")]
    Disconnected,
    /// The stream closed before the answer was whole.
    #[error("the stream closed")]
    Closed,
    /// The stream broke (reset, or could not be opened).
    #[error("{0}")]
    Io(Arc<io::Error>),
    /// The peer answered `Failed`: busy, its store failed, an offset past the NAR's end; in
    /// its own words, which are all the protocol carries.
    #[error("{message}")]
    Declined { message: String },
    /// The peer sent what the protocol does not allow (behind a pointer: a fetch's error
    /// stays small on every `Result`'s path).
    #[error("{0}")]
    Protocol(Arc<Violation>),
}

impl From<Violation> for FetchFailure {
    fn from(violation: Violation) -> Self {
        FetchFailure::Protocol(Arc::new(violation))
    }
}

/// What a peer sent that the fetch protocol does not allow, with what was read.
#[derive(Debug, Clone, Error)]
pub enum Violation {
    /// A frame over its limit or that does not decode, or a stream for another protocol.
    #[error("{0}")]
    Frame(Arc<WireError>),
    /// An answer of another kind than the request asks for.
    #[error("answered a {asked} request with {got}")]
    OtherAnswer { asked: &'static str, got: &'static str },
    /// A narinfo, listing or build log longer than its bound.
    #[error("{what} of {len} bytes, more than {limit}")]
    TooLong { what: &'static str, len: u64, limit: u64 },
    /// A NAR answer from another offset than the one asked for, or past the NAR's end.
    #[error("sent the NAR of {nar_size} bytes from offset {sent_from}, not {asked}")]
    OtherOffset { asked: u64, sent_from: u64, nar_size: u64 },
    /// The stream ended before the bytes its answer announced.
    #[error("the stream ended after {got} of {expected} bytes")]
    EndedEarly { got: u64, expected: u64 },
    /// A block of a `NarBlocks` answer that does not check (a corrupted zstd frame, one
    /// too large, or blocks that do not add up to the bytes announced).
    #[error("{0}")]
    Block(BlockError),
}

impl From<FrameError> for FetchFailure {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Closed => FetchFailure::Closed,
            FrameError::TimedOut(waited) => FetchFailure::TimedOut(waited),
            FrameError::Io(e) => FetchFailure::Io(Arc::new(e)),
            FrameError::Wire(e) => Violation::Frame(Arc::new(e)).into(),
        }
    }
}

/// What kind of answer `response` is, for errors.
pub(super) fn answer_kind(response: &FetchResponse) -> &'static str {
    match response {
        FetchResponse::NarInfo { .. } => "a narinfo",
        FetchResponse::Nar { .. } => "a NAR",
        FetchResponse::NarBlocks { .. } => "a NAR in blocks",
        FetchResponse::Listing { .. } => "a listing",
        FetchResponse::BuildLog { .. } => "a build log",
        FetchResponse::NotFound => "not found",
        FetchResponse::Failed { .. } => "a failure",
    }
}

/// A NAR's bytes from a peer, from the offset asked for to the end.
pub type NarBody = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;

/// Each frame, and each read of NAR bytes, within [`FRAME_TIMEOUT`].
const LIMITS: FrameLimits = FrameLimits {
    idle: FRAME_TIMEOUT,
    read: FRAME_TIMEOUT,
    write: FRAME_TIMEOUT,
    max_frame: MAX_FRAME_LEN,
};

/// The asking side of the fetch conversation. Cheap to clone; clones share sessions.
#[derive(Clone)]
pub struct FetchClient {
    mesh: Mesh,
    sessions: Arc<Sessions>,
}

/// A stream between exchanges: its version, and since when it is idle.
type IdleStream = (MeshStream, FetchVersion, Instant);

/// Idle streams per peer (each with its version), youngest last, the shares of streams in
/// use, and what says whether to ask for zstd.
struct Sessions {
    idle: Mutex<HashMap<PeerId, Vec<IdleStream>>>,
    in_use: Arc<PeerShares>,
    links: Arc<LinkStats>,
    compression: MeshCompression,
}

/// A stream in use for one exchange; back to the idle list with [`Session::finished`].
pub(super) struct Session {
    pub(super) stream: MeshStream,
    version: FetchVersion,
    /// Whether the request asked for zstd blocks.
    asked_zstd: bool,
    peer: PeerId,
    sessions: Arc<Sessions>,
    /// Cancelled when the peer is gone (see [`crate::mesh::PeerTable::until_gone`]).
    gone: Option<CancellationToken>,
    _share: PeerShare,
}

impl Session {
    /// The exchange ended cleanly: the stream may carry the next one.
    pub(super) fn finished(self) {
        let mut idle = self.sessions.idle.lock();
        let list = idle.entry(self.peer).or_default();
        list.retain(|(_, _, since)| since.elapsed() < REUSE_WITHIN);
        if list.len() < IDLE_PER_PEER {
            list.push((self.stream, self.version, Instant::now()));
        }
    }
}

impl FetchClient {
    /// A client asking for zstd where the link calls for it (`MeshCompression::Auto`).
    pub fn new(mesh: Mesh) -> Self {
        Self::compressing(mesh, MeshCompression::Auto)
    }

    /// A client asking for zstd as `compression` says, and measuring its zstd speed.
    pub fn compressing(mesh: Mesh, compression: MeshCompression) -> Self {
        let links = Arc::new(LinkStats::default());
        if compression != MeshCompression::Off {
            links.calibrate();
        }
        let sessions = Sessions {
            idle: Mutex::new(HashMap::new()),
            in_use: PeerShares::new(STREAMS_PER_PEER),
            links,
            compression,
        };
        FetchClient { mesh, sessions: Arc::new(sessions) }
    }

    /// Each peer's link as measured, and the NAR wire bytes by coding.
    pub fn links(&self) -> &Arc<LinkStats> {
        &self.sessions.links
    }

    /// `peer`'s narinfo text for `hash`, or `None` when it says it has none.
    pub async fn narinfo(
        &self,
        peer: PeerId,
        hash: StorePathHash,
    ) -> Result<Option<String>, FetchError> {
        self.narinfo_answer(peer, FetchRequest::NarInfo { hash }, "narinfo").await
    }

    /// The narinfo of `hash` from the upstreams of `peer`, the path's claimer (see
    /// [`crate::upstream::flight`]); `None` when they do not have it.
    pub async fn upstream_narinfo(
        &self,
        peer: PeerId,
        hash: StorePathHash,
    ) -> Result<Option<String>, FetchError> {
        let request = FetchRequest::UpstreamNarInfo { hash };
        self.narinfo_answer(peer, request, "narinfo from upstream").await
    }

    /// Asks `request` (a narinfo request) and reads the narinfo that answers it.
    async fn narinfo_answer(
        &self,
        peer: PeerId,
        request: FetchRequest,
        operation: &'static str,
    ) -> Result<Option<String>, FetchError> {
        let failed = |failure: FetchFailure| FetchError { peer, operation, failure };
        let (session, response) = self.exchange(peer, request, operation).await?;
        let answer = match response {
            FetchResponse::NarInfo { text } if text.len() <= MAX_NARINFO_LEN => Ok(Some(text)),
            FetchResponse::NarInfo { text } => {
                let (len, limit) = (text.len() as u64, MAX_NARINFO_LEN as u64);
                return Err(failed(Violation::TooLong { what: "a narinfo", len, limit }.into()));
            }
            FetchResponse::NotFound => Ok(None),
            FetchResponse::Failed { message } => Err(failed(FetchFailure::Declined { message })),
            other @ (FetchResponse::Nar { .. }
            | FetchResponse::NarBlocks { .. }
            | FetchResponse::Listing { .. }
            | FetchResponse::BuildLog { .. }) => {
                let got = answer_kind(&other);
                return Err(failed(Violation::OtherAnswer { asked: "narinfo", got }.into()));
            }
        };
        session.finished();
        answer
    }

    /// `peer`'s NAR for `hash` from byte `offset` on, if its NAR has `nar_hash`; `None` when
    /// it says it has none (or another build of the path).
    pub async fn nar(
        &self,
        peer: PeerId,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarBody>, FetchError> {
        let request = FetchRequest::Nar { hash, nar_hash, offset };
        let zstd = self.wants_zstd(peer, &request);
        self.nar_answer(peer, request, "NAR", zstd).await
    }

    /// The NAR with `nar_hash` of `hash` from an upstream cache by way of `peer`, its
    /// claimer (see [`crate::upstream::flight`]), from byte `offset` on; `None` when `peer`
    /// has no upstream with it.
    pub async fn upstream_nar(
        &self,
        peer: PeerId,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<Option<NarBody>, FetchError> {
        let request = FetchRequest::UpstreamNar { hash, nar_hash, offset };
        self.nar_answer(peer, request, "NAR from upstream", false).await
    }

    /// Asks `request` (a NAR request from `offset`), as zstd blocks with `zstd` where the
    /// stream's version allows, and reads the NAR that answers it.
    async fn nar_answer(
        &self,
        peer: PeerId,
        request: FetchRequest,
        operation: &'static str,
        zstd: bool,
    ) -> Result<Option<NarBody>, FetchError> {
        let failed = |failure: FetchFailure| FetchError { peer, operation, failure };
        let offset = match request {
            FetchRequest::Nar { offset, .. } | FetchRequest::UpstreamNar { offset, .. } => offset,
            FetchRequest::NarInfo { .. }
            | FetchRequest::UpstreamNarInfo { .. }
            | FetchRequest::Listing { .. }
            | FetchRequest::BuildLog { .. }
            | FetchRequest::NarCoded { .. } => unreachable!("a NAR request"),
        };
        let (session, response) = self.exchange_as(peer, request, operation, zstd).await?;
        match response {
            FetchResponse::Nar { nar_size, offset: sent_from }
                if sent_from == offset && offset <= nar_size =>
            {
                Ok(Some(body::raw(session, nar_size - offset)))
            }
            FetchResponse::NarBlocks { nar_size, offset: sent_from }
                if session.asked_zstd && sent_from == offset && offset <= nar_size =>
            {
                Ok(Some(body::blocks(session, nar_size - offset)))
            }
            FetchResponse::Nar { nar_size, offset: sent_from }
            | FetchResponse::NarBlocks { nar_size, offset: sent_from }
                if sent_from != offset || offset > nar_size =>
            {
                let asked = offset;
                Err(failed(Violation::OtherOffset { asked, sent_from, nar_size }.into()))
            }
            FetchResponse::NotFound => {
                session.finished();
                Ok(None)
            }
            FetchResponse::Failed { message } => {
                session.finished();
                Err(failed(FetchFailure::Declined { message }))
            }
            other @ (FetchResponse::NarInfo { .. }
            | FetchResponse::Listing { .. }
            | FetchResponse::BuildLog { .. }
            | FetchResponse::Nar { .. }
            | FetchResponse::NarBlocks { .. }) => {
                let got = answer_kind(&other);
                Err(failed(Violation::OtherAnswer { asked: "NAR", got }.into()))
            }
        }
    }

    /// Sends `request` to `peer` and reads the answer, on a reused or new stream, asking
    /// again where that is safe (see the module docs); fails at once if the peer is gone
    /// meanwhile.
    pub(super) async fn exchange(
        &self,
        peer: PeerId,
        request: FetchRequest,
        operation: &'static str,
    ) -> Result<(Session, FetchResponse), FetchError> {
        let zstd = self.wants_zstd(peer, &request);
        self.exchange_as(peer, request, operation, zstd).await
    }

    /// [`FetchClient::exchange`], a NAR asked for as zstd blocks with `zstd` (on fetch/3).
    async fn exchange_as(
        &self,
        peer: PeerId,
        request: FetchRequest,
        operation: &'static str,
        zstd: bool,
    ) -> Result<(Session, FetchResponse), FetchError> {
        let gone = self.mesh.peers().until_gone(&peer);
        let asking = self.exchange_with(peer, request, operation, gone.clone(), zstd);
        unless_gone(gone.as_ref(), asking)
            .await
            .unwrap_or_else(|| Err(disconnected(peer, operation)))
    }

    async fn exchange_with(
        &self,
        peer: PeerId,
        request: FetchRequest,
        operation: &'static str,
        gone: Option<CancellationToken>,
        zstd: bool,
    ) -> Result<(Session, FetchResponse), FetchError> {
        let share = self.sessions.in_use.acquire(peer).await;
        let mut share = Some(share);
        let mut new_streams = 0;
        loop {
            let idle = self.take_idle(peer);
            let reused = idle.is_some();
            let attempt = async {
                let (mut stream, version) = match idle {
                    Some(idle) => idle,
                    None => {
                        new_streams += 1;
                        self.open(peer).await?
                    }
                };
                let coded = zstd && version == FetchVersion::V3;
                let response = match coded.then(|| coded_request(&request)).flatten() {
                    Some(coded) => ask(&mut stream, &coded).await?,
                    None => ask(&mut stream, &request).await?,
                };
                Ok::<_, FrameError>((stream, version, coded, response))
            };
            match attempt.await {
                Ok((stream, version, asked_zstd, response)) => {
                    let _share = share.take().expect("held until the answer");
                    let sessions = self.sessions.clone();
                    let session =
                        Session { stream, version, asked_zstd, peer, sessions, gone, _share };
                    return Ok((session, response));
                }
                Err(e) if unanswered(&e) && reused => {
                    // Its other idle streams are as old or older: likely closed too.
                    debug!(%peer, operation, "an idle stream was closed ({e}); asking anew");
                    self.sessions.idle.lock().remove(&peer);
                }
                Err(e) if unanswered(&e) && new_streams < NEW_STREAM_ATTEMPTS => {
                    let pause = FIRST_BACKOFF * 2u32.pow(new_streams - 1);
                    debug!(%peer, operation, ?pause, "a new stream closed unanswered ({e})");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(FetchError { peer, operation, failure: e.into() }),
            }
        }
    }

    /// Whether to ask `peer` for `request` (a NAR from its store) as zstd blocks.
    fn wants_zstd(&self, peer: PeerId, request: &FetchRequest) -> bool {
        matches!(request, FetchRequest::Nar { .. })
            && match self.sessions.compression {
                MeshCompression::Auto => self.sessions.links.wants_zstd(&peer),
                MeshCompression::Always => true,
                MeshCompression::Off => false,
            }
    }

    fn take_idle(&self, peer: PeerId) -> Option<(MeshStream, FetchVersion)> {
        let mut idle = self.sessions.idle.lock();
        let list = idle.get_mut(&peer)?;
        let stream = loop {
            let (stream, version, since) = list.pop()?;
            if since.elapsed() < REUSE_WITHIN {
                break Some((stream, version));
            }
        };
        if list.is_empty() {
            idle.remove(&peer);
        }
        stream
    }

    /// A new stream to `peer`, of fetch/3 if it speaks it, else fetch/2.
    async fn open(&self, peer: PeerId) -> Result<(MeshStream, FetchVersion), FrameError> {
        let offered = vec![Mesh::protocol(FETCH_PROTOCOL_V3), Mesh::protocol(FETCH_PROTOCOL)];
        let control = self.mesh.control();
        let opening = control.open_stream_of(peer, offered);
        match tokio::time::timeout(FRAME_TIMEOUT, opening).await {
            Ok(Ok((stream, agreed))) => {
                let version = FetchVersion::of(agreed.as_ref()).unwrap_or(FetchVersion::V2);
                Ok((MeshStream::mesh(stream, LIMITS), version))
            }
            Ok(Err(OpenStreamError::Io(e))) => {
                Err(FrameError::Io(std::io::Error::new(e.kind(), format!("opening a stream: {e}"))))
            }
            // Not worth asking again: the peer will not speak it.
            Ok(Err(e)) => Err(FrameError::Wire(WireError::Unsupported(e.to_string()))),
            Err(_) => Err(FrameError::TimedOut(FRAME_TIMEOUT)),
        }
    }
}

/// `work`'s output, or `None` if `gone` is cancelled first (never, without one).
async fn unless_gone<T>(
    gone: Option<&CancellationToken>,
    work: impl Future<Output = T>,
) -> Option<T> {
    match gone {
        Some(gone) => tokio::select! {
            output = work => Some(output),
            () = gone.cancelled() => None,
        },
        None => Some(work.await),
    }
}

fn disconnected(peer: PeerId, operation: &'static str) -> FetchError {
    FetchError { peer, operation, failure: FetchFailure::Disconnected }
}

/// Whether `error` means the holder never answered (the stream closed or broke), so asking
/// again cannot have been seen twice.
fn unanswered(error: &FrameError) -> bool {
    matches!(error, FrameError::Closed | FrameError::Io(_))
}

async fn ask(stream: &mut MeshStream, request: &FetchRequest) -> Result<FetchResponse, FrameError> {
    stream.write(request).await?;
    stream.read().await
}

/// `request` (a NAR request) asking for zstd blocks, if it is one that may.
fn coded_request(request: &FetchRequest) -> Option<FetchRequest> {
    match *request {
        FetchRequest::Nar { hash, nar_hash, offset } => {
            Some(FetchRequest::NarCoded { hash, nar_hash, offset, zstd: true })
        }
        _ => None,
    }
}
