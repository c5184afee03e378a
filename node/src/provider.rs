//! Serving this node's store to peers on [`FETCH_PROTOCOL`]: narinfos built from the daemon's
//! path info (signed on the fly with `--sign-key-file`), and NARs streamed from the daemon.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use nixmesh_protocol::signature::{Signature, SigningKey};
use nixmesh_protocol::wire::{FETCH_PROTOCOL, FetchRequest, FetchResponse, MAX_REQUEST_FRAME_LEN};
use nixmesh_protocol::{NarInfo, Sha256, StorePathHash};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, watch};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::{debug, info_span, warn};

use crate::mesh::framing::{FrameError, read_frame, write_frame};
use crate::mesh::{Mesh, StreamLimits, serve_streams};
use crate::store::{PathInfo, Store};

/// How long a peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one write to a peer may block (a stalled reader is cut off after this).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Fetches served at once, how many more may wait, and how long, for a turn; one peer may
/// have half of the running ones at most.
const FETCHES: StreamLimits =
    StreamLimits { concurrent: 64, waiting: 256, max_wait: Duration::from_secs(10), per_peer: 32 };

/// NARs sent at once. Each holds a daemon connection for its whole transfer, so they get
/// three quarters of the pool and the rest stays free for path info and store rescans.
const MAX_NAR_TRANSFERS: usize = crate::store::MAX_ACTIVE * 3 / 4;
/// How long a NAR request may wait for a transfer slot before the peer is told to go
/// elsewhere.
const NAR_SLOT_WAIT: Duration = Duration::from_secs(10);

/// Answers peers' fetches from the local store.
#[derive(Clone)]
pub struct Provider {
    store: Store,
    signing_key: Option<Arc<SigningKey>>,
    nar_transfers: Arc<Semaphore>,
}

impl Provider {
    pub fn new(store: Store, signing_key: Option<Arc<SigningKey>>) -> Self {
        let nar_transfers = Arc::new(Semaphore::new(MAX_NAR_TRANSFERS));
        Provider { store, signing_key, nar_transfers }
    }

    /// The narinfo for the path with `hash`, with the signatures the store holds and ours.
    pub async fn narinfo(&self, hash: StorePathHash) -> Result<Option<NarInfo>, String> {
        let Some(info) = self.path_info(hash).await? else { return Ok(None) };
        Ok(Some(self.narinfo_for(info)))
    }

    async fn path_info(&self, hash: StorePathHash) -> Result<Option<PathInfo>, String> {
        let Some(path) =
            self.store.query_path_from_hash_part(&hash).await.map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        self.store.query_path_info(&path).await.map_err(|e| e.to_string())
    }

    fn narinfo_for(&self, info: PathInfo) -> NarInfo {
        let signatures = info
            .signatures
            .iter()
            .filter_map(|s| match Signature::parse(s) {
                Ok(sig) => Some(sig),
                Err(e) => {
                    warn!(path = %info.path, "skipping a signature the store holds: {e}");
                    None
                }
            })
            .collect();
        let mut narinfo = NarInfo {
            url: format!("nar/{}.nar", info.nar_hash.to_nixbase32()),
            store_path: info.path,
            compression: Some("none".to_owned()),
            file_hash: None,
            file_size: None,
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references,
            deriver: info.deriver,
            system: None,
            signatures,
            ca: info.ca,
            extra: Vec::new(),
        };
        // Signing every path, not only unsigned ones: a path signed by a key the peers do not
        // trust is as unusable to them as an unsigned one.
        if let Some(key) = &self.signing_key {
            narinfo.sign(key);
        }
        narinfo
    }

    /// Answers fetch streams until `shutdown`.
    pub async fn serve(self, mesh: Mesh, shutdown: watch::Receiver<bool>) {
        let span = |peer| info_span!("fetch-from", %peer);
        serve_streams(&mesh, FETCH_PROTOCOL, FETCHES, shutdown, span, |_, stream| {
            let provider = self.clone();
            async move {
                if let Err(e) = provider.answer(stream.compat()).await {
                    debug!("fetch ended: {e}");
                }
            }
        })
        .await
    }

    async fn answer<S>(&self, mut stream: S) -> Result<(), FrameError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match read_frame::<FetchRequest, _>(&mut stream, REQUEST_TIMEOUT, MAX_REQUEST_FRAME_LEN)
            .await?
        {
            FetchRequest::NarInfo { hash } => {
                let response = match self.narinfo(hash).await {
                    Ok(Some(narinfo)) => FetchResponse::NarInfo { text: narinfo.to_string() },
                    Ok(None) => FetchResponse::NotFound,
                    Err(message) => FetchResponse::Failed { message },
                };
                debug!(%hash, found = matches!(response, FetchResponse::NarInfo { .. }), "narinfo asked");
                write_frame(&mut stream, &response, WRITE_TIMEOUT).await
            }
            FetchRequest::Nar { hash, nar_hash, offset } => {
                self.send_nar(&mut stream, hash, nar_hash, offset).await
            }
        }
    }

    async fn send_nar<S>(
        &self,
        stream: &mut S,
        hash: StorePathHash,
        nar_hash: Sha256,
        offset: u64,
    ) -> Result<(), FrameError>
    where
        S: tokio::io::AsyncWrite + Unpin,
    {
        let info = match self.path_info(hash).await {
            // Another build of the path than the one asked for: as good as not held.
            Ok(Some(info)) if info.nar_hash != nar_hash => {
                debug!(path = %info.path, "asked for another NAR hash than ours");
                return write_frame(stream, &FetchResponse::NotFound, WRITE_TIMEOUT).await;
            }
            Ok(Some(info)) if offset <= info.nar_size => info,
            Ok(Some(info)) => {
                let message = format!("offset {offset} is past the NAR's end ({})", info.nar_size);
                return write_frame(stream, &FetchResponse::Failed { message }, WRITE_TIMEOUT)
                    .await;
            }
            Ok(None) => return write_frame(stream, &FetchResponse::NotFound, WRITE_TIMEOUT).await,
            Err(message) => {
                return write_frame(stream, &FetchResponse::Failed { message }, WRITE_TIMEOUT)
                    .await;
            }
        };
        let slot = tokio::time::timeout(NAR_SLOT_WAIT, self.nar_transfers.clone().acquire_owned());
        let Ok(Ok(_slot)) = slot.await else {
            let message = format!("busy: {MAX_NAR_TRANSFERS} NARs being sent");
            return write_frame(stream, &FetchResponse::Failed { message }, WRITE_TIMEOUT).await;
        };
        let nar = match self.store.nar_from_path(&info.path, info.nar_size).await {
            Ok(nar) => nar,
            Err(e) => {
                let message = e.to_string();
                return write_frame(stream, &FetchResponse::Failed { message }, WRITE_TIMEOUT)
                    .await;
            }
        };
        let header = FetchResponse::Nar { nar_size: info.nar_size, offset };
        write_frame(stream, &header, WRITE_TIMEOUT).await?;
        debug!(path = %info.path, offset, size = info.nar_size, "sending NAR");
        let mut nar = std::pin::pin!(nar);
        // The daemon always sends from the start; skip to the offset asked for.
        let mut to_skip = offset;
        while let Some(chunk) = nar.next().await {
            let mut chunk =
                chunk.map_err(|e| FrameError::Io(std::io::Error::other(e.to_string())))?;
            if to_skip > 0 {
                let skip = to_skip.min(chunk.len() as u64);
                to_skip -= skip;
                let _ = chunk.split_to(skip as usize);
                if chunk.is_empty() {
                    continue;
                }
            }
            tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(&chunk))
                .await
                .map_err(|_| FrameError::TimedOut(WRITE_TIMEOUT))??;
        }
        stream.flush().await?;
        stream.shutdown().await?;
        Ok(())
    }
}
