//! What a person reads of a substitution on both sides: `/metrics`, and `nixmesh status` and
//! `nixmesh peers`.

use std::net::SocketAddr;

use crate::pair::{DEADLINE, Pair};
use crate::support::{nix_available, stdout_of};
use nixmesh_tests::http::get_one as get;
use nixmesh_tests::{test_closure_expr, unique_marker, wait_until};

/// The series of a `/metrics` scrape, each line's name and labels to its value.
fn scrape(address: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (status, body) = get(address, "/metrics");
    assert_eq!(status, 200);
    let text = String::from_utf8(body).unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (series.to_owned(), value.parse().unwrap()))
        .collect()
}

/// How much `series` moved between two scrapes (a series not there yet is 0).
fn moved(before: &std::collections::HashMap<String, f64>, after_: f64, series: &str) -> u64 {
    (after_ - before.get(series).copied().unwrap_or(0.0)) as u64
}

#[test]
fn metrics_status_and_peers_count_a_substitution_on_both_sides() {
    if !nix_available() {
        return;
    }
    let pair = Pair::new();
    let closure = pair.s1.build_closure(&test_closure_expr(&unique_marker()));
    pair.s1.sign_closure(&pair.key.secret_file, &closure.top);
    let (n1, n2) = pair.start_both();
    let (h1, h2) = (n1.http_address(), n2.http_address());
    let status = |address| -> serde_json::Value {
        serde_json::from_slice(&get(address, "/_nixmesh/status").1).unwrap()
    };
    // Waiting on the status page alone: no narinfo is asked before the scrape.
    wait_until(DEADLINE, "node 2 to index everything node 1 holds", || {
        let held = status(h1)["local_paths"].as_u64().unwrap_or(0);
        held > 0 && status(h2)["indexed_paths"] == held
    });
    let (before1, before2) = (scrape(h1), scrape(h2));

    let url = format!("http://{h2}");
    let copy = pair.s2.copy_from(&url, &[&pair.key.public], &closure.top);
    assert!(copy.status.success(), "nix copy failed: {}", String::from_utf8_lossy(&copy.stderr));

    let paths = closure.paths.len() as u64;
    let nar_bytes: u64 = closure.paths.iter().map(|p| pair.s1.dump(p).len() as u64).sum();
    let hits = r#"nixmesh_requests_total{kind="narinfo",result="hit"}"#;
    let nars = r#"nixmesh_requests_total{kind="nar",result="ok"}"#;
    let received = "nixmesh_nar_received_bytes_total";
    let served = "nixmesh_nar_served_bytes_total";
    // Each side counts as its transfers end, which may be just after the client has it all.
    let (after1, after2) = nixmesh_tests::wait_for(DEADLINE, "the counters to settle", || {
        let (after1, after2) = (scrape(h1), scrape(h2));
        let done = moved(&before2, after2[nars], nars) >= paths
            && moved(&before1, after1[served], served) >= nar_bytes;
        done.then_some((after1, after2))
    });
    // Nix asks for some narinfos more than once in one copy (the top path's, to find the
    // closure and again to copy it), so the hits are at least one per path, the misses none.
    let hit_count = moved(&before2, after2[hits], hits);
    assert!(hit_count >= paths, "{hit_count} narinfo hits for {paths} paths");
    for other in ["miss", "refused", "error"] {
        let series = format!(r#"nixmesh_requests_total{{kind="narinfo",result="{other}"}}"#);
        assert_eq!(after2.get(&series).copied().unwrap_or(0.0), 0.0, "{series}");
    }
    assert_eq!(moved(&before2, after2[nars], nars), paths, "a NAR per path");
    assert_eq!(moved(&before2, after2[received], received), nar_bytes, "NAR bytes received");
    assert_eq!(moved(&before1, after1[served], served), nar_bytes, "NAR bytes served");
    assert_eq!(after1.get(received).copied().unwrap_or(0.0), 0.0, "node 1 received nothing");
    let timed = r#"nixmesh_fetch_seconds_count{stage="nar_first_byte"}"#;
    assert_eq!(moved(&before2, after2[timed], timed), paths, "a first-byte time per NAR");
    let timed = r#"nixmesh_fetch_seconds_count{stage="narinfo"}"#;
    assert_eq!(moved(&before2, after2[timed], timed), hit_count, "a narinfo time per hit");
    assert_eq!(after2["nixmesh_peers_connected"], 1.0);
    assert_eq!(after2["nixmesh_indexed_paths"], status(h1)["local_paths"].as_u64().unwrap() as f64);

    // `nixmesh status` and `nixmesh peers` show a person the same, and --json the numbers.
    let node = ["--node", &url];
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&[&["status", "--json"][..], &node].concat())).unwrap();
    assert_eq!(json["bytes_received"], nar_bytes);
    assert_eq!(json["requests"]["narinfo_hits"], hit_count);
    assert_eq!(json["requests"]["nars_sent"], paths);
    assert_eq!(json["peers_connected"], 1);
    let text = stdout_of(&[&["status"][..], &node].concat());
    let name = nixmesh_node::mesh::peer_name::local().expect("this machine has a hostname");
    for line in [
        format!("name:           {name}"),
        format!("peer id:        {}", n2.peer_id()),
        "peers:          1 connected, 1 known".to_owned(),
        "hit rate:       100%".to_owned(),
        format!("narinfos:       {hit_count} hits, 0 misses, 0 refused"),
        format!("NARs to Nix:    {paths} sent, 0 aborted"),
        "served:         0 B to peers".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    assert!(text.contains("received:       ") && text.contains(" from peers\n"), "{text}");
    let served_text = stdout_of(&["status", "--node", &format!("http://{h1}")]);
    let bytes_line = format!("served:         {} to peers", human(nar_bytes));
    assert!(served_text.lines().any(|l| l == bytes_line), "no {bytes_line:?} in:\n{served_text}");

    // Node 1 is named by the hostname it announced, with the bytes each way.
    let peers = stdout_of(&[&["peers"][..], &node].concat());
    let lines: Vec<Vec<&str>> = peers
        .lines()
        .map(|l| l.split("  ").map(str::trim).filter(|c| !c.is_empty()).collect())
        .collect();
    assert_eq!(
        lines[0],
        ["NAME", "STATE", "PATHS", "RTT", "RECEIVED", "SERVED", "LAST SEEN", "PEER"]
    );
    assert_eq!(lines.len(), 2, "{peers}");
    let row = &lines[1];
    assert_eq!((row[0], row[1]), (name.as_str(), "connected"), "{peers}");
    assert_eq!(row[2], status(h1)["local_paths"].to_string(), "{peers}");
    assert!(row[3].ends_with(" ms"), "{peers}");
    assert_eq!((row[4], row[5]), (human(nar_bytes).as_str(), "0 B"), "{peers}");
    let n1_id = n1.peer_id().to_string();
    assert!(n1_id.ends_with(row[7].trim_start_matches('…')), "{peers}");
    let json: serde_json::Value =
        serde_json::from_str(&stdout_of(&[&["peers", "--json"][..], &node].concat())).unwrap();
    let peer = &json[0];
    assert_eq!(peer["id"], n1_id.as_str());
    assert_eq!(peer["name"], name.as_str());
    assert_eq!(peer["bytes_received"], nar_bytes);
    assert_eq!(peer["bytes_served"], 0);
    assert_eq!(peer["connected"], true);
    pair.stop(n2);
    pair.stop(n1);
}

/// Bytes as `nixmesh` prints them for a person.
fn human(bytes: u64) -> String {
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let units = ["KiB", "MiB", "GiB"];
    let (mut value, mut unit) = (bytes as f64 / 1024.0, 0);
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}
