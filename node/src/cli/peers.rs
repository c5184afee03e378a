//! `nixmesh peers`: the peers a running node knows, one machine a line, by the name each
//! gives itself; `--json` has every field, ids and addresses included.

use nixmesh_localhttp::PeerSummary;

use super::{CliError, get_json, human_bytes, short_id, table};

/// `nixmesh peers`.
pub async fn peers(node: &str, json: bool) -> Result<String, CliError> {
    let peers: Vec<PeerSummary> = get_json(node, "/_nixmesh/peers").await?;
    Ok(if json { render_json(&peers) } else { render(peers) })
}

fn render_json(peers: &[PeerSummary]) -> String {
    serde_json::to_string_pretty(peers).expect("serialisable") + "\n"
}

/// The table: connected peers first, then by name.
pub fn render(mut peers: Vec<PeerSummary>) -> String {
    if peers.is_empty() {
        return "no peers known yet\n".to_owned();
    }
    peers.sort_by(|a, b| (!a.connected, &a.name, &a.id).cmp(&(!b.connected, &b.name, &b.id)));
    let header = ["NAME", "STATE", "PATHS", "RTT", "RECEIVED", "SERVED", "LAST SEEN", "PEER"];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for p in &peers {
        rows.push(vec![
            p.name.clone().unwrap_or_else(|| "?".to_owned()),
            match (p.connected, &p.demoted) {
                (true, Some(_)) => "demoted",
                (true, None) => "connected",
                (false, _) => "offline",
            }
            .to_owned(),
            p.paths.to_string(),
            p.rtt.map_or("-".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0)),
            human_bytes(p.bytes_received),
            human_bytes(p.bytes_served),
            p.last_seen_secs_ago.map_or("never".to_owned(), |s| format!("{s} s ago")),
            short_id(&p.id),
        ]);
    }
    let mut out = table(&rows);
    // Why a peer is demoted is a sentence: under the table, one a peer.
    for p in peers.iter().filter(|p| p.demoted.is_some()) {
        let name = p.name.clone().unwrap_or_else(|| short_id(&p.id));
        out.push_str(&format!("{name} demoted: {}\n", p.demoted.as_deref().unwrap_or_default()));
    }
    out.push_str(&security_lines(&peers));
    out
}

/// Under the table, the connected peers whose connections do not run on TLS (nodes from before
/// TLS run noise): one line a protocol and cipher, the peers on it named. Each peer's security
/// is in `--json`; the table stays as it was for peers on TLS, whatever their cipher.
fn security_lines(peers: &[PeerSummary]) -> String {
    let mut by_security: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for p in peers.iter().filter(|p| p.connected) {
        if let Some(security) = &p.security
            && !security.starts_with("tls/")
        {
            let name = p.name.clone().unwrap_or_else(|| short_id(&p.id));
            by_security.entry(security).or_default().push(name);
        }
    }
    by_security
        .into_iter()
        .map(|(security, names)| format!("security {security}: {}\n", names.join(", ")))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_table_with_a_header_connected_first() {
        let peers = vec![
            PeerSummary {
                id: "12D3KooWoffline0000000000000000000000000000000000zzzz9999".into(),
                paths: 3,
                last_seen_secs_ago: Some(7200),
                ..PeerSummary::default()
            },
            PeerSummary {
                id: "12D3KooWconnected00000000000000000000000000000000aaaa1111".into(),
                name: Some("laptop".into()),
                connected: true,
                paths: 1234,
                rtt: Some(Duration::from_micros(420)),
                last_seen_secs_ago: Some(0),
                bytes_received: 5 << 20,
                bytes_served: 0,
                ..PeerSummary::default()
            },
        ];
        let text = render(peers);
        fn trimmed<'a>(line: &[&'a str]) -> Vec<&'a str> {
            line.iter().map(|c| c.trim()).collect()
        }
        let lines: Vec<Vec<&str>> =
            text.lines().map(|l| l.split("  ").filter(|c| !c.is_empty()).collect()).collect();
        assert_eq!(
            trimmed(&lines[0]),
            ["NAME", "STATE", "PATHS", "RTT", "RECEIVED", "SERVED", "LAST SEEN", "PEER"]
        );
        assert_eq!(
            trimmed(&lines[1]),
            ["laptop", "connected", "1234", "0.4 ms", "5.0 MiB", "0 B", "0 s ago", "…aaaa1111"]
        );
        assert_eq!(
            trimmed(&lines[2]),
            ["?", "offline", "3", "-", "0 B", "0 B", "7200 s ago", "…zzzz9999"]
        );
        assert_eq!(render(Vec::new()), "no peers known yet\n");
    }

    #[test]
    fn connected_peers_not_on_tls_are_named_under_the_table() {
        let peer = |name: &str, connected, security: &str| PeerSummary {
            id: format!("12D3KooW{name}"),
            name: Some(name.into()),
            connected,
            security: Some(security.into()),
            ..PeerSummary::default()
        };
        let text = render(vec![
            peer("desk", true, "tls/TLS13_AES_128_GCM_SHA256"),
            peer("old", true, "noise/ChaChaPoly"),
            peer("laptop", true, "tls/TLS13_CHACHA20_POLY1305_SHA256"),
            peer("arm", true, "noise/ChaChaPoly"),
            peer("gone", false, "noise/ChaChaPoly"),
        ]);
        let tail: Vec<&str> = text.lines().skip(6).collect();
        assert_eq!(tail, ["security noise/ChaChaPoly: arm, old"]);
        let all_tls = render(vec![peer("desk", true, "tls/TLS13_AES_256_GCM_SHA384")]);
        assert_eq!(all_tls.lines().count(), 2, "{all_tls}");
    }
}
