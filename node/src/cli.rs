//! The client side of the CLI: `peers` and `status` ask a running node over its HTTP
//! listener; `keygen` writes a key pair in Nix's format.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use nixmesh_localhttp::{NodeStatus, PeerSummary};
use nixmesh_protocol::signature::SigningKey;
use rand::RngCore;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long `peers` and `status` wait for the node.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a node's answer may be.
const MAX_RESPONSE: u64 = 16 << 20;

/// A CLI command failed.
#[derive(Debug, Error)]
pub enum CliError {
    #[error("--node {0:?} is not of the form http://HOST:PORT")]
    BadNodeUrl(String),
    #[error("cannot reach the node at {url}: {reason} (is `nixmesh serve` running?)")]
    Unreachable { url: String, reason: String },
    #[error("the node at {url} answered {status} for {path}")]
    Status { url: String, path: String, status: String },
    #[error("the node at {url} sent an answer that is not what nixmesh sends: {reason}")]
    BadAnswer { url: String, reason: String },
    #[error("{path}: {source}")]
    Write { path: String, source: std::io::Error },
    #[error("key name {0:?} must be non-empty, without ':' or white space")]
    BadKeyName(String),
}

/// Gets `path` from the node at `url` (`http://host:port`) and decodes its JSON.
async fn get_json<T: serde::de::DeserializeOwned>(url: &str, path: &str) -> Result<T, CliError> {
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| CliError::BadNodeUrl(url.to_owned()))?;
    let unreachable = |reason: String| CliError::Unreachable { url: url.to_owned(), reason };
    let body = tokio::time::timeout(NODE_TIMEOUT, async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.take(MAX_RESPONSE).read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {NODE_TIMEOUT:?}")))?
    .map_err(|e| unreachable(e.to_string()))?;
    let bad = |reason: &str| CliError::BadAnswer { url: url.to_owned(), reason: reason.to_owned() };
    let split =
        body.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no HTTP header"))?;
    let head = String::from_utf8_lossy(&body[..split]);
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(CliError::Status { url: url.into(), path: path.into(), status: status.into() });
    }
    serde_json::from_slice(&body[split + 4..]).map_err(|e| bad(&e.to_string()))
}

/// `nixmesh peers`.
pub async fn peers(node: &str, json: bool) -> Result<String, CliError> {
    let peers: Vec<PeerSummary> = get_json(node, "/_nixmesh/peers").await?;
    if json {
        return Ok(serde_json::to_string_pretty(&peers).expect("serialisable"));
    }
    let mut out = String::new();
    if peers.is_empty() {
        out.push_str("no peers known yet\n");
    }
    for p in &peers {
        let seen = p.last_seen_secs_ago.map_or("never".to_owned(), |s| format!("{s} s ago"));
        let rtt = p.rtt.map_or("-".to_owned(), |d| format!("{:.1} ms", d.as_secs_f64() * 1000.0));
        let state = if p.connected { "connected" } else { "offline" };
        let _ = writeln!(out, "{}  {state}  {} paths  seen {seen}  rtt {rtt}", p.id, p.paths);
        for a in &p.addresses {
            let _ = writeln!(out, "    {a}");
        }
    }
    Ok(out)
}

/// `nixmesh status`.
pub async fn status(node: &str, json: bool) -> Result<String, CliError> {
    let s: NodeStatus = get_json(node, "/_nixmesh/status").await?;
    if json {
        return Ok(serde_json::to_string_pretty(&s).expect("serialisable"));
    }
    let mut out = String::new();
    let _ = writeln!(out, "peer id:        {}", s.peer_id);
    let _ = writeln!(out, "listening on:   {}", s.listen_addresses.join(" "));
    let _ = writeln!(out, "local paths:    {}", s.local_paths);
    let _ =
        writeln!(out, "peers:          {} connected, {} known", s.peers_connected, s.peers_known);
    let _ = writeln!(out, "indexed paths:  {}", s.indexed_paths);
    let _ = writeln!(out, "trusted keys:   {}", s.trusted_keys.join(" "));
    let _ = writeln!(out, "signing key:    {}", s.signing_key.as_deref().unwrap_or("none"));
    if let Some(why) = &s.degraded {
        let _ = writeln!(out, "DEGRADED:       {why}");
    }
    Ok(out)
}

/// `nixmesh keygen`: writes a new secret key to `out` (never over an existing file) and
/// returns the public key.
pub fn keygen(name: &str, out: &Path) -> Result<String, CliError> {
    if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
        return Err(CliError::BadKeyName(name.to_owned()));
    }
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = SigningKey::from_seed(name, seed);
    let write_err = |source| CliError::Write { path: out.display().to_string(), source };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(write_err)?;
    file.write_all(key.to_secret_string().as_bytes()).map_err(write_err)?;
    Ok(key.verifying_key().to_string())
}
