//! Property tests of the narinfo parser on hostile input: mutations of the golden narinfos
//! Nix wrote. The parser must never panic, and whatever it accepts must render to a text that
//! parses back to the same value (so that a narinfo we pass on means what we read).

use nixmesh_protocol::narinfo::NarInfo;
use proptest::prelude::*;

const GOLDEN: [&str; 3] = [
    include_str!("data/narinfo/xz/6qgidplc50x72n86qxivlkk8q15f8srm.narinfo"),
    include_str!("data/narinfo/none/ivplm6lvhn541wh0c53xkq0p69mal1rg.narinfo"),
    include_str!("data/narinfo/twosigs/6qgidplc50x72n86qxivlkk8q15f8srm.narinfo"),
];

/// One edit to a narinfo's lines.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize),
    Duplicate(usize),
    Swap(usize, usize),
    /// Replaces the byte at an offset of the line with another.
    Byte(usize, usize, u8),
    /// Inserts text at an offset of the line.
    Insert(usize, usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Duplicate),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (any::<usize>(), any::<usize>(), any::<u8>()).prop_map(|(l, o, b)| Edit::Byte(l, o, b)),
        (
            any::<usize>(),
            any::<usize>(),
            "[ -~\n]{0,8}|: |\n\n| 0gl7ca9rk25fmq8ldp98v29f3b2admz6-x"
        )
            .prop_map(|(l, o, s)| Edit::Insert(l, o, s)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut lines: Vec<Vec<u8>> = text.lines().map(|l| l.as_bytes().to_vec()).collect();
    for edit in edits {
        if lines.is_empty() {
            break;
        }
        let n = lines.len();
        match edit {
            Edit::Delete(i) => {
                lines.remove(i % n);
            }
            Edit::Duplicate(i) => lines.insert(i % n, lines[i % n].clone()),
            Edit::Swap(a, b) => lines.swap(a % n, b % n),
            Edit::Byte(i, at, byte) => {
                let line = &mut lines[i % n];
                if !line.is_empty() {
                    let at = at % line.len();
                    line[at] = *byte;
                }
            }
            Edit::Insert(i, at, s) => {
                let line = &mut lines[i % n];
                let at = at % (line.len() + 1);
                line.splice(at..at, s.bytes());
            }
        }
    }
    lines.iter().flat_map(|l| l.iter().copied().chain([b'\n'])).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn mutated_golden_narinfos_never_panic_and_round_trip(
        which in 0..GOLDEN.len(),
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let bytes = apply(GOLDEN[which], &edits);
        let text = String::from_utf8_lossy(&bytes);
        if let Ok(info) = NarInfo::parse(&text) {
            let rendered = info.to_string();
            prop_assert_eq!(NarInfo::parse(&rendered), Ok(info), "rendered:\n{}", rendered);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = NarInfo::parse(&String::from_utf8_lossy(&bytes));
    }
}
