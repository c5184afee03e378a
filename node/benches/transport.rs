//! What the mesh's transport carries on this machine with none of the rest of nixmesh in the
//! way: one stream between two swarms in this process over loopback, through the mesh's
//! stream behaviour as the fetch protocol uses it ([`nixmesh_node::mesh::streams`]), beside a
//! plain TCP connection (`tcp`). The stacks: libp2p's own TCP + noise + yamux (`libp2p`) and
//! TCP + libp2p-tls 0.6's stock config + yamux (`libp2p-tls`: ChaCha20 first), and the mesh's
//! transport ([`nixmesh_node::mesh::open_transport`], large socket reads) under noise
//! (`noise`), TLS offering ChaCha20 first (`tls-chacha`, libp2p-tls' order) and TLS offering
//! AES-GCM first (`tls-aes`, what a node on an AES CPU offers). The large-NAR case of the bench
//! suite runs it; its `mesh` figures are those of the stack two nodes use here by default.
//!
//! `cargo bench -p nixmesh-node --bench transport -- [--mib 1024] [--hash] [--json] [--only STACK]`
//!
//! `--hash` runs SHA-256 over every byte received, as the substituter does. Each side runs on
//! its own single-threaded runtime on its own OS thread, so its CPU time is that thread's
//! (`CLOCK_THREAD_CPUTIME_ID`), from the stream's opening to the last byte: CPU seconds per GiB
//! on each side, which the machine's load does not distort as it does MiB/s.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::{Transport, upgrade::Version};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identity, noise, swarm::SwarmEvent, tcp, yamux};
use nixmesh_node::mesh::security::{Security, SecurityProtocol};
use nixmesh_node::mesh::streams;
use nixmesh_node::mesh::tls::CipherOrder;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

const PROTOCOL: StreamProtocol = StreamProtocol::new("/nixmesh-bench/transport/1");
/// The chunk each side writes and reads at a time: the fetch protocol's NAR chunk.
const CHUNK: usize = 64 * 1024;
/// No run may take longer than this.
const LIMIT: Duration = Duration::from_secs(120);

struct Options {
    mib: usize,
    hash: bool,
    json: bool,
    only: Option<String>,
}

fn options() -> Options {
    let mut options = Options { mib: 1024, hash: false, json: false, only: None };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mib" => {
                let value = args.next().expect("--mib needs a value");
                options.mib = value.parse().unwrap_or_else(|e| panic!("--mib: {e}"));
            }
            "--hash" => options.hash = true,
            "--json" => options.json = true,
            "--only" => options.only = Some(args.next().expect("--only needs a stack")),
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    options
}

/// CPU time the calling thread has used.
fn thread_cpu_time() -> Duration {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes a whole timespec into the pointer it is given.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(ok, 0, "CLOCK_THREAD_CPUTIME_ID");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Reads up to `total` bytes in chunks, hashing them if asked; returns how many arrived.
async fn receive(mut from: impl AsyncRead + Unpin, total: usize, hash: bool) -> usize {
    let mut hasher = hash.then(Sha256::new);
    let (mut buf, mut got) = (vec![0; CHUNK], 0);
    while got < total {
        let n = from.read(&mut buf).await.expect("read");
        if n == 0 {
            break;
        }
        if let Some(h) = &mut hasher {
            h.update(&buf[..n]);
        }
        got += n;
    }
    got
}

/// Writes `total` bytes in chunks.
async fn send(mut to: impl AsyncWrite + Unpin, total: usize) {
    let chunk = vec![7u8; CHUNK];
    let mut sent = 0;
    while sent < total {
        let n = CHUNK.min(total - sent);
        to.write_all(&chunk[..n]).await.expect("write");
        sent += n;
    }
    to.flush().await.expect("flush");
}

#[derive(Clone, Copy, PartialEq)]
enum Stack {
    Tcp,
    Libp2p,
    Libp2pTls,
    Mesh(SecurityProtocol, CipherOrder),
}

const STACKS: [(&str, Stack); 6] = [
    ("tcp", Stack::Tcp),
    ("libp2p", Stack::Libp2p),
    ("noise", Stack::Mesh(SecurityProtocol::Noise, CipherOrder::AesFirst)),
    ("libp2p-tls", Stack::Libp2pTls),
    ("tls-chacha", Stack::Mesh(SecurityProtocol::Tls, CipherOrder::ChaChaFirst)),
    ("tls-aes", Stack::Mesh(SecurityProtocol::Tls, CipherOrder::AesFirst)),
];

/// The swarm of one end, on `stack` (not [`Stack::Tcp`]).
fn swarm(stack: Stack) -> libp2p::Swarm<streams::Behaviour> {
    let tcp_config = tcp::Config::default().nodelay(true);
    let transport = |key: &identity::Keypair| match stack {
        Stack::Mesh(security, ciphers) => {
            let security = Security::with_ciphers(key, &[security], ciphers).expect("security");
            nixmesh_node::mesh::open_transport(security, tcp_config)
        }
        // What `SwarmBuilder::with_tcp` builds.
        Stack::Libp2pTls => tcp::tokio::Transport::new(tcp_config)
            .upgrade(Version::V1Lazy)
            .authenticate(libp2p::tls::Config::new(key).expect("tls"))
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
        _ => tcp::tokio::Transport::new(tcp_config)
            .upgrade(Version::V1Lazy)
            .authenticate(noise::Config::new(key).expect("noise"))
            .multiplex(yamux::Config::default())
            .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
            .boxed(),
    };
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(transport)
        .expect("transport")
        .with_behaviour(|_| streams::Behaviour::default())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// One side's part: the bytes it moved and the CPU its thread spent moving them.
struct Side {
    bytes: usize,
    cpu: Duration,
}

/// A runtime of one thread, for one side.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

/// The receiving side: listens, tells the sender where, reads `total` bytes from the first
/// stream; then tells the sender it is done. Returns with the wall time of the transfer.
fn libp2p_receiver(
    stack: Stack,
    total: usize,
    hash: bool,
    at: std_mpsc::Sender<(PeerId, Multiaddr)>,
    done: oneshot::Sender<()>,
) -> (Side, Duration) {
    runtime().block_on(async move {
        let mut server = swarm(stack);
        server.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("address")).expect("listen");
        let address: Multiaddr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let mut incoming = server.behaviour().new_control().accept(PROTOCOL).expect("accept");
        at.send((*server.local_peer_id(), address)).expect("the sender waits");
        tokio::spawn(async move {
            loop {
                server.select_next_some().await;
            }
        });
        let (_, stream) = incoming.next().await.expect("a stream");
        let (start, cpu) = (Instant::now(), thread_cpu_time());
        let bytes = receive(stream, total, hash).await;
        let side = Side { bytes, cpu: thread_cpu_time() - cpu };
        let _ = done.send(());
        (side, start.elapsed())
    })
}

/// The sending side: dials, opens a stream, writes `total` bytes, and keeps its swarm going
/// until the receiver has them all.
fn libp2p_sender(
    stack: Stack,
    total: usize,
    at: std_mpsc::Receiver<(PeerId, Multiaddr)>,
    done: oneshot::Receiver<()>,
) -> Side {
    let (server_id, address) = at.recv().expect("the receiver listens");
    runtime().block_on(async move {
        let mut client = swarm(stack);
        let control = client.behaviour().new_control();
        client.dial(address).expect("dial");
        tokio::spawn(async move {
            loop {
                client.select_next_some().await;
            }
        });
        let mut stream = None;
        for _ in 0..100 {
            match control.open_stream(server_id, PROTOCOL).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        let mut stream = stream.expect("a stream within 2 s");
        let cpu = thread_cpu_time();
        send(&mut stream, total).await;
        done.await.expect("the receiver finishes");
        let side = Side { bytes: total, cpu: thread_cpu_time() - cpu };
        let _ = stream.close().await;
        side
    })
}

/// One run on `stack`, each side on its own thread: (sender, receiver, wall time).
fn run(stack: Stack, total: usize, hash: bool) -> (Side, Side, Duration) {
    let (at_tx, at_rx) = std_mpsc::channel();
    let (done_tx, done_rx) = oneshot::channel();
    let receiver = std::thread::spawn(move || match stack {
        Stack::Tcp => tcp_receiver(total, hash, at_tx, done_tx),
        _ => libp2p_receiver(stack, total, hash, at_tx, done_tx),
    });
    let sender = std::thread::spawn(move || match stack {
        Stack::Tcp => tcp_sender(total, at_rx, done_rx),
        _ => libp2p_sender(stack, total, at_rx, done_rx),
    });
    let sent = sender.join().expect("the sender");
    let (received, took) = receiver.join().expect("the receiver");
    (sent, received, took)
}

fn tcp_receiver(
    total: usize,
    hash: bool,
    at: std_mpsc::Sender<(PeerId, Multiaddr)>,
    done: oneshot::Sender<()>,
) -> (Side, Duration) {
    runtime().block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let address = format!("/ip4/127.0.0.1/tcp/{port}").parse().expect("address");
        at.send((PeerId::random(), address)).expect("the sender waits");
        let (socket, _) = listener.accept().await.expect("accept");
        let (start, cpu) = (Instant::now(), thread_cpu_time());
        let bytes = receive(socket.compat(), total, hash).await;
        let side = Side { bytes, cpu: thread_cpu_time() - cpu };
        let _ = done.send(());
        (side, start.elapsed())
    })
}

fn tcp_sender(
    total: usize,
    at: std_mpsc::Receiver<(PeerId, Multiaddr)>,
    done: oneshot::Receiver<()>,
) -> Side {
    let (_, address) = at.recv().expect("the receiver listens");
    let port = address
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .expect("a port");
    runtime().block_on(async move {
        let socket = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        let cpu = thread_cpu_time();
        send(socket.compat_write(), total).await;
        done.await.expect("the receiver finishes");
        Side { bytes: total, cpu: thread_cpu_time() - cpu }
    })
}

fn main() {
    let options = options();
    let total = options.mib << 20;
    let gib = total as f64 / (1u64 << 30) as f64;
    let mut report = serde_json::Map::new();
    for (name, stack) in STACKS {
        if options.only.as_deref().is_some_and(|only| only != name) {
            continue;
        }
        let (tx, rx) = std_mpsc::channel();
        let hash = options.hash;
        std::thread::spawn(move || {
            let _ = tx.send(run(stack, total, hash));
        });
        let (sent, received, took) = rx.recv_timeout(LIMIT).expect("the run finished in time");
        assert_eq!(received.bytes, total, "{name}: every byte arrived");
        assert_eq!(sent.bytes, total, "{name}: every byte sent");
        let rate = total as f64 / took.as_secs_f64() / (1 << 20) as f64;
        let (send_cpu, receive_cpu) =
            (sent.cpu.as_secs_f64() / gib, received.cpu.as_secs_f64() / gib);
        report.insert(format!("{name}_mib_s"), json!(rate));
        report.insert(format!("{name}_sender_cpu_s_per_gib"), json!(send_cpu));
        report.insert(format!("{name}_receiver_cpu_s_per_gib"), json!(receive_cpu));
        report.insert(format!("{name}_cpu_s_per_gib"), json!(send_cpu + receive_cpu));
        if !options.json {
            let hashed = if options.hash { ", SHA-256 on the receiving side" } else { "" };
            println!(
                "{name:>10}: {} MiB in {:.2} s: {rate:>5.0} MiB/s, CPU s per GiB: sender {send_cpu:.2}, receiver {receive_cpu:.2}{hashed}",
                options.mib,
                took.as_secs_f64()
            );
        }
    }
    // `mesh`: what two nodes run on here by default (the bench suite's transport row).
    let default = if nixmesh_node::mesh::tls::cpu_has_aes() { "tls-aes" } else { "tls-chacha" };
    for key in ["mib_s", "sender_cpu_s_per_gib", "receiver_cpu_s_per_gib", "cpu_s_per_gib"] {
        if let Some(value) = report.get(&format!("{default}_{key}")).cloned() {
            report.insert(format!("mesh_{key}"), value);
        }
    }
    if options.json {
        println!("{}", serde_json::Value::Object(report));
    }
}
