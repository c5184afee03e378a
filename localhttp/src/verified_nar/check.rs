//! The NarHash check, sans-IO: fed a NAR's bytes in order, in chunks of any size, it says which
//! chunks may be released to the client and when the NAR is whole and matches its narinfo.
//! It never does I/O and never sees a holder: [`super::VerifiedNar`] feeds it whatever
//! holder sends, and names the peer in the errors it hands out.
//!
//! The rule it keeps: a chunk is released only once it is known not to make the NAR wrong
//! so far (not past `NarSize`, not against the content address), and the chunk that completes
//! `NarSize` only once the SHA-256 over all the bytes equals `NarHash` (and the content
//! address, if any, matches). So a client never holds a complete NAR that does not match:
//! at worst all but the last chunk of one. Memory is the hashers' state, whatever the size.

use nixmesh_protocol::Sha256;
use nixmesh_protocol::content_address::NarCheck;
use nixmesh_protocol::hash::Sha256Hasher;
use thiserror::Error;

use super::content::{ContentCheck, ContentError};

/// Why a NAR's bytes are not the NAR its narinfo promises.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    #[error("the NAR is longer than the {expected} bytes its narinfo says")]
    TooLong { expected: u64 },
    /// The bytes so far are fine, but fewer than `NarSize`: the rest may come from elsewhere.
    #[error("the NAR ended after {got} of {expected} bytes")]
    TooShort { got: u64, expected: u64 },
    #[error("the NAR hashes to {got}, its signed narinfo says {expected}")]
    WrongHash { expected: Sha256, got: Sha256 },
    #[error("the NAR does not match the path's content address: {0}")]
    NotContent(#[from] ContentError),
}

impl VerifyError {
    /// Whether the bytes received cannot be the NAR (rather than only too few of them): no
    /// more bytes, from any holder, can make them match.
    pub fn is_wrong_bytes(&self) -> bool {
        !matches!(self, VerifyError::TooShort { .. })
    }
}

/// What the client may be given of a chunk that passed [`NarVerifier::push`]: all of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Passed {
    /// The NAR is not whole yet.
    Part,
    /// This chunk completes the NAR, which matches its narinfo.
    Whole,
}

#[derive(Debug)]
enum State {
    Receiving,
    Whole,
    /// The first error found; every later call returns it again.
    Failed(VerifyError),
}

/// A NAR's bytes checked against its narinfo as they are fed in (see the module docs).
pub struct NarVerifier {
    nar_hash: Sha256,
    nar_size: u64,
    /// Bytes that passed so far, all of them hashed; where a transfer resumed would start.
    offset: u64,
    hasher: Sha256Hasher,
    /// The content address's own check, for an unsigned content-addressed path.
    content: Option<ContentCheck>,
    state: State,
}

impl NarVerifier {
    /// Checks a NAR of `nar_size` bytes hashing to `nar_hash`, and, if `check` asks for more
    /// than the NarHash, against a content address too.
    pub fn new(nar_hash: Sha256, nar_size: u64, check: Option<&NarCheck>) -> Self {
        NarVerifier {
            nar_hash,
            nar_size,
            offset: 0,
            hasher: Sha256Hasher::new(),
            content: check.and_then(ContentCheck::new),
            state: State::Receiving,
        }
    }

    /// The number of bytes that passed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Takes the next bytes of the NAR. `Ok`: the client may have all of `chunk`. An error:
    /// none of it; the NAR cannot match (any later call returns the same error). Bytes past a
    /// whole NAR are [`VerifyError::TooLong`]; empty chunks are fine anywhere.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Passed, VerifyError> {
        match &self.state {
            State::Receiving => {}
            State::Whole if chunk.is_empty() => return Ok(Passed::Whole),
            State::Whole => return Err(self.failed(self.too_long())),
            State::Failed(e) => return Err(e.clone()),
        }
        let end = self.offset.saturating_add(chunk.len() as u64);
        if end > self.nar_size {
            return Err(self.failed(self.too_long()));
        }
        self.hasher.update(chunk);
        if let Some(Err(e)) = self.content.as_mut().map(|c| c.update(chunk)) {
            return Err(self.failed(e.into()));
        }
        self.offset = end;
        match end < self.nar_size {
            true => Ok(Passed::Part),
            false => self.verify().map(|()| Passed::Whole),
        }
    }

    /// The bytes have ended: `Ok` if the NAR is whole and matches (an empty NAR is checked
    /// here), [`VerifyError::TooShort`] if bytes are missing, after which the rest may still
    /// be pushed (from another holder).
    pub fn at_end(&mut self) -> Result<(), VerifyError> {
        match &self.state {
            State::Whole => Ok(()),
            State::Failed(e) => Err(e.clone()),
            State::Receiving if self.offset < self.nar_size => {
                Err(VerifyError::TooShort { got: self.offset, expected: self.nar_size })
            }
            State::Receiving => self.verify(),
        }
    }

    /// All `nar_size` bytes passed: the hashes decide.
    fn verify(&mut self) -> Result<(), VerifyError> {
        let got = std::mem::take(&mut self.hasher).finish();
        if got != self.nar_hash {
            return Err(self.failed(VerifyError::WrongHash { expected: self.nar_hash, got }));
        }
        if let Some(Err(e)) = self.content.take().map(ContentCheck::finish) {
            return Err(self.failed(e.into()));
        }
        self.state = State::Whole;
        Ok(())
    }

    fn too_long(&self) -> VerifyError {
        VerifyError::TooLong { expected: self.nar_size }
    }

    fn failed(&mut self, e: VerifyError) -> VerifyError {
        self.state = State::Failed(e.clone());
        e
    }
}

#[cfg(test)]
mod tests {
    use nixmesh_protocol::hash::{HashAlgo, NixHash, NixHasher};
    use nixmesh_protocol::nar::NarErrorKind;
    use proptest::prelude::*;

    use super::*;

    const NAR: &[u8] = b"nix-archive-1 (pretend this is a whole NAR)";

    fn verifier(nar: &[u8]) -> NarVerifier {
        NarVerifier::new(Sha256::digest(nar), nar.len() as u64, None)
    }

    /// What each push of `chunks` said, in order, stopping after the first error.
    fn feed(verifier: &mut NarVerifier, chunks: &[&[u8]]) -> Vec<Result<Passed, VerifyError>> {
        let mut said = Vec::new();
        for chunk in chunks {
            said.push(verifier.push(chunk));
            if said.last().is_some_and(Result::is_err) {
                break;
            }
        }
        said
    }

    #[test]
    fn the_right_nar_passes_and_only_its_last_chunk_says_whole() {
        let mut v = verifier(NAR);
        let said = feed(&mut v, &[&NAR[..1], b"", &NAR[1..30], &NAR[30..]]);
        let part = Ok(Passed::Part);
        assert_eq!(said, [part.clone(), part.clone(), part, Ok(Passed::Whole)]);
        assert_eq!((v.offset(), v.at_end()), (NAR.len() as u64, Ok(())));
        // An empty chunk after the end is harmless; a byte more is not.
        assert_eq!(v.push(b""), Ok(Passed::Whole));
        assert_eq!(v.push(b"!"), Err(VerifyError::TooLong { expected: 43 }));
    }

    #[test]
    fn a_wrong_byte_anywhere_fails_the_last_chunk_naming_both_hashes() {
        let mut wrong = NAR.to_vec();
        wrong[3] ^= 1;
        let mut v = verifier(NAR);
        let said = feed(&mut v, &[&wrong[..20], &wrong[20..]]);
        let error =
            VerifyError::WrongHash { expected: Sha256::digest(NAR), got: Sha256::digest(&wrong) };
        assert_eq!(said, [Ok(Passed::Part), Err(error.clone())]);
        assert!(error.is_wrong_bytes());
        assert!(error.to_string().contains(&Sha256::digest(NAR).to_string()), "{error}");
        // The verifier stays failed, however it is asked.
        assert_eq!((v.push(b""), v.at_end()), (Err(error.clone()), Err(error)));
        assert_eq!(v.offset(), NAR.len() as u64);
    }

    #[test]
    fn a_chunk_past_the_size_is_refused_whole_before_it_is_hashed() {
        let long = [NAR, b"!"].concat();
        let mut v = verifier(NAR);
        let said = feed(&mut v, &[&long[..20], &long[20..]]);
        assert_eq!(said, [Ok(Passed::Part), Err(VerifyError::TooLong { expected: 43 })]);
        // The offset stays before the refused chunk: none of it passed.
        assert_eq!(v.offset(), 20);
        assert_eq!(v.push(&NAR[20..]), Err(VerifyError::TooLong { expected: 43 }));
    }

    #[test]
    fn too_few_bytes_are_too_short_and_the_rest_may_still_come() {
        let mut v = verifier(NAR);
        assert_eq!(v.at_end(), Err(VerifyError::TooShort { got: 0, expected: 43 }));
        assert_eq!(v.push(&NAR[..42]), Ok(Passed::Part));
        let short = v.at_end().unwrap_err();
        assert_eq!(short, VerifyError::TooShort { got: 42, expected: 43 });
        assert!(!short.is_wrong_bytes());
        // As from the next holder, at the offset reached.
        assert_eq!(v.push(&NAR[42..]), Ok(Passed::Whole));
        assert_eq!(v.at_end(), Ok(()));
    }

    #[test]
    fn an_empty_nar_is_checked_at_its_end_or_by_an_empty_chunk() {
        let empty = || NarVerifier::new(Sha256::digest(b""), 0, None);
        assert_eq!(empty().at_end(), Ok(()));
        assert_eq!(empty().push(b""), Ok(Passed::Whole));
        let mut wrong = NarVerifier::new(Sha256::digest(NAR), 0, None);
        let error =
            VerifyError::WrongHash { expected: Sha256::digest(NAR), got: Sha256::digest(b"") };
        assert_eq!(wrong.at_end(), Err(error));
    }

    fn file_nar(contents: &[u8]) -> Vec<u8> {
        let mut nar = Vec::new();
        let root = nixmesh_protocol::nar::writer::open(&mut nar).unwrap();
        root.file(false, contents.len() as u64, &mut &contents[..]).unwrap();
        nar
    }

    fn digest(algo: HashAlgo, bytes: &[u8]) -> NixHash {
        let mut hasher = NixHasher::new(algo);
        hasher.update(bytes);
        hasher.finish()
    }

    fn checked(nar: &[u8], check: NarCheck) -> NarVerifier {
        NarVerifier::new(Sha256::digest(nar), nar.len() as u64, Some(&check))
    }

    #[test]
    fn a_content_address_is_checked_with_the_nar_hash() {
        let nar = file_nar(b"a tarball");
        let right = NarCheck::FileContents(digest(HashAlgo::Sha256, b"a tarball"));
        assert_eq!(
            feed(&mut checked(&nar, right), &[&nar[..50], &nar[50..]]).pop(),
            Some(Ok(Passed::Whole))
        );
        let want = digest(HashAlgo::Sha256, b"something else");
        let wrong = NarCheck::FileContents(want.clone());
        let got = digest(HashAlgo::Sha256, b"a tarball");
        let error = VerifyError::NotContent(ContentError::WrongContents { got, want });
        assert_eq!(
            feed(&mut checked(&nar, wrong), &[&nar[..50], &nar[50..]]).pop(),
            Some(Err(error))
        );
        // `fixed:r:`: the whole NAR with the address's algorithm.
        let sha1 = NarCheck::Nar(digest(HashAlgo::Sha1, &nar));
        assert_eq!(checked(&nar, sha1).push(&nar), Ok(Passed::Whole));
        // `NarHashIs`: nothing beyond the NarHash.
        let same = NarCheck::NarHashIs(Sha256::digest(&nar));
        assert_eq!(checked(&nar, same).push(&nar), Ok(Passed::Whole));
    }

    #[test]
    fn a_flat_content_address_refuses_anything_but_one_file_as_soon_as_it_shows() {
        let mut dir = Vec::new();
        let mut root = nixmesh_protocol::nar::writer::open(&mut dir).unwrap().directory().unwrap();
        root.entry(b"f").unwrap().file(false, 1, &mut &b"x"[..]).unwrap();
        root.close().unwrap();
        let check = NarCheck::FileContents(digest(HashAlgo::Sha256, b"x"));
        let mut v = checked(&dir, check);
        // The root's type (`directory`, bytes 56..80) shows well before the end: the chunk
        // with it is refused, and the rest is never asked for.
        let said = feed(&mut v, &[&dir[..56], &dir[56..88], &dir[88..]]);
        let not_one = Err(VerifyError::NotContent(ContentError::NotOneFile));
        assert_eq!(said, [Ok(Passed::Part), not_one]);
        assert_eq!(v.offset(), 56);

        // Bytes that are no NAR at all cannot be a file's.
        let bogus = b"not a NAR at all, not even close";
        let check = NarCheck::FileContents(digest(HashAlgo::Sha256, b"x"));
        let error = checked(bogus, check).push(bogus).unwrap_err();
        let VerifyError::NotContent(ContentError::Nar(nar)) = &error else { panic!("{error:?}") };
        assert_eq!(nar.kind, NarErrorKind::BadMagic);
    }

    proptest! {
        /// However the NAR is cut, every chunk passes and only the last says whole; with one
        /// byte flipped, every chunk but the last passes and the last fails.
        #[test]
        fn any_cut_of_the_nar(cuts in proptest::collection::vec(0..=NAR.len(), 0..6), flip in 0..NAR.len()) {
            let mut cuts = cuts;
            cuts.extend([0, NAR.len()]);
            cuts.sort_unstable();
            // No empty chunk after the end, which would say whole again.
            cuts.dedup();
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &NAR[w[0]..w[1]]).collect();
            let said = feed(&mut verifier(NAR), &chunks);
            prop_assert_eq!(said.last(), Some(&Ok(Passed::Whole)));
            prop_assert!(said[..said.len() - 1].iter().all(|s| s == &Ok(Passed::Part)));

            let mut wrong = NAR.to_vec();
            wrong[flip] ^= 0x20;
            let chunks: Vec<&[u8]> = cuts.windows(2).map(|w| &wrong[w[0]..w[1]]).collect();
            let said = feed(&mut verifier(NAR), &chunks);
            let wrong_hash = matches!(said.last(), Some(Err(VerifyError::WrongHash { .. })));
            prop_assert!(wrong_hash, "{:?}", said);
            prop_assert!(said[..said.len() - 1].iter().all(|s| s == &Ok(Passed::Part)));
        }
    }
}
