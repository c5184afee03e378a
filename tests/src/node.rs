//! Running the real `nixmesh` binary on a host, and talking to it the way users do: HTTP with
//! `curl`, and the `nixmesh` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::command::CommandExt;
use crate::netns::Host;
use crate::nixstore::HostStore;
use crate::wait::wait_until;

/// Where every node serves HTTP (each host has a loopback of its own).
pub const HTTP_LISTEN: &str = "127.0.0.1:7373";
/// The node's HTTP address as a URL, for `nix copy --from` and `nixmesh --node`.
pub const NODE_URL: &str = "http://127.0.0.1:7373";
/// Where every node listens for its peers.
pub const P2P_LISTEN: &str = "/ip4/0.0.0.0/tcp/7374";

/// How long building the binary may take (a cold build on two cores).
const BUILD_LIMIT: Duration = Duration::from_secs(1200);
/// How long a node may take to answer HTTP after it was started.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long a node may take to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// How long one CLI or `curl` call may take.
const CALL_LIMIT: Duration = Duration::from_secs(20);
/// How many lines of a node's log to print when a test fails.
const LOG_TAIL_LINES: usize = 80;

/// The `nixmesh` binary: `$NIXMESH_BIN` if set (the benchmarks set it to a release build),
/// else built once per test process with the `cargo` running the tests (`$CARGO`, else
/// `cargo` from `PATH`), into the usual target directory (`CARGO_TARGET_DIR` is honoured by
/// that cargo).
pub fn nixmesh_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| match std::env::var_os("NIXMESH_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => build_nixmesh(false),
    })
    .clone()
}

/// Builds the `nixmesh` binary (`release` or the dev profile) with the `cargo` running this
/// process, and returns its path.
pub fn build_nixmesh(release: bool) -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace_dir()).args(["build", "-p", "nixmesh-node", "--bin", "nixmesh"]);
    if release {
        build.arg("--release");
    }
    let messages = build.arg("--message-format=json-render-diagnostics").stdout_within(BUILD_LIMIT);
    // Cargo names the binary it built in a `compiler-artifact` message; this finds it
    // wherever the target directory is.
    let executable = String::from_utf8_lossy(&messages)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "nixmesh")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from));
    executable.expect("cargo build reported no `nixmesh` executable")
}

/// The workspace's root directory.
pub fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// `nixmesh keygen NAME --out FILE`: writes a secret key to `out` and returns the public
/// key (`NAME:BASE64`).
pub fn keygen(name: &str, out: &Path) -> String {
    let printed = Command::new(nixmesh_bin())
        .args(["keygen", name, "--out"])
        .arg(out)
        .stdout_within(CALL_LIMIT);
    let public = String::from_utf8(printed).expect("UTF-8 output").trim().to_owned();
    assert!(public.starts_with(&format!("{name}:")), "keygen printed {public:?}");
    public
}

/// `nixmesh mesh-key --out FILE`: writes a new mesh key to `out` and returns what it printed
/// (where the key went and its fingerprint).
pub fn mesh_key(out: &Path) -> String {
    let printed =
        Command::new(nixmesh_bin()).args(["mesh-key", "--out"]).arg(out).stdout_within(CALL_LIMIT);
    String::from_utf8(printed).expect("UTF-8 output")
}

/// How to run a node, beyond what every node gets (its store, listeners and state
/// directory).
#[derive(Clone, Debug)]
pub struct NodeOptions {
    /// `--trusted-public-key`, each.
    pub trusted_keys: Vec<String>,
    /// `--sign-key-file`.
    pub sign_key_file: Option<PathBuf>,
    /// `--peer`, each.
    pub peers: Vec<String>,
    /// mDNS discovery; off gives `--no-mdns`.
    pub mdns: bool,
    /// `--mesh-key-file`: a private mesh.
    pub mesh_key_file: Option<PathBuf>,
    /// `--upstream`, each; none gives `--no-upstream`. A test node never falls back on the
    /// default (nix.conf's substituters, cache.nixos.org): its upstreams are local stand-ins
    /// or none, always said.
    pub upstreams: Vec<String>,
    /// `--upstream-timeout`: what asking the upstreams for a narinfo may take in all; unset,
    /// the node's default.
    pub upstream_timeout: Option<Duration>,
    /// `--serve-logs`: give peers the store's build logs.
    pub serve_logs: bool,
    /// `RUST_LOG` for the node.
    pub log_filter: String,
    /// More arguments of `nixmesh serve`, after all of the above (`--lan-listen ADDRESS`).
    pub extra_args: Vec<String>,
    /// The state directory of a node that ran before ([`Node::state_dir`]), to start it again
    /// as the same node with what it stored; unset, a new one.
    pub state_dir: Option<PathBuf>,
}

impl Default for NodeOptions {
    /// mDNS on, no static peers, no keys, no upstream; everything else (the store rescan interval, say)
    /// as a user's node has it.
    fn default() -> Self {
        NodeOptions {
            trusted_keys: Vec::new(),
            sign_key_file: None,
            peers: Vec::new(),
            mdns: true,
            mesh_key_file: None,
            upstreams: Vec::new(),
            upstream_timeout: None,
            serve_logs: false,
            log_filter: "nixmesh=debug,info".to_owned(),
            extra_args: Vec::new(),
            state_dir: None,
        }
    }
}

/// A running `nixmesh serve` on a host. Dropping it kills the node; when the test is
/// failing, the tail of its log is printed first.
pub struct Node {
    host: Host,
    child: Option<Child>,
    log: PathBuf,
    state: PathBuf,
}

impl Node {
    /// Starts `nixmesh serve` on `host` against `store` and waits until it answers
    /// `/nix-cache-info`. Its log (`RUST_LOG` from the options) and state (unless the
    /// options name an earlier node's) go to a new directory under the host's.
    pub fn start(host: &Host, store: &HostStore, opts: &NodeOptions) -> Node {
        assert_eq!(store.host().netns(), host.netns(), "a node uses its own host's store");
        let bin = nixmesh_bin();
        let dir = (1..)
            .map(|n| host.dir().join(format!("node-{n}")))
            .find(|d| !d.exists())
            .expect("a free directory name");
        std::fs::create_dir_all(&dir).expect("creating the node's directory");
        let state = opts.state_dir.clone().unwrap_or_else(|| dir.join("state"));
        std::fs::create_dir_all(&state).expect("creating the node's state directory");
        let log = dir.join("nixmesh.log");
        let log_file = std::fs::File::create(&log).expect("creating the node's log");

        let mut cmd = host.command(&bin);
        cmd.args(["serve", "--store", &store.daemon_url(), "--http-listen", HTTP_LISTEN])
            .args(["--p2p-listen", P2P_LISTEN])
            .arg("--real-store-dir")
            .arg(store.real_store_dir())
            .arg("--state-dir")
            .arg(&state);
        for key in &opts.trusted_keys {
            cmd.args(["--trusted-public-key", key]);
        }
        if let Some(file) = &opts.sign_key_file {
            cmd.arg("--sign-key-file").arg(file);
        }
        for peer in &opts.peers {
            cmd.args(["--peer", peer]);
        }
        if !opts.mdns {
            cmd.arg("--no-mdns");
        }
        if let Some(file) = &opts.mesh_key_file {
            cmd.arg("--mesh-key-file").arg(file);
        }
        for upstream in &opts.upstreams {
            cmd.args(["--upstream", upstream]);
        }
        if opts.upstreams.is_empty() {
            cmd.arg("--no-upstream");
        }
        if opts.serve_logs {
            cmd.arg("--serve-logs");
        }
        if let Some(timeout) = opts.upstream_timeout {
            cmd.args(["--upstream-timeout", &timeout.as_secs_f64().to_string()]);
        }
        cmd.args(&opts.extra_args);
        cmd.env("RUST_LOG", &opts.log_filter)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("duplicating a file handle"))
            .stderr(log_file);
        eprintln!("{}: {}\n  log: {}", host.name(), crate::command::describe(&cmd), log.display());
        let child = cmd.spawn().expect("starting nixmesh serve");
        Node::adopt(host, child, log, state)
    }

    /// A node started some other way (its own binary, namespaces or config file) as `child`
    /// on `host`, writing its log to `log` and its state to `state`: waits until it answers
    /// `/nix-cache-info` (the loopback of `host`'s network namespace) and from then on is a
    /// [`Node`] like any other.
    pub fn adopt(host: &Host, child: Child, log: PathBuf, state: PathBuf) -> Node {
        let mut node = Node { host: host.clone(), child: Some(child), log, state };
        let what = format!("{}'s node to answer /nix-cache-info", host.name());
        wait_until(START_LIMIT, &what, || {
            if let Some(exit) = node.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("{}'s node exited ({exit}) before answering HTTP", node.host.name());
            }
            node.http_get("/nix-cache-info").0 == 200
        });
        node
    }

    /// The node's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The node's state directory (its identity and index).
    pub fn state_dir(&self) -> &Path {
        &self.state
    }

    /// The host the node runs on.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The node's log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the node's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// `GET path` from the node, with `curl --path-as-is` on its host. Returns the status
    /// (0 when nothing answered within 10 s) and the body.
    pub fn http_get(&self, path: &str) -> (u16, Vec<u8>) {
        get_from(&self.host, &format!("{NODE_URL}{path}"))
    }

    /// The statuses of `GET` for each of `paths`, in one `curl` run with a short time
    /// limit (0 for no answer within a second): for polling.
    pub fn http_statuses(&self, paths: &[String]) -> Vec<u16> {
        let mut cmd = self.host.command("curl");
        cmd.args(["--silent", "--path-as-is", "--max-time", "1", "--write-out", "%{http_code}\n"]);
        for path in paths {
            cmd.args(["--output", "/dev/null"]).arg(format!("{NODE_URL}{path}"));
        }
        let out = cmd.output_within(CALL_LIMIT);
        let statuses: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|code| code.trim().parse().unwrap_or(0))
            .collect();
        assert_eq!(statuses.len(), paths.len(), "curl wrote a status per URL");
        statuses
    }

    /// The status of `GET /<hash>.narinfo` for each of `store_paths`.
    pub fn narinfo_statuses(&self, store_paths: &[String]) -> Vec<u16> {
        let urls: Vec<String> = store_paths.iter().map(|p| narinfo_url_path(p)).collect();
        self.http_statuses(&urls)
    }

    /// `nixmesh peers --json` on the node's host.
    pub fn peers(&self) -> serde_json::Value {
        self.cli_json("peers")
    }

    /// `nixmesh status --json` on the node's host.
    pub fn status(&self) -> serde_json::Value {
        self.cli_json("status")
    }

    /// How many peers the node lists as connected (`nixmesh peers --json`).
    pub fn connected_peers(&self) -> usize {
        let peers = self.peers();
        peers.as_array().map_or(0, |all| all.iter().filter(|p| p["connected"] == true).count())
    }

    /// The node's peer id, from its status.
    pub fn peer_id(&self) -> String {
        let status = self.status();
        status["peer_id"].as_str().expect("status has a peer_id").to_owned()
    }

    fn cli_json(&self, command: &str) -> serde_json::Value {
        let out = self
            .host
            .command(nixmesh_bin())
            .args([command, "--node", NODE_URL, "--json"])
            .stdout_within(CALL_LIMIT);
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("`nixmesh {command} --json` printed no JSON ({e})"))
    }

    /// Kills the node with SIGKILL and waits for it to be gone. Returns when the signal was
    /// sent.
    pub fn kill(&mut self) -> Instant {
        let mut child = self.child.take().expect("the node is running");
        let sent = Instant::now();
        child.kill().expect("sending SIGKILL to the node");
        child.wait().expect("waiting for the killed node");
        sent
    }

    /// Freezes the node (SIGSTOP), as a machine that hangs or sleeps without closing its
    /// connections. Returns when the signal was sent.
    pub fn freeze(&self) -> Instant {
        self.signal("-STOP")
    }

    /// Lets a frozen node run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) -> Instant {
        let child = self.child.as_ref().expect("the node is running");
        let sent = Instant::now();
        Command::new("kill").args([signal, &child.id().to_string()]).stdout_within(CALL_LIMIT);
        sent
    }

    /// Stops the node with SIGTERM and waits until it exits; panics if it takes longer than
    /// 10 s (it is killed then).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("the node is running");
        Command::new("kill").args(["-TERM", &child.id().to_string()]).stdout_within(CALL_LIMIT);
        let what = format!("{}'s node to exit on SIGTERM", self.host.name());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_until(STOP_LIMIT, &what, || {
                child.try_wait().expect("waiting for the node").is_some()
            })
        }));
        if let Err(panic) = outcome {
            let _ = child.kill();
            let _ = child.wait();
            std::panic::resume_unwind(panic);
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- last {LOG_TAIL_LINES} lines of {}'s node log ({}):\n{}\n---",
                self.host.name(),
                self.log.display(),
                self.log_tail(LOG_TAIL_LINES)
            );
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The narinfo in `body`, a node's answer to `GET /<hash>.narinfo`; panics when it is not one.
pub fn parse_narinfo(body: &[u8]) -> nixmesh_protocol::NarInfo {
    let text = std::str::from_utf8(body).expect("a narinfo in UTF-8");
    nixmesh_protocol::NarInfo::parse(text).unwrap_or_else(|e| panic!("a narinfo: {e}\n{text}"))
}

/// `/<hash>.narinfo` for a store path `/nix/store/<hash>-<name>`.
pub fn narinfo_url_path(store_path: &str) -> String {
    let base = store_path.strip_prefix("/nix/store/").expect("a path in /nix/store");
    let hash = base.split('-').next().expect("split yields at least one piece");
    format!("/{hash}.narinfo")
}

/// `GET url` with `curl --path-as-is` on `host`. Returns the status (0 when nothing answered
/// within 10 s) and the body.
pub fn get_from(host: &Host, url: &str) -> (u16, Vec<u8>) {
    let out = host
        .command("curl")
        .args(["--silent", "--path-as-is", "--max-time", "10", "--output", "-"])
        .args(["--write-out", "\n%{http_code}"])
        .arg(url)
        .output_within(CALL_LIMIT);
    let mut body = out.stdout;
    let newline = body.iter().rposition(|&b| b == b'\n').expect("curl wrote the status");
    let code = String::from_utf8_lossy(&body[newline + 1..]).trim().to_owned();
    body.truncate(newline);
    (code.parse().unwrap_or_else(|_| panic!("curl wrote status {code:?}")), body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narinfo_url_path_takes_the_hash_part() {
        let path = "/nix/store/ncn3s9kg9dnyp5h7gxmwdzn4mb3jf2kg-nm-top";
        assert_eq!(narinfo_url_path(path), "/ncn3s9kg9dnyp5h7gxmwdzn4mb3jf2kg.narinfo");
    }
}
