//! The substituter's shared state, and the trust rule for narinfos: a narinfo reaches Nix only
//! if it parses, names the store path asked for, and carries a signature from a trusted key,
//! or is self-certifying: a content-addressed path (`CA:`) whose store path recomputes from
//! that field, as Nix itself accepts with no signature. What an unsigned `NarHash` cannot
//! vouch for, the NAR's bytes are then checked against as they pass ([`NarCheck`]).

use std::sync::Arc;

use bytes::Bytes;
use nixmesh_protocol::content_address::{self, CaMismatch, ContentAddressError, NarCheck};
use nixmesh_protocol::narinfo::NarInfoError;
use nixmesh_protocol::signature::TrustedKeys;
use nixmesh_protocol::{NarInfo, StorePath, StorePathHash};
use nixmesh_telemetry::RateLimitedLog;
use thiserror::Error;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::cache::{NarInfoCache, Verified};
use crate::config::Config;
use crate::health::PeerHealth;
use crate::holders::{Miss, first_of};
use crate::listing::cache::ListingCache;
use crate::nar_slots::NarSlots;
use crate::prefetch::{Limits, Prefetch};
use crate::source::{PathSource, SourceError};
use crate::target::NarFile;

/// What every request handler shares.
pub struct Substituter<S: PathSource> {
    pub source: Arc<S>,
    pub config: Config,
    pub cache: NarInfoCache<S::Peer>,
    /// Listings (`<hash>.ls`) of the NARs of verified narinfos.
    pub listings: ListingCache,
    /// Faults of peers: the demoted are asked last (see [`crate::health`]).
    pub health: Arc<PeerHealth<S::Peer>>,
    /// Narinfo requests that may ask peers at once (`max_concurrent_requests`).
    asking: Arc<Semaphore>,
    /// NAR downloads under way (`max_concurrent_nars`).
    pub nar_slots: Arc<NarSlots>,
    /// NARs fetched ahead of Nix's requests (see [`crate::prefetch`]).
    pub prefetch: Prefetch<S>,
    /// Narinfos that found no permit in time, logged once a second at most.
    no_turn: RateLimitedLog,
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
    #[error("the narinfo is unsigned and its CA field does not parse: {0}")]
    BadContentAddress(#[from] ContentAddressError),
    #[error("the narinfo is unsigned and not self-certifying: {0}")]
    NotSelfCertifying(#[from] CaMismatch),
    #[error("the narinfo is unsigned and its NarHash is not the one its CA field states")]
    NarHashNotCa,
}

impl Rejection {
    /// Whether the peer sent something wrong (rather than nothing, or nothing in time).
    fn is_the_peers_fault(&self) -> bool {
        !matches!(self, Rejection::Source(_) | Rejection::NotHeld)
    }
}

/// A narinfo Nix may be given, and what its NAR must be checked against besides its
/// `NarHash` and `NarSize`.
#[derive(Debug, Clone, PartialEq)]
pub struct Accepted {
    pub narinfo: NarInfo,
    /// For an unsigned content-addressed path whose `NarHash` alone does not bind its bytes.
    pub check: Option<NarCheck>,
}

impl<S: PathSource> Substituter<S> {
    pub fn new(source: Arc<S>, health: Arc<PeerHealth<S::Peer>>, config: Config) -> Self {
        let cache = NarInfoCache::new(config.narinfo_cache_capacity);
        let listings = ListingCache::new(config.narinfo_cache_capacity);
        let asking = Arc::new(Semaphore::new(config.max_concurrent_requests));
        let nar_slots = NarSlots::new(config.max_concurrent_nars, config.nar_client_stall_timeout);
        let no_turn = RateLimitedLog::default();
        let prefetch = Prefetch::new(
            source.clone(),
            health.clone(),
            Limits::with_memory(config.prefetch_memory),
            config.prefetch,
            config.nar_idle_timeout,
            nar_slots.clone(),
        );
        Substituter {
            source,
            config,
            cache,
            listings,
            health,
            asking,
            nar_slots,
            prefetch,
            no_turn,
        }
    }

    /// The connected holders of `hash`, in the order to ask them: the source's (best first),
    /// demoted peers last.
    pub fn holders(&self, hash: &StorePathHash) -> Vec<S::Peer> {
        self.health.order(self.source.holders(hash))
    }

    /// [`Substituter::holders`], or when there are none, those that reconnect within the
    /// source's short wait ([`PathSource::holders_reconnecting`]): what the narinfo and NAR
    /// routes ask before answering a miss.
    pub async fn holders_or_reconnecting(&self, hash: &StorePathHash) -> Vec<S::Peer> {
        let holders = self.holders(hash);
        if !holders.is_empty() {
            return holders;
        }
        self.health.order(self.source.holders_reconnecting(hash).await)
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
        // Only asking peers waits for a turn, and the wait counts against the deadline: a miss
        // or a remembered narinfo never queues behind network work.
        let started = tokio::time::Instant::now();
        let deadline = self.config.narinfo_deadline;
        let Ok(Ok(_turn)) = tokio::time::timeout(deadline, self.asking.acquire()).await else {
            if let Some(held_back) = self.no_turn.admit() {
                let most = self.config.max_concurrent_requests;
                warn!(%hash, ?deadline, held_back,
                    "narinfo: all {most} permits to ask peers busy past the deadline; a miss");
            }
            return None;
        };
        let deadline = deadline.saturating_sub(started.elapsed());
        // Peers whose narinfo was refused; held against them only if another's is good.
        let refused = parking_lot::Mutex::new(Vec::new());
        let ask = |peer: &S::Peer, _: &[S::Peer]| {
            let (peer, refused) = (peer.clone(), &refused);
            async move {
                let answer = self.ask(&peer, hash).await;
                if let Err(rejection) = &answer
                    && rejection.is_the_peers_fault()
                {
                    let reason = format!("gave a bad narinfo: {rejection}");
                    refused.lock().push((peer, reason));
                }
                answer.map_err(Miss::Because)
            }
        };
        let (peer, Accepted { narinfo, check }) =
            first_of(holders, hash, "narinfo", self.config.narinfo_peer_timeout, deadline, ask)
                .await?;
        debug!(%peer, "narinfo verified");
        for (bad, reason) in refused.into_inner() {
            warn!(peer = %bad, %hash, "{reason}, where {peer} gave a good one");
            self.health.fault(&bad, reason);
        }
        let for_nix = Bytes::from(for_nix(&narinfo).to_string());
        let verified = Arc::new(Verified { for_nix, narinfo, peer, check });
        self.cache.insert(hash, verified.clone());
        Some(verified)
    }

    async fn ask(&self, peer: &S::Peer, hash: StorePathHash) -> Result<Accepted, Rejection> {
        let text = self.source.fetch_narinfo(peer, hash).await?.ok_or(Rejection::NotHeld)?;
        accept(&text, hash, &self.config.trusted_keys)
    }
}

/// A peer's narinfo `text` for `hash`, if Nix may be given it.
pub fn accept(text: &str, hash: StorePathHash, keys: &TrustedKeys) -> Result<Accepted, Rejection> {
    let narinfo = NarInfo::parse(text)?;
    // A signature binds the narinfo to its own store path, so a hostile peer could send a
    // validly signed narinfo of some other path; it must be the path asked for.
    if narinfo.store_path.hash() != hash {
        return Err(Rejection::OtherPath(narinfo.store_path));
    }
    if narinfo.verify(keys).is_some() {
        return Ok(Accepted { narinfo, check: None });
    }
    let untrusted = || {
        let names: Vec<&str> = narinfo.signatures.iter().map(|s| s.name()).collect();
        Rejection::Untrusted(if names.is_empty() { "nobody".to_owned() } else { names.join(", ") })
    };
    let Some(ca) = narinfo.content_address()? else { return Err(untrusted()) };
    content_address::verify(&narinfo.store_path, &ca, &narinfo.references)?;
    let self_reference = narinfo.references.contains(&narinfo.store_path);
    let check = match ca.nar_check(self_reference) {
        None => return Err(untrusted()),
        Some(NarCheck::NarHashIs(nar_hash)) if nar_hash != narinfo.nar_hash => {
            return Err(Rejection::NarHashNotCa);
        }
        // The `NarHash` is the content address's: the NAR's own check covers it.
        Some(NarCheck::NarHashIs(_)) => None,
        Some(check) => Some(check),
    };
    Ok(Accepted { narinfo, check })
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
        assert_eq!(accept(&narinfo.to_string(), hash, &trusting(&k)).unwrap().narinfo, narinfo);
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

    /// Unsigned narinfos Nix 2.8 wrote (`protocol/tests/data/ca/README.md` says how).
    const FLAT_SHA256: &str =
        include_str!("../../protocol/tests/data/ca/sy843z9jvp6c6rm3j650yinl4xjx56q9.narinfo");
    const NAR_SHA256: &str =
        include_str!("../../protocol/tests/data/ca/48rgcs6w8kb667k286c2h7xdwivcl60w.narinfo");
    const NAR_SHA1: &str =
        include_str!("../../protocol/tests/data/ca/qrl52g3ai9pl9y453qws2vn8jjj32hmw.narinfo");
    const FLOATING: &str =
        include_str!("../../protocol/tests/data/ca/l7gfqrr3msga3iq03w81vq3k56v0bfqh.narinfo");

    fn accept_unsigned(text: &str) -> Result<Accepted, Rejection> {
        let hash = NarInfo::parse(text).unwrap().store_path.hash();
        accept(text, hash, &trusting(&key("cache-1", 1)))
    }

    #[test]
    fn accepts_self_certifying_paths_unsigned_with_the_check_their_nar_needs() {
        let flat = accept_unsigned(FLAT_SHA256).unwrap();
        assert!(matches!(flat.check, Some(NarCheck::FileContents(_))), "{:?}", flat.check);
        let nar = accept_unsigned(NAR_SHA256).unwrap();
        assert_eq!(nar.check, None, "its NarHash is its content address");
        let sha1 = accept_unsigned(NAR_SHA1).unwrap();
        assert!(matches!(sha1.check, Some(NarCheck::Nar(_))), "{:?}", sha1.check);
    }

    #[test]
    fn refuses_unsigned_paths_that_do_not_certify_themselves() {
        // Another name: the CA field no longer gives the path.
        let renamed = FLAT_SHA256.replace("nixmesh-ca-flat-sha256", "nixmesh-ca-flat-sha257");
        assert!(matches!(accept_unsigned(&renamed), Err(Rejection::NotSelfCertifying(_))));
        // A NarHash other than the one the CA field states.
        let nar = NarInfo::parse(NAR_SHA256).unwrap();
        let nar_hash = format!("NarHash: sha256:{}", nar.nar_hash.to_nixbase32());
        let other = NAR_SHA256.replace(&nar_hash, &format!("NarHash: sha256:{}", "0".repeat(52)));
        assert_ne!(other, NAR_SHA256);
        assert!(matches!(accept_unsigned(&other), Err(Rejection::NarHashNotCa)));
        // A self-reference: Nix hashes such a NAR modulo its own hash part.
        assert!(matches!(accept_unsigned(FLOATING), Err(Rejection::Untrusted(_))));
        let garbled = FLAT_SHA256.replace("CA: fixed:sha256:", "CA: fixed:sha257:");
        assert!(matches!(accept_unsigned(&garbled), Err(Rejection::BadContentAddress(_))));
        // No CA field and no signature.
        let plain = FLAT_SHA256.lines().filter(|l| !l.starts_with("CA:")).collect::<Vec<_>>();
        let plain = plain.join("\n") + "\n";
        assert!(matches!(accept_unsigned(&plain), Err(Rejection::Untrusted(n)) if n == "nobody"));
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
