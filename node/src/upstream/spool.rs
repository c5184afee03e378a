//! The spool: NARs downloaded from upstream, kept in files under the state dir while they
//! arrive and for a while after, so that every reader (this node's Nix, peers relaying
//! through this node) follows one download instead of starting its own.
//!
//! A reader may start at any offset and at any time: it reads what has been written, then
//! waits for more ([`Progress`] on a watch channel). The writer checks the NAR's size and
//! `NarHash` as it writes; a NAR that is not the one asked for ends as
//! [`Progress::Failed`], and its readers with an error (the bytes they already passed on are
//! checked again by whoever receives them, and the last ones held back there).
//!
//! A download nobody reads any more stops: once it has had no reader for [`UNREAD_LIMIT`]
//! (a peer that asked and went, forty times over, costs one download of a few seconds, not
//! forty whole NARs). Readers are never given a NAR's last byte before its hash is checked.
//!
//! Bounds: the files together take at most the spool's capacity; a NAR larger than that is
//! never spooled (the caller downloads it for its one reader); room is made by removing the
//! NARs finished longest ago, never one still arriving. A finished NAR is kept for
//! [`KEEP_FOR`] after it was last asked for. Readers keep their open file, so removing a file
//! never cuts one off. The spool directory is emptied at start: what a previous run left was
//! not checked.

use std::collections::HashMap;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use nixmesh_protocol::Sha256;
use nixmesh_protocol::hash::Sha256Hasher;
use parking_lot::Mutex;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::checked::NarMismatch;
use super::{NarBytes, UpstreamError};
use crate::node::shutdown::Shutdown;

/// How long a finished NAR stays after it was last asked for.
pub const KEEP_FOR: Duration = Duration::from_secs(600);
/// How long a download goes on with no reader before it stops: long enough for a reader that
/// broke off to come back (a failover, a parked client resumed), short enough that a peer
/// asking and leaving costs seconds of the upstream link.
pub const UNREAD_LIMIT: Duration = Duration::from_secs(5);
/// Readers read in chunks of at most this size.
const CHUNK: usize = 64 * 1024;

/// How far a spooled NAR has come.
#[derive(Debug, Clone)]
pub enum Progress {
    /// This many bytes are in the file.
    Writing(u64),
    /// All of it is, and its size and hash are right.
    Done,
    /// The download failed: why, for each of its readers.
    Failed(Arc<DownloadError>),
}

/// Why a NAR's download into the spool ended before the whole NAR checked out. Its readers
/// get it inside their `io::Error` (`io::Error::get_ref` downcasts to it).
#[derive(Debug, Error)]
pub enum DownloadError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Mismatch(#[from] NarMismatch),
    #[error("writing the spool file: {0}")]
    Write(#[from] std::io::Error),
    /// Nobody read it for the unread limit: stopped, not failed by upstream.
    #[error("nobody read it for {0:?}: stopped")]
    Unread(Duration),
}

/// Why a NAR cannot be read from the spool.
#[derive(Debug, Error)]
pub enum SpoolError {
    #[error("a NAR of {nar_size} bytes is larger than the spool ({capacity} bytes)")]
    TooLarge { nar_size: u64, capacity: u64 },
    #[error("the spool is full of NARs still arriving ({used} of {capacity} bytes)")]
    Full { used: u64, capacity: u64 },
    #[error("spool file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Starts a NAR's download: its bytes from the start.
pub type Download = Box<dyn FnOnce() -> BoxFuture<'static, Result<NarBytes, UpstreamError>> + Send>;

/// NARs from upstream on disk, each downloaded once while kept.
pub struct Spool {
    dir: PathBuf,
    capacity: u64,
    entries: Mutex<HashMap<Sha256, Arc<Entry>>>,
    shutdown: Shutdown,
    unread_limit: Duration,
}

struct Entry {
    file: PathBuf,
    nar_size: u64,
    progress: watch::Receiver<Progress>,
    last_asked: Mutex<Instant>,
    readers: Arc<Readers>,
}

/// The readers of one NAR, so that its download stops when it has none.
#[derive(Debug)]
struct Readers {
    count: AtomicUsize,
    /// When the count last fell to zero (or the entry was made).
    unread_since: Mutex<Instant>,
    /// [`UNREAD_LIMIT`], but for tests.
    limit: Duration,
}

impl Readers {
    fn new(limit: Duration) -> Arc<Readers> {
        let unread_since = Mutex::new(Instant::now());
        Arc::new(Readers { count: AtomicUsize::new(0), unread_since, limit })
    }

    fn joined(self: &Arc<Self>) -> ReaderMark {
        self.count.fetch_add(1, Ordering::SeqCst);
        ReaderMark(self.clone())
    }

    /// Whether nobody has read for its limit.
    fn abandoned(&self) -> bool {
        let since = self.unread_since.lock();
        self.count.load(Ordering::SeqCst) == 0 && since.elapsed() >= self.limit
    }
}

/// One reader, counted until dropped.
struct ReaderMark(Arc<Readers>);

impl Drop for ReaderMark {
    fn drop(&mut self) {
        let mut since = self.0.unread_since.lock();
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            *since = Instant::now();
        }
    }
}

impl Entry {
    fn finished(&self) -> bool {
        !matches!(*self.progress.borrow(), Progress::Writing(_))
    }

    fn failed(&self) -> bool {
        matches!(*self.progress.borrow(), Progress::Failed(_))
    }
}

impl Spool {
    /// A spool in `dir` (made if missing, emptied if not) holding at most `capacity` bytes.
    pub fn new(dir: &Path, capacity: u64, shutdown: Shutdown) -> Result<Spool, SpoolError> {
        let io = |source| SpoolError::Io { path: dir.to_owned(), source };
        std::fs::create_dir_all(dir).map_err(io)?;
        for leftover in std::fs::read_dir(dir).map_err(io)? {
            let path = leftover.map_err(io)?.path();
            std::fs::remove_file(&path).map_err(|source| SpoolError::Io { path, source })?;
        }
        let entries = Mutex::default();
        Ok(Spool { dir: dir.to_owned(), capacity, entries, shutdown, unread_limit: UNREAD_LIMIT })
    }

    /// The spool with downloads stopping after `limit` without a reader, not
    /// [`UNREAD_LIMIT`]: for tests.
    pub fn with_unread_limit(mut self, limit: Duration) -> Spool {
        self.unread_limit = limit;
        self
    }

    /// The NAR with `nar_hash` (`nar_size` bytes) from byte `offset` on: following its
    /// download if one is under way or done, else starting `download` for it.
    pub fn read(
        &self,
        nar_hash: Sha256,
        nar_size: u64,
        offset: u64,
        download: Download,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static, SpoolError> {
        let entry = self.entry(nar_hash, nar_size, download)?;
        let io = |source| SpoolError::Io { path: entry.file.clone(), source };
        let file = std::fs::File::open(&entry.file).map_err(io)?;
        Ok(read_from(entry, tokio::fs::File::from_std(file), offset))
    }

    /// The entry for `nar_hash`, started if there is none usable.
    fn entry(
        &self,
        nar_hash: Sha256,
        nar_size: u64,
        download: Download,
    ) -> Result<Arc<Entry>, SpoolError> {
        let mut entries = self.entries.lock();
        entries.retain(|_, e| {
            let stale = e.finished() && e.last_asked.lock().elapsed() > KEEP_FOR;
            let gone = e.failed() || stale;
            if gone {
                let _ = std::fs::remove_file(&e.file);
            }
            !gone
        });
        if let Some(entry) = entries.get(&nar_hash).filter(|e| e.nar_size == nar_size) {
            *entry.last_asked.lock() = Instant::now();
            return Ok(entry.clone());
        }
        if nar_size > self.capacity {
            return Err(SpoolError::TooLarge { nar_size, capacity: self.capacity });
        }
        // Room: the NARs finished longest ago go first; one still arriving never does.
        let mut used: u64 = entries.values().map(|e| e.nar_size).sum();
        while used + nar_size > self.capacity {
            let oldest = entries
                .iter()
                .filter(|(_, e)| e.finished())
                .min_by_key(|(_, e)| *e.last_asked.lock())
                .map(|(hash, _)| *hash);
            let Some(oldest) = oldest else {
                return Err(SpoolError::Full { used, capacity: self.capacity });
            };
            let removed = entries.remove(&oldest).expect("just found");
            let _ = std::fs::remove_file(&removed.file);
            used -= removed.nar_size;
        }
        let path = self.dir.join(format!("{}.nar", nar_hash.to_nixbase32()));
        let _ = std::fs::remove_file(&path);
        let file = std::fs::File::create_new(&path)
            .map_err(|source| SpoolError::Io { path: path.clone(), source })?;
        let (progress_tx, progress) = watch::channel(Progress::Writing(0));
        let readers = Readers::new(self.unread_limit);
        let entry = Arc::new(Entry {
            file: path.clone(),
            nar_size,
            progress,
            last_asked: Mutex::new(Instant::now()),
            readers: readers.clone(),
        });
        entries.insert(nar_hash, entry.clone());
        self.shutdown.spawn_until_stopped(async move {
            let nar = Expected { nar_hash, nar_size };
            let result = write(file, nar, download, &readers, &progress_tx).await;
            match result {
                Ok(()) => {
                    debug!(file = %path.display(), "NAR spooled whole");
                    progress_tx.send_replace(Progress::Done);
                }
                Err(reason) => {
                    warn!(file = %path.display(), "NAR download from upstream failed: {reason}");
                    progress_tx.send_replace(Progress::Failed(Arc::new(reason)));
                }
            }
        });
        Ok(entry)
    }

    /// Bytes the spool's files take (NARs still arriving counted whole).
    pub fn used(&self) -> u64 {
        let entries = self.entries.lock();
        entries.values().map(|e| e.nar_size).sum()
    }
}

/// The NAR a download must give.
struct Expected {
    nar_hash: Sha256,
    nar_size: u64,
}

/// Downloads into `file`, checking size and hash, telling readers how far it has come;
/// stops once `readers` have left it for [`UNREAD_LIMIT`].
async fn write(
    file: std::fs::File,
    Expected { nar_hash, nar_size }: Expected,
    download: Download,
    readers: &Readers,
    progress: &watch::Sender<Progress>,
) -> Result<(), DownloadError> {
    let mut nar = download().await?;
    let mut file = tokio::fs::File::from_std(file);
    let mut hasher = Sha256Hasher::new();
    let mut written = 0u64;
    while let Some(chunk) = nar.next().await {
        let chunk = chunk?;
        written += chunk.len() as u64;
        if written > nar_size {
            return Err(NarMismatch::TooLong { nar_size }.into());
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await?;
        // Readers read the file as soon as they hear of it: the bytes must be in it.
        file.flush().await?;
        progress.send_replace(Progress::Writing(written));
        if written < nar_size && readers.abandoned() {
            return Err(DownloadError::Unread(readers.limit));
        }
    }
    if written != nar_size {
        return Err(NarMismatch::TooShort { got: written, nar_size }.into());
    }
    let got = hasher.finish();
    if got != nar_hash {
        return Err(NarMismatch::WrongHash { got, expected: nar_hash }.into());
    }
    Ok(())
}

/// A failed download as its readers see it, inside their `io::Error`: the one error shared.
#[derive(Debug, Error)]
#[error(transparent)]
pub struct FailedDownload(pub Arc<DownloadError>);

/// `entry`'s bytes from `offset` to its end, as they arrive.
fn read_from(
    entry: Arc<Entry>,
    file: tokio::fs::File,
    offset: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    let progress = entry.progress.clone();
    let mark = entry.readers.joined();
    let reader = Reader { entry, file, pos: offset, seeked: false, progress, _mark: mark };
    futures::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        match reader.next_chunk().await {
            Ok(Some(chunk)) => Some((Ok(chunk), Some(reader))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// One reader of a spooled NAR.
struct Reader {
    entry: Arc<Entry>,
    file: tokio::fs::File,
    pos: u64,
    seeked: bool,
    progress: watch::Receiver<Progress>,
    _mark: ReaderMark,
}

impl Reader {
    /// The next bytes once they are written; `None` at the end of a NAR whose download
    /// finished and checked out.
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        if !self.seeked {
            self.file.seek(SeekFrom::Start(self.pos)).await?;
            self.seeked = true;
        }
        let size = self.entry.nar_size;
        loop {
            let progress = self.progress.borrow_and_update().clone();
            let available = match &progress {
                // The last byte waits for the hash: no reader gets a whole wrong NAR.
                Progress::Writing(written) => (*written).min(size.saturating_sub(1)),
                Progress::Done => size,
                Progress::Failed(why) => {
                    return Err(std::io::Error::other(FailedDownload(why.clone())));
                }
            };
            if self.pos < available {
                let len = (available - self.pos).min(CHUNK as u64) as usize;
                let mut chunk = BytesMut::zeroed(len);
                self.file.read_exact(&mut chunk).await?;
                self.pos += len as u64;
                return Ok(Some(chunk.freeze()));
            }
            if matches!(progress, Progress::Done) {
                return Ok(None);
            }
            if self.progress.changed().await.is_err()
                && matches!(*self.progress.borrow(), Progress::Writing(_))
            {
                return Err(std::io::Error::other("the download stopped (the node is stopping)"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    fn nar(bytes: &'static [u8], pieces: usize) -> Download {
        Box::new(move || {
            Box::pin(async move {
                let chunks: Vec<Result<Bytes, UpstreamError>> = bytes
                    .chunks(bytes.len().div_ceil(pieces))
                    .map(|c| Ok(Bytes::from_static(c)))
                    .collect();
                Ok(Box::pin(futures::stream::iter(chunks)) as NarBytes)
            })
        })
    }

    fn never() -> Download {
        Box::new(|| panic!("downloaded twice"))
    }

    const DATA: &[u8] = b"the bytes of a NAR, in a few pieces";

    #[tokio::test]
    async fn readers_at_any_offset_share_one_download_that_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), 1 << 20, Shutdown::new()).unwrap();
        let hash = Sha256::digest(DATA);
        let size = DATA.len() as u64;
        let first = spool.read(hash, size, 0, nar(DATA, 4)).unwrap();
        let second = spool.read(hash, size, 10, never()).unwrap();
        let first: Vec<Bytes> = first.try_collect().await.unwrap();
        let second: Vec<Bytes> = second.try_collect().await.unwrap();
        assert_eq!(first.concat(), DATA);
        assert_eq!(second.concat(), &DATA[10..]);
        let late: Vec<Bytes> =
            spool.read(hash, size, 0, never()).unwrap().try_collect().await.unwrap();
        assert_eq!(late.concat(), DATA, "kept once finished");
    }

    #[tokio::test]
    async fn a_nar_that_is_not_the_one_asked_for_fails_its_readers_and_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), 1 << 20, Shutdown::new()).unwrap();
        let wrong = Sha256::digest(b"another NAR");
        let size = DATA.len() as u64;
        let read: Result<Vec<Bytes>, _> =
            spool.read(wrong, size, 0, nar(DATA, 3)).unwrap().try_collect().await;
        assert!(read.unwrap_err().to_string().contains("hashes to"));
        let short: Result<Vec<Bytes>, _> = spool
            .read(Sha256::digest(DATA), size + 1, 0, nar(DATA, 3))
            .unwrap()
            .try_collect()
            .await;
        assert!(short.unwrap_err().to_string().contains("ended after"));
        // A failed one is replaced by a new download.
        let right = spool.read(Sha256::digest(DATA), size, 0, nar(DATA, 1)).unwrap();
        let again: Vec<Bytes> = right.try_collect().await.unwrap();
        assert_eq!(again.concat(), DATA);
    }

    #[tokio::test]
    async fn the_spool_is_bounded_and_evicts_finished_nars_first() {
        let dir = tempfile::tempdir().unwrap();
        let size = DATA.len() as u64;
        let spool = Spool::new(dir.path(), size * 2, Shutdown::new()).unwrap();
        assert!(matches!(
            spool.read(Sha256::digest(b"x"), size * 3, 0, never()),
            Err(SpoolError::TooLarge { .. })
        ));
        let hash = Sha256::digest(DATA);
        let _: Vec<Bytes> =
            spool.read(hash, size, 0, nar(DATA, 2)).unwrap().try_collect().await.unwrap();
        // Two NARs still arriving (they never do) fill it; the finished one made room.
        let pending = || -> Download { Box::new(|| Box::pin(futures::future::pending())) };
        let _a = spool.read(Sha256::digest(b"a"), size, 0, pending()).unwrap();
        let _b = spool.read(Sha256::digest(b"b"), size, 0, pending()).unwrap();
        assert_eq!(spool.used(), size * 2);
        assert!(matches!(
            spool.read(Sha256::digest(b"c"), size, 0, pending()),
            Err(SpoolError::Full { .. })
        ));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "the finished file went");
    }

    #[tokio::test]
    async fn a_download_nobody_reads_stops_and_one_read_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let limit = Duration::from_millis(300);
        let spool = Spool::new(dir.path(), 1 << 30, Shutdown::new()).unwrap();
        let spool = spool.with_unread_limit(limit);
        // 100 chunks, one every 10 ms: a second of download.
        let data: &'static [u8] = Box::leak(vec![7u8; 100 * 1024].into_boxed_slice());
        let pulled = Arc::new(AtomicUsize::new(0));
        let slow = |pulled: Arc<AtomicUsize>| -> Download {
            Box::new(move || {
                Box::pin(async move {
                    let chunks = futures::stream::iter(data.chunks(1024)).then(move |c| {
                        let pulled = pulled.clone();
                        async move {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            pulled.fetch_add(1, Ordering::SeqCst);
                            Ok(Bytes::from_static(c))
                        }
                    });
                    Ok(Box::pin(chunks) as NarBytes)
                })
            })
        };
        let (hash, size) = (Sha256::digest(data), data.len() as u64);
        let mut reader = Box::pin(spool.read(hash, size, 0, slow(pulled.clone())).unwrap());
        assert_eq!(reader.next().await.unwrap().unwrap().len(), 1024);
        drop(reader);
        tokio::time::sleep(limit + Duration::from_millis(200)).await;
        let stopped = pulled.load(Ordering::SeqCst);
        assert!(stopped < 100, "the download went on to its end");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(pulled.load(Ordering::SeqCst), stopped, "and it stopped");
        // A reader after that starts it again, and one that stays keeps it going to its end.
        let again = Arc::new(AtomicUsize::new(0));
        let mut reader = Box::pin(spool.read(hash, size, 0, slow(again.clone())).unwrap());
        let mut read = 0;
        while let Some(chunk) = reader.next().await {
            read += chunk.unwrap().len() as u64;
        }
        assert_eq!((read, again.load(Ordering::SeqCst)), (size, 100));
    }

    #[tokio::test]
    async fn the_last_byte_is_held_until_the_download_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path(), 1 << 20, Shutdown::new()).unwrap();
        let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, UpstreamError>>();
        let download: Download =
            Box::new(move || Box::pin(async move { Ok(Box::pin(rx) as NarBytes) }));
        let size = DATA.len() as u64;
        let mut reader = Box::pin(spool.read(Sha256::digest(DATA), size, 0, download).unwrap());
        tx.unbounded_send(Ok(Bytes::from_static(DATA))).unwrap();
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!(first, &DATA[..DATA.len() - 1], "all but the last byte while it is written");
        drop(tx);
        assert_eq!(reader.next().await.unwrap().unwrap(), &DATA[DATA.len() - 1..]);
        assert!(reader.next().await.is_none());
    }

    #[test]
    fn leftovers_of_a_previous_run_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old.nar"), b"unchecked").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        Spool::new(dir.path(), 1, Shutdown::new()).unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
