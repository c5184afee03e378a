//! The index on a filesystem that fills up while the node runs: the failure is reported
//! (`Index::trouble`, shown by the status page), and once there is room again the index works
//! again by itself, without a restart. A real small filesystem (tmpfs), so needs root.

mod support;

use std::process::Command;
use std::time::Duration;

use libp2p::PeerId;
use nixmesh_node::index::Index;
use nixmesh_tests::{CommandExt, require_root, wait_until};
use support::hashes;

/// A tmpfs of `size` mounted on `dir`, unmounted on drop.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: std::path::PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .stdout_within(Duration::from_secs(20));
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_reported_and_the_index_heals_once_space_returns() {
    if !require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(dir.path().join("small"), "8m");
    let index = Index::open(&disk.0.join("index.redb")).unwrap();
    let (held, other) = (PeerId::random(), PeerId::random());
    index.replace_peer(&held, 1, 1, &hashes(0..1000)).unwrap();

    // Fill the disk (bounded: 8 MiB in 64 KiB pieces).
    let filler = disk.0.join("filler");
    let mut file = std::fs::File::create(&filler).unwrap();
    let piece = vec![0u8; 64 << 10];
    for _ in 0..1024 {
        if std::io::Write::write_all(&mut file, &piece).is_err() {
            break;
        }
    }
    drop(file);

    let refused = index.replace_peer(&other, 1, 1, &hashes(0..200_000));
    let refused = refused.expect_err("a snapshot larger than the free space cannot be written");
    eprintln!("refused: {refused}");
    let trouble = index.trouble().expect("the failure is reported");
    eprintln!("reported: {trouble}");

    // Room again: the index works by itself, what it had committed intact.
    std::fs::remove_file(&filler).unwrap();
    wait_until(Duration::from_secs(10), "the index to work again", || {
        index.holders(&hashes(5..6)[0]).is_ok_and(|h| h == vec![held])
            && index.replace_peer(&other, 2, 1, &hashes(0..10)).is_ok()
    });
    assert_eq!(index.trouble(), None, "healthy again");
    assert_eq!(index.path_count(&held), 1000);
    assert_eq!(index.holders(&hashes(3..4)[0]).unwrap().len(), 2);
}
