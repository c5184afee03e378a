//! Our NAR writer and reader against NARs the real Nix made (`tests/data/nar/`; the README
//! there says how). The trees are described once, in `nar_trees::golden_trees`.

mod nar_trees;

use std::path::PathBuf;

use nar_trees::{Rng, Tree, dump_fs_to_vec, golden_trees, materialise, parse_nar, write_nar};
use nixmesh_protocol::nar::{self, NarErrorKind};

fn golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/nar/{name}.nar"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn writer_reproduces_nix_byte_for_byte() {
    for (name, tree) in golden_trees() {
        assert!(write_nar(&tree) == golden(name), "{name}.nar differs from our writer's output");
    }
}

#[test]
fn file_system_dump_reproduces_nix_byte_for_byte() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, tree) in golden_trees() {
        let path = tmp.path().join(name);
        materialise(&tree, &path).unwrap();
        assert!(dump_fs_to_vec(&path).unwrap() == golden(name), "{name}: dump differs from Nix's");
    }
}

#[test]
fn reader_recovers_the_tree_in_any_chunking() {
    for (name, tree) in golden_trees() {
        let bytes = golden(name);
        assert_eq!(nar::validate(&bytes), Ok(bytes.len() as u64), "{name}");
        for size in [1, 3, 8, 13, 4096, usize::MAX] {
            assert_eq!(parse_nar(&bytes, || size).unwrap(), tree, "{name}, chunks of {size}");
        }
        let mut rng = Rng::new(name.len() as u64);
        assert_eq!(parse_nar(&bytes, || 1 + rng.below(50)).unwrap(), tree, "{name}");
    }
}

#[test]
fn contents_offsets_point_at_the_contents() {
    let bytes = golden("complex");
    let mut parser = nar::NarParser::new();
    let mut files = Vec::new();
    parser
        .push(&bytes, |e| {
            if let nar::Event::FileStart { path, size, contents_offset, .. } = e {
                files.push((path.to_vec(), size, contents_offset));
            }
        })
        .unwrap();
    parser.finish().unwrap();
    let Tree::Directory(root) = &golden_trees()[0].1 else { panic!("complex is a directory") };
    let Some(Tree::File { contents, .. }) = root.get(&b"data"[..]) else { panic!("no data") };
    let (_, size, offset) = files.iter().find(|(p, ..)| p == b"data").unwrap();
    assert_eq!(*size, contents.len() as u64);
    assert_eq!(&bytes[*offset as usize..][..contents.len()], &contents[..]);
}

/// Every one-byte change to a golden NAR is refused, or is another valid NAR, which must then
/// be the canonical encoding of what it describes (so no two encodings of one tree pass).
#[test]
fn every_single_byte_mutation_is_valid_or_rejected() {
    for (name, _) in golden_trees() {
        let bytes = golden(name);
        let mut accepted = 0;
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80] {
                let mut mutated = bytes.clone();
                mutated[i] ^= flip;
                if let Ok(tree) = parse_nar(&mutated, || usize::MAX) {
                    accepted += 1;
                    assert!(write_nar(&tree) == mutated, "{name}: byte {i} ^ {flip:#x}");
                }
            }
        }
        // Only changes inside file contents and symlink targets can pass.
        assert!(accepted < 2 * bytes.len(), "{name}");
    }
}

#[test]
fn every_truncation_is_rejected() {
    for (name, _) in golden_trees() {
        let bytes = golden(name);
        for len in 0..bytes.len() {
            let err = nar::validate(&bytes[..len]).unwrap_err();
            assert!(matches!(err.kind, NarErrorKind::Truncated { .. }), "{name}[..{len}]: {err}");
            assert_eq!(err.offset, len as u64);
        }
    }
}

/// Not a test: writes the golden trees to `$NAR_GOLDEN_DIR/<name>` for `nix-store --dump`.
/// See `tests/data/nar/README.md`.
#[test]
#[ignore = "makes the trees for the golden files; run by hand"]
fn materialise_golden_trees() {
    let dir = std::env::var_os("NAR_GOLDEN_DIR").expect("set NAR_GOLDEN_DIR");
    for (name, tree) in golden_trees() {
        materialise(&tree, &PathBuf::from(&dir).join(name)).unwrap();
    }
}
