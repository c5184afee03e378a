//! A NAR downloaded for one reader, checked as it passes: what a claimer relays must never be a
//! whole NAR that does not match the `NarHash` it was asked for, so its bytes go out while
//! they can still match, and the chunk that completes the NAR only once its size and hash are
//! right. (The asker checks the whole NAR again; this keeps the claimer from being the one
//! that hands out a wrong one, as the spool's readers never see its last byte before the
//! check either.)

use bytes::Bytes;
use futures::{Stream, StreamExt};
use nixmesh_protocol::Sha256;
use nixmesh_protocol::hash::Sha256Hasher;
use thiserror::Error;

/// A NAR from upstream that is not the one its narinfo promises, with what was read: the
/// spool's downloads and the ones for one reader end in it (inside an `io::Error` here).
#[derive(Debug, Error)]
pub enum NarMismatch {
    #[error("the NAR is longer than the {nar_size} bytes its narinfo says")]
    TooLong { nar_size: u64 },
    #[error("the NAR ended after {got} of its {nar_size} bytes")]
    TooShort { got: u64, nar_size: u64 },
    #[error("the NAR hashes to {got}, not to its narinfo's {expected}")]
    WrongHash { got: Sha256, expected: Sha256 },
}

/// `nar` (a NAR's bytes from its start) from byte `offset` on, every byte hashed, the prefix
/// before `offset` not passed on, and the last chunk held back until the NAR is `nar_size`
/// bytes that hash to `nar_hash`; an error instead when it is not.
pub fn checked_from<S>(
    nar: S,
    nar_hash: Sha256,
    nar_size: u64,
    offset: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let check = Check { hasher: Sha256Hasher::new(), seen: 0, nar_hash, nar_size, offset };
    futures::stream::unfold(Some((Box::pin(nar), check)), |state| async move {
        let (mut nar, mut check) = state?;
        loop {
            let passed = match nar.next().await {
                Some(Ok(chunk)) => check.pass(chunk),
                Some(Err(e)) => Err(e),
                None => check.end(),
            };
            match passed {
                Ok(Some(chunk)) => return Some((Ok(chunk), Some((nar, check)))),
                Ok(None) if check.seen == check.nar_size => return None,
                Ok(None) => {}
                Err(e) => return Some((Err(e), None)),
            }
        }
    })
}

/// The rule, apart from the stream.
struct Check {
    hasher: Sha256Hasher,
    seen: u64,
    nar_hash: Sha256,
    nar_size: u64,
    offset: u64,
}

impl Check {
    /// What of `chunk` may go out now (`None`: nothing of it is past the offset).
    fn pass(&mut self, mut chunk: Bytes) -> std::io::Result<Option<Bytes>> {
        let start = self.seen;
        self.seen += chunk.len() as u64;
        if self.seen > self.nar_size {
            let nar_size = self.nar_size;
            return Err(std::io::Error::other(NarMismatch::TooLong { nar_size }));
        }
        self.hasher.update(&chunk);
        if self.seen == self.nar_size {
            let got = std::mem::replace(&mut self.hasher, Sha256Hasher::new()).finish();
            if got != self.nar_hash {
                let expected = self.nar_hash;
                return Err(std::io::Error::other(NarMismatch::WrongHash { got, expected }));
            }
        }
        if self.offset > start {
            let skip = (self.offset - start).min(chunk.len() as u64) as usize;
            let _ = chunk.split_to(skip);
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }

    /// The end of the download: an error unless every byte came.
    fn end(&self) -> std::io::Result<Option<Bytes>> {
        if self.seen == self.nar_size {
            return Ok(None);
        }
        let (got, nar_size) = (self.seen, self.nar_size);
        Err(std::io::Error::other(NarMismatch::TooShort { got, nar_size }))
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    const NAR: &[u8] = b"the bytes of a NAR, in a few pieces, long enough to split";

    fn pieces(bytes: &'static [u8], size: usize) -> impl Stream<Item = std::io::Result<Bytes>> {
        futures::stream::iter(bytes.chunks(size).map(|c| Ok(Bytes::from_static(c))))
    }

    async fn read(
        nar: &'static [u8],
        hash: Sha256,
        size: u64,
        offset: u64,
    ) -> (Vec<u8>, Option<String>) {
        let mut out = Vec::new();
        let mut stream = Box::pin(checked_from(pieces(nar, 7), hash, size, offset));
        loop {
            match stream.try_next().await {
                Ok(Some(chunk)) => out.extend_from_slice(&chunk),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e.to_string())),
            }
        }
    }

    #[tokio::test]
    async fn the_right_nar_passes_from_any_offset() {
        let (hash, size) = (Sha256::digest(NAR), NAR.len() as u64);
        for offset in [0, 1, 6, 7, 8, 30, size - 1, size] {
            let (out, error) = read(NAR, hash, size, offset).await;
            assert_eq!(error, None, "offset {offset}");
            assert_eq!(out, &NAR[offset as usize..], "offset {offset}");
        }
    }

    #[tokio::test]
    async fn a_wrong_nar_never_gives_its_last_chunk() {
        let size = NAR.len() as u64;
        let (out, error) = read(NAR, Sha256::digest(b"another"), size, 0).await;
        assert!(error.unwrap().contains("hashes to"));
        let held_back = NAR.len() % 7;
        assert_eq!(out, &NAR[..NAR.len() - held_back], "all but the last chunk");
        // Too long, too short.
        let (_, error) = read(NAR, Sha256::digest(NAR), size - 3, 0).await;
        assert!(error.unwrap().contains("longer than"));
        let (out, error) = read(NAR, Sha256::digest(NAR), size + 1, 0).await;
        assert!(error.unwrap().contains("ended after"));
        assert_eq!(out, NAR, "every byte but none past them");
    }
}
