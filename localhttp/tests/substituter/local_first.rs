//! The machine's own Nix first: two listeners sharing one `LocalFirst`, the localhost one and
//! the LAN's, each over its own test source, so which source was asked what, and when, shows
//! whether LAN work was held back while the machine's own request was under way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nixmesh_localhttp::local_first::Limits;
use nixmesh_localhttp::{Config, LocalFirst, Metrics, NodeStatus, Role, Router, router, serve};
use tokio::net::TcpListener;

use crate::support::*;

/// The localhost listener and the LAN's, and what the test reads of them.
struct Listeners {
    local: SocketAddr,
    lan: SocketAddr,
    gate: LocalFirst,
    lan_metrics: Arc<Metrics>,
}

impl Listeners {
    /// The two routers over `local` and `lan`, `config` for both (the LAN's a clone with
    /// [`Role::Lan`], as the node makes it), one `LocalFirst` with `limits` between them.
    async fn start(
        local: Arc<TestSource>,
        lan: Arc<TestSource>,
        config: Config,
        limits: Limits,
    ) -> Self {
        let gate = LocalFirst::new(limits);
        let local_config = Config { local_first: gate.clone(), ..config };
        let lan_config = Config { role: Role::Lan, status_pages: false, ..local_config.clone() };
        let metrics = Arc::new(Metrics::new());
        let lan_metrics = Arc::new(metrics.for_lan());
        let local_router =
            router(local.clone(), local, Default::default(), local_config, metrics.clone());
        let lan_router =
            router(lan.clone(), lan, Default::default(), lan_config, lan_metrics.clone());
        Listeners {
            local: serve_on_loopback(local_router).await,
            lan: serve_on_loopback(lan_router).await,
            gate,
            lan_metrics,
        }
    }

    /// How many times LAN work waited for the machine's own Nix, from `/metrics`' text.
    fn lan_waits(&self) -> u64 {
        let text = self.lan_metrics.encode(&NodeStatus::default());
        let line = text.lines().find_map(|l| l.strip_prefix("nixmesh_lan_yield_seconds_count "));
        line.expect("the LAN's yield series is registered").parse().unwrap()
    }
}

async fn serve_on_loopback(router: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stall = Config::default().client_stall_timeout;
    tokio::spawn(serve(listener, router, stall, std::future::pending()));
    addr
}

/// Limits under which LAN work goes only when the machine is idle (no trickle), or at `bound`.
fn only_when_idle(linger: Duration, bound: Duration) -> Limits {
    Limits { linger, bound, pace: Duration::from_secs(3600) }
}

/// Waits (at most 10 s, in steps) until `done` holds.
async fn until(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

#[tokio::test]
async fn lan_requests_wait_while_a_local_nar_is_in_flight_and_are_answered_once_it_ends() {
    let fixture = Fixture::new();
    // The machine's own download takes about a second: 25 chunks, 40 ms apart.
    let trickling = TestPeer {
        name: "local-holder",
        narinfo: NarInfoReply::Text(fixture.narinfo.to_string()),
        nar: NarReply::Trickle(fixture.chunks(), Duration::from_millis(40)),
    };
    let local_source = TestSource::new(&fixture, vec![trickling]);
    let lan_source = TestSource::honest(&fixture);
    // A linger long enough that the test sees the machine still busy when its download ends.
    let limits = only_when_idle(Duration::from_secs(1), Duration::from_secs(30));
    let l =
        Listeners::start(local_source.clone(), lan_source.clone(), test_config(&fixture), limits)
            .await;
    let (local, lan) = (l.local, l.lan);
    let nar_url = fixture.nar_url();
    let own = tokio::spawn(async move { get(local, &nar_url).await });
    until("the local NAR is under way", || !local_source.nar_calls().is_empty()).await;
    let lan_asks: Vec<_> = [fixture.narinfo_url(), fixture.nar_url()]
        .into_iter()
        .map(|url| {
            tokio::spawn(async move {
                let reply = get(lan, &url).await;
                (reply, Instant::now())
            })
        })
        .collect();
    let own = own.await.unwrap();
    let own_done = Instant::now();
    assert_eq!(own.status, 200);
    assert!(own.body == fixture.nar, "the machine's own NAR arrived changed");
    assert_eq!(lan_source.narinfo_calls(), 0, "a LAN narinfo went to a peer meanwhile");
    assert!(lan_source.nar_calls().is_empty(), "a LAN NAR went to a peer meanwhile");
    let mut replies = Vec::new();
    for ask in lan_asks {
        let (reply, done) = ask.await.unwrap();
        assert!(done > own_done, "a LAN answer came before the machine's own NAR ended");
        replies.push(reply);
    }
    assert_eq!(replies[0].status, 200, "the narinfo that waited: {}", replies[0].text());
    assert_eq!(replies[1].status, 200);
    assert!(replies[1].body == fixture.nar, "the LAN's NAR arrived changed");
    assert!(l.lan_waits() >= 2, "the waits are counted");
}

#[tokio::test]
async fn a_lan_narinfo_waits_no_longer_than_the_bound_and_is_never_a_false_miss() {
    let fixture = Fixture::new();
    let lan_source = TestSource::honest(&fixture);
    // The bound is longer than the request's own time limit and its narinfo deadline: the
    // wait counts before both, so a narinfo that waited is still found.
    let config = Config {
        request_timeout: Duration::from_millis(600),
        narinfo_deadline: Duration::from_millis(500),
        ..test_config(&fixture)
    };
    let bound = Duration::from_millis(900);
    let limits = only_when_idle(Duration::from_millis(100), bound);
    let l =
        Listeners::start(TestSource::honest(&fixture), lan_source.clone(), config, limits).await;
    // The machine stays busy throughout.
    let _busy = l.gate.local_request();
    let url = fixture.narinfo_url();
    let asks = (0..4).map(|_| get(l.lan, &url));
    for reply in futures::future::join_all(asks).await {
        assert_eq!(reply.status, 200, "a narinfo that waited: {}", reply.text());
        assert!(reply.elapsed >= bound, "it did not wait: {:?}", reply.elapsed);
        assert!(reply.elapsed < bound + Duration::from_secs(5), "waited {:?}", reply.elapsed);
    }
    let miss = get(l.lan, "/1b9p07z77phvv2hf6gm9f28syp39f1ag.narinfo").await;
    assert_eq!(miss.status, 404, "a path nobody holds is still a miss after its wait");
    assert_eq!(l.lan_waits(), 5);
}

#[tokio::test]
async fn with_no_local_activity_lan_requests_never_wait() {
    let fixture = Fixture::new();
    let limits = only_when_idle(Duration::from_millis(100), Duration::from_secs(30));
    let l = Listeners::start(
        TestSource::honest(&fixture),
        TestSource::honest(&fixture),
        test_config(&fixture),
        limits,
    )
    .await;
    let narinfo = get(l.lan, &fixture.narinfo_url()).await;
    let nar = get(l.lan, &fixture.nar_url()).await;
    assert_eq!(narinfo.status, 200);
    assert!(nar.status == 200 && nar.body == fixture.nar);
    // Status pages on the localhost listener are not the machine's own Nix at work either.
    assert_eq!(get(l.local, "/_nixmesh/status").await.status, 200);
    assert!(!l.gate.is_busy());
    assert_eq!(get(l.lan, &fixture.narinfo_url()).await.status, 200);
    assert_eq!(l.lan_waits(), 0, "LAN work waited with nobody local");
}

#[tokio::test]
async fn a_lan_nar_already_streaming_holds_its_chunks_while_the_machine_is_busy() {
    let fixture = Fixture::new();
    let trickling = TestPeer {
        name: "lan-holder",
        narinfo: NarInfoReply::Text(fixture.narinfo.to_string()),
        nar: NarReply::Trickle(fixture.chunks(), Duration::from_millis(20)),
    };
    let lan_source = TestSource::new(&fixture, vec![trickling]);
    let limits = only_when_idle(Duration::from_millis(50), Duration::from_secs(30));
    let l = Listeners::start(
        TestSource::honest(&fixture),
        lan_source.clone(),
        test_config(&fixture),
        limits,
    )
    .await;
    let lan = l.lan;
    let url = fixture.nar_url();
    let download = tokio::spawn(async move { get(lan, &url).await });
    let sent = lan_source.nar_chunks_sent.clone();
    until("the LAN NAR is streaming", || sent.load(Ordering::SeqCst) >= 3).await;
    let busy = l.gate.local_request();
    // The chunk under way when the machine became busy may still go; then none.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let held_at = sent.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let after = sent.load(Ordering::SeqCst);
    assert!(after <= held_at + 1, "the LAN NAR went on: {held_at} then {after} chunks");
    assert!(after < fixture.chunks().len(), "the LAN NAR ended while the machine was busy");
    drop(busy);
    let reply = download.await.unwrap();
    assert!(reply.status == 200 && reply.body == fixture.nar, "the LAN NAR did not arrive whole");
    assert!(l.lan_waits() >= 1);
}
