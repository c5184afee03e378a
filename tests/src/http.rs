//! Many `GET`s at once, the way Nix's client sends them: a fixed number of connections, each
//! kept alive and used for one request after another (Nix uses 25 for narinfos and up to 16
//! for NARs). Plain HTTP/1.1 over std sockets, so that a test sees exactly what a client
//! would: the status, the body, and nothing smoothed over by retries.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long one response may take; a request past it counts as failed (status 0).
const RESPONSE_LIMIT: Duration = Duration::from_secs(60);
/// The longest header block or body read; more is a broken server.
const MAX_HEADER_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: u64 = 4 << 30;

/// One answered request.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The path asked for.
    pub path: String,
    /// The HTTP status; 0 when no complete response arrived (the error is in `error`).
    pub status: u16,
    /// The body, unless only counted ([`count_all`]).
    pub body: Vec<u8>,
    /// The body's length.
    pub len: u64,
    /// From sending the request to the last byte of the body.
    pub took: Duration,
    pub error: Option<String>,
}

/// One `GET` of `path` from `address`, on a connection of its own: the status and the body.
/// Panics if no complete answer comes within the response limit.
pub fn get_one(address: SocketAddr, path: &str) -> (u16, Vec<u8>) {
    let fetched = get_all(address, &[path.to_owned()], 1).remove(0);
    assert!(fetched.status != 0, "GET {path} from {address}: {:?}", fetched.error);
    (fetched.status, fetched.body)
}

/// `GET` of every one of `paths` from `address`, over `connections` kept-alive connections at
/// once; the answers in the order of `paths`. A connection the server closed is opened anew
/// before the next request, as curl does; a request that fails on a fresh connection is
/// reported as failed, not retried.
pub fn get_all(address: SocketAddr, paths: &[String], connections: usize) -> Vec<Fetched> {
    fetch_all(address, paths, connections, true)
}

/// Like [`get_all`], with each body read and counted but not kept (for large NARs: a client
/// that keeps a gigabyte in memory measures its own page faults).
pub fn count_all(address: SocketAddr, paths: &[String], connections: usize) -> Vec<Fetched> {
    fetch_all(address, paths, connections, false)
}

fn fetch_all(
    address: SocketAddr,
    paths: &[String],
    connections: usize,
    keep: bool,
) -> Vec<Fetched> {
    let next = AtomicUsize::new(0);
    let answers: Vec<Mutex<Option<Fetched>>> = paths.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..connections.max(1) {
            scope.spawn(|| {
                let mut connection: Option<Connection> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(path) = paths.get(i) else { break };
                    let fetched = get(address, &mut connection, path, keep);
                    *answers[i].lock() = Some(fetched);
                }
            });
        }
    });
    answers.into_iter().map(|a| a.into_inner().expect("every path was asked")).collect()
}

fn get(
    address: SocketAddr,
    connection: &mut Option<Connection>,
    path: &str,
    keep: bool,
) -> Fetched {
    let start = Instant::now();
    let reused = connection.is_some();
    let mut outcome = attempt(address, connection, path, keep);
    if outcome.is_err() && reused {
        // A kept-alive connection the server closed while idle: one retry on a new one, as
        // any HTTP client does.
        *connection = None;
        outcome = attempt(address, connection, path, keep);
    }
    let took = start.elapsed();
    match outcome {
        Ok((status, body, len)) => {
            Fetched { path: path.to_owned(), status, body, len, took, error: None }
        }
        Err(e) => {
            *connection = None;
            let error = Some(e.to_string());
            Fetched { path: path.to_owned(), status: 0, body: Vec::new(), len: 0, took, error }
        }
    }
}

fn attempt(
    address: SocketAddr,
    connection: &mut Option<Connection>,
    path: &str,
    keep: bool,
) -> io::Result<(u16, Vec<u8>, u64)> {
    if connection.is_none() {
        *connection = Some(Connection::open(address)?);
    }
    let c = connection.as_mut().expect("just opened");
    let (status, body, len, reusable) = c.get(path, keep)?;
    if !reusable {
        *connection = None;
    }
    Ok((status, body, len))
}

struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open(address: SocketAddr) -> io::Result<Connection> {
        let stream = TcpStream::connect_timeout(&address, RESPONSE_LIMIT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(RESPONSE_LIMIT))?;
        stream.set_write_timeout(Some(RESPONSE_LIMIT))?;
        Ok(Connection { reader: BufReader::new(stream) })
    }

    /// Status, body (if kept), its length, and whether the connection may be used again.
    fn get(&mut self, path: &str, keep_body: bool) -> io::Result<(u16, Vec<u8>, u64, bool)> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let mut header_bytes = 0;
        let mut line = String::new();
        let mut read_line = |reader: &mut BufReader<TcpStream>, line: &mut String| {
            line.clear();
            let n = reader.read_line(line)?;
            header_bytes += n;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"));
            }
            if header_bytes > MAX_HEADER_BYTES {
                return Err(io::Error::other("header block too long"));
            }
            Ok(())
        };
        read_line(&mut self.reader, &mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
        let (mut length, mut chunked, mut keep) = (None, false, true);
        loop {
            read_line(&mut self.reader, &mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else { continue };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse::<u64>().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                "connection" => keep = !value.eq_ignore_ascii_case("close"),
                _ => {}
            }
        }
        let body = if chunked {
            self.chunked_body()?
        } else if let Some(length) = length {
            if length > MAX_BODY_BYTES {
                return Err(io::Error::other(format!("body of {length} bytes")));
            }
            if !keep_body {
                let read = io::copy(&mut (&mut self.reader).take(length), &mut io::sink())?;
                if read != length {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short"));
                }
                return Ok((status, Vec::new(), length, keep));
            }
            let mut body = vec![0; length as usize];
            self.reader.read_exact(&mut body)?;
            body
        } else {
            keep = false;
            let mut body = Vec::new();
            (&mut self.reader).take(MAX_BODY_BYTES).read_to_end(&mut body)?;
            body
        };
        let len = body.len() as u64;
        Ok((status, body, len, keep))
    }

    fn chunked_body(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| io::Error::other(format!("bad chunk size {line:?}")))?;
            if body.len() as u64 + size > MAX_BODY_BYTES {
                return Err(io::Error::other("chunked body too long"));
            }
            let start = body.len();
            body.resize(start + size as usize, 0);
            self.reader.read_exact(&mut body[start..])?;
            line.clear();
            self.reader.read_line(&mut line)?;
            if size == 0 {
                return Ok(body);
            }
        }
    }
}

/// What [`hammer`] saw.
#[derive(Debug, Clone, Default)]
pub struct Hammered {
    pub requests: usize,
    /// Requests answered with the status expected.
    pub expected: usize,
    /// Latencies in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    pub seconds: f64,
}

/// `GET path` over `connections` kept-alive connections at once, again and again, for
/// `duration`; counts answers with status `expect`.
pub fn hammer(
    address: SocketAddr,
    path: &str,
    expect: u16,
    connections: usize,
    duration: Duration,
) -> Hammered {
    let start = Instant::now();
    let results = Mutex::new(Hammered::default());
    std::thread::scope(|scope| {
        for _ in 0..connections.max(1) {
            scope.spawn(|| {
                let mut mine = Hammered::default();
                let mut connection: Option<Connection> = None;
                while start.elapsed() < duration {
                    let fetched = get(address, &mut connection, path, false);
                    mine.requests += 1;
                    mine.expected += usize::from(fetched.status == expect);
                    mine.latencies_us.push(fetched.took.as_micros() as u64);
                }
                let mut all = results.lock();
                all.requests += mine.requests;
                all.expected += mine.expected;
                all.latencies_us.extend(mine.latencies_us);
            });
        }
    });
    let mut all = results.into_inner();
    all.latencies_us.sort_unstable();
    all.seconds = start.elapsed().as_secs_f64();
    all
}

/// The `q` quantile (0 to 1) of sorted `values`; 0 for none.
pub fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let at = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[at.min(sorted.len() - 1)]
}
