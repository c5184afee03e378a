//! The client side of the CLI: `peers`, `status` and `why` ask a running node over its HTTP
//! listener (one file each, with its human output); `keygen` writes a key pair in Nix's
//! format, `mesh-key` a private mesh's key; `docs` prints shell completions and the man page.

mod docs;
mod peers;
mod status;
mod why;

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::header::{ACCEPT, HOST, RETRY_AFTER};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use nixmesh_protocol::signature::SigningKey;
use rand::RngCore;
use thiserror::Error;

pub use docs::{completions, man};
pub use peers::peers;
pub use status::status;
pub use why::why;

/// How long `peers`, `status` and `why` wait for the node.
const NODE_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a `429` from the node is asked again, and the longest wait before each.
const BUSY_RETRIES: u32 = 5;
const MAX_RETRY_AFTER: Duration = Duration::from_secs(5);
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
    #[error("no subcommand {name:?} (there are: {known})")]
    NoSuchSubcommand { name: String, known: String },
    #[error("{0:?} is not a store path or its hash (/nix/store/HASH-NAME, HASH-NAME or HASH)")]
    NotAStorePath(String),
    #[error(transparent)]
    MeshKey(#[from] crate::mesh::key::MeshKeyError),
}

/// Gets `path` from the node at `url` (`http://host:port`) and decodes its JSON. A `429`
/// (too many `why` reports at once) is asked again after the node's `Retry-After`, up to
/// [`BUSY_RETRIES`] times.
pub(crate) async fn get_json<T: serde::de::DeserializeOwned>(
    url: &str,
    path: &str,
) -> Result<T, CliError> {
    let authority = url
        .strip_prefix("http://")
        .map(|rest| rest.trim_end_matches('/'))
        .filter(|a| !a.is_empty() && !a.contains('/'))
        .ok_or_else(|| CliError::BadNodeUrl(url.to_owned()))?;
    let bad = |reason: String| CliError::BadAnswer { url: url.to_owned(), reason };
    let mut retries = 0;
    let body = loop {
        let (status, retry_after, body) = get_once(url, authority, path).await?;
        if status == StatusCode::TOO_MANY_REQUESTS && retries < BUSY_RETRIES {
            retries += 1;
            tokio::time::sleep(retry_after.min(MAX_RETRY_AFTER)).await;
            continue;
        }
        if status != StatusCode::OK {
            let status = status.to_string();
            return Err(CliError::Status { url: url.into(), path: path.into(), status });
        }
        break body;
    };
    serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))
}

/// One `GET path` from the node at `authority`: the status, its `Retry-After` (1 s when it
/// gives none), and the body.
async fn get_once(
    url: &str,
    authority: &str,
    path: &str,
) -> Result<(StatusCode, Duration, Bytes), CliError> {
    let unreachable = |reason: String| CliError::Unreachable { url: url.to_owned(), reason };
    let bad = |reason: String| CliError::BadAnswer { url: url.to_owned(), reason };
    let request = Request::get(path)
        .header(HOST, authority)
        .header(ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|_| CliError::BadNodeUrl(url.to_owned()))?;
    tokio::time::timeout(NODE_TIMEOUT, async {
        let stream = tokio::net::TcpStream::connect(authority)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        tokio::spawn(connection);
        let response = sender.send_request(request).await.map_err(|e| bad(e.to_string()))?;
        let status = response.status();
        let retry_after = response.headers().get(RETRY_AFTER);
        let retry_after = retry_after.and_then(|v| v.to_str().ok()?.parse().ok());
        let retry_after = Duration::from_secs(retry_after.unwrap_or(1));
        let body = Limited::new(response.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| bad(format!("reading the body: {e}")))?;
        Ok((status, retry_after, body.to_bytes()))
    })
    .await
    .map_err(|_| unreachable(format!("no answer within {NODE_TIMEOUT:?}")))?
}

/// `bytes` as a person reads them: `0 B`, `512 B`, `1.5 KiB`, `20.0 MiB`, `3.1 GiB`.
pub(crate) fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A peer id short enough for a table: its last 8 characters (every ed25519 id starts
/// alike), after an ellipsis.
pub(crate) fn short_id(id: &str) -> String {
    let tail = id.char_indices().rev().nth(7).map_or(id, |(at, _)| &id[at..]);
    format!("…{tail}")
}

/// `rows` as columns, each as wide as its widest cell, two spaces apart; the last column
/// unpadded.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[c] - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
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

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn bytes_ids_and_tables_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 << 20), "20.0 MiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(short_id("12D3KooWAbCdEfGh12345678"), "…12345678");
        assert_eq!(short_id("abc"), "…abc");
        let rows = vec![
            vec!["NAME".into(), "STATE".into(), "X".into()],
            vec!["laptop".into(), "on".into(), "1".into()],
        ];
        assert_eq!(table(&rows), "NAME    STATE  X\nlaptop  on     1\n");
    }

    /// A node that answers `429` (`Retry-After: 0`) `busy` times, then `{"ok":true}`: how
    /// many requests it took.
    async fn busy_node(busy: usize) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let served = tokio::spawn(async move {
            for n in 0..=busy {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = vec![0u8; 4096];
                let _ = socket.read(&mut request).await.unwrap();
                let answer = if n < busy {
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n"
                } else {
                    "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n{\"ok\":true}"
                };
                socket.write_all(answer.as_bytes()).await.unwrap();
            }
            busy + 1
        });
        (url, served)
    }

    #[tokio::test]
    async fn a_busy_node_is_asked_again_a_few_times_then_given_up_on() {
        let (url, served) = busy_node(2).await;
        let answer: serde_json::Value = get_json(&url, "/_nixmesh/why/x").await.unwrap();
        assert_eq!(answer["ok"], true);
        assert_eq!(served.await.unwrap(), 3);

        let (url, served) = busy_node(BUSY_RETRIES as usize + 1).await;
        let err = get_json::<serde_json::Value>(&url, "/_nixmesh/why/x").await.unwrap_err();
        assert!(err.to_string().contains("429"), "{err}");
        served.abort();
    }
}
