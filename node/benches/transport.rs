//! What the mesh's transport carries on this machine with none of the rest of nixmesh in the
//! way: one stream between two swarms in this process over loopback, through the mesh's
//! stream behaviour as the fetch protocol uses it ([`nixmesh_node::mesh::streams`]), on
//! libp2p's own TCP + noise + yamux stack (`libp2p`) and on the mesh's (`mesh`: the same with
//! large socket reads, [`nixmesh_node::mesh::open_transport`]), beside a plain TCP connection
//! (`tcp`). The large-NAR case of the bench suite runs it.
//!
//! `cargo bench -p nixmesh-node --bench transport -- [--mib 1024] [--hash] [--json]`
//!
//! `--hash` runs SHA-256 over every byte received, as the substituter does. Prints MiB/s and
//! the CPU seconds per GiB of the whole process (both ends, runtime of two worker threads).

use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::{Transport, upgrade::Version};
use libp2p::{Multiaddr, StreamProtocol, noise, swarm::SwarmEvent, tcp, yamux};
use nixmesh_node::mesh::streams;
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
}

fn options() -> Options {
    let mut options = Options { mib: 1024, hash: false, json: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--mib" => {
                let value = args.next().expect("--mib needs a value");
                options.mib = value.parse().unwrap_or_else(|e| panic!("--mib: {e}"));
            }
            "--hash" => options.hash = true,
            "--json" => options.json = true,
            // `cargo bench` passes `--bench`.
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    options
}

/// CPU time this process has used (all threads).
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a whole rusage into the pointer it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
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
    Mesh,
}

/// The swarm of one end, on `stack` (not [`Stack::Tcp`]).
fn swarm(stack: Stack) -> libp2p::Swarm<streams::Behaviour> {
    let tcp_config = tcp::Config::default().nodelay(true);
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_other_transport(|key| match stack {
            Stack::Mesh => nixmesh_node::mesh::open_transport(key, tcp_config).expect("noise"),
            // What `SwarmBuilder::with_tcp` builds.
            _ => tcp::tokio::Transport::new(tcp_config)
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key).expect("noise"))
                .multiplex(yamux::Config::default())
                .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
                .boxed(),
        })
        .expect("transport")
        .with_behaviour(|_| streams::Behaviour::default())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

async fn libp2p_run(stack: Stack, total: usize, hash: bool) -> usize {
    let mut server = swarm(stack);
    let mut client = swarm(stack);
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("address")).expect("listen");
    let address: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    let mut incoming = server.behaviour().new_control().accept(PROTOCOL).expect("accept");
    let control = client.behaviour().new_control();
    client.dial(address).expect("dial");
    tokio::spawn(async move {
        loop {
            server.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        loop {
            client.select_next_some().await;
        }
    });
    let reader = tokio::spawn(async move {
        let (_, stream) = incoming.next().await.expect("a stream");
        receive(stream, total, hash).await
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
    send(&mut stream, total).await;
    let got = reader.await.expect("reader");
    let _ = stream.close().await;
    got
}

async fn tcp_run(total: usize, hash: bool) -> usize {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let reader = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        receive(socket.compat(), total, hash).await
    });
    let socket = tokio::net::TcpStream::connect(address).await.expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    send(socket.compat_write(), total).await;
    reader.await.expect("reader")
}

fn main() {
    let options = options();
    let total = options.mib << 20;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = serde_json::Map::new();
    for (name, stack) in [("tcp", Stack::Tcp), ("libp2p", Stack::Libp2p), ("mesh", Stack::Mesh)] {
        let (start, start_cpu) = (Instant::now(), cpu_time());
        let got = runtime.block_on(async {
            let run = async {
                match stack {
                    Stack::Tcp => tcp_run(total, options.hash).await,
                    _ => libp2p_run(stack, total, options.hash).await,
                }
            };
            tokio::time::timeout(LIMIT, run).await.expect("the run finished in time")
        });
        let (took, cpu) = (start.elapsed(), cpu_time() - start_cpu);
        assert_eq!(got, total, "{name}: every byte arrived");
        let gib = total as f64 / (1u64 << 30) as f64;
        let rate = total as f64 / took.as_secs_f64() / (1 << 20) as f64;
        let cpu_per_gib = cpu.as_secs_f64() / gib;
        report.insert(format!("{name}_mib_s"), json!(rate));
        report.insert(format!("{name}_cpu_s_per_gib"), json!(cpu_per_gib));
        if !options.json {
            let hashed = if options.hash { ", SHA-256 on the receiving side" } else { "" };
            println!(
                "{name:>6}: {} MiB in {:.2} s: {rate:.0} MiB/s, {cpu_per_gib:.2} CPU s per GiB{hashed}",
                options.mib,
                took.as_secs_f64()
            );
        }
    }
    if options.json {
        println!("{}", serde_json::Value::Object(report));
    }
}
