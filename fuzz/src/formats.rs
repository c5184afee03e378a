//! The small parsers of text from outside: content addresses (a narinfo's `CA:`), public and
//! secret keys (config files, `nix.conf`), signatures (`Sig:`), store paths and their hashes,
//! hashes in Nix's three encodings, nixbase32, and the list settings of a nix.conf (trusted
//! keys, substituters).
//!
//! The first byte picks the parser, the rest is its text. What parses renders back as text
//! that parses to the same value.

use nixmesh_protocol::content_address::{self, ContentAddress};
use nixmesh_protocol::hash::{HashAlgo, NixHash};
use nixmesh_protocol::signature::{Signature, SigningKey, VerifyingKey};
use nixmesh_protocol::{Sha256, StorePath, StorePathHash, nix_conf, nixbase32};

pub fn check(data: &[u8]) {
    let Some((&which, bytes)) = data.split_first() else { return };
    if which % 8 == 7 {
        return nixbase32_round_trip(bytes);
    }
    let Ok(text) = std::str::from_utf8(bytes) else { return };
    match which % 8 {
        0 => content_address(text),
        1 => {
            if let Ok(sig) = Signature::parse(text) {
                assert_eq!(Signature::parse(&sig.to_string()).as_ref(), Ok(&sig));
            }
        }
        2 => {
            if let Ok(key) = VerifyingKey::parse(text) {
                assert_eq!(VerifyingKey::parse(&key.to_string()).as_ref(), Ok(&key));
            }
        }
        3 => {
            if let Ok(key) = SigningKey::parse(text) {
                let again = SigningKey::parse(&key.to_secret_string()).expect("its own text");
                assert_eq!(again.verifying_key(), key.verifying_key());
                let sig = key.sign(b"fingerprint");
                assert!(key.verifying_key().verify(b"fingerprint", &sig));
            }
        }
        4 => store_path(text),
        5 => {
            if let Ok(hash) = Sha256::parse(text) {
                assert_eq!(Sha256::parse(&hash.to_string()), Ok(hash));
                assert_eq!(Sha256::parse_digest(&hash.to_hex()), Some(hash));
            }
            for algo in [HashAlgo::Md5, HashAlgo::Sha1, HashAlgo::Sha256, HashAlgo::Sha512] {
                if let Ok(hash) = NixHash::parse_unprefixed(algo, text) {
                    assert_eq!(hash.digest().len(), algo.digest_len());
                    assert_eq!(NixHash::parse_unprefixed(algo, &hash.to_hex()).as_ref(), Ok(&hash));
                    let base32 = hash.to_nixbase32();
                    assert_eq!(NixHash::parse_unprefixed(algo, &base32).as_ref(), Ok(&hash));
                }
            }
        }
        _ => {
            // Both list settings: the lines, applied in order to the default, give the list.
            for setting in [nix_conf::TRUSTED_PUBLIC_KEYS, nix_conf::SUBSTITUTERS] {
                let mut list: Vec<String> = setting.default.iter().map(|v| v.to_string()).collect();
                for line in nix_conf::list_lines(text, &setting) {
                    line.apply(&mut list);
                }
                assert_eq!(list, nix_conf::list_in(text, &setting));
            }
        }
    }
}

fn content_address(text: &str) {
    let Ok(ca) = ContentAddress::parse(text) else { return };
    assert_eq!(ContentAddress::parse(&ca.to_string()).as_ref(), Ok(&ca));
    let _ = ca.nar_check(false);
    let _ = ca.nar_check(true);
    // The store path it names, if any, is one it verifies against.
    if let Ok(path) = ca.store_path("fuzz", [], false) {
        assert_eq!(content_address::verify(&path, &ca, &[]), Ok(()));
    }
}

fn store_path(text: &str) {
    if let Ok(path) = StorePath::parse(text) {
        assert_eq!(path.to_string(), text, "a store path has one spelling");
        assert_eq!(StorePath::from_base_name(&path.base_name()).as_ref(), Ok(&path));
    }
    if let Ok(path) = StorePath::from_base_name(text) {
        assert_eq!(path.base_name(), text);
    }
    if let Ok(hash) = StorePathHash::parse(text) {
        assert_eq!(hash.to_string(), text);
    }
}

fn nixbase32_round_trip(bytes: &[u8]) {
    if let Ok(decoded) = nixbase32::decode(bytes) {
        // Decoding refuses bits that do not fit, so text of an encoding's length is the
        // encoding's own. (Other lengths decode too, their extra digits zero: Nix's
        // parsers check the length first.)
        if nixbase32::encoded_len(decoded.len()) == bytes.len() {
            assert_eq!(nixbase32::encode(&decoded).as_bytes(), bytes);
        }
    }
    let encoded = nixbase32::encode(bytes);
    assert_eq!(nixbase32::decode(encoded.as_bytes()).as_deref(), Ok(bytes));
}
