//! Stopping a node: a NAR download under way finishes before the node is gone.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::pair::{DEADLINE, Pair};
use crate::support::nix_available;
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::{narinfo_url_path, parse_narinfo, wait_until};

/// Bytes of the NAR a slow client reads before its node is told to stop.
const READ_BEFORE_STOP: usize = 1 << 20;

#[test]
fn stopping_a_node_lets_a_nar_in_flight_finish() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    // 64 MiB: more than the sockets and the mesh's windows buffer, so the holder is still
    // sending when the stop comes.
    let contents: Vec<u8> =
        (0..64u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let path = pair.s1.add_file("big", &contents);
    pair.s1.sign_closure(&pair.key.secret_file, &path);
    let (n1, n2) = pair.start_both();
    let http = n2.http_address();
    let narinfo = narinfo_url_path(&path);
    wait_until(DEADLINE, "node 2 to serve the narinfo", || get(http, &narinfo).0 == 200);
    let narinfo = parse_narinfo(&get(http, &narinfo).1);

    // A client that reads the NAR slowly (about 32 MiB/s), on a thread of its own.
    let (started_tx, started) = std::sync::mpsc::channel();
    let url = format!("/{}", narinfo.url);
    let reader = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(http).unwrap();
        stream.set_read_timeout(Some(DEADLINE)).unwrap();
        write!(stream, "GET {url} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
        let mut response = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        let mut told = false;
        loop {
            let n = stream.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buf[..n]);
            if !told && response.len() > READ_BEFORE_STOP {
                started_tx.send(()).unwrap();
                told = true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        response
    });
    started.recv_timeout(DEADLINE).expect("the NAR started");

    // The stop drains the download while the mesh still serves it; every task then ends.
    let stopping = std::time::Instant::now();
    pair.runtime.block_on(n2.stop()).expect("node 2 stops with every task ended");
    let took = stopping.elapsed();
    let response = reader.join().unwrap();
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header");
    assert_eq!(&response[9..12], b"200");
    let body = &response[split + 4..];
    assert_eq!(body.len() as u64, narinfo.nar_size, "the whole NAR arrived");
    assert!(nixmesh_protocol::Sha256::digest(body) == narinfo.nar_hash, "the NAR verifies");
    assert!(
        took < nixmesh_localhttp::SHUTDOWN_GRACE + Duration::from_secs(6),
        "stop took {took:?}"
    );
    pair.stop(n1);
}
