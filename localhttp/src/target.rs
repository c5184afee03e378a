//! What a request path asks for, parsed strictly from the raw (undecoded) path.
//!
//! Only the exact shapes Nix requests are accepted: `/<hash>.narinfo`,
//! `/nar/<hash>-<narhash>.nar`, `/<hash>.ls` and `/log/<drv base name>`, with every digest in
//! nixbase32 and every store path name as Nix allows it. The path is never
//! percent-decoded, so `%2e%2e` or an encoded slash is simply not nixbase32; nothing here
//! slices a string at an unchecked index, so no input can make it panic.

use std::fmt;

use nixmesh_protocol::nixbase32;
use nixmesh_protocol::store_path::HASH_CHARS;
use nixmesh_protocol::{Sha256, StorePath, StorePathHash};
use thiserror::Error;

/// The characters of a SHA-256 digest in nixbase32.
const NAR_HASH_CHARS: usize = nixbase32::encoded_len(32);

/// Where the NAR routes live; the narinfo's `URL` is relative to the cache root.
pub const NAR_DIR: &str = "nar";
/// Where build logs live, as Nix's binary cache store asks for them.
pub const LOG_DIR: &str = "log";

/// A request path the substituter answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `/nix-cache-info`.
    CacheInfo,
    /// `/<hash>.narinfo`.
    NarInfo(StorePathHash),
    /// `/nar/<hash>-<narhash>.nar`.
    Nar(NarFile),
    /// `/<hash>.ls`: the NAR's listing.
    Listing(StorePathHash),
    /// `/log/<hash>-<name>.drv`: a derivation's build log.
    BuildLog(StorePath),
    /// `/_nixmesh/peers`.
    Peers,
    /// `/_nixmesh/status`.
    Status,
}

/// A path that names nothing here.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestPathError {
    /// The path looks like a narinfo or NAR request but is malformed (answered with 400).
    #[error("malformed {kind} path: {reason}")]
    Malformed { kind: &'static str, reason: &'static str },
    /// Nothing is served at this path (answered with 404).
    #[error("no such file")]
    NotFound,
}

/// The NAR of one store path as this substituter names it: `<hash>-<narhash>.nar`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarFile {
    pub store_hash: StorePathHash,
    pub nar_hash: Sha256,
}

impl NarFile {
    /// The narinfo `URL` that points at this file, relative to the cache root.
    pub fn url(&self) -> String {
        format!("{NAR_DIR}/{self}")
    }

    /// Parses the file name alone, `<32 chars>-<52 chars>.nar`.
    pub fn parse(name: &str) -> Result<Self, RequestPathError> {
        let malformed = |reason| RequestPathError::Malformed { kind: "NAR", reason };
        let stem = name.strip_suffix(".nar").ok_or(malformed("the name does not end in .nar"))?;
        if stem.len() != HASH_CHARS + 1 + NAR_HASH_CHARS {
            return Err(malformed("the name is not <32-char hash>-<52-char NAR hash>.nar"));
        }
        // The length check is in bytes; a multi-byte character at the split is refused, not a panic.
        let (store_hash, rest) = stem.split_at_checked(HASH_CHARS).ok_or(malformed("not ASCII"))?;
        let nar_hash = rest.strip_prefix('-').ok_or(malformed("no '-' after the store hash"))?;
        let store_hash =
            StorePathHash::parse(store_hash).map_err(|_| malformed("the store hash is invalid"))?;
        let nar_hash = nixbase32::decode_fixed::<32>(nar_hash.as_bytes())
            .map(Sha256)
            .map_err(|_| malformed("the NAR hash is not nixbase32"))?;
        Ok(NarFile { store_hash, nar_hash })
    }
}

/// `<hash>-<narhash>.nar`.
impl fmt::Display for NarFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}.nar", self.store_hash, self.nar_hash.to_nixbase32())
    }
}

impl Target {
    /// Parses a raw request path (no query; the router strips it).
    pub fn parse(path: &str) -> Result<Self, RequestPathError> {
        match path {
            "/nix-cache-info" => return Ok(Target::CacheInfo),
            "/_nixmesh/peers" => return Ok(Target::Peers),
            "/_nixmesh/status" => return Ok(Target::Status),
            _ => {}
        }
        if let Some(name) = path.strip_prefix(&format!("/{NAR_DIR}/")) {
            return NarFile::parse(name).map(Target::Nar);
        }
        if let Some(name) = path.strip_prefix(&format!("/{LOG_DIR}/")) {
            let malformed = |reason| RequestPathError::Malformed { kind: "log", reason };
            let drv = StorePath::from_base_name(name)
                .map_err(|_| malformed("not the base name of a store path"))?;
            if !drv.name().ends_with(".drv") {
                return Err(malformed("not a derivation (.drv)"));
            }
            return Ok(Target::BuildLog(drv));
        }
        let name = path.strip_prefix('/').ok_or(RequestPathError::NotFound)?;
        if let Some(hash) = name.strip_suffix(".ls") {
            return StorePathHash::parse(hash).map(Target::Listing).map_err(|_| {
                RequestPathError::Malformed {
                    kind: "listing",
                    reason: "the store hash is not 32 nixbase32 characters",
                }
            });
        }
        let hash = name.strip_suffix(".narinfo").ok_or(RequestPathError::NotFound)?;
        StorePathHash::parse(hash).map(Target::NarInfo).map_err(|_| RequestPathError::Malformed {
            kind: "narinfo",
            reason: "the store hash is not 32 nixbase32 characters",
        })
    }

    /// A short name for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::CacheInfo => "cache-info",
            Target::NarInfo(_) => "narinfo",
            Target::Nar(_) => "nar",
            Target::Listing(_) => "listing",
            Target::BuildLog(_) => "build-log",
            Target::Peers => "peers",
            Target::Status => "status",
        }
    }

    /// The store path the request is about, if any.
    pub fn store_hash(&self) -> Option<StorePathHash> {
        match self {
            Target::NarInfo(hash) => Some(*hash),
            Target::Nar(file) => Some(file.store_hash),
            Target::Listing(hash) => Some(*hash),
            Target::BuildLog(drv) => Some(drv.hash()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HASH: &str = "0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj";
    const NAR_HASH: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";

    #[test]
    fn the_fixed_routes() {
        assert_eq!(Target::parse("/nix-cache-info"), Ok(Target::CacheInfo));
        assert_eq!(Target::parse("/_nixmesh/peers"), Ok(Target::Peers));
        assert_eq!(Target::parse("/_nixmesh/status"), Ok(Target::Status));
    }

    #[test]
    fn narinfo_paths() {
        let hash = StorePathHash::parse(HASH).unwrap();
        assert_eq!(Target::parse(&format!("/{HASH}.narinfo")), Ok(Target::NarInfo(hash)));
        for bad in [
            "/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzq.narinfo", // 31 characters
            "/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqjj.narinfo", // 33
            "/ec7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj.narinfo", // 'e' is not nixbase32
            "/0C7XM5QH4DVZD6K7NCQGZRZ1YBS2VZQJ.narinfo", // upper case
            "/%30c7xm5qh4dvzd6k7ncqgzrz1ybs2vzq.narinfo", // percent-encoding is not decoded
            "/.narinfo",
            "/ü.narinfo",
        ] {
            assert!(
                matches!(Target::parse(bad), Err(RequestPathError::Malformed { .. })),
                "{bad} should be malformed"
            );
        }
        for missing in ["/", "", "/x", "/nix-cache-inf", "//0c7x.narinfo", "/a/b.narinfo"] {
            assert!(Target::parse(missing).is_err(), "{missing} should not parse");
        }
    }

    #[test]
    fn nar_paths() {
        let file = NarFile {
            store_hash: StorePathHash::parse(HASH).unwrap(),
            nar_hash: Sha256::parse(&format!("sha256:{NAR_HASH}")).unwrap(),
        };
        let path = format!("/nar/{HASH}-{NAR_HASH}.nar");
        assert_eq!(Target::parse(&path), Ok(Target::Nar(file)));
        assert_eq!(format!("/{}", file.url()), path);
        for bad in [
            format!("/nar/{HASH}-{NAR_HASH}.nar.xz"),
            format!("/nar/{HASH}-{NAR_HASH}"),
            format!("/nar/{HASH}_{NAR_HASH}.nar"),
            format!("/nar/{HASH}-{NAR_HASH}x.nar"),
            format!("/nar/{NAR_HASH}-{HASH}.nar"),
            format!("/nar/../{HASH}-{NAR_HASH}.nar"),
            format!("/nar//{HASH}-{NAR_HASH}.nar"),
            format!("/nar/{HASH}-{NAR_HASH}.nar/"),
            "/nar/../x".to_owned(),
            "/nar/%2e%2e/x".to_owned(),
            "/nar/".to_owned(),
            // 85 bytes before ".nar", but a multi-byte character where the '-' must be.
            format!("/nar/{}é{}.nar", &HASH[..31], NAR_HASH),
        ] {
            assert!(
                matches!(Target::parse(&bad), Err(RequestPathError::Malformed { kind: "NAR", .. })),
                "{bad} should be malformed"
            );
        }
    }

    #[test]
    fn listing_and_log_paths() {
        let hash = StorePathHash::parse(HASH).unwrap();
        assert_eq!(Target::parse(&format!("/{HASH}.ls")), Ok(Target::Listing(hash)));
        let drv = format!("{HASH}-hello-2.12.drv");
        let parsed = Target::parse(&format!("/log/{drv}"));
        assert_eq!(parsed, Ok(Target::BuildLog(StorePath::from_base_name(&drv).unwrap())));
        for bad in [
            format!("/{}.ls", &HASH[..31]),
            format!("/log/{HASH}-hello-2.12"),
            format!("/log/{HASH}-../x.drv"),
            format!("/log/../{HASH}-x.drv"),
            "/log/".to_owned(),
            "/log/x.drv".to_owned(),
        ] {
            assert!(
                matches!(Target::parse(&bad), Err(RequestPathError::Malformed { .. })),
                "{bad} should be malformed"
            );
        }
    }

    #[test]
    fn kinds_and_hashes_for_logs() {
        let t = Target::parse(&format!("/{HASH}.narinfo")).unwrap();
        assert_eq!(
            (t.kind(), t.store_hash().map(|h| h.to_string())),
            ("narinfo", Some(HASH.into()))
        );
        assert_eq!(Target::CacheInfo.store_hash(), None);
    }

    proptest! {
        #[test]
        fn never_panics(path in "\\PC{0,200}") {
            let _ = Target::parse(&path);
        }

        #[test]
        fn never_panics_near_the_nar_shape(stem in "[0-9a-z\\-é.%/]{80,90}") {
            let _ = Target::parse(&format!("/nar/{stem}.nar"));
        }

        #[test]
        fn nar_files_round_trip(store in proptest::array::uniform20(any::<u8>()),
                                nar in proptest::array::uniform32(any::<u8>())) {
            let file = NarFile { store_hash: StorePathHash(store), nar_hash: Sha256(nar) };
            prop_assert_eq!(NarFile::parse(&file.to_string()), Ok(file));
        }
    }
}
