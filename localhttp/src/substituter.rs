//! The substituter's shared state, and the trust rule for narinfos: a narinfo reaches Nix only
//! if it parses, names the store path asked for, and carries a signature from a trusted key.

use std::sync::Arc;

use bytes::Bytes;
use nixmesh_protocol::narinfo::NarInfoError;
use nixmesh_protocol::signature::TrustedKeys;
use nixmesh_protocol::{NarInfo, StorePath, StorePathHash};
use thiserror::Error;
use tracing::debug;

use crate::cache::{NarInfoCache, Verified};
use crate::config::Config;
use crate::holders::{Miss, first_of};
use crate::source::{PathSource, SourceError};
use crate::target::NarFile;

/// What every request handler shares.
pub struct Substituter<S: PathSource> {
    pub source: Arc<S>,
    pub config: Config,
    pub cache: NarInfoCache<S::Peer>,
}

/// Why a peer's answer to a narinfo request was not used.
#[derive(Debug, Error)]
pub enum Rejection {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("the peer says it has no narinfo for it")]
    NotHeld,
    #[error("the narinfo does not parse: {0}")]
    Malformed(#[from] NarInfoError),
    #[error("the narinfo is for {0}, another store path")]
    OtherPath(StorePath),
    #[error("the narinfo has no signature from a trusted key (signed by: {0})")]
    Untrusted(String),
}

impl<S: PathSource> Substituter<S> {
    pub fn new(source: Arc<S>, config: Config) -> Self {
        let cache = NarInfoCache::new(config.narinfo_cache_capacity);
        Substituter { source, config, cache }
    }

    /// The verified narinfo for `hash`: remembered from an earlier request, or else the first
    /// one of `holders` (asked in order) gives. `None` when none gives one in time; each
    /// refusal is logged with the peer and the reason.
    ///
    /// Callers pass the holders connected now and answer a miss themselves when there are
    /// none: a remembered narinfo does not make a path available.
    pub async fn narinfo(
        &self,
        hash: StorePathHash,
        holders: &[S::Peer],
    ) -> Option<Arc<Verified<S::Peer>>> {
        if let Some(verified) = self.cache.get(&hash) {
            debug!(peer = %verified.peer, "narinfo remembered from an earlier request");
            return Some(verified);
        }
        let ask = |peer: &S::Peer, _: &[S::Peer]| {
            let peer = peer.clone();
            async move { self.ask(&peer, hash).await.map_err(Miss::Because) }
        };
        let (peer, narinfo) = first_of(
            holders,
            hash,
            "narinfo",
            self.config.narinfo_peer_timeout,
            self.config.narinfo_deadline,
            ask,
        )
        .await?;
        debug!(%peer, "narinfo verified");
        let for_nix = Bytes::from(for_nix(&narinfo).to_string());
        let verified = Arc::new(Verified { for_nix, narinfo, peer });
        self.cache.insert(hash, verified.clone());
        Some(verified)
    }

    async fn ask(&self, peer: &S::Peer, hash: StorePathHash) -> Result<NarInfo, Rejection> {
        let text = self.source.fetch_narinfo(peer, hash).await?.ok_or(Rejection::NotHeld)?;
        accept(&text, hash, &self.config.trusted_keys)
    }
}

/// A peer's narinfo `text` for `hash`, if Nix may be given it.
pub fn accept(text: &str, hash: StorePathHash, keys: &TrustedKeys) -> Result<NarInfo, Rejection> {
    let narinfo = NarInfo::parse(text)?;
    // A signature binds the narinfo to its own store path, so a hostile peer could send a
    // validly signed narinfo of some other path; it must be the path asked for.
    if narinfo.store_path.hash() != hash {
        return Err(Rejection::OtherPath(narinfo.store_path));
    }
    if narinfo.verify(keys).is_none() {
        let names: Vec<&str> = narinfo.signatures.iter().map(|s| s.name()).collect();
        return Err(Rejection::Untrusted(if names.is_empty() {
            "nobody".to_owned()
        } else {
            names.join(", ")
        }));
    }
    Ok(narinfo)
}

/// `narinfo` as this substituter serves it: the NAR at its own URL, uncompressed, so the
/// compressed file's hash and size no longer apply. Signatures cover neither field, so they
/// stay valid. Fields we do not know are dropped: no signature covers them, and nothing a
/// peer wrote reaches Nix unchecked.
pub fn for_nix(narinfo: &NarInfo) -> NarInfo {
    let file = NarFile { store_hash: narinfo.store_path.hash(), nar_hash: narinfo.nar_hash };
    NarInfo {
        url: file.url(),
        compression: Some("none".to_owned()),
        file_hash: None,
        file_size: None,
        extra: Vec::new(),
        ..narinfo.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixmesh_protocol::Sha256;
    use nixmesh_protocol::signature::SigningKey;

    const PATH: &str = "/nix/store/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-hello-2.12";
    const OTHER: &str = "/nix/store/1b9p07z77phvv2hf6gm9f28syp39f1ag-bash-5.1";

    fn signed(path: &str, key: &SigningKey) -> NarInfo {
        let mut narinfo = NarInfo {
            store_path: StorePath::parse(path).unwrap(),
            url: "nar/1w1fff338fvdw53sqgamddn1b2xgds473pv6y13gizdbqjv4i5p3.nar.xz".to_owned(),
            compression: Some("xz".to_owned()),
            file_hash: Some(Sha256([1; 32])),
            file_size: Some(1234),
            nar_hash: Sha256([2; 32]),
            nar_size: 5678,
            references: vec![StorePath::parse(OTHER).unwrap()],
            deriver: None,
            system: None,
            signatures: vec![],
            ca: None,
            extra: vec![],
        };
        narinfo.sign(key);
        narinfo
    }

    fn key(name: &str, seed: u8) -> SigningKey {
        SigningKey::from_seed(name, [seed; 32])
    }

    fn trusting(key: &SigningKey) -> TrustedKeys {
        TrustedKeys::new(vec![key.verifying_key()])
    }

    #[test]
    fn accepts_a_trusted_narinfo_of_the_path_asked_for() {
        let k = key("cache-1", 1);
        let narinfo = signed(PATH, &k);
        let hash = narinfo.store_path.hash();
        assert_eq!(accept(&narinfo.to_string(), hash, &trusting(&k)).unwrap(), narinfo);
    }

    #[test]
    fn refuses_another_path_untrusted_keys_and_garbage() {
        let k = key("cache-1", 1);
        let hash = StorePath::parse(PATH).unwrap().hash();
        let other = signed(OTHER, &k).to_string();
        assert!(matches!(accept(&other, hash, &trusting(&k)), Err(Rejection::OtherPath(_))));
        let by_stranger = signed(PATH, &key("stranger-1", 2)).to_string();
        assert!(matches!(
            accept(&by_stranger, hash, &trusting(&k)),
            Err(Rejection::Untrusted(names)) if names == "stranger-1"
        ));
        // A key of the trusted name but other bits is not trusted either.
        let impostor = signed(PATH, &key("cache-1", 3)).to_string();
        assert!(matches!(accept(&impostor, hash, &trusting(&k)), Err(Rejection::Untrusted(_))));
        assert!(matches!(accept("garbage", hash, &trusting(&k)), Err(Rejection::Malformed(_))));
    }

    #[test]
    fn rewrites_the_url_for_uncompressed_serving_and_keeps_the_signature() {
        let k = key("cache-1", 1);
        let mut narinfo = signed(PATH, &k);
        narinfo.extra.push(("X-Unsigned".to_owned(), "whatever a peer wrote".to_owned()));
        let served = for_nix(&narinfo);
        assert!(served.extra.is_empty(), "fields no signature covers go nowhere");
        assert_eq!(
            served.url,
            format!("nar/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-{}.nar", narinfo.nar_hash.to_nixbase32())
        );
        assert_eq!(served.compression.as_deref(), Some("none"));
        assert_eq!((served.file_hash, served.file_size), (None, None));
        assert_eq!(served.signatures, narinfo.signatures);
        assert!(served.verify(&trusting(&k)).is_some());
        let text = served.to_string();
        assert!(!text.contains("FileHash") && !text.contains("FileSize"), "{text}");
    }
}
