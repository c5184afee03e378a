//! `/_nixmesh/why/<hash>`: a report, and a flood of them held to the limits of `why_limit`
//! while Nix's own requests go on.

use std::time::Duration;

use futures::future::join_all;
use nixmesh_localhttp::WhyReport;
use nixmesh_localhttp::why_limit::{
    CLIENT_BURST, CLIENT_REPORTS_PER_SEC, QUESTIONS_BURST, QUESTIONS_PER_SEC,
};

use crate::support::*;

#[tokio::test]
async fn a_report_names_each_holder_and_its_verdict() {
    let fixture = Fixture::new();
    let peers = vec![honest_peer("good", &fixture), silent_peer("silent")];
    let addr = start(TestSource::new(&fixture, peers), test_config(&fixture)).await;
    let reply = get(addr, &format!("/_nixmesh/why/{}", fixture.hash())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let report: WhyReport = serde_json::from_slice(&reply.body).unwrap();
    assert!(report.served);
    assert_eq!(report.advertisers, 2);
    let problem = |name: &str| {
        let holder = report.holders.iter().find(|h| h.peer.id == name).unwrap();
        (holder.accepted, holder.problem.clone())
    };
    assert_eq!(problem("good"), (true, None));
    assert!(problem("silent").1.unwrap().contains("no narinfo within"), "{report:?}");
}

#[tokio::test]
async fn a_flood_of_reports_is_refused_fast_asking_peers_within_the_bounds() {
    let fixture = Fixture::new();
    let peers = vec![honest_peer("a", &fixture), honest_peer("b", &fixture)];
    let source = TestSource::new(&fixture, peers);
    let addr = start(source.clone(), test_config(&fixture)).await;
    let url = format!("/_nixmesh/why/{}", fixture.hash());

    let started = std::time::Instant::now();
    let flood = join_all((0..200).map(|_| get(addr, &url))).await;
    let took = started.elapsed().as_secs_f64();
    let served = flood.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = flood.iter().filter(|r| r.status == 429).collect();
    assert_eq!(served + refused.len(), flood.len(), "only reports and 429s");
    // Within the client's burst and its rate over the flood's time.
    let bound = CLIENT_BURST + CLIENT_REPORTS_PER_SEC * took;
    assert!(served >= 1 && served as f64 <= bound, "{served} reports in {took} s");
    assert!(refused.iter().all(|r| r.header("retry-after") == Some("1")));
    assert!(refused[0].text().contains("reports"), "{}", refused[0].text());
    let slowest = refused.iter().map(|r| r.elapsed).max().unwrap();
    assert!(slowest < Duration::from_secs(2), "a refusal took {slowest:?}");
    let asked = source.narinfo_calls();
    let bound = QUESTIONS_BURST + QUESTIONS_PER_SEC * took;
    assert!(asked <= 2 * served && asked as f64 <= bound, "{asked} questions in {took} s");

    // Nix's narinfo is answered as ever, right after.
    assert_eq!(get(addr, &fixture.narinfo_url()).await.status, 200);
    let metrics = get(addr, "/metrics").await.text();
    let refused_line = format!(
        "nixmesh_requests_total{{kind=\"status-page\",result=\"refused\"}} {}",
        refused.len()
    );
    assert!(metrics.contains(&refused_line), "{metrics}");
}
