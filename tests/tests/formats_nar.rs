//! Live check of our NAR writer and reader against the real `nix-store`, on random trees:
//! `nix-store --dump` and our writer agree byte for byte, our reader takes Nix's output in
//! any chunking, and `nix-store --restore` of our output gives the tree back.

#[path = "../../protocol/tests/nar_trees/mod.rs"]
mod nar_trees;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use nar_trees::{Rng, dump_fs_to_vec, materialise, parse_nar, random_tree, read_fs, write_nar};
use nixmesh_tests::CommandExt;

/// Trees per run; each is at most about 60 nodes, so a run takes seconds.
const TREES: u64 = 40;

/// How long one `nix-store` call may take.
const NIX_LIMIT: Duration = Duration::from_secs(60);

fn nix_dump(path: &Path) -> Result<Vec<u8>> {
    let out = Command::new("nix-store").arg("--dump").arg(path).output_within(NIX_LIMIT);
    ensure!(out.status.success(), "nix-store --dump: {}", String::from_utf8_lossy(&out.stderr));
    Ok(out.stdout)
}

fn nix_restore(path: &Path, nar: &[u8]) -> Result<()> {
    let out = Command::new("nix-store")
        .arg("--restore")
        .arg(path)
        .output_with_input_within(nar.to_vec(), NIX_LIMIT);
    ensure!(out.status.success(), "nix-store --restore: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

#[test]
fn random_trees_agree_with_nix_store() -> Result<()> {
    if !nixmesh_tests::require_tool("nix-store") {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let mut total = 0;
    for seed in 0..TREES {
        let tree = random_tree(&mut Rng::new(seed), 60);
        let path = tmp.path().join(format!("tree-{seed}"));
        materialise(&tree, &path)?;

        let nix = nix_dump(&path)?;
        ensure!(dump_fs_to_vec(&path)? == nix, "seed {seed}: our dump of the files differs");
        ensure!(write_nar(&tree) == nix, "seed {seed}: our writer differs from nix-store --dump");

        let mut chunks = Rng::new(seed ^ 0xc0ffee);
        let parsed = parse_nar(&nix, || 1 + chunks.below(100))?;
        ensure!(parsed == tree, "seed {seed}: our reader got another tree from Nix's NAR");

        let restored = tmp.path().join(format!("restored-{seed}"));
        nix_restore(&restored, &write_nar(&tree))?;
        ensure!(read_fs(&restored)? == tree, "seed {seed}: nix-store --restore of ours differs");
        total += nix.len();
    }
    eprintln!("{TREES} trees, {total} NAR bytes, all agree with nix-store");
    Ok(())
}
