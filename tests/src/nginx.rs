//! nginx from Debian serving a directory on a host: the static binary cache (`nix copy --to
//! file://DIR`) that the benchmarks measure nixmesh against, and the stand-in for an
//! upstream cache. Stopped on drop.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::netns::Host;
use crate::wait::wait_until;

/// How long nginx may take to accept connections.
const START_LIMIT: Duration = Duration::from_secs(20);

/// A running nginx serving `root` on a host.
pub struct Nginx {
    child: Child,
    url: String,
}

impl Nginx {
    /// Starts nginx on `host`, serving `root` on the host's address at `port`, with its
    /// configuration, pid file and error log in a new directory under the host's.
    pub fn start(host: &Host, root: &Path, port: u16) -> Nginx {
        let dir = host.dir().join(format!("nginx-{port}"));
        std::fs::create_dir_all(dir.join("tmp")).expect("creating nginx's directory");
        let listen = format!("{}:{port}", host.address());
        let conf = format!(
            r#"daemon off;
user root;
worker_processes auto;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log {dir}/access.log;
  client_body_temp_path {dir}/tmp;
  proxy_temp_path {dir}/tmp;
  fastcgi_temp_path {dir}/tmp;
  uwsgi_temp_path {dir}/tmp;
  scgi_temp_path {dir}/tmp;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  types {{ text/x-nix-narinfo narinfo; application/x-nix-nar nar; }}
  server {{
    listen {listen};
    root {root};
  }}
}}
"#,
            dir = dir.display(),
            root = root.display(),
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
        let nginx = Nginx { child, url };
        let address = listen.parse().expect("an address");
        wait_until(START_LIMIT, "nginx to accept connections", || host_connects(host, &address));
        nginx
    }

    /// `http://ADDRESS:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The process ids of nginx's master and workers (for CPU accounting).
    pub fn pids(&self) -> Vec<u32> {
        let master = self.child.id();
        let mut pids = vec![master];
        pids.extend(children_of(master));
        pids
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
