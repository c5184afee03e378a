//! Bytes as compressible as a typical closure's: this machine's own shared libraries
//! (`/usr/lib/x86_64-linux-gnu/*.so*`, machine code and its tables, about threefold with
//! zstd), for the tests and the bench of zstd on slow links.

use std::path::Path;

/// Where the libraries are read from.
pub const LIBRARY_DIR: &str = "/usr/lib/x86_64-linux-gnu";

/// `len` bytes of the machine's shared libraries, in name order, each whole but the last,
/// then the same again if they run short; `None` if there are none to read.
pub fn shared_library_bytes(len: usize) -> Option<Vec<u8>> {
    let mut names: Vec<_> = std::fs::read_dir(Path::new(LIBRARY_DIR))
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.file_name().is_some_and(|n| n.to_string_lossy().contains(".so")))
        .filter(|path| path.metadata().is_ok_and(|m| m.is_file()))
        .collect();
    names.sort();
    let mut bytes = Vec::with_capacity(len);
    // Bounded: every pass over the names adds at least one byte, or ends.
    while bytes.len() < len {
        let before = bytes.len();
        for path in &names {
            let Ok(file) = std::fs::read(path) else { continue };
            let room = len - bytes.len();
            bytes.extend_from_slice(&file[..file.len().min(room)]);
            if bytes.len() == len {
                break;
            }
        }
        if bytes.len() == before {
            return None;
        }
    }
    Some(bytes)
}
