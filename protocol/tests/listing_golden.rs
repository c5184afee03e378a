//! Our NAR listings against the `.ls` files the real Nix wrote (`tests/data/ls/`; the README
//! there says how), for the trees of the golden NARs: made from the tree alone (offsets
//! counted) and from the NAR Nix wrote (offsets read), both byte for byte as Nix's.

mod nar_trees;

use std::path::PathBuf;

use nar_trees::{Tree, golden_trees};
use nixmesh_protocol::nar::NarParser;
use nixmesh_protocol::nar::listing::{Entry, Listing, ListingCollector};

fn data(path: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The tree as a listing's entries, its offsets to be counted.
fn entry(tree: &Tree) -> Entry {
    match tree {
        Tree::File { executable, contents } => {
            Entry::Regular { size: contents.len() as u64, executable: *executable, nar_offset: 0 }
        }
        Tree::Symlink(target) => Entry::Symlink { target: target.clone() },
        Tree::Directory(entries) => Entry::Directory {
            // Reversed, so that the listing's own sort is what puts them in order.
            entries: entries.iter().rev().map(|(name, t)| (name.clone(), entry(t))).collect(),
        },
    }
}

#[test]
fn listings_from_trees_are_nix_s_byte_for_byte() {
    for (name, tree) in golden_trees() {
        let ours = Listing::with_nar_offsets(entry(&tree)).render();
        let nix = data(&format!("ls/{name}.ls"));
        assert!(
            ours == nix,
            "{name}.ls differs:\nours: {}\nnix:  {}",
            ours.escape_ascii(),
            nix.escape_ascii()
        );
    }
}

#[test]
fn listings_from_nix_s_nars_are_nix_s_byte_for_byte() {
    for (name, _) in golden_trees() {
        let nar = data(&format!("nar/{name}.nar"));
        let mut parser = NarParser::new();
        let mut collector = ListingCollector::new();
        for chunk in nar.chunks(7) {
            parser.push(chunk, |e| collector.event(&e).unwrap()).unwrap();
        }
        parser.finish().unwrap();
        let ours = collector.finish().unwrap().render();
        assert!(ours == data(&format!("ls/{name}.ls")), "{name}.ls differs from ours");
    }
}
