//! Content-addressed paths shared with no signing key anywhere: self-certifying narinfos.

use crate::pair::{DEADLINE, Pair};
use crate::support::nix_available;
use nixmesh_protocol::{Sha256, nar};
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::{narinfo_url_path, unique_marker, wait_until};

/// A fixed-output derivation, as `fetchurl` makes one: its output, `echo fixed MARKER` into
/// `$out` (`flat`) or into `$out/f` (`recursive`), is declared by hash, so its store path
/// follows from that hash alone and the path is content-addressed.
fn fixed_output_expr(marker: &str, mode: &str) -> String {
    let contents = format!("fixed {marker}\n");
    let (hash, script) = match mode {
        "flat" => (Sha256::digest(contents.as_bytes()), "echo fixed $marker > $out"),
        _ => {
            let mut nar = Vec::new();
            let mut root = nar::writer::open(&mut nar).unwrap().directory().unwrap();
            let mut file = contents.as_bytes();
            root.entry(b"f").unwrap().file(false, contents.len() as u64, &mut file).unwrap();
            root.close().unwrap();
            (Sha256::digest(&nar), "mkdir $out; echo fixed $marker > $out/f")
        }
    };
    format!(
        r#"derivation {{
  name = "nixmesh-fod-{mode}";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "{script}" ];
  PATH = "/usr/bin:/bin";
  marker = "{marker}";
  outputHashMode = "{mode}";
  outputHashAlgo = "sha256";
  outputHash = "{hash}";
}}"#,
        hash = hash.to_nixbase32()
    )
}

#[test]
fn content_addressed_paths_are_shared_with_no_signing_key_anywhere() {
    if !nix_available() {
        return;
    }
    // Nothing is signed: the key the nodes and the client trust signs nothing here, the nodes
    // have no signing key, and the stores none either.
    let pair = Pair::new();
    let marker = unique_marker();
    let flat = pair.s1.build_closure(&fixed_output_expr(&marker, "flat"));
    let recursive = pair.s1.build_closure(&fixed_output_expr(&marker, "recursive"));
    let text = pair.s1.add_many_paths(3, &marker);
    let (n1, n2) = pair.start_both();
    let http = n2.http_address();

    let paths: Vec<&String> = [&flat.top, &recursive.top].into_iter().chain(&text.paths).collect();
    wait_until(DEADLINE, "node 2 to serve every content-addressed narinfo", || {
        paths.iter().all(|p| get(http, &narinfo_url_path(p)).0 == 200)
    });
    for (path, ca) in [(&flat.top, "CA: fixed:sha256:"), (&recursive.top, "CA: fixed:r:sha256:")] {
        let text = String::from_utf8(get(http, &narinfo_url_path(path)).1).unwrap();
        assert!(text.contains(ca) && !text.contains("Sig:"), "{text}");
    }

    // The real client takes them unsigned, as Nix does content-addressed paths, byte for byte.
    let url = format!("http://{http}");
    for top in [&flat.top, &recursive.top] {
        let copy = pair.s2.copy_from(&url, &[&pair.key.public], top);
        let stderr = String::from_utf8_lossy(&copy.stderr);
        assert!(copy.status.success(), "nix copy of {top} failed: {stderr}");
    }
    let realise = pair.s2.realise_from(&url, &[&pair.key.public], &text.top);
    let stderr = String::from_utf8_lossy(&realise.stderr);
    assert!(realise.status.success(), "nix-store -r of {} failed: {stderr}", text.top);
    for path in &paths {
        assert!(pair.s2.is_valid(path), "{path} did not arrive");
        assert_eq!(pair.s2.dump(path), pair.s1.dump(path), "{path} differs");
    }
    pair.stop(n2);
    pair.stop(n1);
}
