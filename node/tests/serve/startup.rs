//! The HTTP port while the node starts: connections taken at once, answered once it serves.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::pair::{DEADLINE, Pair};
use crate::support::{loopback_config as config, nix_available};
use nixmesh_node::node::RunningNode;

/// A stand-in for a slow daemon: a socket that accepts the node's daemon connections and
/// joins them to the real daemon's only once `release` has been sent; `first` gets a message
/// when the first one is held.
fn held_daemon(
    at: &std::path::Path,
    daemon: std::path::PathBuf,
) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
    use std::os::unix::net::{UnixListener, UnixStream};
    let listener = UnixListener::bind(at).unwrap();
    let (first_tx, first) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut waiting = Some((first_tx, released));
        // The node opens a few daemon connections, all within the test's first seconds.
        let until = std::time::Instant::now() + DEADLINE;
        let mut joined = 0;
        while std::time::Instant::now() < until && joined < 64 {
            let client = match listener.accept() {
                Ok((client, _)) => client,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                Err(_) => return,
            };
            joined += 1;
            client.set_nonblocking(false).unwrap();
            if let Some((first_tx, released)) = waiting.take() {
                let _ = first_tx.send(());
                if released.recv_timeout(DEADLINE).is_err() {
                    return;
                }
            }
            let Ok(daemon) = UnixStream::connect(&daemon) else { return };
            let (mut c2, mut d2) = (client.try_clone().unwrap(), daemon.try_clone().unwrap());
            let (mut c, mut d) = (client, daemon);
            std::thread::spawn(move || std::io::copy(&mut c, &mut d));
            std::thread::spawn(move || std::io::copy(&mut d2, &mut c2));
        }
    });
    (first, release)
}

#[test]
fn the_port_takes_connections_while_the_node_starts_and_answers_them_once_it_serves() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    let held = pair.dir.path().join("held-daemon.sock");
    let (first, release) = held_daemon(&held, pair.s1.socket());
    let mut config = config(&pair.dir.path().join("n1"), &pair.s1, &pair.key.public, vec![]);
    config.store = format!("unix://{}", held.display());
    // A free port, known before the node starts.
    config.http_listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let starting = pair.runtime.spawn(RunningNode::start(config.clone()));

    // The node waits for the daemon's handshake: the port must take a request all the same.
    first.recv_timeout(DEADLINE).expect("the node to connect to its daemon");
    let mut client = TcpStream::connect(config.http_listen)
        .expect("the port takes connections while the node starts");
    client.set_read_timeout(Some(DEADLINE)).unwrap();
    client
        .write_all(b"GET /nix-cache-info HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    assert!(!starting.is_finished(), "the node is still starting while its daemon is held");

    release.send(()).unwrap();
    let node = pair.runtime.block_on(starting).unwrap().unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "the request waited and got: {answer}");
    assert!(answer.contains("StoreDir: /nix/store"), "{answer}");
    pair.stop(node);
}
