//! `nixmesh why <store path or hash>`: which peers advertise a path, what their narinfos
//! carry, and whether the node would serve it to Nix, and if not, why (the node's
//! `/_nixmesh/why/<hash>` route judges; this prints).

use std::fmt::Write as _;

use nixmesh_localhttp::WhyReport;
use nixmesh_protocol::StorePathHash;
use nixmesh_protocol::store_path::{HASH_CHARS, STORE_DIR};

use super::{CliError, get_json, short_id};

/// `nixmesh why`.
pub async fn why(node: &str, path: &str, json: bool) -> Result<String, CliError> {
    let hash = hash_of(path)?;
    let report: WhyReport = get_json(node, &format!("/_nixmesh/why/{hash}")).await?;
    if json {
        return Ok(serde_json::to_string_pretty(&report).expect("serialisable") + "\n");
    }
    Ok(render(path, &report))
}

/// The hash of `/nix/store/HASH-NAME[/…]`, `HASH-NAME` or `HASH`.
pub fn hash_of(path: &str) -> Result<StorePathHash, CliError> {
    let not = || CliError::NotAStorePath(path.to_owned());
    let base = match path.strip_prefix(STORE_DIR) {
        Some(rest) => rest.strip_prefix('/').ok_or_else(not)?.split('/').next().unwrap_or(""),
        None if path.contains('/') => return Err(not()),
        None => path,
    };
    let hash = base.get(..HASH_CHARS).ok_or_else(not)?;
    if base.len() > HASH_CHARS && !base[HASH_CHARS..].starts_with('-') {
        return Err(not());
    }
    StorePathHash::parse(hash).map_err(|_| not())
}

/// The verdict first, then one paragraph per holder.
pub fn render(asked: &str, r: &WhyReport) -> String {
    let mut out = String::new();
    let path = r.holders.iter().find_map(|h| h.narinfo.as_ref()).map(|n| n.store_path.as_str());
    let _ = writeln!(out, "{}", path.unwrap_or(asked));
    let _ = writeln!(out, "served:   {}", if r.served { "yes" } else { "no" });
    let _ = writeln!(out, "why:      {}", r.reason);
    let names: Vec<&str> =
        r.trusted_keys.iter().map(|k| k.split(':').next().unwrap_or(k)).collect();
    let _ = writeln!(
        out,
        "trusting: {}",
        if names.is_empty() { "no key".to_owned() } else { names.join(", ") }
    );
    let _ = writeln!(out, "holders:  {} advertise it", r.advertisers);
    for h in &r.holders {
        let name = h.peer.name.as_deref().unwrap_or("?");
        let state = if h.peer.connected { "connected" } else { "offline" };
        let _ = writeln!(out, "  {name} ({}, {state})", short_id(&h.peer.id));
        if let Some(n) = &h.narinfo {
            let signed =
                if n.signatures.is_empty() { "nobody".into() } else { n.signatures.join(", ") };
            let _ = writeln!(out, "    signed by: {signed}");
            if let Some(ca) = &n.ca {
                let _ = writeln!(out, "    CA:        {ca}");
            }
        }
        let verdict = match (&h.accepted_by, &h.problem) {
            (Some(by), _) => format!("accepted ({by})"),
            (None, Some(problem)) => format!("not used: {problem}"),
            (None, None) => "not used".to_owned(),
        };
        let _ = writeln!(out, "    {verdict}");
    }
    if r.holders.len() < r.advertisers {
        let _ = writeln!(out, "  … and {} more", r.advertisers - r.holders.len());
    }
    out
}

#[cfg(test)]
mod tests {
    use nixmesh_localhttp::PeerSummary;
    use nixmesh_localhttp::why::{HolderReport, NarInfoSummary, Verdict};

    use super::*;

    const HASH: &str = "0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj";

    #[test]
    fn takes_a_store_path_its_base_name_or_its_hash() {
        let want = StorePathHash::parse(HASH).unwrap();
        for given in [
            format!("/nix/store/{HASH}-hello-2.12"),
            format!("/nix/store/{HASH}-hello-2.12/bin/hello"),
            format!("{HASH}-hello-2.12"),
            HASH.to_owned(),
        ] {
            assert_eq!(hash_of(&given).unwrap(), want, "{given}");
        }
        for bad in ["", "hello", "/tmp/x", "/nix/store/", &format!("{HASH}x"), "/nix/storex"] {
            assert!(hash_of(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_verdict_then_each_holder() {
        let report = WhyReport {
            hash: HASH.into(),
            served: false,
            verdict: Verdict::UntrustedKey,
            reason: "not served: its narinfos are signed by other-1".into(),
            holders: vec![
                HolderReport {
                    peer: PeerSummary {
                        id: "12D3KooWaaaa11112222".into(),
                        name: Some("desk".into()),
                        connected: true,
                        ..PeerSummary::default()
                    },
                    narinfo: Some(NarInfoSummary {
                        store_path: format!("/nix/store/{HASH}-hello"),
                        signatures: vec!["other-1".into()],
                        ca: None,
                        nar_size: 10,
                    }),
                    accepted: false,
                    accepted_by: None,
                    problem: Some("the narinfo has no signature from a trusted key".into()),
                },
                HolderReport {
                    peer: PeerSummary {
                        id: "12D3KooWbbbb33334444".into(),
                        ..PeerSummary::default()
                    },
                    narinfo: None,
                    accepted: false,
                    accepted_by: None,
                    problem: Some("not connected".into()),
                },
            ],
            advertisers: 3,
            trusted_keys: vec!["mine-1:AAAA".into()],
        };
        let text = render(HASH, &report);
        let want = format!(
            "/nix/store/{HASH}-hello
served:   no
why:      not served: its narinfos are signed by other-1
trusting: mine-1
holders:  3 advertise it
  desk (…11112222, connected)
    signed by: other-1
    not used: the narinfo has no signature from a trusted key
  ? (…33334444, offline)
    not used: not connected
  … and 1 more
"
        );
        assert_eq!(text, want);
    }
}
