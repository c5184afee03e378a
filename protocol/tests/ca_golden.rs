//! Content-addressed narinfos written by the real Nix 2.8, unsigned (see
//! `data/ca/README.md`): every store path is the one its `CA`, name and references give, and
//! mutated narinfos are refused exactly where the real Nix refused them.

use std::fs;
use std::path::{Path, PathBuf};

use nixmesh_protocol::content_address::{CaMismatch, CaPathError, ContentAddress, verify};
use nixmesh_protocol::hash::{HashAlgo, NixHash};
use nixmesh_protocol::narinfo::NarInfo;
use nixmesh_protocol::store_path::STORE_DIR;
use nixmesh_protocol::{StorePath, StorePathHash};

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ca").join(rel)
}

fn read(hash: &str) -> String {
    let file = data(&format!("{hash}.narinfo"));
    fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()))
}

/// Every golden narinfo, parsed, in file-name order.
fn narinfos() -> Vec<NarInfo> {
    let mut found: Vec<PathBuf> = fs::read_dir(data(""))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "narinfo"))
        .collect();
    found.sort();
    found.iter().map(|path| NarInfo::parse(&fs::read_to_string(path).unwrap()).unwrap()).collect()
}

/// The content-addressed ones, with their content address.
fn content_addressed() -> Vec<(NarInfo, ContentAddress)> {
    narinfos()
        .into_iter()
        .filter_map(|info| {
            let ca = info.content_address().unwrap()?;
            Some((info, ca))
        })
        .collect()
}

fn refers_to_itself(info: &NarInfo) -> bool {
    info.references.contains(&info.store_path)
}

#[test]
fn every_path_nix_took_unsigned_verifies() {
    let all = narinfos();
    let with_ca = content_addressed();
    assert_eq!((all.len(), with_ca.len()), (23, 22));
    let control = all.iter().find(|i| i.ca.is_none()).unwrap();
    assert_eq!(control.store_path.name(), "nixmesh-ca-uses-fixed");

    for (info, ca) in &with_ca {
        assert_eq!(Some(ca.to_string()), info.ca, "Nix writes what we render");
        verify(&info.store_path, ca, &info.references)
            .unwrap_or_else(|e| panic!("{}: {e}", info.store_path));
        let others = info.references.iter().filter(|r| **r != info.store_path);
        let made = ca.store_path(info.store_path.name(), others, refers_to_itself(info));
        assert_eq!(made.as_ref(), Ok(&info.store_path));
    }

    // What the golden files cover.
    let count = |wanted: &dyn Fn(&NarInfo, &ContentAddress) -> bool| {
        with_ca.iter().filter(|(info, ca)| wanted(info, ca)).count()
    };
    for algo in HashAlgo::ALL {
        assert!(count(&|_, ca| matches!(ca, ContentAddress::Flat(h) if h.algo() == algo)) >= 1);
    }
    for algo in [HashAlgo::Sha1, HashAlgo::Sha256, HashAlgo::Sha512] {
        let recursive =
            |ca: &ContentAddress| matches!(ca, ContentAddress::Recursive(h) if h.algo() == algo);
        assert!(count(&|_, ca| recursive(ca)) >= 1);
    }
    let text = |ca: &ContentAddress| matches!(ca, ContentAddress::Text(_));
    assert!(count(&|info, ca| text(ca) && info.references.is_empty()) >= 1);
    assert!(count(&|info, ca| text(ca) && info.references.len() >= 3) >= 1);
    assert!(
        count(&|info, ca| !text(ca) && refers_to_itself(info) && info.references.len() == 2) == 1
    );
}

#[test]
fn recursive_sha256_states_the_nar_hash() {
    let mut stated = 0;
    for (info, ca) in content_addressed() {
        let self_reference = refers_to_itself(&info);
        match ca.nar_sha256(self_reference) {
            Some(hash) => {
                assert_eq!(hash, info.nar_hash, "{}", info.store_path);
                stated += 1;
            }
            None => assert!(
                self_reference
                    || !matches!(&ca, ContentAddress::Recursive(h) if h.algo() == HashAlgo::Sha256)
            ),
        }
    }
    assert_eq!(stated, 3, "nar-sha256, added and fod-nar");
    // With a self-reference the CA hash is taken modulo the path's own hash: not the NAR's.
    let floating = NarInfo::parse(&read("l7gfqrr3msga3iq03w81vq3k56v0bfqh")).unwrap();
    let ca = floating.content_address().unwrap().unwrap();
    assert_ne!(ca.nar_sha256(false), Some(floating.nar_hash));
}

/// The mutations `data/ca/nix-verdict.sh` put to Nix 2.8, and whether it took the path.
const NIX_VERDICTS: [(&str, &str, &str, bool); 9] = [
    (
        "wdwjgi433mf16wf8d7iblr3pk8rqghvg",
        " 58s38iziyyn0vm5kcm80wg9z04gvaq5p-nixmesh-ca-text-c",
        "",
        false,
    ),
    (
        "142qnknaf8gi89r0lzcn01cvhyi2m4yw",
        "References: \n",
        "References: 4rb406hi28slq3zs2m2r70fnisc5dwry-nixmesh-ca-text-b\n",
        false,
    ),
    (
        "l7gfqrr3msga3iq03w81vq3k56v0bfqh",
        " l7gfqrr3msga3iq03w81vq3k56v0bfqh-nixmesh-ca-floating\n",
        "\n",
        false,
    ),
    ("nz9c28r7vwbhdsvd49phqf9q6ibqvw01", "CA: fixed:r:", "CA: fixed:", false),
    ("99cq2hl6qnaanp3wsrdvsgifw4x3hn7a", "CA: fixed:", "CA: fixed:r:", false),
    ("142qnknaf8gi89r0lzcn01cvhyi2m4yw", "CA: text:", "CA: fixed:r:", false),
    ("sy843z9jvp6c6rm3j650yinl4xjx56q9", "CA: fixed:sha256:0", "CA: fixed:sha256:1", false),
    (
        "142qnknaf8gi89r0lzcn01cvhyi2m4yw",
        "0hcgjbjjl6rcsxxrx8lnhm5cpp37iphimd9gndh8cdwxn50fhh5n",
        "b640e840b19d378660b32fb51ae18d67dccb4a8596a29e7bd72c1b2ae5928f41",
        true,
    ),
    (
        "0nb01v727vg6vabmcy7vw6da4yr281yp",
        "563pxh8hdjhjs5r9m6cbv1dzah",
        "UP0W9mKmply0hLJBBPsdpg==",
        true,
    ),
];

#[test]
fn agrees_with_nix_on_mutated_narinfos() {
    for (hash, from, to, nix_took_it) in NIX_VERDICTS {
        let text = read(hash);
        assert_eq!(text.matches(from).count(), 1, "{hash}: {from:?}");
        let info = NarInfo::parse(&text.replacen(from, to, 1)).unwrap();
        let ca = info.content_address().unwrap().unwrap();
        let verdict = verify(&info.store_path, &ca, &info.references);
        assert_eq!(verdict.is_ok(), nix_took_it, "{hash}: {from:?} -> {to:?}: {verdict:?}");
    }
}

fn flip_first_byte(hash: &NixHash) -> NixHash {
    let mut digest = hash.digest().to_vec();
    digest[0] ^= 1;
    NixHash::new(hash.algo(), &digest).unwrap()
}

/// Every way of getting one of the claims wrong: the path, its name, its references, the
/// hash, the kind of hashing.
fn mutations(
    info: &NarInfo,
    ca: &ContentAddress,
) -> Vec<(String, StorePath, ContentAddress, Vec<StorePath>)> {
    let (path, refs) = (&info.store_path, &info.references);
    let mut out = Vec::new();
    let mut push = |what: &str, path: &StorePath, ca: ContentAddress, refs: Vec<StorePath>| {
        out.push((what.to_owned(), path.clone(), ca, refs));
    };
    let renamed = StorePath::from_parts(path.hash(), &format!("{}x", path.name())).unwrap();
    push("renamed", &renamed, ca.clone(), refs.clone());
    let mut other_hash = *path.hash().as_bytes();
    other_hash[19] ^= 0x80;
    let rehashed = StorePath::from_parts(StorePathHash(other_hash), path.name()).unwrap();
    push("other store path hash", &rehashed, ca.clone(), refs.clone());
    let flipped = flip_first_byte(&ca.hash());
    let same_kind = match ca {
        ContentAddress::Text(_) => ContentAddress::Text(flipped.as_sha256().unwrap()),
        ContentAddress::Flat(_) => ContentAddress::Flat(flipped),
        ContentAddress::Recursive(_) => ContentAddress::Recursive(flipped),
    };
    push("other hash", path, same_kind, refs.clone());
    for (i, _) in refs.iter().enumerate() {
        let mut fewer = refs.clone();
        fewer.remove(i);
        push("a reference dropped", path, ca.clone(), fewer);
    }
    let stranger =
        StorePath::from_base_name("4rb406hi28slq3zs2m2r70fnisc5dwrz-nixmesh-ca-text-b").unwrap();
    push("a reference added", path, ca.clone(), [refs.clone(), vec![stranger]].concat());
    if !refs.contains(path) {
        push(
            "a self-reference added",
            path,
            ca.clone(),
            [refs.clone(), vec![path.clone()]].concat(),
        );
    }
    let hash = ca.hash();
    match ca {
        ContentAddress::Text(_) => {
            push("text as fixed:r:", path, ContentAddress::Recursive(hash.clone()), refs.clone());
            push("text as fixed:", path, ContentAddress::Flat(hash), refs.clone());
        }
        ContentAddress::Flat(_) => {
            push("fixed: as fixed:r:", path, ContentAddress::Recursive(hash.clone()), refs.clone());
            if let Some(sha256) = hash.as_sha256() {
                push("fixed: as text:", path, ContentAddress::Text(sha256), refs.clone());
            }
        }
        ContentAddress::Recursive(_) => {
            push("fixed:r: as fixed:", path, ContentAddress::Flat(hash.clone()), refs.clone());
            if let Some(sha256) = hash.as_sha256() {
                push("fixed:r: as text:", path, ContentAddress::Text(sha256), refs.clone());
            }
        }
    }
    out
}

#[test]
fn every_mutation_is_refused() {
    let mut tried = 0;
    for (info, ca) in content_addressed() {
        for (what, path, ca, refs) in mutations(&info, &ca) {
            let verdict = verify(&path, &ca, &refs);
            assert!(verdict.is_err(), "{}: {what} still verifies", info.store_path);
            tried += 1;
        }
    }
    assert!(tried > 150, "{tried}");
}

#[test]
fn refusals_say_why() {
    let text = NarInfo::parse(&read("142qnknaf8gi89r0lzcn01cvhyi2m4yw")).unwrap();
    let ca = text.content_address().unwrap().unwrap();
    let with_self = vec![text.store_path.clone()];
    assert!(matches!(
        verify(&text.store_path, &ca, &with_self),
        Err(CaMismatch::Impossible { reason: CaPathError::TextSelfReference, .. })
    ));
    let renamed = StorePath::from_parts(text.store_path.hash(), "nixmesh-ca-text-z").unwrap();
    let err = verify(&renamed, &ca, &[]).unwrap_err();
    assert!(matches!(err, CaMismatch::OtherPath { .. }));
    let message = err.to_string();
    assert!(
        message.starts_with(&format!("{renamed} is not content-addressed by `{ca}`")),
        "{message}"
    );
    assert!(message.contains("142qnknaf8gi89r0lzcn01cvhyi2m4yw"), "{message}");

    let flat = NarInfo::parse(&read("99cq2hl6qnaanp3wsrdvsgifw4x3hn7a")).unwrap();
    let ca = flat.content_address().unwrap().unwrap();
    let err = verify(&flat.store_path, &ca, &with_self).unwrap_err();
    assert!(matches!(
        err,
        CaMismatch::Impossible {
            reason: CaPathError::ReferencesNotAllowed { references: 1, self_reference: false },
            ..
        }
    ));
    assert!(err.to_string().contains("only `text:` and `fixed:r:sha256:` paths"), "{err}");
}

/// The string value of `"key"` in one object of Nix's compact `path-info --json`, whose string
/// values hold no quotes or escapes.
fn json_string<'a>(object: &'a str, key: &str) -> &'a str {
    let at = object.find(&format!("\"{key}\":\"")).unwrap() + key.len() + 4;
    &object[at..at + object[at..].find('"').unwrap()]
}

/// The strings in the array value of `"key"`.
fn json_strings<'a>(object: &'a str, key: &str) -> Vec<&'a str> {
    let at = object.find(&format!("\"{key}\":[")).unwrap() + key.len() + 4;
    let list = &object[at..at + object[at..].find(']').unwrap()];
    list.split(',').filter(|s| !s.is_empty()).map(|s| s.trim_matches('"')).collect()
}

#[test]
fn the_store_dir_is_part_of_the_hash() {
    const ODD: &str = "/tmp/ca/odd/store";
    let json = fs::read_to_string(data("other-store-dir.json")).unwrap();
    let base = |full: &str| {
        let base = full.strip_prefix(ODD).and_then(|b| b.strip_prefix('/')).unwrap();
        StorePath::from_base_name(base).unwrap()
    };
    let objects: Vec<&str> = json.split("},{").collect();
    assert_eq!(objects.len(), 6);
    for object in objects {
        let path = base(json_string(object, "path"));
        let refs: Vec<StorePath> =
            json_strings(object, "references").into_iter().map(base).collect();
        let ca = ContentAddress::parse(json_string(object, "ca")).unwrap();
        assert!(!refs.contains(&path));
        let hash = ca.store_path_hash(ODD, path.name(), &refs, false).unwrap();
        assert_eq!(hash, path.hash(), "{path}");
        let in_nix_store = ca.store_path_hash(STORE_DIR, path.name(), &refs, false).unwrap();
        assert_ne!(in_nix_store, hash);
        if path.name() == "nixmesh-ca-text-refs" {
            assert_eq!(refs.len(), 3);
        }
    }
}
