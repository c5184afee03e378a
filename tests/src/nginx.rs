//! nginx from Debian serving a directory on a host: the static binary cache (`nix copy --to
//! file://DIR`) that the benchmarks measure nixmesh against, and the stand-in for an
//! upstream cache. Stopped on drop.
//!
//! What a test learns of the requests it served: its access log, one line a request written
//! when the request ends (so a download still running is not in it, and one broken off is,
//! with the bytes sent so far), read with [`Nginx::requests`]; and the TCP connections open
//! on its host right now, with the bytes each has delivered ([`Nginx::connections`]), which
//! is how a test sees who is downloading at this moment.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::command::CommandExt;
use crate::netns::Host;
use crate::wait::wait_until;

/// How long nginx may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How long `ss` may take.
const SS_LIMIT: Duration = Duration::from_secs(10);
/// The access log's format: the client's address, the status, the body bytes sent, whether
/// the request completed (`OK`, else nothing), then the request line in quotes (nginx escapes
/// quotes in it), so that [`Request::parse`] can split it without guessing.
const LOG_FORMAT: &str =
    r#"'$remote_addr $status $body_bytes_sent $request_completion "$request"'"#;

/// A running nginx serving `root` on a host.
pub struct Nginx {
    child: Child,
    host: Host,
    port: u16,
    url: String,
    access_log: PathBuf,
}

/// One request, as the access log has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Who asked: the client's address as nginx saw it.
    pub client: IpAddr,
    /// `GET`, say.
    pub method: String,
    /// The path asked for, as sent (`/nar/….nar.xz`).
    pub path: String,
    pub status: u16,
    /// The body bytes sent: fewer than the file's size when the client went away.
    pub body_bytes: u64,
    /// Whether the whole response was sent.
    pub completed: bool,
}

/// One established TCP connection to nginx's port, as `ss` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    /// The client's end.
    pub client: SocketAddr,
    /// The bytes of response the client has acknowledged so far, over every request on the
    /// connection.
    pub bytes_acked: u64,
}

impl Nginx {
    /// Starts nginx on `host`, serving `root` on the host's address at `port`, with its
    /// configuration, pid file and error log in a new directory under the host's.
    pub fn start(host: &Host, root: &Path, port: u16) -> Nginx {
        Nginx::launch(host, port, "", &format!("root {};", root.display()))
    }

    /// [`Nginx::start`], sending each response at `rate` (nginx's `limit_rate`: `512k` is
    /// 512 KiB a second): a slow link to an upstream cache.
    pub fn start_rate_limited(host: &Host, root: &Path, port: u16, rate: &str) -> Nginx {
        Nginx::launch(host, port, "", &format!("root {}; limit_rate {rate};", root.display()))
    }

    /// Starts nginx on `host` at `port` as a reverse proxy to `upstream` (`http://IP:PORT`),
    /// keeping connections to it alive: two hops through nginx, the shape of a request
    /// through two nodes.
    pub fn proxy(host: &Host, upstream: &str, port: u16) -> Nginx {
        let upstream = upstream.trim_start_matches("http://");
        let http = format!("upstream next {{ server {upstream}; keepalive 64; }}");
        let server = "location / { proxy_pass http://next; proxy_http_version 1.1; \
                      proxy_set_header Connection \"\"; }";
        Nginx::launch(host, port, &http, server)
    }

    fn launch(host: &Host, port: u16, http: &str, server: &str) -> Nginx {
        let dir = host.dir().join(format!("nginx-{port}"));
        std::fs::create_dir_all(dir.join("tmp")).expect("creating nginx's directory");
        let access_log = dir.join("access.log");
        let listen = format!("{}:{port}", host.address());
        let conf = format!(
            r#"daemon off;
user root;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  log_format requests {LOG_FORMAT};
  access_log {access_log} requests;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp;
  scgi_temp_path {dir}/tmp;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar; }}
  {http}
  server {{
    listen {listen};
    {server}
  }}
}}
"#,
            dir = dir.display(),
            access_log = access_log.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("writing nginx.conf");
        let child = host
            .command("nginx")
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx");
        let url = format!("http://{listen}");
        let nginx = Nginx { child, host: host.clone(), port, url, access_log };
        let address = listen.parse().expect("an address");
        wait_until(START_LIMIT, "nginx to accept connections", || host_connects(host, &address));
        nginx
    }

    /// `http://ADDRESS:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The requests that have ended so far, in the order they ended.
    pub fn requests(&self) -> Vec<Request> {
        let text = std::fs::read_to_string(&self.access_log).expect("reading nginx's access log");
        text.lines()
            .map(|line| {
                Request::parse(line).unwrap_or_else(|| {
                    panic!("{}: a line not in the log format: {line:?}", self.access_log.display())
                })
            })
            .collect()
    }

    /// The established connections to nginx right now, from `ss` on its host.
    pub fn connections(&self) -> Vec<Connection> {
        let filter = format!("( sport = :{} )", self.port);
        let out = self
            .host
            .command("ss")
            .args(["--tcp", "--numeric", "--info", "--no-header", "state", "established", &filter])
            .stdout_within(SS_LIMIT);
        Connection::parse_ss(&String::from_utf8_lossy(&out))
    }

    /// The process ids of nginx's master and workers (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(children_of(master));
        pids
    }
}

impl Request {
    /// Parses one line of the access log (see `LOG_FORMAT`); `None` if it is not one.
    pub fn parse(line: &str) -> Option<Request> {
        let mut fields = line.splitn(5, ' ');
        let client = fields.next()?.parse().ok()?;
        let status = fields.next()?.parse().ok()?;
        let body_bytes = fields.next()?.parse().ok()?;
        let completed = match fields.next()? {
            "OK" => true,
            // Not completed: the variable is empty (older nginx writes `-`).
            "" | "-" => false,
            _ => return None,
        };
        let request = fields.next()?.strip_prefix('"')?.strip_suffix('"')?;
        let mut words = request.split(' ');
        let (method, path) = (words.next()?.to_owned(), words.next()?.to_owned());
        Some(Request { client, method, path, status, body_bytes, completed })
    }
}

impl Connection {
    /// Reads `ss --tcp --numeric --info --no-header state established` output: a line a
    /// socket (receive queue, send queue, local and peer address), then an indented line of
    /// its details. Sockets without a byte count (nothing sent yet) count 0.
    fn parse_ss(text: &str) -> Vec<Connection> {
        let mut connections: Vec<Connection> = Vec::new();
        for line in text.lines() {
            if line.starts_with(char::is_whitespace) {
                let acked = line
                    .split_whitespace()
                    .find_map(|word| word.strip_prefix("bytes_acked:")?.parse().ok());
                if let (Some(last), Some(acked)) = (connections.last_mut(), acked) {
                    last.bytes_acked = acked;
                }
                continue;
            }
            let addresses: Vec<SocketAddr> =
                line.split_whitespace().filter_map(|word| word.parse().ok()).collect();
            if let [_local, client] = addresses[..] {
                connections.push(Connection { client, bytes_acked: 0 });
            }
        }
        connections
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Workers exit once their master is gone; make sure.
        for pid in children_of(self.child.id()) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// Whether `address` accepts a connection from inside `host`'s namespace.
fn host_connects(host: &Host, address: &std::net::SocketAddr) -> bool {
    host.command("bash")
        .args(["-c", &format!("exec 3<>/dev/tcp/{}/{}", address.ip(), address.port())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            proc_stat(*child).is_some_and(|fields| fields.get(1) == Some(&pid.to_string()))
        })
        .collect()
}

/// The fields of `/proc/PID/stat` after the command name: state, ppid, ...
fn proc_stat(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 2..];
    Some(after.split_whitespace().map(String::from).collect())
}

/// CPU seconds (user and system) `pids` have used so far.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|pid| proc_stat(*pid))
        .map(|f| {
            let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here.
            (field(11) + field(12)) / ticks
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_access_log_line_parses_into_its_fields() {
        let line = r#"10.231.0.3 200 20001168 OK "GET /nar/0nnnxl28.nar.xz HTTP/1.1""#;
        let request = Request::parse(line).expect("a request");
        assert_eq!(
            request,
            Request {
                client: "10.231.0.3".parse().unwrap(),
                method: "GET".into(),
                path: "/nar/0nnnxl28.nar.xz".into(),
                status: 200,
                body_bytes: 20001168,
                completed: true,
            }
        );
        let broken_off = r#"10.231.0.1 200 4194304  "GET /nar/x.nar.xz HTTP/1.1""#;
        assert!(!Request::parse(broken_off).unwrap().completed);
        assert_eq!(Request::parse("10.231.0.1 - - GET"), None);
    }

    #[test]
    fn ss_output_gives_each_connection_with_its_acknowledged_bytes() {
        let text = "0      2694160 10.232.0.2:80 10.231.0.1:59158\n\
                    \t cubic wscale:10,10 rto:312 bytes_sent:9355240 bytes_acked:8747080 \
                    bytes_received:77 segs_out:6466\n\
                    0      0 10.232.0.2:80 10.231.0.3:40000\n\
                    \t cubic wscale:10,10 rto:204\n";
        let connections = Connection::parse_ss(text);
        assert_eq!(
            connections,
            [
                Connection { client: "10.231.0.1:59158".parse().unwrap(), bytes_acked: 8747080 },
                Connection { client: "10.231.0.3:40000".parse().unwrap(), bytes_acked: 0 },
            ]
        );
    }
}
