//! A node's fetch protocol as a peer meets it: a bare libp2p client (the node's own `Mesh`,
//! listening nowhere) asks a running node, on loopback with a real chroot store behind it, for
//! narinfos, NARs, listings and build logs, honest requests and hostile ones, and checks each
//! answer against what Nix says of the same store. The compression tests also meet the node's
//! asker (`FetchClient`) with bare holders that speak only fetch/2, or corrupt a zstd block.

mod support;

use std::time::Duration;
use support::nix_available;

use futures::StreamExt;
use libp2p::PeerId;
use nixmesh_node::config::{MeshCompression, ServeConfig};
use nixmesh_node::fetch::client::{FetchError, FetchFailure, NarBody};
use nixmesh_node::fetch::{FetchClient, zstd_blocks};
use nixmesh_node::mesh::framed::{FrameLimits, MeshStream};
use nixmesh_node::mesh::{DialTarget, Mesh};
use nixmesh_node::node::RunningNode;
use nixmesh_node::node::shutdown::Shutdown;
use nixmesh_protocol::mesh_messages::{
    FETCH_PROTOCOL, FETCH_PROTOCOL_V3, FetchRequest, FetchResponse, MAX_FRAME_LEN, NAR_BLOCK_MAX,
};
use nixmesh_protocol::signature::SigningKey;
use nixmesh_protocol::{NarInfo, Sha256, StorePath, StorePathHash};
use nixmesh_tests::{Host, HostStore, unique_marker, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use tokio_util::compat::FuturesAsyncReadCompatExt;

const DEADLINE: Duration = Duration::from_secs(30);

/// A running node on a store holding one file of a few NAR chunks, and a bare client
/// connected to it.
struct Setup {
    runtime: Runtime,
    store: HostStore,
    path: String,
    node: Option<RunningNode>,
    client: Mesh,
    server: PeerId,
    _stop_client: Shutdown,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup::with(|_, _| {})
    }

    /// [`Setup::new`], with `adjust` given the store and the node's settings before it starts.
    fn with(adjust: impl FnOnce(&HostStore, &mut ServeConfig)) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let store = HostStore::start(&Host::local(&dir.path().join("host")));
        let contents: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let mut contents = contents;
        contents.extend_from_slice(unique_marker().as_bytes());
        let path = store.add_file("blob", &contents);

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let unused_key = SigningKey::from_seed("unused-1", [1; 32]).verifying_key().to_string();
        let mut config = ServeConfig {
            store: store.daemon_url(),
            state_dir: dir.path().join("state"),
            http_listen: "127.0.0.1:0".parse().unwrap(),
            p2p_listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            trusted_public_keys: vec![unused_key],
            mdns: false,
            upstreams: Some(Vec::new()),
            ..ServeConfig::default()
        };
        adjust(&store, &mut config);
        let node = runtime.block_on(RunningNode::start(config)).unwrap();
        let server = node.peer_id();
        let address = runtime.block_on(node.p2p_addresses())[0].clone();

        let stop_client = Shutdown::new();
        let client = runtime.block_on(async {
            let mesh = support::client_mesh(&stop_client);
            mesh.want(DialTarget::from_multiaddr(address)).await;
            mesh
        });
        wait_until(DEADLINE, "the client to connect to the node", || {
            client.peers().is_connected(&server)
        });
        Setup {
            runtime,
            store,
            path,
            node: Some(node),
            client,
            server,
            _stop_client: stop_client,
            _dir: dir,
        }
    }

    fn hash(&self) -> StorePathHash {
        StorePath::parse(&self.path).unwrap().hash()
    }

    /// Sends `request` as the only one on a new fetch stream; returns the answer and the
    /// bytes that follow it up to the stream's end.
    fn ask(&self, request: &FetchRequest) -> (FetchResponse, Vec<u8>) {
        self.runtime.block_on(async {
            let limits = FrameLimits {
                idle: DEADLINE,
                read: DEADLINE,
                write: DEADLINE,
                max_frame: MAX_FRAME_LEN,
            };
            let stream = support::open_fetch(&self.client, self.server).await;
            support::ask_once(stream, limits, request).await
        })
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            let _ = self.runtime.block_on(node.stop());
        }
    }
}

/// The narinfo answer for `path`, and the NAR answer for its NarHash (from the store).
fn narinfo_and_nar(setup: &Setup, path: &str) -> (FetchResponse, FetchResponse) {
    let hash = StorePath::parse(path).unwrap().hash();
    let nar_hash = Sha256::digest(&setup.store.dump(path));
    let (narinfo, _) = setup.ask(&FetchRequest::NarInfo { hash });
    let (nar, _) = setup.ask(&FetchRequest::Nar { hash, nar_hash, offset: 0 });
    (narinfo, nar)
}

#[test]
fn the_default_policy_serves_signed_and_content_addressed_paths_only() {
    if !nix_available() {
        return;
    }
    let key_dir = tempfile::tempdir().unwrap();
    let key = nixmesh_tests::CacheKey::generate(key_dir.path(), "trusted-1");
    let paths = std::cell::RefCell::new(Vec::new());
    let setup = Setup::with(|store, config| {
        let built = |name: &str| {
            let expr = nixmesh_tests::test_closure_expr(&format!("{name}-{}", unique_marker()));
            store.build_closure(&expr).top
        };
        let (unsigned, signed) = (built("unsigned"), built("signed"));
        store.sign_closure(&key.secret_file, &signed);
        let excluded = store.add_file("nixmesh-excluded-secret", unique_marker().as_bytes());
        paths.borrow_mut().extend([unsigned, signed, excluded]);
        config.trusted_public_keys = vec![key.public.clone()];
        config.serve_exclude = vec!["*-excluded-*".to_owned()];
    });
    let [unsigned, signed, excluded] = paths.into_inner().try_into().unwrap();
    let not_served = |path: &str| {
        let (narinfo, nar) = narinfo_and_nar(&setup, path);
        (narinfo, nar) == (FetchResponse::NotFound, FetchResponse::NotFound)
    };
    let served = |path: &str| {
        let (narinfo, nar) = narinfo_and_nar(&setup, path);
        matches!(narinfo, FetchResponse::NarInfo { .. }) && matches!(nar, FetchResponse::Nar { .. })
    };
    assert!(not_served(&unsigned), "a local build, unsigned, with no key: not served");
    assert!(served(&signed), "signed by a trusted key: served");
    assert!(served(&setup.path), "content-addressed (nix-store --add): served");
    assert!(not_served(&excluded), "an excluded name, though content-addressed: not served");
    // The status page says why.
    let status = setup.node.as_ref().unwrap().http_address();
    let status = nixmesh_tests::http::get_all(status, &["/_nixmesh/status".to_owned()], 1);
    let status: serde_json::Value = serde_json::from_slice(&status[0].body).unwrap();
    let lines = status["not_served"].to_string();
    assert!(lines.contains(&unsigned) && lines.contains("no signature from a key"), "{lines}");
    assert!(lines.contains(&excluded) && lines.contains("--serve-exclude *-excluded-*"), "{lines}");
}

#[test]
fn honest_requests_get_what_the_store_holds() {
    if !nix_available() {
        return;
    }
    let setup = Setup::new();
    let dump = setup.store.dump(&setup.path);
    let nar_hash = Sha256::digest(&dump);
    let nar_size = dump.len() as u64;

    let (response, rest) = setup.ask(&FetchRequest::NarInfo { hash: setup.hash() });
    let FetchResponse::NarInfo { text } = response else { panic!("{response:?}") };
    assert!(rest.is_empty());
    let narinfo = NarInfo::parse(&text).unwrap();
    assert_eq!(narinfo.store_path.to_string(), setup.path);
    assert_eq!((narinfo.nar_hash, narinfo.nar_size), (nar_hash, nar_size));

    for offset in [0, 1, 65_536, 100_003, nar_size - 1, nar_size] {
        let request = FetchRequest::Nar { hash: setup.hash(), nar_hash, offset };
        let (response, bytes) = setup.ask(&request);
        assert_eq!(response, FetchResponse::Nar { nar_size, offset }, "offset {offset}");
        assert!(bytes == dump[offset as usize..], "the bytes from offset {offset} differ");
    }
}

#[test]
fn requests_the_node_cannot_serve_get_a_clear_no() {
    if !nix_available() {
        return;
    }
    let setup = Setup::new();
    let dump = setup.store.dump(&setup.path);
    let (nar_hash, nar_size) = (Sha256::digest(&dump), dump.len() as u64);
    let unknown = StorePathHash([7; 20]);

    let (response, _) = setup.ask(&FetchRequest::NarInfo { hash: unknown });
    assert_eq!(response, FetchResponse::NotFound);
    let (response, _) = setup.ask(&FetchRequest::Nar { hash: unknown, nar_hash, offset: 0 });
    assert_eq!(response, FetchResponse::NotFound);
    // Another build of the path (another NAR hash): not this node's to give.
    let other_build = Sha256([9; 32]);
    let request = FetchRequest::Nar { hash: setup.hash(), nar_hash: other_build, offset: 0 };
    let (response, bytes) = setup.ask(&request);
    assert_eq!(response, FetchResponse::NotFound);
    assert!(bytes.is_empty());
    let past_end = FetchRequest::Nar { hash: setup.hash(), nar_hash, offset: nar_size + 1 };
    let (response, _) = setup.ask(&past_end);
    assert!(matches!(response, FetchResponse::Failed { ref message } if message.contains("past")));
    // A node without upstreams cannot say what its upstreams lack: not a "not here" the asker
    // would remember as the mesh's, but a failure, after which the asker asks its own.
    let (response, _) = setup.ask(&FetchRequest::UpstreamNarInfo { hash: unknown });
    let no_upstreams = |r: &FetchResponse| matches!(r, FetchResponse::Failed { message } if message.contains("no upstream"));
    assert!(no_upstreams(&response), "{response:?}");
    let request = FetchRequest::UpstreamNar { hash: unknown, nar_hash, offset: 0 };
    assert_eq!(setup.ask(&request).0, FetchResponse::NotFound, "the next claimer is asked");
}

#[test]
fn hostile_request_frames_are_cut_off_and_the_node_goes_on() {
    if !nix_available() {
        return;
    }
    let setup = Setup::new();
    let garbage: [&[u8]; 3] = [
        // A length far past any request's: refused before anything is allocated for it.
        &(64u32 << 20).to_be_bytes(),
        // A request-sized frame that is no request.
        &[0, 0, 0, 3, 0xff, 0xff, 0xff],
        // A frame that never ends.
        &[0, 0, 0, 100, 1, 2],
    ];
    for bytes in garbage {
        let answered = setup.runtime.block_on(async {
            let mut stream = support::open_fetch(&setup.client, setup.server).await.compat();
            stream.write_all(bytes).await.unwrap();
            stream.flush().await.unwrap();
            // The node closes the stream without an answer (for the frame that never ends,
            // once its request time-out has passed).
            let mut answer = Vec::new();
            let read = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer)).await;
            assert!(read.is_ok(), "the node kept a hostile stream open for {DEADLINE:?}");
            answer
        });
        assert!(answered.is_empty(), "{bytes:?} got an answer: {answered:?}");
    }
    let (response, _) = setup.ask(&FetchRequest::NarInfo { hash: setup.hash() });
    assert!(matches!(response, FetchResponse::NarInfo { .. }), "{response:?}");
}

/// The listing Nix would write of the NAR `nar`.
fn listing_of(nar: &[u8]) -> Vec<u8> {
    use nixmesh_protocol::nar::NarParser;
    use nixmesh_protocol::nar::listing::ListingCollector;
    let (mut parser, mut collector) = (NarParser::new(), ListingCollector::new());
    parser.push(nar, |e| collector.event(&e).unwrap()).unwrap();
    parser.finish().unwrap();
    collector.finish().unwrap().render()
}

#[test]
fn listings_are_served_for_the_nar_hash_held_and_logs_only_with_serve_logs() {
    if !nix_available() {
        return;
    }
    // No real_store_dir: the listing comes from the daemon's NAR.
    let setup = Setup::new();
    let dump = setup.store.dump(&setup.path);
    let nar_hash = Sha256::digest(&dump);
    let (response, bytes) = setup.ask(&FetchRequest::Listing { hash: setup.hash(), nar_hash });
    assert_eq!(response, FetchResponse::Listing { len: bytes.len() as u64 });
    assert_eq!(bytes, listing_of(&dump));
    let other_build = FetchRequest::Listing { hash: setup.hash(), nar_hash: Sha256([9; 32]) };
    assert_eq!(setup.ask(&other_build), (FetchResponse::NotFound, Vec::new()));
    let unknown = FetchRequest::Listing { hash: StorePathHash([7; 20]), nar_hash };
    assert_eq!(setup.ask(&unknown).0, FetchResponse::NotFound);
    let drv = "0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-nixmesh-logged.drv".to_owned();
    let log = FetchRequest::BuildLog { drv: drv.clone() };
    assert_eq!(setup.ask(&log).0, FetchResponse::NotFound, "a log without serve_logs");
    drop(setup);

    // The store's files on disk, and its logs served: one log, uncompressed, where Nix
    // keeps them.
    let setup = Setup::with(|store, config| {
        config.real_store_dir = Some(store.real_store_dir());
        config.serve_logs = true;
        let logs = store.host().store_root().join("nix/var/log/nix/drvs/0c");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join(&drv[2..]), b"building\nfailed\n").unwrap();
    });
    // Another store: another file.
    let dump = setup.store.dump(&setup.path);
    let nar_hash = Sha256::digest(&dump);
    let (response, bytes) = setup.ask(&FetchRequest::Listing { hash: setup.hash(), nar_hash });
    assert_eq!(response, FetchResponse::Listing { len: bytes.len() as u64 });
    assert_eq!(bytes, listing_of(&dump), "the listing from disk is the NAR's");
    let (response, bytes) = setup.ask(&log);
    assert_eq!(
        (response, bytes),
        (FetchResponse::BuildLog { len: 16 }, b"building\nfailed\n".to_vec())
    );
    let missing = FetchRequest::BuildLog { drv: drv.replace("logged", "other") };
    assert_eq!(setup.ask(&missing).0, FetchResponse::NotFound);
    let no_drv = FetchRequest::BuildLog { drv: "../../../etc/passwd".to_owned() };
    assert!(matches!(setup.ask(&no_drv).0, FetchResponse::Failed { .. }));
}

/// Bytes zstd shrinks several times over, as a NAR of machine code would be: 1 MiB and a bit.
fn compressible_nar() -> Vec<u8> {
    (0..(1u32 << 20) + 777).map(|i| ((i / 5) % 31 + (i % 7)) as u8).collect()
}

/// A bare peer listening on loopback that answers fetch streams of `protocols` with
/// `answer`, which writes the whole answer to each request; the client `asker` connects to it.
/// Returns the peer's id.
fn fake_holder<F>(
    runtime: &Runtime,
    stop: &Shutdown,
    asker: &Mesh,
    protocols: &[&'static str],
    answer: F,
) -> PeerId
where
    F: Fn(FetchRequest, &mut MeshStream) -> futures::future::BoxFuture<'_, ()>
        + Send
        + Sync
        + 'static,
{
    let answer = std::sync::Arc::new(answer);
    runtime.block_on(async {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let listen = ["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        let holder = support::mesh_without_events(keypair, &listen, Default::default(), stop);
        let versions: Vec<_> = protocols.iter().map(|p| Mesh::protocol(p)).collect();
        let mut incoming = holder.control().accept_versions(&versions).unwrap();
        tokio::spawn(async move {
            while let Some((_, stream, _)) = incoming.next().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut stream = MeshStream::mesh(stream, LIMITS);
                    while let Ok(request) = stream.read::<FetchRequest>().await {
                        answer(request, &mut stream).await;
                    }
                });
            }
        });
        let address = support::dial_address(&holder).await;
        asker.want(DialTarget::from_multiaddr(address)).await;
        let id = holder.local_peer_id();
        std::mem::forget(holder);
        id
    })
}

const LIMITS: FrameLimits =
    FrameLimits { idle: DEADLINE, read: DEADLINE, write: DEADLINE, max_frame: MAX_FRAME_LEN };

/// `nar` in blocks as a fetch/3 holder sends them, the byte at `flip` (if any) of the
/// second block flipped.
fn blocks_of(nar: &[u8], flip: Option<usize>) -> Vec<u8> {
    let mut wire = Vec::new();
    for (n, block) in nar.chunks(NAR_BLOCK_MAX).enumerate() {
        let mut block = zstd_blocks::encode_block(block, Some(3));
        assert!(zstd_blocks::is_zstd(&block), "the bytes compress");
        if let Some(at) = flip.filter(|_| n == 1) {
            block[5 + at] ^= 0x20;
        }
        wire.extend(block);
    }
    wire.extend(zstd_blocks::END);
    wire
}

/// Reads `body` to its end or first error: the bytes before it, and the error.
fn read_body(runtime: &Runtime, mut body: NarBody) -> (Vec<u8>, Option<FetchError>) {
    runtime.block_on(async {
        let mut bytes = Vec::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => bytes.extend_from_slice(&chunk),
                Err(e) => return (bytes, Some(e)),
            }
        }
        (bytes, None)
    })
}

fn client_and_runtime() -> (Runtime, Shutdown, Mesh) {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stop = Shutdown::new();
    let client = runtime.block_on(async { support::client_mesh(&stop) });
    (runtime, stop, client)
}

#[test]
fn compression_falls_back_with_a_fetch2_holder() {
    let (runtime, stop, client) = client_and_runtime();
    let nar = std::sync::Arc::new(compressible_nar());
    let served = nar.clone();
    let holder =
        fake_holder(&runtime, &stop, &client, &[FETCH_PROTOCOL], move |request, stream| {
            let nar = served.clone();
            Box::pin(async move {
                // What a fetch/2 node reads: anything else would not decode there.
                let FetchRequest::Nar { offset, .. } = request else { panic!("{request:?}") };
                let nar_size = nar.len() as u64;
                stream.write(&FetchResponse::Nar { nar_size, offset }).await.unwrap();
                stream.write_bytes(&nar[offset as usize..]).await.unwrap();
                stream.flush().await.unwrap();
            })
        });
    wait_until(DEADLINE, "the client to connect", || client.peers().is_connected(&holder));
    let fetch = FetchClient::compressing(client.clone(), MeshCompression::Always);
    let (hash, nar_hash) = (StorePathHash([1; 20]), Sha256([2; 32]));
    for offset in [0, 300_001] {
        let body = runtime.block_on(fetch.nar(holder, hash, nar_hash, offset)).unwrap().unwrap();
        let (bytes, error) = read_body(&runtime, body);
        assert!(error.is_none(), "{error:?}");
        assert!(bytes == nar[offset as usize..], "the NAR from {offset}");
    }
    let (raw, zstd, _) = fetch.links().wire_bytes();
    assert_eq!(zstd, 0);
    assert!(raw >= nar.len() as u64, "{raw}");
    drop(stop);
}

#[test]
fn a_corrupted_zstd_block_is_an_error_before_any_of_its_bytes() {
    let (runtime, stop, client) = client_and_runtime();
    let nar = std::sync::Arc::new(compressible_nar());
    let served = nar.clone();
    let versions = [FETCH_PROTOCOL_V3, FETCH_PROTOCOL];
    let holder = fake_holder(&runtime, &stop, &client, &versions, move |request, stream| {
        let nar = served.clone();
        Box::pin(async move {
            let FetchRequest::NarCoded { offset: 0, zstd: true, .. } = request else {
                panic!("{request:?}")
            };
            let nar_size = nar.len() as u64;
            stream.write(&FetchResponse::NarBlocks { nar_size, offset: 0 }).await.unwrap();
            // A byte inside the second block's compressed data.
            stream.write_bytes(&blocks_of(&nar, Some(40))).await.unwrap();
            stream.flush().await.unwrap();
        })
    });
    wait_until(DEADLINE, "the client to connect", || client.peers().is_connected(&holder));
    let fetch = FetchClient::compressing(client.clone(), MeshCompression::Always);
    let (hash, nar_hash) = (StorePathHash([1; 20]), Sha256([2; 32]));
    let body = runtime.block_on(fetch.nar(holder, hash, nar_hash, 0)).unwrap().unwrap();
    let (bytes, error) = read_body(&runtime, body);
    let error = error.expect("the corrupted block is an error");
    assert!(matches!(error.failure, FetchFailure::Protocol(_)), "{error}");
    assert!(error.to_string().contains("zstd block"), "{error}");
    assert_eq!(bytes.len(), NAR_BLOCK_MAX, "the first block's bytes, none of the second's");
    assert!(bytes == nar[..NAR_BLOCK_MAX], "only right bytes came before the error");
    drop(stop);
}

#[test]
fn a_fetch3_holder_sends_zstd_blocks_when_asked_and_a_fetch2_stream_stays_raw() {
    if !nix_available() {
        return;
    }
    let setup = Setup::new();
    let dump = setup.store.dump(&setup.path);
    let (nar_hash, nar_size) = (Sha256::digest(&dump), dump.len() as u64);
    let hash = setup.hash();
    // A bare fetch/3 stream.
    for offset in [0, 100_003] {
        let (response, wire) = setup.runtime.block_on(async {
            let offered = vec![Mesh::protocol(FETCH_PROTOCOL_V3), Mesh::protocol(FETCH_PROTOCOL)];
            let control = setup.client.control();
            let (stream, agreed) = control.open_stream_of(setup.server, offered).await.unwrap();
            assert_eq!(agreed.as_ref(), FETCH_PROTOCOL_V3);
            let request = FetchRequest::NarCoded { hash, nar_hash, offset, zstd: true };
            support::ask_once(stream, LIMITS, &request).await
        });
        assert_eq!(response, FetchResponse::NarBlocks { nar_size, offset });
        let decoded = decode_blocks(&wire, nar_size - offset);
        assert!(decoded == dump[offset as usize..], "the blocks from {offset} decode to the NAR");
        // The file's counting bytes compress by a third.
        assert!(wire.len() < dump.len() * 4 / 5, "{} wire bytes for {nar_size}", wire.len());
    }
    // fetch/2 does not have it.
    let coded = FetchRequest::NarCoded { hash, nar_hash, offset: 0, zstd: true };
    assert!(matches!(setup.ask(&coded).0, FetchResponse::Failed { .. }));
    // The node's own asker.
    let fetch = FetchClient::compressing(setup.client.clone(), MeshCompression::Always);
    let body = setup.runtime.block_on(fetch.nar(setup.server, hash, nar_hash, 0));
    let (bytes, error) = read_body(&setup.runtime, body.unwrap().unwrap());
    assert!(error.is_none() && bytes == dump, "{error:?}");
    let (_, zstd_wire, zstd_nar) = fetch.links().wire_bytes();
    assert_eq!(zstd_nar, nar_size);
    assert!(zstd_wire < nar_size * 4 / 5, "{zstd_wire} wire bytes for {nar_size}");
}

#[test]
fn compression_falls_back_with_a_holder_that_declines() {
    if !nix_available() {
        return;
    }
    let setup = Setup::with(|_, config| config.mesh_compression = MeshCompression::Off);
    let dump = setup.store.dump(&setup.path);
    let (hash, nar_hash) = (setup.hash(), Sha256::digest(&dump));
    let coded = FetchRequest::NarCoded { hash, nar_hash, offset: 0, zstd: true };
    let (response, bytes) = setup.runtime.block_on(async {
        let offered = vec![Mesh::protocol(FETCH_PROTOCOL_V3)];
        let (stream, _) =
            setup.client.control().open_stream_of(setup.server, offered).await.unwrap();
        support::ask_once(stream, LIMITS, &coded).await
    });
    assert_eq!(response, FetchResponse::Nar { nar_size: dump.len() as u64, offset: 0 });
    assert!(bytes == dump);
    let fetch = FetchClient::compressing(setup.client.clone(), MeshCompression::Always);
    let body = setup.runtime.block_on(fetch.nar(setup.server, hash, nar_hash, 0));
    let (bytes, error) = read_body(&setup.runtime, body.unwrap().unwrap());
    assert!(error.is_none() && bytes == dump, "{error:?}");
    assert_eq!(fetch.links().wire_bytes().1, 0, "no zstd from a holder with it off");
}

/// The NAR bytes of `wire` (blocks and their end), for an answer of `len` bytes.
fn decode_blocks(wire: &[u8], len: u64) -> Vec<u8> {
    let mut decoder = zstd_blocks::BlockDecoder::new(len);
    let (mut nar, mut rest) = (Vec::new(), wire);
    loop {
        let header = rest[..4].try_into().unwrap();
        rest = &rest[4..];
        let Some(block_len) = decoder.header(header).unwrap() else { break };
        let block = bytes::Bytes::copy_from_slice(&rest[..block_len]);
        nar.extend_from_slice(&decoder.decode(block).unwrap());
        rest = &rest[block_len..];
    }
    assert!(rest.is_empty());
    nar
}

/// A holder of `a_corrupted_compressed_stream_fails_over`, in the test: advertises the paths
/// of `narinfos` and answers their narinfos with the texts there; answers a NAR request with
/// `nars`' bytes, raw from the offset asked (`hostile` false), or (`hostile`) as zstd blocks
/// with a byte of the second flipped. Records each NAR request's path and offset.
struct FakeHolder {
    narinfos: std::collections::HashMap<StorePathHash, String>,
    nars: std::collections::HashMap<StorePathHash, Vec<u8>>,
    hostile: bool,
    asked: std::sync::Mutex<Vec<(StorePathHash, u64)>>,
}

impl FakeHolder {
    /// Serves `mesh`'s adverts and fetch streams.
    fn serve(self: std::sync::Arc<Self>, mesh: &Mesh) {
        use nixmesh_protocol::mesh_messages::{ADVERTS_PROTOCOL, AdvertMessage, AdvertPosition};
        let mut adverts = mesh.control().accept(Mesh::protocol(ADVERTS_PROTOCOL)).unwrap();
        let hashes: Vec<StorePathHash> = self.narinfos.keys().copied().collect();
        tokio::spawn(async move {
            while let Some((_, stream)) = adverts.next().await {
                let hashes = hashes.clone();
                tokio::spawn(async move {
                    let mut stream = MeshStream::mesh(stream, LIMITS);
                    let _: nixmesh_protocol::mesh_messages::AdvertRequest = stream.read().await?;
                    let position = AdvertPosition { epoch: 7, generation: 1 };
                    let snapshot = AdvertMessage::Snapshot { position, hashes, last: true };
                    stream.write(&snapshot).await?;
                    Ok::<_, nixmesh_node::mesh::framed::FrameError>(stream.ended().await)
                });
            }
        });
        let versions = [Mesh::protocol(FETCH_PROTOCOL_V3), Mesh::protocol(FETCH_PROTOCOL)];
        let mut fetches = mesh.control().accept_versions(&versions).unwrap();
        tokio::spawn(async move {
            while let Some((_, stream, _)) = fetches.next().await {
                let this = self.clone();
                tokio::spawn(async move {
                    let mut stream = MeshStream::mesh(stream, LIMITS);
                    while let Ok(request) = stream.read::<FetchRequest>().await {
                        if this.answer(request, &mut stream).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
    }

    async fn answer(
        &self,
        request: FetchRequest,
        stream: &mut MeshStream,
    ) -> Result<(), nixmesh_node::mesh::framed::FrameError> {
        let (hash, offset) = match request {
            FetchRequest::NarInfo { hash } => {
                let answer = match self.narinfos.get(&hash) {
                    Some(text) => FetchResponse::NarInfo { text: text.clone() },
                    None => FetchResponse::NotFound,
                };
                return stream.write(&answer).await;
            }
            FetchRequest::Nar { hash, offset, .. }
            | FetchRequest::NarCoded { hash, offset, .. } => (hash, offset),
            other => panic!("a fake holder was asked {other:?}"),
        };
        self.asked.lock().unwrap().push((hash, offset));
        let nar = &self.nars[&hash];
        let nar_size = nar.len() as u64;
        if self.hostile {
            assert_eq!(offset, 0);
            stream.write(&FetchResponse::NarBlocks { nar_size, offset }).await?;
            stream.write_bytes(&blocks_of(nar, Some(40))).await?;
        } else {
            stream.write(&FetchResponse::Nar { nar_size, offset }).await?;
            stream.write_bytes(&nar[offset as usize..]).await?;
        }
        stream.flush().await
    }

    /// Starts `self` on a listening mesh; its address to dial.
    fn start(self: &std::sync::Arc<Self>, runtime: &Runtime, stop: &Shutdown) -> libp2p::Multiaddr {
        let keypair = libp2p::identity::Keypair::generate_ed25519();
        let listen = ["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        runtime.block_on(async {
            let mesh = support::mesh_without_events(keypair, &listen, Default::default(), stop);
            self.clone().serve(&mesh);
            let address = support::dial_address(&mesh).await;
            std::mem::forget(mesh);
            address
        })
    }
}

/// The narinfo texts a node on `store` gives of `paths` (signed, as the store holds them).
fn narinfo_texts(
    runtime: &Runtime,
    config: ServeConfig,
    paths: &[&str],
) -> std::collections::HashMap<StorePathHash, String> {
    let stop = Shutdown::new();
    let node = runtime.block_on(RunningNode::start(config)).unwrap();
    let texts = runtime.block_on(async {
        let client = support::client_mesh(&stop);
        client.want(DialTarget::from_multiaddr(node.p2p_addresses().await[0].clone())).await;
        let id = node.peer_id();
        support::until("a client to reach the node", DEADLINE, || client.peers().is_connected(&id))
            .await;
        let mut texts = std::collections::HashMap::new();
        for path in paths {
            let hash = StorePath::parse(path).unwrap().hash();
            let stream = support::open_fetch(&client, id).await;
            match support::ask_once(stream, LIMITS, &FetchRequest::NarInfo { hash }).await {
                (FetchResponse::NarInfo { text }, _) => texts.insert(hash, text),
                other => panic!("{other:?}"),
            };
        }
        texts
    });
    runtime.block_on(node.stop()).unwrap();
    texts
}

#[test]
fn a_corrupted_compressed_stream_fails_over() {
    if !nix_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = nixmesh_tests::CacheKey::generate(dir.path(), "coded-1");
    let store = HostStore::start(&Host::local_in(dir.path(), "holders"));
    let file = |name: &str| {
        let mut contents = compressible_nar();
        contents.extend_from_slice(format!("{name} {}", unique_marker()).as_bytes());
        let path = store.add_file(name, &contents);
        store.sign_closure(&key.secret_file, &path);
        path
    };
    // The path the test is about, and one the good holder gets a fault on first.
    let (path, other) = (file("coded"), file("faulted"));
    let (dump, other_dump) = (store.dump(&path), store.dump(&other));
    let (hash, other_hash) =
        (StorePath::parse(&path).unwrap().hash(), StorePath::parse(&other).unwrap().hash());
    let (runtime, stop, _) = client_and_runtime();
    let config = support::loopback_config(&dir.path().join("node"), &store, &key.public, vec![]);
    let texts = narinfo_texts(&runtime, config, &[&path, &other]);

    // Two holders the test plays: the hostile one of `path`, and one of both that sends
    // `path` right and `other` wrong, so that it is demoted and asked after the hostile one.
    let hostile = std::sync::Arc::new(FakeHolder {
        narinfos: [(hash, texts[&hash].clone())].into(),
        nars: [(hash, dump.clone())].into(),
        hostile: true,
        asked: Default::default(),
    });
    let mut garbage = other_dump.clone();
    garbage[1000] ^= 1;
    let good = std::sync::Arc::new(FakeHolder {
        narinfos: texts.clone(),
        nars: [(hash, dump.clone()), (other_hash, garbage)].into(),
        hostile: false,
        asked: Default::default(),
    });
    let peers = vec![hostile.start(&runtime, &stop), good.start(&runtime, &stop)];
    let asker_store = HostStore::start(&Host::local_in(dir.path(), "asker"));
    let mut asker_config =
        support::loopback_config(&dir.path().join("asker"), &asker_store, &key.public, peers);
    // The fake holders' link is loopback: asked for zstd all the same.
    asker_config.mesh_compression = MeshCompression::Always;
    let asker = runtime.block_on(RunningNode::start(asker_config)).unwrap();
    let http = asker.http_address();
    wait_until(DEADLINE, "the asker to index both holders", || {
        support::status(http)["indexed_paths"] == 3
    });
    let nar_of = |hash: StorePathHash| {
        let (status, _, narinfo) = support::timed_get(http, &format!("/{hash}.narinfo"));
        assert_eq!(status, 200);
        let url = format!("/{}", nixmesh_tests::parse_narinfo(&narinfo).url);
        support::timed_get(http, &url)
    };
    let (_, _, body) = nar_of(other_hash);
    assert!(body != other_dump, "a wrong NAR is never served whole");
    let (status, _, body) = nar_of(hash);
    assert_eq!(status, 200);
    assert_eq!(body.len(), dump.len(), "the whole NAR");
    assert!(body == dump, "every byte the path's");
    assert_eq!(*hostile.asked.lock().unwrap(), [(hash, 0)], "the hostile holder first");
    let resumed = good.asked.lock().unwrap().iter().any(|&(h, at)| h == hash && at > 0);
    assert!(resumed, "the good holder from the offset reached: {:?}", good.asked.lock().unwrap());
    runtime.block_on(asker.stop()).unwrap();
    drop(stop);
}
