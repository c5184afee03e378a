//! Byte ranges of a NAR (RFC 9110 §14): which part a request's `Range` asks for, and the body
//! that sends only that part while the whole NAR is still verified.
//!
//! One range of bytes is served (`a-b`, `a-`, `-n`): `206` with `Content-Range`. A range
//! starting at or past the end is `416` with `Content-Range: bytes */SIZE`. Anything else
//! (several ranges, another unit, garbage, `If-Range`, which would need a validator) gets the
//! whole NAR with `200`, as the RFC lets a server do. Nix resumes a download this way (`Range:
//! bytes=N-`, since 2.3, only when the server says `Accept-Ranges: bytes` and no
//! `Content-Encoding`), and so does `curl -C -`.
//!
//! The verification rule holds for a part as for the whole ([`PartOf`]): the NAR is read and
//! hashed from byte 0 (the hash needs the prefix), the bytes before the part are dropped, not
//! sent.
//! - A part that runs to the NAR's end is streamed as it passes: its last bytes are the NAR's
//!   last, which [`crate::verified_nar::VerifiedNar`] holds back until the whole NAR has
//!   hashed right.
//! - A part ending before the NAR's end could otherwise go out whole from a NAR that turns out
//!   wrong, so it is kept in memory and sent once the whole NAR has been checked. Memory stays
//!   bounded: such a part of at most [`MAX_HELD_PART`] bytes is held (one per NAR slot, as
//!   `nar_verified_whole_up_to` holds a small NAR); a longer one gets the whole NAR (`200`).
//!
//! Since a NAR says `Accept-Ranges`, Nix resumes one cut off partway (its holders gone, or its
//! last bytes withheld) instead of failing the path. The bytes it already has came from an
//! earlier attempt, which this server cannot see; Nix hashes the whole NAR as it imports it,
//! so a wrong earlier prefix still fails there.
//!
//! A part far into a large NAR starts only once its prefix has arrived and been hashed: on a
//! LAN a second or so per 100 MB, during which the client receives nothing (the connection's
//! stall limit, 60 s, bounds that wait).

use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::http::header::{CONTENT_RANGE, IF_RANGE, RANGE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// The longest part ending before the NAR's end that is held in memory until the NAR is
/// verified; a longer one is answered with the whole NAR.
pub const MAX_HELD_PART: u64 = 1 << 20;

/// What a request asks for of a NAR of a given size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ask {
    /// The whole NAR: no `Range`, or one this server does not serve as a part.
    Whole,
    /// These bytes (never empty, within the NAR).
    Part(Range<u64>),
    /// A range starting at or past the end: `416`.
    Unsatisfiable,
}

impl Ask {
    /// What `headers` ask for of a NAR of `size` bytes (see the module docs).
    pub fn of(headers: &HeaderMap, size: u64) -> Ask {
        let mut ranges = headers.get_all(RANGE).iter();
        let (Some(range), None) = (ranges.next(), ranges.next()) else {
            return Ask::Whole;
        };
        if headers.contains_key(IF_RANGE) {
            return Ask::Whole;
        }
        range.to_str().map_or(Ask::Whole, |r| Ask::parse(r, size))
    }

    /// What the value of one `Range` header asks for of `size` bytes.
    fn parse(value: &str, size: u64) -> Ask {
        let Some((unit, spec)) = value.trim().split_once('=') else {
            return Ask::Whole;
        };
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            return Ask::Whole;
        }
        // Empty elements of the list are allowed (`bytes=0-1,`); more than one range is not
        // served.
        let mut specs = spec.split(',').map(str::trim).filter(|s| !s.is_empty());
        let (Some(spec), None) = (specs.next(), specs.next()) else {
            return Ask::Whole;
        };
        let Some((first, last)) = spec.split_once('-') else {
            return Ask::Whole;
        };
        match (digits(first), digits(last)) {
            // `-n`: the last n bytes.
            (None, Some(n)) if first.is_empty() => match n.min(size) {
                0 => Ask::Unsatisfiable,
                n => Ask::Part(size - n..size),
            },
            (Some(a), None) if last.is_empty() => Ask::part(a, size),
            (Some(a), Some(b)) if a <= b => Ask::part(a, b.saturating_add(1).min(size)),
            _ => Ask::Whole,
        }
    }

    fn part(start: u64, end: u64) -> Ask {
        match start < end {
            true => Ask::Part(start..end),
            false => Ask::Unsatisfiable,
        }
    }
}

/// A run of ASCII digits as a number (one past `u64::MAX` is as far past any NAR's end as
/// `u64::MAX`); `None` for anything else, the empty string included.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

/// Whether `part` of a NAR of `size` bytes is served as a part: one that runs to the end is
/// streamed, one that ends before is held up to [`MAX_HELD_PART`] bytes.
pub fn servable(part: &Range<u64>, size: u64) -> bool {
    part.end == size || part.end - part.start <= MAX_HELD_PART
}

/// `Content-Range` of `part` of `size` bytes.
pub fn content_range(part: &Range<u64>, size: u64) -> HeaderValue {
    let value = format!("bytes {}-{}/{size}", part.start, part.end - 1);
    HeaderValue::try_from(value).expect("digits, spaces and punctuation")
}

/// `416` for a NAR of `size` bytes.
pub fn unsatisfiable(size: u64) -> Response {
    let range = HeaderValue::try_from(format!("bytes */{size}")).expect("digits");
    let body = format!("the range starts at or past the NAR's end, byte {size}\n");
    (StatusCode::RANGE_NOT_SATISFIABLE, [(CONTENT_RANGE, range)], body).into_response()
}

/// The bytes of `part` out of a verified NAR stream from byte 0 (see the module docs). Only
/// what the inner stream hands out is passed on, so its rule (the last bytes only once the
/// NAR has hashed right) carries over; a part ending before the NAR's end is handed out only
/// once the inner stream has ended without error, i.e. the NAR was verified.
pub struct PartOf<St> {
    inner: St,
    part: Range<u64>,
    /// Bytes of the NAR the inner stream has handed out.
    offset: u64,
    /// The part, while it is held until the NAR is verified; `None` when it is streamed.
    held: Option<BytesMut>,
    done: bool,
}

impl<St> PartOf<St> {
    /// `part` of the NAR of `size` bytes that `inner` hands out. A part ending before the end
    /// is held in memory: at most [`MAX_HELD_PART`] bytes if the caller asked [`servable`].
    pub fn new(inner: St, part: Range<u64>, size: u64) -> Self {
        let held = (part.end < size).then(|| BytesMut::with_capacity(part_len(&part)));
        PartOf { inner, part, offset: 0, held, done: false }
    }

    /// The bytes of `chunk` (at `self.offset`) inside the part.
    fn within_part(&mut self, mut chunk: Bytes) -> Bytes {
        let start = self.offset;
        self.offset += chunk.len() as u64;
        let from = self.part.start.clamp(start, self.offset) - start;
        let to = self.part.end.clamp(start, self.offset) - start;
        chunk.truncate(to as usize);
        chunk.split_off(from as usize)
    }
}

fn part_len(part: &Range<u64>) -> usize {
    usize::try_from(part.end - part.start).expect("a held part is at most MAX_HELD_PART")
}

impl<St, E> Stream for PartOf<St>
where
    St: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        while !this.done {
            match std::task::ready!(this.inner.poll_next_unpin(cx)) {
                Some(Ok(chunk)) => {
                    let part = this.within_part(chunk);
                    match &mut this.held {
                        Some(held) => held.extend_from_slice(&part),
                        None if part.is_empty() => {}
                        None => return Poll::Ready(Some(Ok(part))),
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                // The inner stream ends only once the whole NAR has been verified.
                None => {
                    this.done = true;
                    let held = this.held.take().filter(|h| !h.is_empty());
                    return Poll::Ready(held.map(|h| Ok(h.freeze())));
                }
            }
        }
        Poll::Ready(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn ask(value: &str, size: u64) -> Ask {
        let mut headers = HeaderMap::new();
        headers.insert(RANGE, HeaderValue::from_str(value).unwrap());
        Ask::of(&headers, size)
    }

    #[test]
    fn single_ranges_of_each_form() {
        assert_eq!(ask("bytes=0-99", 1000), Ask::Part(0..100));
        assert_eq!(ask("bytes=10-10", 1000), Ask::Part(10..11));
        assert_eq!(ask("bytes=900-5000", 1000), Ask::Part(900..1000));
        assert_eq!(ask("bytes=500-", 1000), Ask::Part(500..1000));
        assert_eq!(ask("bytes=0-", 1000), Ask::Part(0..1000));
        assert_eq!(ask("bytes=-100", 1000), Ask::Part(900..1000));
        assert_eq!(ask("bytes=-5000", 1000), Ask::Part(0..1000));
        assert_eq!(ask(" Bytes = 5-6 , ", 1000), Ask::Part(5..7));
        assert_eq!(ask("bytes=999-99999999999999999999999", 1000), Ask::Part(999..1000));
    }

    #[test]
    fn ranges_past_the_end_are_unsatisfiable() {
        for value in ["bytes=1000-", "bytes=1000-2000", "bytes=-0", "bytes=99999999999999999999-"] {
            assert_eq!(ask(value, 1000), Ask::Unsatisfiable, "{value}");
        }
        assert_eq!(ask("bytes=-10", 0), Ask::Unsatisfiable);
    }

    #[test]
    fn what_is_not_served_as_a_part_gets_the_whole() {
        for value in [
            "bytes=0-1,5-6",
            "bytes=5-1",
            "bytes=-",
            "bytes=",
            "bytes=a-b",
            "bytes=+1-2",
            "bytes=1-2-3",
            "items=0-1",
            "bytes 0-1",
            "0-1",
            "",
        ] {
            assert_eq!(ask(value, 1000), Ask::Whole, "{value:?}");
        }
        assert_eq!(Ask::of(&HeaderMap::new(), 1000), Ask::Whole);
        let mut if_range = HeaderMap::new();
        if_range.insert(RANGE, HeaderValue::from_static("bytes=0-1"));
        if_range.insert(IF_RANGE, HeaderValue::from_static("\"x\""));
        assert_eq!(Ask::of(&if_range, 1000), Ask::Whole);
        let mut two = HeaderMap::new();
        two.append(RANGE, HeaderValue::from_static("bytes=0-1"));
        two.append(RANGE, HeaderValue::from_static("bytes=2-3"));
        assert_eq!(Ask::of(&two, 1000), Ask::Whole);
        let mut not_text = HeaderMap::new();
        not_text.insert(RANGE, HeaderValue::from_bytes(b"bytes=\xff-1").unwrap());
        assert_eq!(Ask::of(&not_text, 1000), Ask::Whole);
    }

    #[test]
    fn headers_of_a_part_and_of_a_refusal() {
        assert_eq!(content_range(&(5..10), 1000), "bytes 5-9/1000");
        let refused = unsatisfiable(1000);
        assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(refused.headers()[CONTENT_RANGE], "bytes */1000");
        assert!(servable(&(0..MAX_HELD_PART), MAX_HELD_PART + 1));
        assert!(!servable(&(0..MAX_HELD_PART + 1), MAX_HELD_PART + 2));
        assert!(servable(&(0..5_000_000), 5_000_000));
    }

    proptest::proptest! {
        #[test]
        fn any_header_asks_for_a_part_within_the_nar_or_for_none(
            value in "[ bB]{0,2}(bytes|[a-z]{0,3})[ =]{0,2}[0-9\\-, ]{0,24}\\PC{0,3}",
            size in 0u64..5000,
        ) {
            let Ok(value) = HeaderValue::from_str(&value) else { return Ok(()) };
            let mut headers = HeaderMap::new();
            headers.insert(RANGE, value);
            if let Ask::Part(part) = Ask::of(&headers, size) {
                proptest::prop_assert!(part.start < part.end && part.end <= size, "{part:?}");
            }
        }
    }

    const NAR: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

    /// What `PartOf` hands out for `part` of `NAR` cut into `cuts`-byte chunks, the inner
    /// stream ending with `end` (an error, or `None` for a verified NAR).
    async fn part_of(
        part: Range<u64>,
        cut: usize,
        end: Option<&str>,
    ) -> Vec<Result<Bytes, String>> {
        let mut items: Vec<Result<Bytes, String>> =
            NAR.chunks(cut).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        if let Some(e) = end {
            items.pop();
            items.push(Err(e.to_owned()));
        }
        PartOf::new(stream::iter(items), part, NAR.len() as u64).collect().await
    }

    fn joined(items: &[Result<Bytes, String>]) -> Vec<u8> {
        items.iter().flat_map(|i| i.clone().unwrap()).collect()
    }

    #[tokio::test]
    async fn a_part_is_exactly_its_bytes_however_the_nar_is_cut() {
        let size = NAR.len() as u64;
        for cut in [1, 3, 7, 36] {
            for part in [0..size, 5..size, size - 1..size, 0..1, 4..20, 35..36, 10..11] {
                let items = part_of(part.clone(), cut, None).await;
                let want = &NAR[part.start as usize..part.end as usize];
                assert_eq!(joined(&items), want, "{part:?} in chunks of {cut}");
            }
        }
    }

    #[tokio::test]
    async fn a_part_before_the_end_waits_for_the_whole_nar_to_be_verified() {
        // In one piece, after the last chunk; none of it when the NAR fails at its end.
        let items = part_of(4..20, 3, None).await;
        assert_eq!(items.len(), 1);
        let items = part_of(4..20, 3, Some("wrong hash")).await;
        assert_eq!(items, [Err("wrong hash".to_owned())]);
        // A part to the end streams what the inner stream hands out, no more.
        let items = part_of(4..36, 3, Some("wrong hash")).await;
        assert_eq!(joined(&items[..items.len() - 1]), &NAR[4..33]);
        assert_eq!(items.last(), Some(&Err("wrong hash".to_owned())));
    }
}
