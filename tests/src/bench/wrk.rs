//! The request-rate rows' client: wrk, asking one path flat out over many connections, for
//! the rows whose figure is a rate (narinfo misses and hits). The bench's own `load hammer`
//! runs a thread a connection with blocking sockets: at 100 and 1,000 connections on two
//! cores its threads take the CPU the servers need, so it measured the client as much as the
//! server (issue 21 asks for a client at least as efficient as wrk). nginx and the node are
//! asked by the same client. wrk is epoll-driven, two threads, and prints here one line of
//! JSON in the shape `load hammer` prints.

use std::time::Duration;

use nixmesh_tests::{CommandExt, Host};

/// wrk's threads: one a core of this machine.
const THREADS: usize = 2;

/// wrk's script: one line of JSON with the totals at the end. wrk counts an answer other than
/// 2xx and 3xx in `errors.status` (and in `requests`); connections that failed are in the
/// other error counts and not in `requests`.
const SCRIPT: &str = r#"
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"non2xx":%d,"errors":%d,"micros":%d,"p99_us":%d}\n',
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout,
    summary.duration, latency:percentile(99)))
end
"#;

/// Asks `base` + `path` over `connections` for `secs` seconds from `host`, and returns what
/// `load hammer` would have printed: `requests` (answers and failed requests), `expected`
/// (answers with the `expect` status: 404 counted as the non-2xx answers, 200 as the
/// others), `seconds` and `p99_us`.
pub(crate) fn hammer(
    host: &Host,
    base: &str,
    path: &str,
    expect: u16,
    connections: usize,
    secs: u64,
) -> serde_json::Value {
    assert!(expect == 200 || expect == 404, "wrk tells 2xx from the rest only");
    let script = host.dir().join("hammer.lua");
    std::fs::write(&script, SCRIPT).expect("writing wrk's script");
    let printed = host
        .command("wrk")
        .args(["-t", &THREADS.to_string(), "-c", &connections.to_string()])
        .args(["-d", &format!("{secs}s"), "--timeout", "10s", "-s"])
        .arg(&script)
        .arg(format!("{base}{path}"))
        .stdout_within(Duration::from_secs(secs + 60));
    let text = String::from_utf8_lossy(&printed);
    let json = text.lines().rev().find(|l| l.starts_with('{')).expect("wrk's JSON line");
    let v: serde_json::Value = serde_json::from_str(json).expect("wrk's JSON");
    let n = |key: &str| v[key].as_u64().unwrap_or(0);
    let (answers, non2xx, errors) = (n("requests"), n("non2xx"), n("errors"));
    let expected = if expect == 404 { non2xx } else { answers - non2xx };
    serde_json::json!({
        "requests": answers + errors,
        "expected": expected,
        "seconds": n("micros") as f64 / 1e6,
        "p99_us": n("p99_us"),
    })
}
