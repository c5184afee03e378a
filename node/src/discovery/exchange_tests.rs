//! What is told to whom, and what is learned: the pure parts of peer exchange.

use super::*;

fn peer() -> PeerId {
    PeerId::random()
}

fn tcp(address: &str) -> Multiaddr {
    address.parse().unwrap()
}

fn told_ids(list: &PeerList) -> Vec<PeerId> {
    list.peers.iter().map(|p| PeerId::from_bytes(&p.id).unwrap()).collect()
}

#[test]
fn a_node_tells_neither_the_asker_nor_itself() {
    let (me, asker, other) = (peer(), peer(), peer());
    let at = |ip: &str| vec![tcp(&format!("/ip4/{ip}/tcp/7374"))];
    let connected = [(asker, at("10.0.0.2")), (me, at("10.0.0.1")), (other, at("10.0.1.3"))];
    let list = told_to(asker, false, me, connected, |_| true);
    assert_eq!(told_ids(&list), [other]);
    assert_eq!(list.peers[0].addresses, [tcp("/ip4/10.0.1.3/tcp/7374").to_vec()]);
}

#[test]
fn with_an_allow_list_only_allowed_askers_are_told_and_only_of_allowed_peers() {
    let (me, asker, allowed, outsider) = (peer(), peer(), peer(), peer());
    let at = vec![tcp("/ip4/10.0.1.3/tcp/7374")];
    let connected = vec![(allowed, at.clone()), (outsider, at.clone())];
    let allow = [me, asker, allowed];
    let allows = |p: &PeerId| allow.contains(p);
    assert_eq!(told_ids(&told_to(asker, false, me, connected.clone(), allows)), [allowed]);
    let to_outsider = told_to(outsider, false, me, connected, allows);
    assert!(to_outsider.peers.is_empty());
}

#[test]
fn only_addresses_another_host_can_dial_are_told_at_most_four() {
    let (me, asker, other) = (peer(), peer(), peer());
    let addresses: Vec<Multiaddr> = [
        "/ip4/127.0.0.1/tcp/1",
        "/ip4/0.0.0.0/tcp/1",
        "/ip6/fe80::1/tcp/1",
        "/ip4/169.254.1.1/tcp/1",
        "/ip4/10.0.0.5/udp/1",
        "/dns4/example.org/tcp/1",
        &format!("/ip4/10.0.0.5/tcp/1/p2p/{other}"),
        "/ip4/10.0.0.5/tcp/1",
        "/ip4/10.0.0.6/tcp/1",
        "/ip6/fd00::6/tcp/1",
        "/ip4/10.0.0.7/tcp/1",
        "/ip4/10.0.0.8/tcp/1",
    ]
    .iter()
    .map(|a| tcp(a))
    .collect();
    let list = told_to(asker, false, me, [(other, addresses.clone())], |_| true);
    let told: Vec<Multiaddr> =
        list.peers[0].addresses.iter().map(|b| Multiaddr::try_from(b.clone()).unwrap()).collect();
    let expected = ["/ip4/10.0.0.5/tcp/1", "/ip4/10.0.0.6/tcp/1", "/ip6/fd00::6/tcp/1"];
    let expected: Vec<Multiaddr> =
        expected.iter().map(|a| tcp(a)).chain([tcp("/ip4/10.0.0.7/tcp/1")]).collect();
    assert_eq!(told, expected);
    // A local asker is told the loopback address too.
    let local = told_to(asker, true, me, [(other, addresses)], |_| true);
    assert_eq!(local.peers[0].addresses[0], tcp("/ip4/127.0.0.1/tcp/1").to_vec());
}

#[test]
fn peers_without_a_dialable_address_are_left_out_and_at_most_64_are_told() {
    let (me, asker) = (peer(), peer());
    let loopback_only = (peer(), vec![tcp("/ip4/127.0.0.1/tcp/1")]);
    let many = (0..100).map(|i| (peer(), vec![tcp(&format!("/ip4/10.0.2.{i}/tcp/1"))]));
    let connected: Vec<_> = [loopback_only.clone()].into_iter().chain(many).collect();
    let list = told_to(asker, false, me, connected, |_| true);
    assert_eq!(list.peers.len(), MAX_TOLD_PEERS);
    assert!(list.check().is_ok());
    assert!(!told_ids(&list).contains(&loopback_only.0));
}

#[test]
fn the_asker_learns_others_with_their_id_and_skips_itself_the_teller_and_the_refused() {
    let (me, responder, other, refused) = (peer(), peer(), peer(), peer());
    let at = vec![tcp("/ip4/10.0.1.3/tcp/7374"), tcp("/ip4/127.0.0.1/tcp/7374")];
    let list = told_to(
        peer(),
        true,
        peer(),
        [me, responder, other, refused].map(|p| (p, at.clone())),
        |_| true,
    );
    let learned = learned_from(&list, responder, false, me, |p| *p != refused);
    let expected = tcp(&format!("/ip4/10.0.1.3/tcp/7374/p2p/{other}"));
    assert_eq!(learned, [DialTarget { peer: Some(other), addresses: vec![expected] }]);
}

#[test]
fn garbage_in_an_answer_is_skipped() {
    let (me, responder, other) = (peer(), peer(), peer());
    let list = PeerList {
        peers: vec![
            ToldPeer { id: vec![1, 2, 3], addresses: vec![tcp("/ip4/10.0.0.1/tcp/1").to_vec()] },
            ToldPeer { id: other.to_bytes(), addresses: vec![vec![0xff; 10]] },
        ],
    };
    assert!(learned_from(&list, responder, false, me, |_| true).is_empty());
}

#[test]
fn peers_are_asked_when_new_and_again_after_a_minute() {
    let (a, b) = (peer(), peer());
    let mut asked = HashMap::new();
    let start = Instant::now();
    assert_eq!(due_peers(&mut asked, vec![a], start), [a]);
    assert!(due_peers(&mut asked, vec![a], start + TICK).is_empty());
    assert_eq!(due_peers(&mut asked, vec![a, b], start + TICK), [b]);
    let due = due_peers(&mut asked, vec![a, b], start + ASK_EVERY);
    assert_eq!(due, [a]);
    // Gone and back: asked at once.
    assert!(due_peers(&mut asked, vec![a], start + ASK_EVERY).is_empty());
    assert_eq!(due_peers(&mut asked, vec![a, b], start + ASK_EVERY + TICK), [b]);
}
