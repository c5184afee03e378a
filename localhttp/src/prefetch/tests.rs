//! The prefetch's bounds, driven directly: a 10,000-path closure walked and fetched in Nix's
//! order stays within the memory bound at every insert, and what is left expires.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream;
use nixmesh_protocol::{NarInfo, Sha256, StorePath, StorePathHash};

use super::*;
use crate::source::{NarStream, SourceError};

/// One holder of every path; each NAR is `NAR_SIZE` bytes made from its store hash.
struct Everything;

const NAR_SIZE: usize = 1024;

fn nar_of(hash: &StorePathHash) -> Bytes {
    (0..NAR_SIZE).map(|i| hash.0[i % 20].wrapping_add(i as u8)).collect::<Vec<u8>>().into()
}

impl PathSource for Everything {
    type Peer = String;

    fn holders(&self, _hash: &StorePathHash) -> Vec<String> {
        vec!["holder".to_owned()]
    }

    async fn fetch_narinfo(
        &self,
        _peer: &String,
        _hash: StorePathHash,
    ) -> Result<Option<String>, SourceError> {
        Ok(None)
    }

    async fn fetch_nar(
        &self,
        _peer: &String,
        hash: StorePathHash,
        _nar_hash: Sha256,
        _offset: u64,
    ) -> Result<Option<NarStream>, SourceError> {
        Ok(Some(Box::pin(stream::iter([Ok(nar_of(&hash))]))))
    }
}

/// A verified narinfo of path `n` referring to `references`.
fn verified(n: u32, references: Vec<StorePath>) -> Arc<Verified<String>> {
    let mut hash = [0u8; 20];
    hash[..4].copy_from_slice(&n.wrapping_mul(2_654_435_761).to_be_bytes());
    let store_path = StorePath::from_parts(StorePathHash(hash), &format!("p-{n}")).unwrap();
    let nar = nar_of(&store_path.hash());
    let narinfo = NarInfo {
        store_path,
        url: String::new(),
        compression: None,
        file_hash: None,
        file_size: None,
        nar_hash: Sha256::digest(&nar),
        nar_size: nar.len() as u64,
        references,
        deriver: None,
        system: None,
        signatures: vec![],
        ca: None,
        extra: vec![],
    };
    Arc::new(Verified { narinfo, peer: "holder".to_owned(), for_nix: Bytes::new(), check: None })
}

fn file_of(v: &Verified<String>) -> NarFile {
    NarFile { store_hash: v.narinfo.store_path.hash(), nar_hash: v.narinfo.nar_hash }
}

/// Lets the prefetch's transfers run (they need no timer).
async fn let_run() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

const MEMORY: u64 = 16 << 10;

fn prefetch_if(enabled: bool) -> Prefetch<Everything> {
    let limits = Limits::with_memory(MEMORY);
    let (idle, slots) = (Duration::from_secs(30), NarSlots::new(256, Duration::from_secs(20)));
    Prefetch::new(Arc::new(Everything), Arc::default(), limits, enabled, idle, slots)
}

fn prefetch() -> Prefetch<Everything> {
    prefetch_if(true)
}

#[tokio::test(start_paused = true)]
async fn prefetch_stays_in_its_memory_bound_for_10000_paths() {
    let prefetch = prefetch();
    let client = Some(IpAddr::from([127, 0, 0, 1]));
    let leaves: Vec<_> = (1..10_000).map(|n| verified(n, Vec::new())).collect();
    let top = verified(0, leaves.iter().map(|v| v.narinfo.store_path.clone()).collect());
    for v in leaves.iter().chain([&top]) {
        prefetch.narinfo_asked(client, v);
    }
    let mut order: Vec<&Arc<Verified<String>>> = leaves.iter().collect();
    order.sort_by_key(|v| v.narinfo.store_path.base_name());
    order.push(&top);
    let mut hits = 0;
    for v in order {
        if let Some(bytes) = prefetch.take(&file_of(v)).await {
            assert_eq!(bytes, nar_of(&v.narinfo.store_path.hash()));
            hits += 1;
        }
        prefetch.nar_asked(client, v);
        assert!(prefetch.bytes() <= MEMORY, "{} bytes held", prefetch.bytes());
        let_run().await;
        assert!(prefetch.bytes() <= MEMORY, "{} bytes held", prefetch.bytes());
    }
    // `peak_bytes` is taken at every insert.
    assert!(prefetch.peak_bytes() <= MEMORY, "peak {}", prefetch.peak_bytes());
    assert!(prefetch.peak_bytes() > MEMORY / 2, "the bound was reached: {}", prefetch.peak_bytes());
    assert!(hits >= 9_900, "{hits} of 10,000 NARs from the prefetch");
    assert_eq!(prefetch.metrics().count("used"), hits);
}

#[tokio::test(start_paused = true)]
async fn unasked_prefetched_nars_expire() {
    let prefetch = prefetch();
    let client = Some(IpAddr::from([192, 0, 2, 7]));
    let leaves: Vec<_> = (1..20).map(|n| verified(n, Vec::new())).collect();
    for v in &leaves {
        prefetch.narinfo_asked(client, v);
    }
    let mut order: Vec<_> = leaves.iter().collect();
    order.sort_by_key(|v| v.narinfo.store_path.base_name());
    prefetch.nar_asked(client, order[0]);
    let_run().await;
    assert_eq!(prefetch.entries(), 4, "one holder's share ahead");
    assert!(prefetch.bytes() > 0);
    tokio::time::sleep(Duration::from_secs(32)).await;
    assert_eq!((prefetch.entries(), prefetch.bytes()), (0, 0), "expired and given back");
    assert_eq!(prefetch.metrics().count("expired"), 4);
}

#[tokio::test]
async fn nothing_is_fetched_for_a_nar_outside_any_walk_or_with_prefetch_off() {
    let client = Some(IpAddr::from([127, 0, 0, 1]));
    let (a, b) = (verified(1, Vec::new()), verified(2, Vec::new()));
    let walked = prefetch();
    walked.narinfo_asked(client, &b);
    walked.nar_asked(client, &a);
    let_run().await;
    assert_eq!(walked.entries(), 0, "a is not in the walk: no place to start from");
    let off = prefetch_if(false);
    off.narinfo_asked(client, &a);
    off.narinfo_asked(client, &b);
    off.nar_asked(client, &a);
    let_run().await;
    assert_eq!((off.entries(), off.bytes()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn the_substitution_goals_order_is_followed_too() {
    let prefetch = prefetch();
    let client = Some(IpAddr::from([127, 0, 0, 1]));
    let leaves: Vec<_> = (1..300).map(|n| verified(n, Vec::new())).collect();
    let top = verified(0, leaves.iter().map(|v| v.narinfo.store_path.clone()).collect());
    for v in leaves.iter().chain([&top]) {
        prefetch.narinfo_asked(client, v);
    }
    // `nix-store -r`: the leaves by name ("p-1", "p-10", "p-100", ...), then the top.
    let mut order: Vec<&Arc<Verified<String>>> = leaves.iter().collect();
    order.sort_by_key(|v| v.narinfo.store_path.name().to_owned());
    order.push(&top);
    let mut hits = 0;
    for v in order {
        hits += usize::from(prefetch.take(&file_of(v)).await.is_some());
        prefetch.nar_asked(client, v);
        let_run().await;
    }
    assert!(hits >= 290, "{hits} of 300 NARs from the prefetch");
}
