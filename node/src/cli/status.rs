//! `nixmesh status`: a running node's state as a person reads it: who it is, its peers, how
//! often Nix found what it asked for, the NAR bytes exchanged with peers, and what came from
//! upstream (downloaded here, and passed on to peers that would have downloaded it too).

use std::fmt::Write as _;

use nixmesh_localhttp::NodeStatus;

use super::{CliError, get_json, human_bytes};

/// `nixmesh status`.
pub async fn status(node: &str, json: bool) -> Result<String, CliError> {
    let s: NodeStatus = get_json(node, "/_nixmesh/status").await?;
    if json {
        return Ok(serde_json::to_string_pretty(&s).expect("serialisable") + "\n");
    }
    Ok(render(&s))
}

/// One `label: value` line per fact.
pub fn render(s: &NodeStatus) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: String| {
        let _ = writeln!(out, "{:<16}{value}", format!("{label}:"));
    };
    line("name", s.name.clone().unwrap_or_else(|| "-".to_owned()));
    line("peer id", s.peer_id.clone());
    line("listening on", s.listen_addresses.join(" "));
    line("local paths", s.local_paths.to_string());
    line("peers", format!("{} connected, {} known", s.peers_connected, s.peers_known));
    line("indexed paths", s.indexed_paths.to_string());
    let r = &s.requests;
    let rate = r.hit_rate().map_or("no requests yet".to_owned(), |h| format!("{:.0}%", h * 100.0));
    line("hit rate", rate);
    line(
        "narinfos",
        format!(
            "{} hits, {} misses, {} refused",
            r.narinfo_hits, r.narinfo_misses, r.narinfo_refused
        ),
    );
    line("NARs to Nix", format!("{} sent, {} aborted", r.nars_sent, r.nars_aborted));
    line("received", format!("{} from peers", human_bytes(s.bytes_received)));
    line("served", format!("{} to peers", human_bytes(s.bytes_served)));
    let upstreams: Vec<String> =
        s.upstreams
            .iter()
            .map(|u| {
                if u.skipped {
                    format!("{} (not answering; skipped)", u.url)
                } else {
                    u.url.clone()
                }
            })
            .collect();
    line("upstreams", if upstreams.is_empty() { "none".to_owned() } else { upstreams.join(" ") });
    line(
        "from upstream",
        format!(
            "{} downloaded here, {} of it passed on to peers",
            human_bytes(s.bytes_from_upstream),
            human_bytes(s.bytes_relayed)
        ),
    );
    line("trusted keys", s.trusted_keys.join(" "));
    line("signing key", s.signing_key.clone().unwrap_or_else(|| "none".to_owned()));
    if let Some(last) = s.not_served.last() {
        line("not served", format!("{} lately; the last: {last}", s.not_served.len()));
    }
    let private = if s.private_mesh { "yes" } else { "no (any node on the network may join)" };
    line("private mesh", private.to_owned());
    if !s.lan_urls.is_empty() {
        // What a machine with no node (an installer) is given as its substituter.
        line("LAN cache", s.lan_urls.join(" "));
    }
    if let Some(why) = &s.degraded {
        line("DEGRADED", why.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use nixmesh_localhttp::RequestCounts;

    use super::*;

    #[test]
    fn shows_peers_hit_rate_and_bytes() {
        let status = NodeStatus {
            name: Some("desk".into()),
            peer_id: "12D3KooWx".into(),
            peers_connected: 2,
            peers_known: 3,
            requests: RequestCounts {
                narinfo_hits: 3,
                narinfo_misses: 1,
                nars_sent: 3,
                ..RequestCounts::default()
            },
            bytes_received: 3 << 20,
            bytes_served: 512,
            upstreams: vec![nixmesh_localhttp::UpstreamSummary {
                url: "http://192.0.2.1".into(),
                skipped: true,
            }],
            bytes_from_upstream: 2 << 20,
            bytes_relayed: 1 << 20,
            lan_urls: vec!["http://192.0.2.7:7375".into()],
            ..NodeStatus::default()
        };
        let text = render(&status);
        for line in [
            "name:           desk",
            "peer id:        12D3KooWx",
            "peers:          2 connected, 3 known",
            "hit rate:       75%",
            "narinfos:       3 hits, 1 misses, 0 refused",
            "NARs to Nix:    3 sent, 0 aborted",
            "received:       3.0 MiB from peers",
            "served:         512 B to peers",
            "signing key:    none",
            "upstreams:      http://192.0.2.1 (not answering; skipped)",
            "from upstream:  2.0 MiB downloaded here, 1.0 MiB of it passed on to peers",
            "LAN cache:      http://192.0.2.7:7375",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        assert!(!text.contains("DEGRADED"));
        let idle = render(&NodeStatus::default());
        assert!(idle.contains("hit rate:       no requests yet\n"), "{idle}");
    }
}
