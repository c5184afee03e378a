//! `NarInfo::parse`: every narinfo a node reads came from a peer or an HTTP cache.
//!
//! Beyond never panicking: a narinfo that parses renders as text that parses back to the same
//! narinfo (what the node serves after rewriting one is such a rendering), signing it and
//! verifying the signature works whatever its fields hold, and its fingerprint and content
//! address can be computed.

use nixmesh_protocol::narinfo::NarInfo;
use nixmesh_protocol::signature::{SigningKey, TrustedKeys};

pub fn check(data: &[u8]) {
    // Narinfos arrive as text: a peer's as a postcard `String`, an HTTP cache's decoded.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(info) = NarInfo::parse(text) else { return };

    let rendered = info.to_string();
    assert_eq!(NarInfo::parse(&rendered).as_ref(), Ok(&info), "render, then parse, changed it");

    let fingerprint = info.fingerprint();
    assert!(fingerprint.starts_with("1;/nix/store/"), "fingerprint {fingerprint:?}");
    if let Ok(Some(ca)) = info.content_address() {
        let _ = nixmesh_protocol::content_address::verify(&info.store_path, &ca, &info.references);
    }

    // Whatever the fields hold, a signature we add verifies, and survives a round trip.
    let key = SigningKey::from_seed("fuzz-1", [7; 32]);
    let trusted = TrustedKeys::new(vec![key.verifying_key()]);
    let mut signed = info.clone();
    signed.sign(&key);
    assert_eq!(signed.verify(&trusted).map(|k| k.name()), Some("fuzz-1"));
    assert_eq!(NarInfo::parse(&signed.to_string()), Ok(signed), "a signed narinfo round trip");
}
