//! NARs made from the store's files on disk, the way `nix-store --dump` makes them, without
//! a round trip through the daemon: what Nix's own binary-cache servers do, and cheaper than
//! the daemon's `NarFromPath` (one forked worker busy per NAR, every byte copied through its
//! socket).
//!
//! The tree is walked on a blocking thread and written with the protocol's NAR writer into
//! chunks handed over a small channel, so a NAR is never held whole in memory and a reader
//! that stops reading stops the walk; a NAR of a few KiB is made whole on the caller's
//! thread instead (`dump_small`), bounded by the size the caller expects. Nothing here is trusted further than the daemon's own
//! NAR would be: the asker checks every byte against the signed NarHash, and the provider
//! sends exactly the NarSize the daemon reported.

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use nixmesh_protocol::nar::{Node, writer};
use tokio::sync::mpsc;

use super::StoreError;

/// The size of the chunks handed over, and how many may wait to be sent.
const CHUNK: usize = 64 << 10;
const CHUNKS_AHEAD: usize = 4;

/// The NAR of the file system object at `path`, in chunks.
pub fn dump(path: PathBuf) -> impl Stream<Item = Result<Bytes, StoreError>> + Send + 'static {
    let (tx, mut rx) = mpsc::channel(CHUNKS_AHEAD);
    let walked = path.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender { tx: tx.clone(), chunk: BytesMut::with_capacity(CHUNK) };
        let written = writer::open(&mut out)
            .map_err(io::Error::from)
            .and_then(|root| dump_node(&walked, root))
            .and_then(|()| out.flush());
        if let Err(e) = written {
            // Nobody listening any more is not worth reporting.
            let _ = tx.blocking_send(Err(e));
        }
    });
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).map_err_into(path)
}

/// The NAR of the file system object at `path`, whole, made on the calling thread: for NARs
/// of a few KiB from the page cache, where the walk costs less than handing it to a blocking
/// thread and the chunks back. `Dump` error if it would be longer than `limit` bytes (its
/// files changed since `limit` was learned), without reading further.
pub fn dump_small(path: &Path, limit: u64) -> Result<Bytes, StoreError> {
    let mut out = Bounded { nar: Vec::with_capacity(limit as usize), limit: limit as usize };
    writer::open(&mut out)
        .map_err(io::Error::from)
        .and_then(|root| dump_node(path, root))
        .map_err(|cause| StoreError::Dump { path: path.to_owned(), cause })?;
    Ok(out.nar.into())
}

/// A `Write` into memory that refuses to grow past `limit` bytes.
struct Bounded {
    nar: Vec<u8>,
    limit: usize,
}

impl Write for Bounded {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.nar.len() + bytes.len() > self.limit {
            return Err(io::Error::other(format!("the NAR is over {} bytes", self.limit)));
        }
        self.nar.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the object at `path` (not following a symlink there) into `node`.
fn dump_node(path: &Path, node: Node<'_, '_>) -> io::Result<()> {
    let meta = fs::symlink_metadata(path)?;
    let kind = meta.file_type();
    if kind.is_symlink() {
        node.symlink(fs::read_link(path)?.as_os_str().as_bytes())?;
    } else if kind.is_file() {
        let executable = meta.permissions().mode() & 0o100 != 0;
        node.file(executable, meta.len(), &mut fs::File::open(path)?)?;
    } else if kind.is_dir() {
        let mut names: Vec<Vec<u8>> = fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.file_name().as_bytes().to_vec()))
            .collect::<io::Result<_>>()?;
        // Nix orders entries by their bytes.
        names.sort_unstable();
        let mut dir = node.directory()?;
        for name in names {
            dump_node(&path.join(OsStr::from_bytes(&name)), dir.entry(&name)?)?;
        }
        dir.close()?;
    } else {
        return Err(io::Error::other("neither a file, a directory nor a symlink"));
    }
    Ok(())
}

/// A `Write` that hands full chunks to the channel, waiting while it is full.
struct ChunkSender {
    tx: mpsc::Sender<io::Result<Bytes>>,
    chunk: BytesMut,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        let chunk = self.chunk.split().freeze();
        self.chunk.reserve(CHUNK);
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the NAR's reader is gone"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let n = bytes.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&bytes[..n]);
        if self.chunk.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() { Ok(()) } else { self.send() }
    }
}

/// Names the path in the stream's errors.
trait MapErrInto {
    fn map_err_into(self, path: PathBuf) -> impl Stream<Item = Result<Bytes, StoreError>> + Send;
}

impl<S> MapErrInto for S
where
    S: Stream<Item = io::Result<Bytes>> + Send,
{
    fn map_err_into(self, path: PathBuf) -> impl Stream<Item = Result<Bytes, StoreError>> + Send {
        use futures::TryStreamExt;
        self.map_err(move |cause| StoreError::Dump { path: path.clone(), cause })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use futures::TryStreamExt;
    use nixmesh_protocol::nar::{Event, NarParser};

    use super::*;

    #[tokio::test]
    async fn a_tree_on_disk_dumps_to_a_nar_that_parses_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("b/deep")).unwrap();
        fs::write(root.join("b/deep/file"), vec![7u8; 200_000]).unwrap();
        fs::write(root.join("a"), b"hello").unwrap();
        fs::set_permissions(root.join("a"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("b/deep", root.join("c")).unwrap();

        let chunks: Vec<Bytes> = dump(root).try_collect().await.unwrap();
        assert!(chunks.iter().all(|c| c.len() <= CHUNK));
        let nar: Vec<u8> = chunks.concat();
        let mut seen = Vec::new();
        let mut parser = NarParser::new();
        parser
            .push(&nar, |event| match event {
                Event::FileStart { path, executable, size, .. } => {
                    seen.push(format!("{} file {executable} {size}", path.escape_ascii()))
                }
                Event::Symlink { path, target } => {
                    seen.push(format!("{} -> {}", path.escape_ascii(), target.escape_ascii()))
                }
                _ => {}
            })
            .unwrap();
        parser.finish().unwrap();
        assert_eq!(seen, ["a file true 5", "b/deep/file file false 200000", "c -> b/deep"]);
    }

    #[tokio::test]
    async fn a_small_nar_made_whole_is_the_streamed_one_and_keeps_to_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        fs::create_dir_all(root.join("d")).unwrap();
        fs::write(root.join("d/f"), b"small file").unwrap();
        symlink("d/f", root.join("l")).unwrap();
        let streamed: Vec<Bytes> = dump(root.clone()).try_collect().await.unwrap();
        let streamed = streamed.concat();
        let len = streamed.len() as u64;
        assert_eq!(dump_small(&root, len).unwrap(), streamed);
        let over = dump_small(&root, len - 1);
        assert!(
            matches!(over, Err(StoreError::Dump { ref path, .. }) if path == &root),
            "{over:?}"
        );
    }

    #[tokio::test]
    async fn a_missing_path_is_an_error_naming_it() {
        let err = dump(PathBuf::from("/nonexistent/nixmesh")).try_collect::<Vec<_>>().await;
        assert!(matches!(err, Err(StoreError::Dump { ref path, .. }) if path.ends_with("nixmesh")));
    }
}
