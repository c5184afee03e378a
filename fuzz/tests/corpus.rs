//! The committed corpus, under plain `cargo test` on stable Rust, without libFuzzer.
//!
//! - Every input in `corpus/<target>/` (the seeds, inputs the fuzzer kept, and any input that
//!   once crashed a target) passes that target's checks: a regression suite.
//! - The seeds, `corpus/<target>/seed-*`, are what [`seeds`] makes: the golden files of
//!   `protocol/tests/data/` and small messages built here. `NIXMESH_FUZZ_WRITE_SEEDS=1 cargo
//!   test` (re)writes them. (`corpus/daemon/seed-real-*`, what a real nix-daemon sent, are
//!   recorded by `fuzz/record-daemon`.)

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use nixmesh_fuzz::TARGETS;
use nixmesh_protocol::mesh_messages::{
    AdvertMessage, AdvertPosition, AdvertRequest, FetchRequest, FetchResponse, encode_frame,
};
use nixmesh_protocol::nar::writer;
use nixmesh_protocol::nix_daemon::worker_protocol::{DAEMON_MAGIC, stderr};
use nixmesh_protocol::nix_daemon::{put_bytes, put_u64};
use nixmesh_protocol::signature::SigningKey;
use nixmesh_protocol::{Sha256, StorePathHash};

fn fuzz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn data_dir() -> PathBuf {
    fuzz_dir().join("../protocol/tests/data")
}

#[test]
fn every_corpus_input_passes_its_checks() {
    let mut failed = Vec::new();
    let mut count = 0;
    for (target, check) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(target);
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let input = fs::read(&path).unwrap();
            count += 1;
            if catch_unwind(AssertUnwindSafe(|| check(&input))).is_err() {
                failed.push(path.display().to_string());
            }
        }
    }
    assert!(failed.is_empty(), "inputs that fail their target's checks: {failed:#?}");
    assert!(count > 50, "only {count} corpus inputs: is the corpus there?");
}

#[test]
fn seeds_are_committed() {
    let write = std::env::var_os("NIXMESH_FUZZ_WRITE_SEEDS").is_some();
    let mut stale = Vec::new();
    for (target, name, bytes) in seeds() {
        let path = fuzz_dir().join("corpus").join(target).join(format!("seed-{name}"));
        if write {
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, &bytes).unwrap();
        } else if fs::read(&path).ok().as_ref() != Some(&bytes) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "seeds missing or changed (NIXMESH_FUZZ_WRITE_SEEDS=1 cargo test rewrites them): \
         {stale:#?}"
    );
}

/// Every seed: its target, its name, its bytes.
fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut seeds = Vec::new();
    let mut golden = |target, dir: &str, ext: &str, prefix: &[u8]| {
        for (name, bytes) in files(&data_dir().join(dir), ext) {
            let name = format!("{}-{name}", dir.replace('/', "-"));
            seeds.push((target, name, [prefix, &bytes].concat()));
        }
    };
    for dir in ["narinfo/xz", "narinfo/none", "narinfo/twosigs", "ca"] {
        golden("narinfo", dir, "narinfo", b"");
    }
    // The NAR target's first byte is its cutting plan.
    golden("nar", "nar", "nar", &[0x35]);
    golden("nar", "narinfo/nar", "nar", &[0xc4]);
    seeds.extend(made_nars().into_iter().map(|(name, nar)| ("nar", name, nar)));
    seeds.extend(wire_seeds().into_iter().map(|(name, frames)| ("wire", name, frames)));
    seeds.extend(format_seeds().into_iter().map(|(name, text)| ("formats", name, text)));
    seeds.extend(daemon_seeds().into_iter().map(|(name, replies)| ("daemon", name, replies)));
    seeds
}

/// The files in `dir` ending in `.ext`, sorted, by name without the extension.
fn files(dir: &Path, ext: &str) -> Vec<(String, Vec<u8>)> {
    let mut found: Vec<_> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == ext))
        .map(|path| {
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, fs::read(&path).unwrap())
        })
        .collect();
    found.sort();
    found
}

fn made_nars() -> Vec<(String, Vec<u8>)> {
    let nar = |plan: u8, make: &dyn Fn(writer::Node<'_, '_>)| {
        let mut out = vec![plan];
        make(writer::open(&mut out).unwrap());
        out
    };
    let deep = |node: writer::Node<'_, '_>| {
        fn level(node: writer::Node<'_, '_>, depth: usize) {
            let mut dir = node.directory().unwrap();
            if depth > 0 {
                level(dir.entry(b"d").unwrap(), depth - 1);
            }
            dir.entry(b"f").unwrap().file(true, 9, &mut &b"#!/bin/sh"[..]).unwrap();
            dir.close().unwrap();
        }
        level(node, 12);
    };
    let wide = |node: writer::Node<'_, '_>| {
        let mut dir = node.directory().unwrap();
        dir.entry(&[b'a'; 255]).unwrap().symlink(&[b'/'; 300]).unwrap();
        dir.entry(b"b").unwrap().directory().unwrap().close().unwrap();
        dir.entry("ü".as_bytes()).unwrap().file(false, 0, &mut &b""[..]).unwrap();
        dir.close().unwrap();
    };
    vec![
        ("made-deep".into(), nar(0x00, &deep)),
        ("made-wide".into(), nar(0x9b, &wide)),
        ("made-link".into(), nar(0x13, &|n| n.symlink(b"../x").unwrap())),
        ("made-file".into(), nar(0x80, &|n| n.file(false, 11, &mut &b"hello world"[..]).unwrap())),
    ]
}

fn wire_seeds() -> Vec<(String, Vec<u8>)> {
    let hash = StorePathHash::parse("z0zz5y570pdakbq0idj35kpi7kd8z3ny").unwrap();
    let nar_hash = Sha256::digest(b"a NAR");
    let position = AdvertPosition { epoch: 1_700_000_000, generation: 42 };
    let narinfo = String::from_utf8(
        fs::read(data_dir().join("narinfo/xz/6qgidplc50x72n86qxivlkk8q15f8srm.narinfo")).unwrap(),
    )
    .unwrap();
    let frames = |messages: &[&dyn Fn() -> Vec<u8>]| messages.iter().flat_map(|m| m()).collect();
    let fetch = |m: FetchRequest| move || encode_frame(&m).unwrap();
    let answer = |m: FetchResponse| move || encode_frame(&m).unwrap();
    let advert = |m: AdvertMessage| move || encode_frame(&m).unwrap();
    let subscribe = |m: AdvertRequest| move || encode_frame(&m).unwrap();
    vec![
        (
            "fetch-requests".into(),
            frames(&[
                &fetch(FetchRequest::NarInfo { hash }),
                &fetch(FetchRequest::Nar { hash, nar_hash, offset: 0 }),
                &fetch(FetchRequest::Nar { hash, nar_hash, offset: 1 << 40 }),
            ]),
        ),
        (
            "fetch-responses".into(),
            frames(&[
                &answer(FetchResponse::NarInfo { text: narinfo }),
                &answer(FetchResponse::Nar { nar_size: 728, offset: 100 }),
                &answer(FetchResponse::NotFound),
                &answer(FetchResponse::Failed { message: "the daemon is gone".into() }),
            ]),
        ),
        (
            "fetch-documents".into(),
            frames(&[
                &fetch(FetchRequest::Listing { hash, nar_hash }),
                &answer(FetchResponse::Listing { len: 65 }),
                &fetch(FetchRequest::BuildLog {
                    drv: "z0zz5y570pdakbq0idj35kpi7kd8z3ny-hello-2.12.drv".into(),
                }),
                &answer(FetchResponse::BuildLog { len: 1 << 20 }),
            ]),
        ),
        (
            "fetch-coded".into(),
            frames(&[
                &fetch(FetchRequest::NarCoded { hash, nar_hash, offset: 0, zstd: true }),
                &answer(FetchResponse::NarBlocks { nar_size: 728, offset: 0 }),
                &fetch(FetchRequest::NarCoded { hash, nar_hash, offset: 100, zstd: false }),
            ]),
        ),
        (
            "adverts".into(),
            frames(&[
                &subscribe(AdvertRequest::Subscribe { resume: None }),
                &subscribe(AdvertRequest::Subscribe { resume: Some(position) }),
                &advert(AdvertMessage::Snapshot {
                    position,
                    hashes: vec![hash, StorePathHash([7; 20])],
                    last: true,
                }),
                &advert(AdvertMessage::Delta {
                    position,
                    from: 40,
                    added: vec![StorePathHash([9; 20])],
                    removed: vec![hash],
                }),
            ]),
        ),
    ]
}

fn format_seeds() -> Vec<(String, Vec<u8>)> {
    let seed = |which: u8, text: &str| [&[which][..], text.as_bytes()].concat();
    let mut seeds = Vec::new();
    let mut cas = Vec::new();
    let mut sigs = Vec::new();
    for (_, text) in files(&data_dir().join("ca"), "narinfo") {
        for line in String::from_utf8(text).unwrap().lines() {
            if let Some(ca) = line.strip_prefix("CA: ") {
                cas.push(ca.to_owned());
            }
            if let Some(sig) = line.strip_prefix("Sig: ") {
                sigs.push(sig.to_owned());
            }
        }
    }
    cas.sort();
    cas.dedup();
    for (i, ca) in cas.iter().enumerate() {
        seeds.push((format!("ca-{i}"), seed(0, ca)));
    }
    sigs.sort();
    sigs.dedup();
    for (i, sig) in sigs.iter().take(3).enumerate() {
        seeds.push((format!("sig-{i}"), seed(1, sig)));
    }
    for (name, key) in files(&data_dir().join("keys"), "public") {
        seeds.push((format!("public-{name}"), seed(2, &String::from_utf8(key).unwrap())));
    }
    for (name, key) in files(&data_dir().join("keys"), "secret") {
        seeds.push((format!("secret-{name}"), seed(3, &String::from_utf8(key).unwrap())));
    }
    let made = SigningKey::from_seed("made-1", [3; 32]).to_secret_string();
    seeds.push(("secret-made".into(), seed(3, &format!("  {made}\n"))));
    let path = "/nix/store/6qgidplc50x72n86qxivlkk8q15f8srm-nixmesh-golden-top";
    seeds.push(("store-path".into(), seed(4, path)));
    seeds.push(("store-base-name".into(), seed(4, &path["/nix/store/".len()..])));
    seeds.push(("store-hash".into(), seed(4, "6qgidplc50x72n86qxivlkk8q15f8srm")));
    let sha = Sha256::digest(b"fuzz");
    seeds.push(("sha256-base32".into(), seed(5, &sha.to_string())));
    seeds.push(("sha256-hex".into(), seed(5, &format!("sha256:{}", sha.to_hex()))));
    seeds.push((
        "sha256-sri".into(),
        seed(5, "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="),
    ));
    seeds.push(("md5-hex".into(), seed(5, "d41d8cd98f00b204e9800998ecf8427e")));
    seeds.push(("nixconf".into(), seed(6, NIX_CONF)));
    seeds.push((
        "nixbase32".into(),
        seed(7, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"),
    ));
    seeds
}

const NIX_CONF: &str = "# a nix.conf\n\
    trusted-public-keys = cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY= \
    nixmesh-golden-1:2s0fWoUd0K4Ra5c7vF0WNaYlNcFX8yXVyPp4cRdhb4c=\n\
    extra-trusted-public-keys = a:b # comment\n\
    !include /etc/nix/extra.conf\n\
    include nix.local.conf\n\
    binary-cache-public-keys=x\n\
    substituters = http://127.0.0.1:7373 https://cache.nixos.org/\n\
    extra-substituters = http://[::1]:8080\n";

/// The daemon's side of conversations, as Nix 2.8's `daemon.cc` writes it, after the two
/// bytes of the plan (which operations) and the read size.
fn daemon_seeds() -> Vec<(String, Vec<u8>)> {
    const PATH: &str = "/nix/store/9khp9q6fld0ypa1lvl9n9lasrjn4mrf0-tree";
    const DEP: &str = "/nix/store/gbzzz8d92vz1mrmwf2sh9hawvk8m29g4-nixmesh-dep";
    const DRV: &str = "/nix/store/jwq00gs8sgsmlykl1mxw1pa403q6dxn0-nixmesh-top.drv";
    let hello = |minor: u64| {
        let mut s = Script::default().u64(DAEMON_MAGIC).u64(1 << 8 | minor);
        if minor >= 33 {
            s = s.str("2.8.0");
        }
        if minor >= 35 {
            s = s.u64(1);
        }
        s
    };
    let path_info = |s: Script| {
        s.u64(stderr::LAST)
            .u64(1)
            .str(DRV)
            .str("16r7f3fyr0zpv68dkzal7r2sdfpn9miax5rp0l5vn5dk2h95sa07")
            .u64(2)
            .str(DEP)
            .str(PATH)
            .u64(1_700_000_000)
            .u64(728)
            .u64(0)
            .u64(1)
            .str("cache.nixos.org-1:MadTCU1OSFCGUw4aqCKpLCZJpqBc7AbLvO7wgdlls0eq1DwaSnF/82SZE+wJGEiwlHbnZR+14daSaec0W3XoBQ==")
            .str("")
    };
    // Plans: two bits per operation, the first in the lowest bits (0 QueryPathInfo,
    // 1 QueryAllValidPaths, 2 QueryPathFromHashPart, 3 NarFromPath).
    let info_then_nar = 0b11_00;
    let mut nar = Vec::new();
    writer::open(&mut nar).unwrap().file(false, 3, &mut &b"hi\n"[..]).unwrap();
    vec![
        (
            "2.8-path-info".into(),
            path_info(hello(34).u64(stderr::LAST))
                .u64(stderr::LAST)
                .raw(&nar)
                .plan(info_then_nar, 0),
        ),
        (
            "2.8-logs-and-activities".into(),
            hello(34)
                .u64(stderr::NEXT)
                .str("warning: \x1b[35;1mignoring\x1b[0m something\n")
                .u64(stderr::START_ACTIVITY)
                .u64(7)
                .u64(3)
                .u64(100)
                .str("copying")
                .u64(2)
                .u64(0)
                .u64(5)
                .u64(1)
                .str("field")
                .u64(0)
                .u64(stderr::RESULT)
                .u64(7)
                .u64(105)
                .u64(0)
                .u64(stderr::STOP_ACTIVITY)
                .u64(7)
                .u64(stderr::LAST)
                .u64(stderr::LAST)
                .u64(0)
                .plan(0, 3),
        ),
        (
            "2.8-valid-paths-and-hash-part".into(),
            hello(35)
                .u64(stderr::LAST)
                .u64(stderr::LAST)
                .u64(3)
                .str(PATH)
                .str(DEP)
                .str(DRV)
                .u64(stderr::LAST)
                .str(PATH)
                .u64(stderr::LAST)
                .str("")
                .plan(0b10_10_01, 1),
        ),
        (
            "structured-error".into(),
            hello(34)
                .u64(stderr::LAST)
                .u64(stderr::ERROR)
                .str("Error")
                .u64(0)
                .str("Error")
                .str("path '\x1b[35;1m/nix/store/x\x1b[0m' is not valid")
                .u64(0)
                .u64(1)
                .u64(0)
                .str("while doing something")
                .plan(0b01, 8),
        ),
        (
            "1.25-error".into(),
            hello(25).u64(stderr::LAST).u64(stderr::ERROR).str("out of luck").u64(1).plan(0, 0),
        ),
        (
            "nar-error-after-last".into(),
            hello(34)
                .u64(stderr::LAST)
                .u64(stderr::LAST)
                .u64(stderr::ERROR)
                .str("Error")
                .u64(0)
                .str("Error")
                .str("path is gone")
                .u64(0)
                .u64(0)
                .plan(0b11, 0),
        ),
    ]
}

/// Bytes a scripted daemon sends (as in `node/src/local/store/connection/tests.rs`).
#[derive(Default)]
struct Script(Vec<u8>);

impl Script {
    fn u64(mut self, n: u64) -> Self {
        put_u64(&mut self.0, n);
        self
    }
    fn str(mut self, s: &str) -> Self {
        put_bytes(&mut self.0, s.as_bytes());
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// The daemon target's input: the plan, the read size, then the script.
    fn plan(self, plan: u8, read_size: u8) -> Vec<u8> {
        [&[plan, read_size][..], &self.0].concat()
    }
}
