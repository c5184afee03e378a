//! A NAR file's compression, as its narinfo's `Compression:` field names it, and the
//! decoder for it. A narinfo without the field is bzip2, as Nix reads it.

use std::fmt;

use async_compression::tokio::bufread::{BzDecoder, XzDecoder, ZstdDecoder};
use bytes::Bytes;
use futures::{Stream, TryStream};
use nixmesh_protocol::NarInfo;
use thiserror::Error;
use tokio_util::io::{ReaderStream, StreamReader};

/// Decompressed NAR bytes are read in chunks of this size.
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Xz,
    Zstd,
    Bzip2,
}

#[derive(Debug, Error)]
#[error("compression {0:?} is not supported (xz, zstd, bzip2 and none are)")]
pub struct UnsupportedCompression(String);

impl Compression {
    /// What `narinfo`'s NAR file is compressed with.
    pub fn of(narinfo: &NarInfo) -> Result<Self, UnsupportedCompression> {
        match narinfo.compression.as_deref() {
            None | Some("bzip2") => Ok(Compression::Bzip2),
            Some("none") => Ok(Compression::None),
            Some("xz") => Ok(Compression::Xz),
            Some("zstd") => Ok(Compression::Zstd),
            Some(other) => Err(UnsupportedCompression(other.to_owned())),
        }
    }

    /// `body` (the file's bytes as they arrive) decompressed.
    pub fn decode<S>(
        self,
        body: S,
    ) -> std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>
    where
        S: TryStream<Ok = Bytes, Error = std::io::Error>
            + Stream<Item = std::io::Result<Bytes>>
            + Send
            + 'static,
    {
        let reader = StreamReader::new(body);
        match self {
            Compression::None => Box::pin(ReaderStream::with_capacity(reader, CHUNK)),
            Compression::Xz => {
                let mut decoder = XzDecoder::new(reader);
                decoder.multiple_members(true);
                Box::pin(ReaderStream::with_capacity(decoder, CHUNK))
            }
            Compression::Zstd => {
                let mut decoder = ZstdDecoder::new(reader);
                decoder.multiple_members(true);
                Box::pin(ReaderStream::with_capacity(decoder, CHUNK))
            }
            Compression::Bzip2 => {
                let mut decoder = BzDecoder::new(reader);
                decoder.multiple_members(true);
                Box::pin(ReaderStream::with_capacity(decoder, CHUNK))
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;

    /// `tool -c` of `data`, by the real program.
    fn compressed_by(tool: &str, data: &[u8]) -> Option<Vec<u8>> {
        use std::io::Write;
        let mut child = std::process::Command::new(tool)
            .arg("-c")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .ok()?;
        let mut stdin = child.stdin.take()?;
        let data = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&data));
        let out = child.wait_with_output().ok()?;
        writer.join().ok()?.ok()?;
        Some(out.stdout)
    }

    #[tokio::test]
    async fn decodes_what_the_real_tools_make_in_small_pieces() {
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for (tool, compression) in
            [("xz", Compression::Xz), ("zstd", Compression::Zstd), ("bzip2", Compression::Bzip2)]
        {
            let Some(file) = compressed_by(tool, &data) else {
                assert!(!nixmesh_tests_ci(), "{tool} is missing");
                eprintln!("{tool} is missing here: not checked");
                continue;
            };
            let pieces: Vec<std::io::Result<Bytes>> =
                file.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
            let out: Vec<Bytes> =
                compression.decode(futures::stream::iter(pieces)).try_collect().await.unwrap();
            assert_eq!(out.concat(), data, "{tool}");
        }
        let plain = vec![Ok(Bytes::from_static(b"as is"))];
        let out: Vec<Bytes> =
            Compression::None.decode(futures::stream::iter(plain)).try_collect().await.unwrap();
        assert_eq!(out.concat(), b"as is");
    }

    #[tokio::test]
    async fn a_damaged_file_is_an_error() {
        let garbage = vec![Ok(Bytes::from_static(b"\xfd7zXZ\0 not really xz at all"))];
        let out: Result<Vec<Bytes>, _> =
            Compression::Xz.decode(futures::stream::iter(garbage)).try_collect().await;
        assert!(out.is_err());
    }

    fn nixmesh_tests_ci() -> bool {
        std::env::var_os("CI").is_some()
    }

    #[test]
    fn a_missing_field_is_bzip2_as_nix_reads_it() {
        let text = "StorePath: /nix/store/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-x\nURL: nar/a.nar\n\
                    NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n\
                    NarSize: 1\nReferences: \n";
        let mut narinfo = NarInfo::parse(text).unwrap();
        assert_eq!(Compression::of(&narinfo).unwrap(), Compression::Bzip2);
        narinfo.compression = Some("br".into());
        assert!(Compression::of(&narinfo).is_err());
    }
}
