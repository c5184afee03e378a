//! The client side of the CLI: `peers` and `status` ask a running node over its HTTP
//! listener; `keygen` writes a key pair in Nix's format; `mesh-key` a private mesh's key.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use nixmesh_localhttp::{NodeStatus, PeerSummary};
use nixmesh_protocol::signature::SigningKey;
use rand::RngCore;
use thiserror::Error;

/// How long `peers` and `status` wait for the node.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most a node's answer may be.
const MAX_RESPONSE: usize = 16 << 20;

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
    #[error("{0}")]
    Key(#[from] nixmesh_protocol::signature::KeyError),
    #[error(transparent)]
    MeshKey(#[from] crate::mesh::key::MeshKeyError),
}

/// Gets `path` from the node at `url` (`http://host:port`) and decodes its JSON.
async fn get_json<T: serde::de::DeserializeOwned>(url: &str, path: &str) -> Result<T, CliError> {
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| CliError::BadNodeUrl(url.to_owned()))?;
    let unreachable = |reason: String| CliError::Unreachable { url: url.to_owned(), reason };
    let bad = |reason: String| CliError::BadAnswer { url: url.to_owned(), reason };
    let request = Request::get(path)
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|_| CliError::BadNodeUrl(url.to_owned()))?;
    let (status, body) = tokio::time::timeout(NODE_TIMEOUT, async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(|e| bad(e.to_string()))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| bad(format!("reading the body: {e}")))?;
        Ok::<_, CliError>((status, body.to_bytes()))
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {NODE_TIMEOUT:?}")))??;
    if status != StatusCode::OK {
        let status = status.to_string();
        return Err(CliError::Status { url: url.into(), path: path.into(), status });
    }
    serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))
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
    let private = if s.private_mesh { "yes" } else { "no (any node on the network may join)" };
    let _ = writeln!(out, "private mesh:   {private}");
    if let Some(why) = &s.degraded {
        let _ = writeln!(out, "DEGRADED:       {why}");
    }
    Ok(out)
}

/// `nixmesh mesh-key`: writes a new mesh key to `out` (never over an existing file, mode
/// 0600) and returns a line to print: where it went and its fingerprint.
pub fn mesh_key(out: &Path) -> Result<String, CliError> {
    let key = crate::mesh::key::MeshKey::generate();
    key.write_new(out)?;
    Ok(format!(
        "wrote a new mesh key to {} (fingerprint {}); copy it to every node of the mesh and give it \
         with --mesh-key-file",
        out.display(),
        key.fingerprint()
    ))
}

/// `nixmesh keygen`: writes a new secret key to `out` (never over an existing file) and
/// returns the public key.
pub fn keygen(name: &str, out: &Path) -> Result<String, CliError> {
    let mut seed = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut seed);
    let key = SigningKey::try_from_seed(name, seed)?;
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
