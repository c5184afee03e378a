//! Clients that open connections and never read, or never send, cannot lock a node's
//! substituter (issue 7, item 1), on loopback with real nix-daemons on chroot stores:
//! - 300 NAR downloads that never read their body (8 MiB NARs, far more than the sockets
//!   buffer) and 5,000 idle connections on one node;
//! - 1,100 idle connections on a node run as its own process under an open-file limit of
//!   1,024;
//!
//! while a normal client's narinfo (each of another path, so each goes to the holder), NAR
//! and miss requests on both nodes are answered within a second, throughout. The stalled
//! downloads are cut off within the documented NAR write limit (20 s of taking nothing), and
//! the idle connections closed within the stall limit (60 s).

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nixmesh_node::node::RunningNode;
use nixmesh_tests::{CacheKey, Host, HostStore, narinfo_url_path, parse_narinfo, wait_until};
use support::{loopback_config as config, narinfo_and_nar, nix_available, status, timed_get};

const STALLED: usize = 300;
const IDLE: usize = 5_000;
const IDLE_UNDER_LIMIT: usize = 1_100;
const OPEN_FILE_LIMIT: u64 = 1_024;
/// Small paths for the normal client: a narinfo of a new one each time.
const PROBE_PATHS: usize = 400;
/// What the normal client's requests must be answered within.
const ANSWERED_WITHIN: Duration = Duration::from_secs(1);
/// The documented limits (localhttp's `nar_client_stall_timeout` and
/// `client_stall_timeout`), and the margin a loaded machine is given on top.
const NAR_WRITE_LIMIT: Duration = Duration::from_secs(20);
const STALL_LIMIT: Duration = Duration::from_secs(60);
const MARGIN: Duration = Duration::from_secs(8);

/// A download that read its response's status and headers, and will read nothing more.
struct Stalled {
    stream: TcpStream,
    /// Body bytes that came with the headers.
    read: usize,
    started: Instant,
}

/// A connection to `address` (IPv4) whose receive buffer is small, set before the connect so
/// that the window it offers stays small: a client that does not read then holds a few
/// kilobytes in flight rather than megabytes (the test is about what the node holds).
fn connect_with_small_window(address: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(v4) = address else { panic!("an IPv4 address") };
    // SAFETY: plain socket calls on a descriptor this function owns until it is handed to
    // TcpStream (or closed on failure).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let size: libc::c_int = 8 * 1024;
        let set = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let sin = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
            sin_zero: [0; 8],
        };
        let connected = libc::connect(
            fd,
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        if set != 0 || connected != 0 {
            let e = std::io::Error::last_os_error();
            libc::close(fd);
            return Err(e);
        }
        Ok(TcpStream::from_raw_fd(fd))
    }
}

/// Sends `GET url` and reads up to the end of the response's headers (in small reads, so
/// that hardly any of the body is taken): the status, and the stream if it is a 200.
fn start_download(address: SocketAddr, url: &str) -> Result<(u16, Option<Stalled>), String> {
    let mut stream = connect_with_small_window(address).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(90))).map_err(|e| e.to_string())?;
    let request = format!("GET {url} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("request: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    let end = loop {
        let n = stream.read(&mut buf).map_err(|e| format!("headers: {e}"))?;
        if n == 0 {
            return Err("closed before the headers".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let status = std::str::from_utf8(&head[9..12]).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let stalled = (status == 200).then(|| Stalled {
        stream,
        read: head.len() - end,
        started: Instant::now(),
    });
    Ok((status, stalled))
}

/// Whether the server has let `stream` go: reading ends (or fails) before `whole` body
/// bytes, within a few seconds. A download that was not cut off would go on to the end.
fn cut_short(stalled: &mut Stalled, whole: usize) -> Result<usize, String> {
    stalled.stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let mut total = stalled.read;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match stalled.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("after {total} bytes: {e}")),
        }
        if total >= whole {
            return Err(format!("the whole NAR ({total} bytes) came: it was never cut off"));
        }
    }
    Ok(total)
}

/// Whether the server closed `stream` (reading gives its end or a reset at once).
fn closed(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(Duration::from_millis(200))).expect("a read timeout");
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => {
            !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        }
    }
}

/// A normal client's round on `address`: a narinfo of a path not asked for before (so it
/// goes to the holder), its NAR, and a miss; panics if any is wrong or slower than
/// [`ANSWERED_WITHIN`].
fn normal_client_round(node: &str, address: SocketAddr, path: &str) {
    narinfo_and_nar(node, address, path, ANSWERED_WITHIN);
    let (status, took, _) = timed_get(address, &format!("/{}.narinfo", "0".repeat(32)));
    assert_eq!(status, 404, "{node}: a miss");
    assert!(took < ANSWERED_WITHIN, "{node}: a miss took {took:?}");
}

/// `nixmesh serve` as its own process, under an open-file limit of [`OPEN_FILE_LIMIT`] (hard
/// and soft, as systemd's default `LimitNOFILE`), with `holder` as its static peer.
fn start_limited_node(
    dir: &std::path::Path,
    store: &HostStore,
    key: &str,
    holder: &libp2p::Multiaddr,
) -> (Child, SocketAddr, std::path::PathBuf) {
    let http = SocketAddr::from(([127, 0, 0, 1], nixmesh_tests::free_loopback_port()));
    let log = dir.join("limited.log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_nixmesh"));
    command
        .args(["serve", "--store", &store.daemon_url(), "--no-mdns"])
        .args(["--http-listen", &http.to_string(), "--p2p-listen", "/ip4/127.0.0.1/tcp/0"])
        .args(["--trusted-public-key", key, "--peer", &holder.to_string()])
        .arg("--state-dir")
        .arg(dir.join("limited-state"))
        .arg("--real-store-dir")
        .arg(store.real_store_dir())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit { rlim_cur: OPEN_FILE_LIMIT, rlim_max: OPEN_FILE_LIMIT };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command.spawn().expect("starting nixmesh serve");
    (child, http, log)
}

#[test]
fn stalled_downloads_and_idle_connections_hold_nothing_a_normal_client_needs() {
    if !nix_available() {
        return;
    }
    support::raise_open_file_limit(16_384);
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey::generate(dir.path(), "wedge-1");
    let holder_store = HostStore::start(&Host::local_in(dir.path(), "holder"));
    let client_store = HostStore::start(&Host::local_in(dir.path(), "client"));
    let probes = holder_store.add_many_paths(PROBE_PATHS, &nixmesh_tests::unique_marker());
    holder_store.sign_closure(&key.secret_file, &probes.top);
    let big: Vec<u8> =
        (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let big_path = holder_store.add_file("big-wedge", &big);
    holder_store.sign_closure(&key.secret_file, &big_path);

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let holder = runtime
        .block_on(RunningNode::start(config(
            &dir.path().join("h"),
            &holder_store,
            &key.public,
            vec![],
        )))
        .unwrap();
    let holder_address = runtime.block_on(holder.p2p_addresses()).remove(0);
    let client_config =
        config(&dir.path().join("c"), &client_store, &key.public, vec![holder_address.clone()]);
    let client = runtime.block_on(RunningNode::start(client_config)).unwrap();
    let node = client.http_address();
    let (mut limited, limited_address, limited_log) =
        start_limited_node(dir.path(), &client_store, &key.public, &holder_address);
    let expected = (PROBE_PATHS + 2) as u64;
    for address in [node, limited_address] {
        wait_until(Duration::from_secs(60), "the node to know the holder's paths", || {
            status(address)["indexed_paths"] == expected
        });
    }
    let (status_code, body) = nixmesh_tests::http::get_one(node, &narinfo_url_path(&big_path));
    assert_eq!(status_code, 200, "the big path's narinfo");
    let big_narinfo = parse_narinfo(&body);
    let big_url = format!("/{}", big_narinfo.url);
    let big_size = big_narinfo.nar_size as usize;

    // The idle connections, 5,000 on the node and 1,100 on the one under the limit. (Their
    // stall limit runs from when the node accepts them, after the last is connected at the
    // latest: the node's backlog holds the burst.)
    let mut idle: Vec<TcpStream> =
        (0..IDLE).map(|_| TcpStream::connect(node).expect("an idle connection")).collect();
    let mut idle_limited: Vec<TcpStream> = (0..IDLE_UNDER_LIMIT)
        .map(|_| TcpStream::connect(limited_address).expect("an idle connection"))
        .collect();
    let idle_since = Instant::now();

    // The stalled downloads, all at once; each reads its headers and nothing more. A
    // download refused while the burst queues (the holder sends so many NARs to one peer at
    // once, and each lets go of its stream only once its client has taken nothing for a
    // second) is asked again, as an attacker would.
    let burst_ends = Instant::now() + Duration::from_secs(120);
    let started: Vec<Result<Stalled, Vec<String>>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..STALLED)
            .map(|_| {
                scope.spawn(|| {
                    let mut refusals = Vec::new();
                    while Instant::now() < burst_ends {
                        match start_download(node, &big_url) {
                            Ok((_, Some(stalled))) => return Ok(stalled),
                            Ok((status, None)) => refusals.push(format!("status {status}")),
                            Err(e) => refusals.push(e),
                        }
                    }
                    Err(refusals)
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    let (mut stalled, mut refused) = (Vec::new(), Vec::new());
    for result in started {
        match result {
            Ok(s) => stalled.push(s),
            Err(e) => refused.push(e),
        }
    }
    assert!(refused.is_empty(), "downloads that never started: {refused:?}");
    stalled.sort_by_key(|s| s.started);
    eprintln!(
        "{STALLED} downloads stalled, between {:?} and {:?} after the first",
        stalled[0].started.elapsed(),
        stalled[STALLED - 1].started.elapsed()
    );

    // The normal client asks on both nodes throughout, while the stalled downloads are cut
    // off and the idle connections closed.
    let done = AtomicBool::new(false);
    let rounds = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let mut paths = probes.paths.iter().filter(|p| **p != probes.top).cycle();
            while !done.load(Ordering::SeqCst) {
                let round = rounds.fetch_add(1, Ordering::SeqCst);
                normal_client_round("node", node, paths.next().unwrap());
                normal_client_round("limited node", limited_address, paths.next().unwrap());
                assert!(round < 10_000);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let checks = || {
            // Every stalled download is cut off by the NAR write limit, oldest first.
            let mut failed = Vec::new();
            for download in &mut stalled {
                let by = download.started + NAR_WRITE_LIMIT + MARGIN;
                std::thread::sleep(by.saturating_duration_since(Instant::now()));
                failed.extend(cut_short(download, big_size).err());
            }
            assert!(
                failed.is_empty(),
                "{} of {} stalled downloads not cut off: {failed:?}",
                failed.len(),
                stalled.len()
            );
            // The idle connections are closed within the stall limit.
            let by = idle_since + STALL_LIMIT + MARGIN;
            std::thread::sleep(by.saturating_duration_since(Instant::now()));
            let open = idle.iter_mut().map(closed).filter(|c| !c).count();
            assert_eq!(open, 0, "idle connections still open after the stall limit");
            let open = idle_limited.iter_mut().map(closed).filter(|c| !c).count();
            assert_eq!(open, 0, "idle connections still open on the limited node");
        };
        let checked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(checks));
        done.store(true, Ordering::SeqCst);
        if let Err(panic) = prober.join() {
            std::panic::resume_unwind(panic);
        }
        if let Err(panic) = checked {
            std::panic::resume_unwind(panic);
        }
    });
    assert!(rounds.load(Ordering::SeqCst) > 10, "the normal client asked throughout");

    // The node under the open-file limit closed the quiet connections to make room, and
    // said so.
    let log = std::fs::read_to_string(&limited_log).unwrap();
    assert!(
        log.contains("closing the client connection quiet longest"),
        "the limited node said nothing of making room:\n{log}"
    );
    // The nodes still serve.
    normal_client_round("node", node, &probes.paths[0]);
    normal_client_round("limited node", limited_address, &probes.paths[1]);

    let _ = limited.kill();
    let _ = limited.wait();
    runtime.block_on(client.stop()).unwrap();
    runtime.block_on(holder.stop()).unwrap();
}
