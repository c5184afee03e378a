//! One connection to the nix-daemon: the handshake, the stderr message loop that precedes
//! every answer, and the four operations nixmesh needs (Nix's `remote-store.cc` is the client
//! we mirror, `daemon.cc` the server).
//!
//! The protocol's constants, version gates, bounds and requests are
//! [`nixmesh_protocol::nix_daemon::worker_protocol`]'s; this is the I/O: sending requests and reading
//! the answers, each length bounded before anything is allocated.
//!
//! The `daemon` fuzz target (`fuzz/src/daemon.rs`) compiles this file, with `daemon_reader.rs`,
//! `error.rs` and `path_info.rs`, on its own: it may use nothing else of the node.

use std::io;
use std::path::Path;
use std::sync::Arc;

use nixmesh_protocol::nar::format::NAR_HEADER;
use nixmesh_protocol::nix_daemon::NixWireError;
use nixmesh_protocol::nix_daemon::worker_protocol::{
    self, DAEMON_MAGIC, MAX_FIELDS, MAX_MINOR, MAX_PATHS, MAX_REFERENCES, MAX_SHORT_LEN,
    MAX_SIGNATURES, MAX_STORE_PATH_LEN, MAX_TEXT_LEN, MIN_MINOR, Op, PROTOCOL_MAJOR, since, stderr,
};
use nixmesh_protocol::store_path::StorePathError;
use nixmesh_protocol::{Sha256, StorePath, StorePathHash};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tracing::{debug, trace};

use super::daemon_reader::{self, ReadError};
use super::{PathInfo, StoreError};

/// A handshaken connection to a nix-daemon, between operations.
///
/// An operation that fails leaves the connection in an unknown state: callers must drop it.
pub struct Connection<S> {
    io: BufReader<S>,
    socket: Arc<Path>,
    minor: u64,
    daemon_version: Option<String>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Greets the daemon on `stream` and negotiates the protocol version. `socket` names the
    /// daemon in errors.
    pub async fn handshake(stream: S, socket: Arc<Path>) -> Result<Self, StoreError> {
        let mut conn = Connection {
            io: BufReader::new(stream),
            socket,
            minor: MAX_MINOR,
            daemon_version: None,
        };
        conn.send(&worker_protocol::hello()).await?;

        let magic = conn.u64().await?;
        if magic != DAEMON_MAGIC {
            return Err(conn.protocol_err(format!(
                "this is not a nix-daemon: it answered the greeting with {magic:#x}, \
                 not {DAEMON_MAGIC:#x}"
            )));
        }
        let version = conn.u64().await?;
        let (major, minor) = (version >> 8, version & 0xff);
        if major != PROTOCOL_MAJOR || minor < MIN_MINOR {
            return Err(StoreError::UnsupportedDaemon {
                socket: conn.socket.to_path_buf(),
                major,
                minor,
            });
        }
        conn.minor = minor.min(MAX_MINOR);

        conn.send(&worker_protocol::client_options(conn.minor)).await?;
        if conn.minor >= since::DAEMON_VERSION {
            conn.daemon_version = Some(conn.string("daemon Nix version", MAX_SHORT_LEN).await?);
        }
        if conn.minor >= since::TRUST_FLAG {
            // Whether the daemon trusts us: 0 unknown, 1 trusted, 2 not. Nothing we do needs
            // trust, but anything else means we lost sync.
            let trust = conn.u64().await?;
            if trust > 2 {
                return Err(conn.protocol_err(format!("trust flag {trust} is not 0, 1 or 2")));
            }
        }
        // Startup messages (e.g. warnings about nix.conf) end with STDERR_LAST.
        conn.process_stderr().await?;
        debug!(minor = conn.minor, daemon = ?conn.daemon_version, "nix-daemon handshake done");
        Ok(conn)
    }

    /// The negotiated minor protocol version.
    pub fn minor(&self) -> u64 {
        self.minor
    }

    /// The socket this connection was opened on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The daemon's Nix version, which daemons at 1.33 and later send.
    pub fn daemon_version(&self) -> Option<&str> {
        self.daemon_version.as_deref()
    }

    /// `QueryAllValidPaths`: the hash of every valid path in the store, each path checked as
    /// a store path (the names are not kept: a node lists its whole store whenever it
    /// changes, and only the hashes are advertised).
    pub async fn query_all_valid_paths(&mut self) -> Result<Vec<StorePathHash>, StoreError> {
        self.send(&worker_protocol::request(Op::QueryAllValidPaths, None)).await?;
        self.process_stderr().await?;
        self.path_list("valid paths", MAX_PATHS, StorePath::hash_of).await
    }

    /// `QueryPathFromHashPart`: the valid path with this hash, if any.
    pub async fn query_path_from_hash_part(
        &mut self,
        hash: &StorePathHash,
    ) -> Result<Option<StorePath>, StoreError> {
        let hash_part = hash.to_string();
        self.send(&worker_protocol::request(Op::QueryPathFromHashPart, Some(&hash_part))).await?;
        self.process_stderr().await?;
        let path = self.optional_path("path for a hash part").await?;
        match path {
            Some(path) if path.hash() != *hash => Err(self
                .protocol_err(format!("asked for the path with hash {hash}, it answered {path}"))),
            path => Ok(path),
        }
    }

    /// `QueryPathInfo`: the metadata of `path`, `None` if it is not valid.
    pub async fn query_path_info(
        &mut self,
        path: &StorePath,
    ) -> Result<Option<PathInfo>, StoreError> {
        self.send(&worker_protocol::request(Op::QueryPathInfo, Some(&path.to_string()))).await?;
        self.process_stderr().await?;
        if !self.bool("valid flag").await? {
            return Ok(None);
        }
        let deriver = self.optional_path("deriver").await?;
        let hash_text = self.string("narHash", MAX_SHORT_LEN).await?;
        let nar_hash = parse_nar_hash(&hash_text).ok_or_else(|| {
            self.protocol_err(format!("narHash {hash_text:?} of {path} is not a sha256 digest"))
        })?;
        let references = self.paths("references", MAX_REFERENCES).await?;
        let registration_time = self.u64().await?;
        let nar_size = self.u64().await?;
        let ultimate = self.bool("ultimate flag").await?;
        let signatures = self.strings("signatures", MAX_SIGNATURES, MAX_SHORT_LEN).await?;
        let ca = self.string("content address", MAX_SHORT_LEN).await?;
        Ok(Some(PathInfo {
            path: path.clone(),
            deriver,
            nar_hash,
            references,
            registration_time,
            nar_size,
            ultimate,
            signatures,
            ca: (!ca.is_empty()).then_some(ca),
        }))
    }

    /// Sends `NarFromPath` and reads up to the NAR itself, checking that it starts like one.
    /// The daemon then writes the rest of the NAR raw, with no framing: after this, the caller
    /// must read exactly the NAR's size minus [`NAR_HEADER`] with [`Self::read_raw`] before the
    /// connection can carry another operation.
    pub async fn start_nar_from_path(&mut self, path: &StorePath) -> Result<(), StoreError> {
        self.send(&worker_protocol::request(Op::NarFromPath, Some(&path.to_string()))).await?;
        self.process_stderr().await?;
        // A daemon that fails to read the path after STDERR_LAST (Nix 2.8 does this when the
        // path vanished) sends STDERR_ERROR in place of the NAR and hangs up.
        let first = self.u64().await?;
        if first == stderr::ERROR {
            let message = self.daemon_error().await?;
            return Err(self.daemon_err(format!("sending the NAR of {path}: {message}")));
        }
        let mut header = [0u8; NAR_HEADER.len()];
        header[..8].copy_from_slice(&first.to_le_bytes());
        self.read_raw(&mut header[8..]).await?;
        if header != NAR_HEADER {
            return Err(self.protocol_err(format!("the NAR of {path} does not start like a NAR")));
        }
        Ok(())
    }

    /// Fills `buf` with raw bytes (NAR contents after [`Self::start_nar_from_path`]).
    pub async fn read_raw(&mut self, buf: &mut [u8]) -> Result<(), StoreError> {
        let result = self.io.read_exact(buf).await;
        result.map(drop).map_err(|e| self.io_err(e))
    }

    /// Reads the messages the daemon sends before an answer, up to `STDERR_LAST`.
    async fn process_stderr(&mut self) -> Result<(), StoreError> {
        loop {
            match self.u64().await? {
                stderr::LAST => return Ok(()),
                stderr::NEXT => {
                    let line = self.text("log line").await?;
                    debug!(target: "nix_daemon", "{}", strip_ansi(line.trim_end()));
                }
                stderr::ERROR => {
                    let message = self.daemon_error().await?;
                    return Err(self.daemon_err(message));
                }
                stderr::START_ACTIVITY => {
                    let id = self.u64().await?;
                    let _level = self.u64().await?;
                    let kind = self.u64().await?;
                    let text = self.text("activity text").await?;
                    self.skip_fields().await?;
                    let _parent = self.u64().await?;
                    trace!(target: "nix_daemon", id, kind, "{}", strip_ansi(&text));
                }
                stderr::STOP_ACTIVITY => {
                    let _id = self.u64().await?;
                }
                stderr::RESULT => {
                    let _id = self.u64().await?;
                    let _kind = self.u64().await?;
                    self.skip_fields().await?;
                }
                stderr::READ | stderr::WRITE => {
                    return Err(self.protocol_err(
                        "it asked to exchange data (STDERR_READ/WRITE) during an operation \
                         that has none",
                    ));
                }
                other => {
                    return Err(self.protocol_err(format!(
                        "daemon sent an unknown stderr message {other:#x}"
                    )));
                }
            }
        }
    }

    /// The body of `STDERR_ERROR`: the structured form from 1.26 on, `message status` before.
    async fn daemon_error(&mut self) -> Result<String, StoreError> {
        if self.minor < since::STRUCTURED_ERRORS {
            let message = self.text("error message").await?;
            let _status = self.u64().await?;
            return Ok(strip_ansi(message.trim_end()));
        }
        let kind = self.string("error type", MAX_SHORT_LEN).await?;
        if kind != "Error" {
            return Err(self.protocol_err(format!("error of unknown type {kind:?}")));
        }
        let _level = self.u64().await?;
        let _name = self.text("error name").await?; // always "Error" since Nix 2.4
        let mut message = strip_ansi(self.text("error message").await?.trim_end());
        self.no_position().await?;
        let traces = self.count("error traces", MAX_FIELDS).await?;
        for _ in 0..traces {
            self.no_position().await?;
            let trace = self.text("error trace").await?;
            message.push_str("; ");
            message.push_str(&strip_ansi(trace.trim_end()));
        }
        Ok(message)
    }

    /// Nix never sends error positions (it asserts the flag is 0 on reading).
    async fn no_position(&mut self) -> Result<(), StoreError> {
        match self.u64().await? {
            0 => Ok(()),
            n => Err(self.protocol_err(format!("error position flag is {n}, not 0"))),
        }
    }

    /// Skips the fields of an activity or result: integers (type 0) and strings (type 1).
    async fn skip_fields(&mut self) -> Result<(), StoreError> {
        let count = self.count("activity fields", MAX_FIELDS).await?;
        for _ in 0..count {
            match self.u64().await? {
                0 => drop(self.u64().await?),
                1 => drop(self.text("activity field").await?),
                kind => {
                    return Err(self.protocol_err(format!("activity field of unknown type {kind}")));
                }
            }
        }
        Ok(())
    }

    async fn send(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let inner = self.io.get_mut();
        let result = async {
            inner.write_all(bytes).await?;
            inner.flush().await
        }
        .await;
        result.map_err(|e| self.io_err(e))
    }

    async fn u64(&mut self) -> Result<u64, StoreError> {
        let result = daemon_reader::read_u64(&mut self.io).await;
        result.map_err(|e| self.wire_err(e))
    }

    async fn bool(&mut self, what: &'static str) -> Result<bool, StoreError> {
        let result = daemon_reader::read_bool(&mut self.io, what).await;
        result.map_err(|e| self.wire_err(e))
    }

    async fn count(&mut self, what: &'static str, max: usize) -> Result<usize, StoreError> {
        let result = daemon_reader::read_count(&mut self.io, what, max).await;
        result.map_err(|e| self.wire_err(e))
    }

    async fn string(&mut self, what: &'static str, max: usize) -> Result<String, StoreError> {
        let result = daemon_reader::read_string(&mut self.io, what, max).await;
        result.map_err(|e| self.wire_err(e))
    }

    async fn text(&mut self, what: &'static str) -> Result<String, StoreError> {
        let result = daemon_reader::read_text(&mut self.io, what, MAX_TEXT_LEN).await;
        result.map_err(|e| self.wire_err(e))
    }

    async fn strings(
        &mut self,
        what: &'static str,
        max_count: usize,
        max_len: usize,
    ) -> Result<Vec<String>, StoreError> {
        let result = daemon_reader::read_strings(&mut self.io, what, max_count, max_len).await;
        result.map_err(|e| self.wire_err(e))
    }

    /// A store path, or the empty string for none.
    async fn optional_path(&mut self, what: &'static str) -> Result<Option<StorePath>, StoreError> {
        let text = self.string(what, MAX_STORE_PATH_LEN).await?;
        if text.is_empty() {
            return Ok(None);
        }
        StorePath::parse(&text)
            .map(Some)
            .map_err(|e| self.protocol_err(format!("{what} {text:?} is not a store path: {e}")))
    }

    async fn paths(
        &mut self,
        what: &'static str,
        max: usize,
    ) -> Result<Vec<StorePath>, StoreError> {
        self.path_list(what, max, StorePath::parse).await
    }

    /// A list of at most `max` store paths, each read through one buffer and turned into a
    /// `T` by `parse` (a whole path, or its hash alone when a store's every path is read).
    async fn path_list<T>(
        &mut self,
        what: &'static str,
        max: usize,
        parse: fn(&str) -> Result<T, StorePathError>,
    ) -> Result<Vec<T>, StoreError> {
        let count = self.count(what, max).await?;
        let mut out = Vec::with_capacity(count.min(4096));
        let mut bytes = Vec::new();
        for _ in 0..count {
            let read =
                daemon_reader::read_bytes_into(&mut self.io, what, MAX_STORE_PATH_LEN, &mut bytes);
            read.await.map_err(|e| self.wire_err(e))?;
            let text = std::str::from_utf8(&bytes)
                .map_err(|_| self.wire_err(NixWireError::NotUtf8 { what }.into()))?;
            let parsed = parse(text).map_err(|e| {
                self.protocol_err(format!("one of the {what}, {text:?}, is not a store path: {e}"))
            })?;
            out.push(parsed);
        }
        Ok(out)
    }

    fn wire_err(&self, error: ReadError) -> StoreError {
        match error {
            ReadError::Io(cause) => self.io_err(cause),
            other => self.protocol_err(other.to_string()),
        }
    }

    fn io_err(&self, cause: io::Error) -> StoreError {
        let cause = if cause.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(io::ErrorKind::UnexpectedEof, "the daemon closed the connection")
        } else {
            cause
        };
        StoreError::Io { socket: self.socket.to_path_buf(), cause }
    }

    fn protocol_err(&self, problem: impl Into<String>) -> StoreError {
        StoreError::Protocol { socket: self.socket.to_path_buf(), problem: problem.into() }
    }

    fn daemon_err(&self, message: String) -> StoreError {
        StoreError::Daemon { socket: self.socket.to_path_buf(), message }
    }
}

/// The daemon sends narHash as a bare base-16 digest; accept the prefixed forms too, as Nix's
/// own client does.
fn parse_nar_hash(text: &str) -> Option<Sha256> {
    if text.contains([':', '-']) { Sha256::parse(text).ok() } else { Sha256::parse_digest(text) }
}

/// Removes the terminal colour codes Nix puts around quoted names in its messages.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\x1b' {
            out.push(c);
            continue;
        }
        // CSI sequences: ESC '[' parameters, then one final byte in '@'..='~'.
        if chars.clone().next() == Some('[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
