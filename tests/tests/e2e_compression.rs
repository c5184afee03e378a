//! zstd on the mesh's NAR streams (issue 21), on a LAN of network namespaces with the real
//! `nix copy` as the client: host 1's node holds a path of shared-library bytes, host 2's
//! node fetches it for its own Nix. Over a link shaped to 100 Mbit/s the first NAR comes raw
//! and measures the link, and the next crosses it as zstd blocks, well under its size; over
//! an unshaped link, once the asker has measured it, the next goes raw. Either way the copy is byte for byte the holder's
//! (Nix checks the NarHash; the test compares the NARs too).
//!
//! The first NAR from a peer is always raw: nothing has measured the link yet.

use std::time::{Duration, Instant};

use nixmesh_tests::library_bytes::shared_library_bytes;
use nixmesh_tests::signed_lan::DISCOVERY_LIMIT;
use nixmesh_tests::{
    CacheKey, HostStore, Lan, NODE_URL, Node, NodeOptions, require_lan, wait_until,
};

/// The shaped link's rate, as the target names it.
const SLOW_LINK_MBIT: u32 = 100;

/// Two hosts with a store and a node each, host 2's node peered with host 1's; host 1 holds
/// `files` (signed), and host 2's node offers them.
struct Setup {
    nodes: Vec<Node>,
    stores: Vec<HostStore>,
    key: CacheKey,
    paths: Vec<String>,
    lan: Lan,
}

impl Setup {
    /// `mib` MiB of library bytes per file, each file starting elsewhere in them.
    fn new(files: usize, mib: usize, shaped: bool) -> Setup {
        let lan = Lan::new(2);
        let stores: Vec<HostStore> = lan.hosts().iter().map(HostStore::start).collect();
        let key = CacheKey::generate(lan.dir(), "compression-1");
        let bytes = shared_library_bytes(((files + 1) * mib) << 20).expect("shared libraries");
        let paths: Vec<String> = (0..files)
            .map(|n| {
                let start = n * (mib << 20) + n * 4099;
                let path = stores[0].add_file("libraries", &bytes[start..start + (mib << 20)]);
                stores[0].sign_closure(&key.secret_file, &path);
                path
            })
            .collect();
        if shaped {
            lan.shape_egress(&lan.hosts()[0], SLOW_LINK_MBIT);
        }
        let mut options = NodeOptions {
            trusted_keys: vec![key.public.clone()],
            mdns: false,
            log_filter: "nixmesh=debug,info".to_owned(),
            ..Default::default()
        };
        let holder = Node::start(stores[0].host(), &stores[0], &options);
        let address = lan.hosts()[0].address();
        options.peers = vec![format!("/ip4/{address}/tcp/7374/p2p/{}", holder.peer_id())];
        let asker = Node::start(stores[1].host(), &stores[1], &options);
        let nodes = vec![holder, asker];
        wait_until(DISCOVERY_LIMIT, "host 2's node to offer host 1's paths", || {
            nodes[1].narinfo_statuses(&paths).iter().all(|&s| s == 200)
        });
        Setup { nodes, stores, key, paths, lan }
    }

    /// Host 2's Nix copies path `n` from its node; checks it arrived byte for byte.
    fn copy(&self, n: usize) -> Duration {
        let path = &self.paths[n];
        let started = Instant::now();
        let copy = self.stores[1].copy_from(NODE_URL, &[&self.key.public], path);
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&copy.stderr);
        assert!(copy.status.success(), "nix copy of {path} failed: {stderr}");
        let (got, want) = (self.stores[1].dump(path), self.stores[0].dump(path));
        assert!(got == want, "{path} differs: NAR of {} bytes, not {}", got.len(), want.len());
        took
    }

    fn nar_size(&self, n: usize) -> u64 {
        self.stores[0].dump(&self.paths[n]).len() as u64
    }

    /// Host 2's node's NAR bytes received: raw on the wire, zstd on the wire, and the NAR
    /// bytes of the zstd blocks.
    fn received(&self) -> (u64, u64, u64) {
        let (status, body) = self.nodes[1].http_get("/metrics");
        assert_eq!(status, 200);
        let text = String::from_utf8_lossy(&body);
        let counter = |name: &str| {
            let name = format!("nixmesh_nar_received_{name}_bytes_total ");
            let line = text.lines().find(|l| l.starts_with(&name));
            let value = line.and_then(|l| l[name.len()..].trim().parse::<f64>().ok());
            value.unwrap_or_else(|| panic!("no {name} in {text}")) as u64
        };
        (counter("raw_wire"), counter("zstd_wire"), counter("zstd_nar"))
    }
}

#[test]
fn compression_on_a_100mbit_link() {
    if !require_lan(&["tc"]) {
        return;
    }
    let setup = Setup::new(2, 12, true);
    // The first NAR comes raw, and measures the link.
    let took = setup.copy(0);
    let (raw, _, first_zstd) = setup.received();
    eprintln!("first copy, {took:?}: {raw} raw wire bytes; {first_zstd} NAR bytes as zstd");
    let took = setup.copy(1);
    let nar_size = setup.nar_size(1);
    let (_, zstd_wire, zstd_nar) = setup.received();
    let zstd_nar = zstd_nar - first_zstd;
    eprintln!(
        "{nar_size} NAR bytes over {SLOW_LINK_MBIT} Mbit/s in {took:?}: {zstd_wire} zstd wire \
         bytes for {zstd_nar} NAR bytes"
    );
    assert_eq!(zstd_nar, nar_size, "the second NAR came as zstd blocks");
    assert!(zstd_wire * 10 < nar_size * 6, "{zstd_wire} wire bytes for {nar_size}");
    let _ = &setup.lan;
}

#[test]
fn no_compression_on_an_unshaped_link() {
    if !require_lan(&[]) {
        return;
    }
    let setup = Setup::new(2, 16, false);
    let took = setup.copy(0);
    let (raw, zstd_wire, zstd_nar) = setup.received();
    eprintln!(
        "first copy, {took:?}: {raw} raw wire bytes; {zstd_wire} zstd wire bytes for {zstd_nar}"
    );
    // The link measured (fast, or its reader not waiting on it): the next NAR is not even
    // asked for as zstd.
    setup.copy(1);
    let (raw_after, _, zstd_nar_after) = setup.received();
    assert_eq!(zstd_nar_after, zstd_nar, "no zstd once the link is measured");
    assert!(raw_after - raw >= setup.nar_size(1), "the second NAR came raw");
}
