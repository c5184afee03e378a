//! `GET /_nixmesh/why/<hash>`: why this node would, or would not, serve a store path to Nix,
//! for `nixmesh why`.
//!
//! It asks every connected peer that advertises the path for its narinfo, at once, each within
//! the narinfo time limit, and judges each with the same trust rule the narinfo route uses
//! ([`crate::substituter::accept`]). Read-only: nothing is cached, nothing is fetched but
//! narinfos, and the route has the time limit of every route but NARs; the peers are asked
//! together, so the report is done within one narinfo time limit. At most [`MAX_HOLDERS`]
//! peers are shown and asked, and reports are bounded in number, per client and in the
//! questions they ask peers ([`crate::why_limit`]): past a bound, a `429` at once.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use nixmesh_protocol::{NarInfo, StorePathHash};
use nixmesh_telemetry::RateLimitedLog;
use serde::{Deserialize, Serialize};
use tokio::time::timeout;
use tracing::warn;

use crate::answer::{Outcome, json, malformed};
use crate::connection::ClientConnection;
use crate::metrics::result;
use crate::node_view::{NodeView, PeerSummary};
use crate::source::PathSource;
use crate::substituter::{Accepted, Rejection, Substituter, accept};
use crate::target::RequestPathError;
use crate::why_limit::{WhyLimits, WhyRefusal};

/// The most advertisers a report shows (and asks), connected ones first.
pub const MAX_HOLDERS: usize = 16;

/// What the route answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WhyReport {
    /// The store path's hash, as asked.
    pub hash: String,
    /// Whether Nix asking this node now would get the path.
    pub served: bool,
    pub verdict: Verdict,
    /// The verdict as a sentence, with what to do about it.
    pub reason: String,
    /// The peers that advertise the path, connected first (at most [`MAX_HOLDERS`]).
    pub holders: Vec<HolderReport>,
    /// How many advertise it in all.
    pub advertisers: usize,
    /// The keys this node trusts, `name:base64`.
    pub trusted_keys: Vec<String>,
}

/// The verdict, most useful first when holders disagree.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// A holder gave a narinfo Nix may be given.
    Served,
    /// Narinfos came, signed by no trusted key and not content-addressed.
    UntrustedKey,
    /// Unsigned narinfos with a CA field that does not give the path (or its NarHash).
    NotSelfCertifying,
    /// Narinfos came that are not usable at all (do not parse, or name another path).
    BadNarinfo,
    /// Holders answered that they do not serve it: their serving policy keeps it (unsigned and
    /// not content-addressed there, or excluded), or they no longer have it.
    HolderDeclines,
    /// Holders are known but none answered: not connected, failed or timed out, or they say
    /// they no longer have it.
    HolderUnreachable,
    /// No peer advertises the path.
    NoHolder,
}

/// One advertiser and what its narinfo says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HolderReport {
    pub peer: PeerSummary,
    /// Its narinfo, if it gave one.
    pub narinfo: Option<NarInfoSummary>,
    /// Whether its narinfo may be given to Nix.
    pub accepted: bool,
    /// Why it may: `signed by KEY` or `content-addressed`.
    pub accepted_by: Option<String>,
    /// Why it may not, or why it gave none.
    pub problem: Option<String>,
}

/// What `nixmesh why` shows of a narinfo.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NarInfoSummary {
    pub store_path: String,
    /// The names of the keys it is signed with.
    pub signatures: Vec<String>,
    /// Its `CA:` field.
    pub ca: Option<String>,
    pub nar_size: u64,
}

/// What the route reads: the substituter (its source and trust rule), the node's view, and
/// the limits on reports.
pub(crate) struct WhyState<S: PathSource> {
    pub sub: Arc<Substituter<S>>,
    pub view: Arc<dyn NodeView>,
    pub limits: WhyLimits,
    /// Refusals, logged once a second at most.
    pub refused: RateLimitedLog,
}

pub(crate) async fn why<S: PathSource>(
    State(state): State<Arc<WhyState<S>>>,
    client: Option<Extension<ConnectInfo<ClientConnection>>>,
    Path(hash): Path<String>,
) -> Response {
    // A store path's base name (`<hash>-<name>`) is taken for its hash.
    let hash_part = hash.split_once('-').map_or(hash.as_str(), |(h, _)| h);
    let Ok(hash) = StorePathHash::parse(hash_part) else {
        let reason = "the store hash is not 32 nixbase32 characters";
        return malformed(RequestPathError::Malformed { kind: "why", reason });
    };
    let client = client.map(|Extension(ConnectInfo(c))| c.remote().ip());
    let _turn = match state.limits.turn(client) {
        Ok(turn) => turn,
        Err(refusal) => return too_many(&state, refusal),
    };
    let asked = Asked::of(&state.sub, state.view.as_ref(), hash);
    if let Err(refusal) = state.limits.ask(asked.connected()) {
        return too_many(&state, refusal);
    }
    json(&report(&state.sub, asked, hash).await)
}

/// A `429` for a report past a limit, counted as refused.
fn too_many<S: PathSource>(state: &WhyState<S>, refusal: WhyRefusal) -> Response {
    if let Some(held_back) = state.refused.admit() {
        warn!(held_back, "why: {refusal}; answered 429");
    }
    let body = format!("why: {refusal}; ask again in a second\n");
    let mut response = (StatusCode::TOO_MANY_REQUESTS, [(RETRY_AFTER, "1")], body).into_response();
    response.extensions_mut().insert(Outcome(result::REFUSED));
    response
}

/// The advertisers a report shows (connected first, at most [`MAX_HOLDERS`]), each with its
/// peer when it is connected, and how many advertise the path in all.
struct Asked<P> {
    shown: Vec<(PeerSummary, Option<P>)>,
    total: usize,
}

impl<P: Clone + ToString> Asked<P> {
    fn of<S: PathSource<Peer = P>>(
        sub: &Substituter<S>,
        view: &dyn NodeView,
        hash: StorePathHash,
    ) -> Self {
        let connected = sub.source.holders(&hash);
        let mut advertisers = view.advertisers(&hash);
        let total = advertisers.len();
        advertisers.sort_by_key(|p| !p.connected);
        advertisers.truncate(MAX_HOLDERS);
        let shown = advertisers
            .into_iter()
            .map(|summary| {
                let peer = connected.iter().find(|p| p.to_string() == summary.id).cloned();
                (summary, peer)
            })
            .collect();
        Asked { shown, total }
    }

    /// How many peers the report asks.
    fn connected(&self) -> usize {
        self.shown.iter().filter(|(_, peer)| peer.is_some()).count()
    }
}

async fn report<S: PathSource>(
    sub: &Substituter<S>,
    asked: Asked<S::Peer>,
    hash: StorePathHash,
) -> WhyReport {
    let asks = asked.shown.into_iter().map(|(summary, peer)| async move {
        match peer {
            Some(peer) => judge(sub, &peer, hash, summary).await,
            None => {
                let problem = Some("not connected".to_owned());
                let held = HolderReport {
                    peer: summary,
                    narinfo: None,
                    accepted: false,
                    accepted_by: None,
                    problem,
                };
                (held, Verdict::HolderUnreachable)
            }
        }
    });
    let judged = join_all(asks).await;
    let verdict = judged.iter().map(|(_, v)| *v).min().unwrap_or(Verdict::NoHolder);
    let holders: Vec<HolderReport> = judged.into_iter().map(|(h, _)| h).collect();
    let trusted_keys: Vec<String> =
        sub.config.trusted_keys.keys().iter().map(|k| k.to_string()).collect();
    WhyReport {
        hash: hash.to_string(),
        served: verdict == Verdict::Served,
        verdict,
        reason: explain(verdict, &holders, &trusted_keys),
        holders,
        advertisers: asked.total,
        trusted_keys,
    }
}

/// Asks `peer` for its narinfo of `hash` and judges it.
async fn judge<S: PathSource>(
    sub: &Substituter<S>,
    peer: &S::Peer,
    hash: StorePathHash,
    summary: PeerSummary,
) -> (HolderReport, Verdict) {
    let mut held = HolderReport {
        peer: summary,
        narinfo: None,
        accepted: false,
        accepted_by: None,
        problem: None,
    };
    let limit = sub.config.narinfo_peer_timeout;
    let text = match timeout(limit, sub.source.fetch_narinfo(peer, hash)).await {
        Ok(Ok(Some(text))) => text,
        Ok(Ok(None)) => {
            held.problem =
                Some("it does not serve it to peers (see its `nixmesh status`)".to_owned());
            return (held, Verdict::HolderDeclines);
        }
        Ok(Err(e)) => {
            held.problem = Some(e.to_string());
            return (held, Verdict::HolderUnreachable);
        }
        Err(_) => {
            held.problem = Some(format!("no narinfo within {limit:?}"));
            return (held, Verdict::HolderUnreachable);
        }
    };
    held.narinfo = NarInfo::parse(&text).ok().map(|n| NarInfoSummary {
        store_path: n.store_path.to_string(),
        signatures: n.signatures.iter().map(|s| s.name().to_owned()).collect(),
        ca: n.ca.clone(),
        nar_size: n.nar_size,
    });
    let keys = &sub.config.trusted_keys;
    match accept(&text, hash, keys) {
        Ok(Accepted { narinfo, .. }) => {
            held.accepted = true;
            held.accepted_by = Some(match narinfo.verify(keys) {
                Some(key) => format!("signed by {}", key.name()),
                None => "content-addressed".to_owned(),
            });
            (held, Verdict::Served)
        }
        Err(rejection) => {
            let verdict = match &rejection {
                Rejection::Untrusted(_) => Verdict::UntrustedKey,
                Rejection::BadContentAddress(_)
                | Rejection::NotSelfCertifying(_)
                | Rejection::NarHashNotCa => Verdict::NotSelfCertifying,
                Rejection::Malformed(_) | Rejection::OtherPath(_) => Verdict::BadNarinfo,
                Rejection::Source(_) | Rejection::NotHeld => Verdict::HolderUnreachable,
            };
            held.problem = Some(rejection.to_string());
            (held, verdict)
        }
    }
}

fn explain(verdict: Verdict, holders: &[HolderReport], trusted: &[String]) -> String {
    let names: Vec<&str> = trusted.iter().map(|k| k.split(':').next().unwrap_or(k)).collect();
    let trusted = if names.is_empty() { "none".to_owned() } else { names.join(", ") };
    match verdict {
        Verdict::Served => {
            let by = holders.iter().find_map(|h| h.accepted_by.as_deref()).unwrap_or("trusted");
            format!("this node would serve it to Nix ({by})")
        }
        Verdict::UntrustedKey => {
            let mut signers: Vec<&str> = holders
                .iter()
                .filter_map(|h| h.narinfo.as_ref())
                .flat_map(|n| n.signatures.iter().map(String::as_str))
                .collect();
            signers.sort_unstable();
            signers.dedup();
            let signers = if signers.is_empty() { "nobody".to_owned() } else { signers.join(", ") };
            format!(
                "not served: its narinfos are signed by {signers}, and this node trusts {trusted}; \
                 trust the key that signs it (trusted_public_keys), or sign it on its holder \
                 (sign_key_file)"
            )
        }
        Verdict::NotSelfCertifying => "not served: its narinfos are unsigned and their CA field \
             does not give this store path, so only a trusted signature could vouch for it"
            .to_owned(),
        Verdict::BadNarinfo => {
            "not served: its holders sent narinfos that do not parse or name another path"
                .to_owned()
        }
        Verdict::HolderDeclines => "not served: its holders do not serve it to peers: unsigned \
             and not content-addressed there (give that node a sign_key_file, or serve_unsigned), \
             excluded by its serve_exclude, or no longer held; its `nixmesh status` lists what it \
             did not serve and why"
            .to_owned(),
        Verdict::HolderUnreachable => "not served: peers advertise it, but none connected gave \
             its narinfo (see each holder's problem)"
            .to_owned(),
        Verdict::NoHolder => "not served: no peer advertises it (Nix goes on to its next \
             substituter)"
            .to_owned(),
    }
}
