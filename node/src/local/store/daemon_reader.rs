//! Reading Nix's wire format off the daemon's socket: the I/O half of
//! [`nixmesh_protocol::nix_daemon`], which says what the bytes mean and what is acceptable.
//!
//! Every length the daemon sends is checked against a limit given by the caller before
//! anything is allocated, so a broken or hostile daemon cannot make us allocate more than that
//! limit per string or per list.

use std::io;

use nixmesh_protocol::nix_daemon::{self, NixWireError};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Why a value could not be read from the daemon.
#[derive(Debug, Error)]
pub enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Wire(#[from] NixWireError),
}

/// Reads one little-endian `u64`.
pub async fn read_u64<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64, ReadError> {
    let mut buf = [0u8; 8];
    r.read_exact(&mut buf).await?;
    Ok(u64::from_le_bytes(buf))
}

/// Reads a boolean, which Nix sends as a `u64` 0 or 1.
pub async fn read_bool<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
) -> Result<bool, ReadError> {
    Ok(nix_daemon::to_bool(read_u64(r).await?, what)?)
}

/// Reads a byte string of at most `max` bytes and checks that its padding is zero.
pub async fn read_bytes<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: usize,
) -> Result<Vec<u8>, ReadError> {
    let mut bytes = Vec::new();
    read_bytes_into(r, what, max, &mut bytes).await?;
    Ok(bytes)
}

/// [`read_bytes`] into `bytes` (cleared first), so that a list of many strings is read
/// through one buffer.
pub async fn read_bytes_into<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: usize,
    bytes: &mut Vec<u8>,
) -> Result<(), ReadError> {
    let len = nix_daemon::check_len(read_u64(r).await?, what, max)?;
    bytes.clear();
    bytes.resize(len, 0);
    r.read_exact(bytes).await?;
    let mut pad = [0u8; 8];
    let pad = &mut pad[..nix_daemon::padding_len(len as u64)];
    r.read_exact(pad).await?;
    nix_daemon::check_padding(pad, what)?;
    Ok(())
}

/// Reads a UTF-8 string of at most `max` bytes.
pub async fn read_string<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: usize,
) -> Result<String, ReadError> {
    Ok(nix_daemon::to_string(read_bytes(r, what, max).await?, what)?)
}

/// Reads a string meant for people (log lines, error messages): invalid UTF-8 is replaced
/// rather than refused, since Nix passes build output through unchanged.
pub async fn read_text<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: usize,
) -> Result<String, ReadError> {
    let bytes = read_bytes(r, what, max).await?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Reads the length of a list, refusing more than `max` entries.
pub async fn read_count<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max: usize,
) -> Result<usize, ReadError> {
    Ok(nix_daemon::check_count(read_u64(r).await?, what, max)?)
}

/// Reads a list of at most `max_count` strings of at most `max_len` bytes each.
pub async fn read_strings<R: AsyncRead + Unpin>(
    r: &mut R,
    what: &'static str,
    max_count: usize,
    max_len: usize,
) -> Result<Vec<String>, ReadError> {
    let count = read_count(r, what, max_count).await?;
    // The count is bounded, but grow as entries actually arrive rather than trusting it.
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        out.push(read_string(r, what, max_len).await?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use proptest::prelude::*;

    use super::*;

    use nixmesh_protocol::nix_daemon::{put_bytes, put_u64};

    fn encoded(bytes: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        put_bytes(&mut buf, bytes);
        buf
    }

    #[test]
    fn reads_what_it_writes_and_nothing_more() {
        let mut input = encoded(b"nix-archive-1");
        put_u64(&mut input, 42);
        let mut r = input.as_slice();
        assert_eq!(block_on(read_string(&mut r, "s", 100)).unwrap(), "nix-archive-1");
        assert_eq!(block_on(read_u64(&mut r)).unwrap(), 42);
        assert!(r.is_empty());
    }

    #[test]
    fn refuses_non_zero_padding() {
        let mut input = encoded(b"abc");
        input[12] = 1;
        let err = block_on(read_bytes(&mut input.as_slice(), "path", 100)).unwrap_err();
        assert!(matches!(err, ReadError::Wire(NixWireError::BadPadding { what: "path" })), "{err}");
    }

    #[test]
    fn refuses_lengths_over_the_limit_before_reading_them() {
        // Only the length is there: a limit check that came after allocating would hang or
        // fail with EOF instead of TooLong.
        let mut input = Vec::new();
        put_u64(&mut input, u64::MAX);
        let err = block_on(read_bytes(&mut input.as_slice(), "log line", 1 << 20)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("log line of {} bytes exceeds the limit of 1048576 bytes", u64::MAX)
        );
        let input = encoded(b"123456789");
        assert!(matches!(
            block_on(read_bytes(&mut input.as_slice(), "s", 8)),
            Err(ReadError::Wire(NixWireError::TooLong { len: 9, max: 8, .. }))
        ));
        assert!(block_on(read_bytes(&mut input.as_slice(), "s", 9)).is_ok());
    }

    #[test]
    fn refuses_long_lists_before_reading_them() {
        let mut input = Vec::new();
        put_u64(&mut input, 11);
        let err = block_on(read_strings(&mut input.as_slice(), "paths", 10, 100)).unwrap_err();
        assert_eq!(err.to_string(), "list of 11 paths exceeds the limit of 10");
    }

    #[test]
    fn booleans_are_zero_or_one() {
        let mut input = Vec::new();
        for n in [0, 1, 2] {
            put_u64(&mut input, n);
        }
        let mut r = input.as_slice();
        assert!(!block_on(read_bool(&mut r, "valid")).unwrap());
        assert!(block_on(read_bool(&mut r, "valid")).unwrap());
        assert!(matches!(
            block_on(read_bool(&mut r, "valid")),
            Err(ReadError::Wire(NixWireError::NotBool { .. }))
        ));
    }

    #[test]
    fn truncated_input_is_an_eof_error() {
        let input = encoded(b"abcdefghij");
        for cut in 0..input.len() {
            let err = block_on(read_bytes(&mut &input[..cut], "s", 100)).unwrap_err();
            assert!(
                matches!(&err, ReadError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof),
                "{cut}: {err}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_refused_in_strings_but_replaced_in_text() {
        let input = encoded(b"caf\xe9");
        assert!(matches!(
            block_on(read_string(&mut input.as_slice(), "path", 100)),
            Err(ReadError::Wire(NixWireError::NotUtf8 { what: "path" }))
        ));
        assert_eq!(block_on(read_text(&mut input.as_slice(), "log", 100)).unwrap(), "caf\u{fffd}");
    }

    proptest! {
        #[test]
        fn round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            let input = encoded(&bytes);
            prop_assert_eq!(input.len() % 8, 0);
            let mut r = input.as_slice();
            prop_assert_eq!(block_on(read_bytes(&mut r, "s", 100)).unwrap(), bytes);
            prop_assert!(r.is_empty());
        }

        #[test]
        fn arbitrary_input_never_panics(input in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = block_on(read_strings(&mut input.as_slice(), "s", 4, 16));
        }
    }
}
