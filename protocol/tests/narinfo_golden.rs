//! Golden narinfos and keys written by the real Nix 2.8 (see `data/narinfo/README.md`): we
//! parse them, render them back byte for byte, verify Nix's signatures, and make the same
//! signatures Nix made.

use std::fs;
use std::path::{Path, PathBuf};

use nixmesh_protocol::narinfo::NarInfo;
use nixmesh_protocol::signature::{Signature, SigningKey, TrustedKeys, VerifyingKey};
use nixmesh_protocol::{Sha256, StorePathHash};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(rel)
}

fn read(rel: &str) -> String {
    fs::read_to_string(data(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Every golden narinfo as `(file name, text)`, from `none/`, `xz/` and `twosigs/`.
fn narinfos(dir: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = fs::read_dir(data(&format!("narinfo/{dir}")))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "narinfo"))
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, fs::read_to_string(&path).unwrap())
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no narinfos in {dir}/");
    found
}

fn all_narinfos() -> Vec<(String, String)> {
    ["none", "xz", "twosigs"].iter().flat_map(|dir| narinfos(dir)).collect()
}

fn secret(n: u8) -> SigningKey {
    SigningKey::parse(&read(&format!("keys/nixmesh-golden-{n}.secret"))).unwrap()
}

fn public(n: u8) -> VerifyingKey {
    VerifyingKey::parse(&read(&format!("keys/nixmesh-golden-{n}.public"))).unwrap()
}

#[test]
fn key_files_round_trip() {
    for n in [1, 2] {
        let secret_text = read(&format!("keys/nixmesh-golden-{n}.secret"));
        let public_text = read(&format!("keys/nixmesh-golden-{n}.public"));
        assert!(!secret_text.ends_with('\n'), "Nix writes key files without a newline");
        assert_eq!(secret(n).to_secret_string(), secret_text);
        assert_eq!(public(n).to_string(), public_text);
        assert_eq!(secret(n).verifying_key(), public(n));
    }
}

#[test]
fn parse_then_render_is_byte_identical() {
    for (file, text) in all_narinfos() {
        let info = NarInfo::parse(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(info.to_string(), text, "{file}");
        assert_eq!(NarInfo::parse(&info.to_string()).unwrap(), info, "{file}");
        let hash = file.strip_suffix(".narinfo").unwrap();
        assert_eq!(info.store_path.hash(), hash.parse::<StorePathHash>().unwrap(), "{file}");
        assert!(info.extra.is_empty(), "{file}: Nix wrote a field we do not know");
    }
}

#[test]
fn nixs_signatures_verify_with_our_code() {
    let one = TrustedKeys::new(vec![public(1)]);
    let two = TrustedKeys::new(vec![public(2)]);
    for (file, text) in all_narinfos() {
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.verify(&one).map(VerifyingKey::name), Some("nixmesh-golden-1"), "{file}");
        let fingerprint = info.fingerprint();
        let sig = info.signatures.iter().find(|s| s.name() == "nixmesh-golden-1").unwrap();
        assert!(public(1).verify(fingerprint.as_bytes(), sig), "{file}");
        // Any change to what is signed breaks it.
        let mut changed = info.clone();
        changed.nar_size += 1;
        assert_eq!(changed.verify(&one), None, "{file}");
        let mut changed = info.clone();
        changed.references.pop();
        if changed.references.len() != info.references.len() {
            assert_eq!(changed.verify(&one), None, "{file}");
        }
        let signed_by_two = info.signatures.iter().any(|s| s.name() == "nixmesh-golden-2");
        assert_eq!(info.verify(&two).is_some(), signed_by_two, "{file}");
    }
}

#[test]
fn our_signatures_equal_nixs() {
    for (file, text) in all_narinfos() {
        let info = NarInfo::parse(&text).unwrap();
        for nix_sig in &info.signatures {
            let key = match nix_sig.name() {
                "nixmesh-golden-1" => secret(1),
                "nixmesh-golden-2" => secret(2),
                other => panic!("{file}: a signature by {other}"),
            };
            assert_eq!(&key.sign(info.fingerprint().as_bytes()), nix_sig, "{file}");
        }
        // Signing an unsigned copy with the same keys, in any order, gives Nix's file back.
        let mut unsigned = info.clone();
        unsigned.signatures.clear();
        for sig in info.signatures.iter().rev() {
            let n = if sig.name() == "nixmesh-golden-1" { 1 } else { 2 };
            unsigned.sign(&secret(n));
        }
        assert_eq!(unsigned.to_string(), text, "{file}");
    }
}

#[test]
fn fingerprint_matches_nix_format() {
    let info =
        NarInfo::parse(&read("narinfo/none/r6kzrxq3d10gpvdzbi3ki5ik3np5a8zk.narinfo")).unwrap();
    assert_eq!(
        info.fingerprint(),
        "1;/nix/store/r6kzrxq3d10gpvdzbi3ki5ik3np5a8zk-nixmesh-golden-split-lib;\
         sha256:0jqc0s1kdmlkfh79r5hr0sqqqcc4qjcrhg5sqhfb1yhsic32125a;344;\
         /nix/store/3qjlkpri42npj0syvyi2zqn7fss5zinw-nixmesh-golden-leaf"
    );
}

#[test]
fn fields_are_what_nix_wrote() {
    for (file, text) in narinfos("none") {
        let info = NarInfo::parse(&text).unwrap();
        assert_eq!(info.compression.as_deref(), Some("none"), "{file}");
        // Uncompressed: the file is the NAR itself.
        assert_eq!(info.file_hash, Some(info.nar_hash), "{file}");
        assert_eq!(info.file_size, Some(info.nar_size), "{file}");
        assert_eq!(info.url, format!("nar/{}.nar", info.nar_hash.to_nixbase32()), "{file}");
        let nar = fs::read(data(&info.url.replace("nar/", "narinfo/nar/"))).unwrap();
        assert_eq!(Sha256::digest(&nar), info.nar_hash, "{file}");
        assert_eq!(nar.len() as u64, info.nar_size, "{file}");
    }
    for (file, text) in narinfos("xz") {
        let info = NarInfo::parse(&text).unwrap();
        let file_hash = info.file_hash.expect("FileHash").to_nixbase32();
        assert_eq!(info.compression.as_deref(), Some("xz"), "{file}");
        assert_eq!(info.url, format!("nar/{file_hash}.nar.xz"), "{file}");
        assert!(info.file_size.unwrap() > 0, "{file}");
        // The same path as in none/, apart from where and how the NAR is stored.
        let none = NarInfo::parse(&read(&format!("narinfo/none/{file}"))).unwrap();
        assert_eq!((none.nar_hash, none.nar_size), (info.nar_hash, info.nar_size), "{file}");
        assert_eq!(none.fingerprint(), info.fingerprint(), "{file}");
    }

    let top =
        NarInfo::parse(&read("narinfo/none/6qgidplc50x72n86qxivlkk8q15f8srm.narinfo")).unwrap();
    assert!(top.references.contains(&top.store_path), "top refers to itself");
    assert_eq!(top.deriver.unwrap().name(), "nixmesh-golden-top.drv");
    let added =
        NarInfo::parse(&read("narinfo/none/ivplm6lvhn541wh0c53xkq0p69mal1rg.narinfo")).unwrap();
    assert!(added.deriver.is_none());
    assert_eq!(
        added.ca.as_deref(),
        Some("fixed:r:sha256:0zy4wx37v80c8z3ila73d6d77pf6xdhb0dsnn2gqxy4ldw56gqa4")
    );
    let two =
        NarInfo::parse(&read("narinfo/twosigs/6qgidplc50x72n86qxivlkk8q15f8srm.narinfo")).unwrap();
    let names: Vec<&str> = two.signatures.iter().map(Signature::name).collect();
    assert_eq!(names, ["nixmesh-golden-1", "nixmesh-golden-2"]);
}
