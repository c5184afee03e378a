//! Peers that go away and come back (issue 19, items 3-5), on a LAN of network namespaces
//! with real nodes (`nixmesh serve`) and real nix-daemons:
//! - a node killed (SIGKILL) and started again with an empty index, three times in a row,
//!   serves a quiet holder's paths within 10 s each time: the holder gives a gone
//!   subscriber's slot back at once and a peer's new subscription replaces its old one;
//! - a node restarted during a flood of half-open connections from 64 addresses of another
//!   machine reconnects to the flooded holder within 5 s;
//! - a NAR request waiting on a holder that froze (SIGSTOP) is answered within a second of the
//!   node disconnecting it, not at the end of its time-outs.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::holder_lan::{HolderKnown, HolderLan};
use support::{in_namespace, namespaces_and_nix_ready};

use nixmesh_tests::signed_lan::lists_connected;
use nixmesh_tests::{CommandExt, Node, NodeOptions, narinfo_url_path, parse_narinfo, poll_every};

/// What a restarted node may take to serve a quiet holder's paths again (the acceptance
/// point's bound).
const REJOIN_LIMIT: Duration = Duration::from_secs(10);
/// What a restarted peer may take to reconnect through a handshake flood.
const RECONNECT_LIMIT: Duration = Duration::from_secs(5);
/// What a request waiting on a holder may take once the node has disconnected it.
const MOVES_ON_WITHIN: Duration = Duration::from_secs(1);
/// The documented time after which a frozen holder is disconnected (5 s of unanswered pings,
/// checked every half second), and the polling on top.
const FROZEN_LIMIT: Duration = Duration::from_secs(7);
/// The flooding machine's source addresses, and the half-open connections each keeps open
/// (more than a holder lets one host have under way).
const FLOOD_ADDRESSES: u8 = 64;
const FLOOD_PER_ADDRESS: usize = 12;
/// The flood's bound in time, whatever the test does meanwhile.
const FLOOD_LIMIT: Duration = Duration::from_secs(60);

/// The holder's file: 1 MiB.
const BIG_BYTES: u32 = 1 << 20;

/// What these tests do with a holder LAN whose host 2's node knows host 1's as a static peer.
impl HolderLan {
    /// Starts host 2's node again as the same node (its identity), with what is left of
    /// its state.
    fn restart_other(&mut self) {
        let options = NodeOptions {
            state_dir: Some(self.nodes[1].state_dir().to_owned()),
            ..self.options.clone()
        };
        self.nodes[1] = Node::start(self.stores[1].host(), &self.stores[1], &options);
    }

    /// Whether host 2's node lists host 1's as connected.
    fn reconnected(&self) -> bool {
        lists_connected(&self.nodes[1].peers(), &self.holder_id)
    }
}

#[test]
fn a_node_killed_twice_and_restarted_with_an_empty_index_serves_a_quiet_holder_in_10_s() {
    if !namespaces_and_nix_ready() {
        return;
    }
    let mut lan = HolderLan::new(2, 20, BIG_BYTES, HolderKnown::AsStaticPeer);
    let paths: Vec<String> = lan.probes.paths.clone();
    // The holder's store does not change from here on: nothing it writes would show a
    // subscriber's slot to be dead.
    for restart in 1..=3 {
        lan.nodes[1].kill();
        let index = lan.nodes[1].state_dir().join("index.redb");
        std::fs::remove_file(&index).expect("removing the killed node's index");
        let started = Instant::now();
        lan.restart_other();
        let ((), served) = poll_every(
            Duration::from_millis(100),
            Duration::from_secs(40),
            "the restarted node to serve the quiet holder's paths",
            || lan.nodes[1].narinfo_statuses(&paths).iter().all(|&s| s == 200).then_some(()),
        );
        let took = served - started;
        eprintln!("restart {restart}: every path served {took:?} after the start");
        assert!(took <= REJOIN_LIMIT, "restart {restart}: the holder's paths after {took:?}");
    }
    let log = std::fs::read_to_string(lan.nodes[0].log_path()).unwrap();
    assert!(!log.contains("refusing a stream"), "the holder refused a subscription");
}

/// Keeps up to [`FLOOD_PER_ADDRESS`] half-open connections (connected, never a byte sent)
/// from `from` to `to`, opening new ones as the holder closes them, until `stop` or
/// [`FLOOD_LIMIT`]; `held` counts, across every address, those still open after the last
/// pause (so not those the holder refuses at once).
async fn flood_from(from: Ipv4Addr, to: SocketAddr, stop: Arc<AtomicBool>, held: Arc<AtomicUsize>) {
    let until = Instant::now() + FLOOD_LIMIT;
    let mut open: Vec<tokio::net::TcpStream> = Vec::new();
    let mut counted = 0;
    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
        open.retain(|s| {
            let mut byte = [0u8; 1];
            matches!(s.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        held.fetch_add(open.len(), Ordering::SeqCst);
        held.fetch_sub(counted, Ordering::SeqCst);
        counted = open.len();
        while open.len() < FLOOD_PER_ADDRESS {
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            socket.bind(SocketAddr::from((from, 0))).expect("binding a flood address");
            match tokio::time::timeout(Duration::from_secs(1), socket.connect(to)).await {
                Ok(Ok(stream)) => open.push(stream),
                _ => break,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    held.fetch_sub(counted, Ordering::SeqCst);
}

#[test]
fn a_restarted_peer_reconnects_within_5_s_through_a_handshake_flood_from_64_addresses() {
    if !namespaces_and_nix_ready() {
        return;
    }
    // Host 1 holds, host 2's node restarts, host 3 floods from 64 addresses.
    let mut lan = HolderLan::new(3, 5, BIG_BYTES, HolderKnown::AsStaticPeer);
    let flooder = lan.lan.hosts()[2].clone();
    let mut addresses = vec![flooder.address()];
    for n in 1..FLOOD_ADDRESSES {
        let address = Ipv4Addr::new(10, 231, 0, 100 + n);
        Command::new("ip")
            .args(["-n", flooder.netns(), "addr", "add", &format!("{address}/24"), "dev", "eth0"])
            .stdout_within(Duration::from_secs(10));
        addresses.push(address);
    }
    lan.nodes[1].kill();

    let holder = SocketAddr::from((lan.lan.hosts()[0].address(), 7374));
    let (stop, held) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)));
    let (stop_flood, held_flood) = (stop.clone(), held.clone());
    let flood = in_namespace(&flooder, move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async move {
            let tasks: Vec<_> = addresses
                .into_iter()
                .map(|from| {
                    tokio::spawn(flood_from(from, holder, stop_flood.clone(), held_flood.clone()))
                })
                .collect();
            for task in tasks {
                task.await.expect("a flood task");
            }
        });
    });
    // Every address has its handshakes under way (as many as the holder lets it have), and
    // then some time for the holder to refuse the ones beyond; a holder that lets fewer in
    // still meets the restart after 20 s.
    let full = usize::from(FLOOD_ADDRESSES) * 8;
    let filling = Instant::now();
    while held.load(Ordering::SeqCst) < full && filling.elapsed() < Duration::from_secs(20) {
        assert!(!flood.is_finished(), "the flood stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let flooding = held.load(Ordering::SeqCst);

    let started = Instant::now();
    lan.restart_other();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        poll_every(
            Duration::from_millis(100),
            Duration::from_secs(30),
            "the restarted node to reconnect to the flooded holder",
            || lan.reconnected().then_some(()),
        )
        .1
    }));
    let during = held.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    flood.join().expect("the flood ran");
    let reconnected = outcome.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    let took = reconnected - started;
    eprintln!(
        "{flooding} half-open connections from {FLOOD_ADDRESSES} addresses ({during} at the \
         end); the restarted node reconnected {took:?} after its start"
    );
    assert!(took <= RECONNECT_LIMIT, "the restarted node reconnected after {took:?}");
    assert!(flooding >= full, "the flood held {flooding} connections, fewer than {full}");
    let log = std::fs::read_to_string(lan.nodes[0].log_path()).unwrap();
    assert!(log.contains("handshakes under way"), "the holder did not log the handshakes refused");
}

#[test]
fn a_nar_request_on_a_frozen_holder_is_answered_within_1_s_of_its_disconnection() {
    if !namespaces_and_nix_ready() {
        return;
    }
    let lan = HolderLan::new(2, 1, BIG_BYTES, HolderKnown::AsStaticPeer);
    let (status, body) = lan.nodes[1].http_get(&narinfo_url_path(&lan.big_path));
    assert_eq!(status, 200, "the narinfo of the holder's file");
    let narinfo = parse_narinfo(&body);
    let nar = format!("/{}", narinfo.url);

    // The holder freezes; the NAR is asked for right after, so the request waits on the
    // holder until the node finds it silent and disconnects it.
    let frozen = lan.nodes[0].freeze();
    let (answered, disconnected) = std::thread::scope(|scope| {
        let asking = scope.spawn(|| {
            let (status, _) = lan.nodes[1].http_get(&nar);
            (status, Instant::now())
        });
        let ((), disconnected) = poll_every(
            Duration::from_millis(50),
            Duration::from_secs(30),
            "host 2's node to disconnect the frozen holder",
            || (!lan.reconnected()).then_some(()),
        );
        (asking.join().expect("the NAR request"), disconnected)
    });
    lan.nodes[0].thaw();
    let (status, at) = answered;
    let (after_freeze, after_disconnection) =
        (at - frozen, at.saturating_duration_since(disconnected));
    eprintln!(
        "the NAR request answered {status} {after_freeze:?} after the freeze, the holder seen \
         disconnected {:?} after it",
        disconnected - frozen
    );
    assert_eq!(status, 404, "no other holder: a miss");
    assert!(after_freeze <= FROZEN_LIMIT, "answered {after_freeze:?} after the freeze");
    assert!(
        after_disconnection <= MOVES_ON_WITHIN,
        "answered {after_disconnection:?} after the holder's disconnection"
    );
}
