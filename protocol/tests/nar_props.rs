//! Property tests for the NAR reader and writer: the reader is fed untrusted bytes, so it must
//! never panic, and whatever it accepts must be the one canonical encoding of a tree.

mod nar_trees;

use nar_trees::{Rng, parse_nar, random_tree, write_nar};
use nixmesh_protocol::nar::{self, NarParser};
use proptest::collection::vec;
use proptest::prelude::*;

/// Parses `bytes` in chunks drawn from `seed`; whatever the outcome, no panic.
fn parse_chunked(bytes: &[u8], seed: u64) -> Result<nar_trees::Tree, nar::NarError> {
    let mut rng = Rng::new(seed);
    parse_nar(bytes, || 1 + rng.below(40))
}

/// A valid NAR prefix that gets the parser deep into a directory.
fn valid_prefix() -> Vec<u8> {
    let nar = write_nar(&random_tree(&mut Rng::new(7), 30));
    nar[..nar.len() / 2].to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..512), seed: u64) {
        let _ = parse_chunked(&bytes, seed);
        let mut prefixed = b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0".to_vec();
        prefixed.extend_from_slice(&bytes);
        let _ = parse_chunked(&prefixed, seed);
        let mut deep = valid_prefix();
        deep.extend_from_slice(&bytes);
        let _ = parse_chunked(&deep, seed);
    }

    #[test]
    fn random_trees_round_trip(seed: u64, chunks: u64) {
        let tree = random_tree(&mut Rng::new(seed), 40);
        let bytes = write_nar(&tree);
        prop_assert_eq!(nar::validate(&bytes), Ok(bytes.len() as u64));
        prop_assert_eq!(parse_chunked(&bytes, chunks).unwrap(), tree);
    }

    /// Overwrites, inserts, deletes or cuts bytes of a valid NAR: the reader must refuse the
    /// result or accept it as the canonical encoding of the tree it describes.
    #[test]
    fn mutated_nars_are_canonical_or_rejected(
        seed: u64,
        edits in vec((any::<usize>(), any::<u8>(), 0..4u8), 1..4),
    ) {
        let mut bytes = write_nar(&random_tree(&mut Rng::new(seed), 20));
        for (at, byte, how) in edits {
            let i = at % bytes.len().max(1);
            match how {
                0 if !bytes.is_empty() => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                2 if !bytes.is_empty() => { bytes.remove(i); }
                _ => bytes.truncate(i),
            }
        }
        if let Ok(tree) = parse_chunked(&bytes, seed) {
            prop_assert!(write_nar(&tree) == bytes);
        }
    }

    /// Event-level equivalence: one push or many, the same events (data joined) come out.
    #[test]
    fn chunking_does_not_change_events(seed: u64, chunks: u64) {
        let bytes = write_nar(&random_tree(&mut Rng::new(seed), 25));
        let whole = events(&bytes, &mut || usize::MAX);
        let mut rng = Rng::new(chunks);
        prop_assert_eq!(events(&bytes, &mut || 1 + rng.below(20)), whole);
    }
}

/// The events of `bytes` as text, consecutive file data joined.
fn events(bytes: &[u8], chunk: &mut dyn FnMut() -> usize) -> Vec<String> {
    let mut parser = NarParser::new();
    let mut out: Vec<String> = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(chunk().clamp(1, rest.len()));
        parser
            .push(piece, |e| {
                let nar::Event::FileData(data) = e else { return out.push(format!("{e:?}")) };
                match out.last_mut().filter(|last| last.starts_with("data ")) {
                    Some(last) => last.push_str(&data.escape_ascii().to_string()),
                    None => out.push(format!("data {}", data.escape_ascii())),
                }
            })
            .unwrap();
        rest = tail;
    }
    parser.finish().unwrap();
    out
}

#[test]
fn next_event_hands_out_one_event_at_a_time() {
    let bytes = write_nar(&random_tree(&mut Rng::new(3), 30));
    let mut parser = NarParser::new();
    let mut rest = &bytes[..];
    let mut count = 0;
    loop {
        let (used, event) = parser.next_event(rest).unwrap();
        if event.is_none() {
            assert_eq!(used, rest.len());
            break;
        }
        count += 1;
        rest = &rest[used..];
    }
    parser.finish().unwrap();
    assert!(count > 3);
}
