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
//! dropped for not answering pings) fails at once with "the peer disconnected", instead of
//! waiting out its time-out on a stream nothing will wake: the caller moves on to the next
//! holder as soon as the mesh knows.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use libp2p::PeerId;
use nixmesh_protocol::wire::{
    FETCH_PROTOCOL, FetchRequest, FetchResponse, MAX_FRAME_LEN, MAX_NARINFO_LEN, WireError,
};
use nixmesh_protocol::{Sha256, StorePathHash};
use thiserror::Error;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{FRAME_TIMEOUT, NAR_CHUNK, REUSE_WITHIN};
use crate::mesh::Mesh;
use crate::mesh::framed::{FrameError, FrameLimits, MeshStream};
use crate::mesh::share::{PeerShare, PeerShares};
use crate::mesh::streams::OpenStreamError;

/// Streams to one peer in use at once (the holder allows more sessions than this per peer).
pub const STREAMS_PER_PEER: usize = 48;
/// Idle streams kept per peer for reuse.
const IDLE_PER_PEER: usize = 32;
/// How often a request is tried on a new stream that closes unanswered, and the first pause
/// between tries (doubled each time).
pub const NEW_STREAM_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(5);

/// A fetch that failed; says which peer and which operation.
#[derive(Debug, Clone, Error)]
#[error("peer {peer}: {operation} failed: {reason}")]
pub struct FetchError {
    pub peer: PeerId,
    pub operation: &'static str,
    pub reason: String,
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

/// Idle streams per peer, youngest last, and the shares of streams in use.
struct Sessions {
    idle: Mutex<HashMap<PeerId, Vec<(MeshStream, Instant)>>>,
    in_use: Arc<PeerShares>,
}

/// A stream in use for one exchange; back to the idle list with [`Session::finished`].
pub(super) struct Session {
    pub(super) stream: MeshStream,
    peer: PeerId,
    sessions: Arc<Sessions>,
    /// Cancelled when the peer is gone (see [`crate::mesh::PeerTable::until_gone`]).
    gone: Option<CancellationToken>,
    _share: PeerShare,
}

impl Session {
    /// The exchange ended cleanly: the stream may carry the next one.
    pub(super) fn finished(self) {
        let mut idle = self.sessions.idle.lock().expect("idle sessions lock poisoned");
        let list = idle.entry(self.peer).or_default();
        list.retain(|(_, since)| since.elapsed() < REUSE_WITHIN);
        if list.len() < IDLE_PER_PEER {
            list.push((self.stream, Instant::now()));
        }
    }
}

impl FetchClient {
    pub fn new(mesh: Mesh) -> Self {
        let sessions = Sessions {
            idle: Mutex::new(HashMap::new()),
            in_use: PeerShares::new(STREAMS_PER_PEER),
        };
        FetchClient { mesh, sessions: Arc::new(sessions) }
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
        let failed = |reason: String| FetchError { peer, operation, reason };
        let (session, response) = self.exchange(peer, request, operation).await?;
        let answer = match response {
            FetchResponse::NarInfo { text } if text.len() <= MAX_NARINFO_LEN => Ok(Some(text)),
            FetchResponse::NarInfo { text } => {
                return Err(failed(format!("narinfo of {} bytes", text.len())));
            }
            FetchResponse::NotFound => Ok(None),
            FetchResponse::Failed { message } => Err(failed(message)),
            FetchResponse::Nar { .. } => {
                return Err(failed("answered a narinfo request with a NAR".into()));
            }
            FetchResponse::Listing { .. } | FetchResponse::BuildLog { .. } => {
                return Err(failed("answered a narinfo request with another answer".into()));
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
        self.nar_answer(peer, FetchRequest::Nar { hash, nar_hash, offset }, "NAR").await
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
        self.nar_answer(peer, request, "NAR from upstream").await
    }

    /// Asks `request` (a NAR request from `offset`) and reads the NAR that answers it.
    async fn nar_answer(
        &self,
        peer: PeerId,
        request: FetchRequest,
        operation: &'static str,
    ) -> Result<Option<NarBody>, FetchError> {
        let failed = |reason: String| FetchError { peer, operation, reason };
        let offset = match request {
            FetchRequest::Nar { offset, .. } | FetchRequest::UpstreamNar { offset, .. } => offset,
            FetchRequest::NarInfo { .. }
            | FetchRequest::UpstreamNarInfo { .. }
            | FetchRequest::Listing { .. }
            | FetchRequest::BuildLog { .. } => unreachable!("a NAR request"),
        };
        let (session, response) = self.exchange(peer, request, operation).await?;
        match response {
            FetchResponse::Nar { nar_size, offset: sent_from }
                if sent_from == offset && offset <= nar_size =>
            {
                Ok(Some(nar_body(session, nar_size - offset)))
            }
            FetchResponse::Nar { .. } => Err(failed("sent the NAR from another offset".into())),
            FetchResponse::NotFound => {
                session.finished();
                Ok(None)
            }
            FetchResponse::Failed { message } => {
                session.finished();
                Err(failed(message))
            }
            FetchResponse::NarInfo { .. }
            | FetchResponse::Listing { .. }
            | FetchResponse::BuildLog { .. } => {
                Err(failed("answered a NAR request with another answer".into()))
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
        let gone = self.mesh.peers().until_gone(&peer);
        let asking = self.exchange_with(peer, request, operation, gone.clone());
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
    ) -> Result<(Session, FetchResponse), FetchError> {
        let failed = |reason: String| FetchError { peer, operation, reason };
        let share = self.sessions.in_use.acquire(peer).await;
        let mut share = Some(share);
        let mut new_streams = 0;
        loop {
            let idle = self.take_idle(peer);
            let reused = idle.is_some();
            let attempt = async {
                let mut stream = match idle {
                    Some(stream) => stream,
                    None => {
                        new_streams += 1;
                        self.open(peer).await?
                    }
                };
                let response = ask(&mut stream, &request).await?;
                Ok::<_, FrameError>((stream, response))
            };
            match attempt.await {
                Ok((stream, response)) => {
                    let _share = share.take().expect("held until the answer");
                    let sessions = self.sessions.clone();
                    return Ok((Session { stream, peer, sessions, gone, _share }, response));
                }
                Err(e) if unanswered(&e) && reused => {
                    // Its other idle streams are as old or older: likely closed too.
                    debug!(%peer, operation, "an idle stream was closed ({e}); asking anew");
                    self.sessions.idle.lock().expect("idle sessions lock poisoned").remove(&peer);
                }
                Err(e) if unanswered(&e) && new_streams < NEW_STREAM_ATTEMPTS => {
                    let pause = FIRST_BACKOFF * 2u32.pow(new_streams - 1);
                    debug!(%peer, operation, ?pause, "a new stream closed unanswered ({e})");
                    tokio::time::sleep(pause).await;
                }
                Err(e) => return Err(failed(e.to_string())),
            }
        }
    }

    fn take_idle(&self, peer: PeerId) -> Option<MeshStream> {
        let mut idle = self.sessions.idle.lock().expect("idle sessions lock poisoned");
        let list = idle.get_mut(&peer)?;
        let stream = loop {
            let (stream, since) = list.pop()?;
            if since.elapsed() < REUSE_WITHIN {
                break Some(stream);
            }
        };
        if list.is_empty() {
            idle.remove(&peer);
        }
        stream
    }

    async fn open(&self, peer: PeerId) -> Result<MeshStream, FrameError> {
        let protocol = Mesh::protocol(FETCH_PROTOCOL);
        let control = self.mesh.control();
        let opening = control.open_stream(peer, protocol);
        match tokio::time::timeout(FRAME_TIMEOUT, opening).await {
            Ok(Ok(stream)) => Ok(MeshStream::mesh(stream, LIMITS)),
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
    FetchError { peer, operation, reason: "the peer disconnected".to_owned() }
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

/// The `len` NAR bytes that follow a `Nar` answer, as a stream of chunks; the session goes
/// back for reuse as soon as the last byte is read.
fn nar_body(session: Session, len: u64) -> NarBody {
    let peer = session.peer;
    let state = (Some(session), len);
    let chunks = futures::stream::unfold(state, move |(session, left)| async move {
        let mut session = session?;
        let failed = |reason: String| FetchError { peer, operation: "NAR", reason };
        if left == 0 {
            session.finished();
            return None;
        }
        let want = left.min(NAR_CHUNK as u64) as usize;
        let gone = session.gone.clone();
        let Some(read) = unless_gone(gone.as_ref(), session.stream.read_bytes(want)).await else {
            return Some((Err(disconnected(peer, "NAR")), (None, left)));
        };
        match read {
            Ok(chunk) if chunk.is_empty() => {
                let reason = format!("the stream ended {left} bytes before the NAR's end");
                Some((Err(failed(reason)), (None, left)))
            }
            Ok(chunk) => {
                let left = left - chunk.len() as u64;
                if left == 0 {
                    session.finished();
                    return Some((Ok(chunk), (None, 0)));
                }
                Some((Ok(chunk), (Some(session), left)))
            }
            Err(FrameError::TimedOut(t)) => {
                Some((Err(failed(format!("no bytes for {t:?}"))), (None, left)))
            }
            Err(e) => Some((Err(failed(e.to_string())), (None, left))),
        }
    });
    Box::pin(chunks)
}
