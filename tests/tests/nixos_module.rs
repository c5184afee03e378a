//! The Nix side, checked with the real Nix: every `.nix` file parses; `nix/module.nix`,
//! evaluated with nixpkgs' `lib` (`nix/tests/eval.nix`), renders the unit, socket, firewall
//! and Nix settings it should; the flake and `nix/package.nix` build the node's package; and
//! the node runs as the rendered unit says: its `ExecStart` with the config file the module
//! wrote, the substituter's socket passed as systemd passes it (`LISTEN_FDS`).
//!
//! No mDNS leaves the machine: the node started here has `mdns = false`, a loopback mesh
//! address and no peers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nixmesh_tests::nixos::{eval_module, nixpkgs_lib};
use nixmesh_tests::node::workspace_dir;
use nixmesh_tests::{
    CommandExt, Host, HostStore, free_loopback_port, nixmesh_bin, require_tool, wait_until,
};
use serde_json::{Value, json};

/// The package path of the stand-in `pkgs.nixmesh` (nix/tests/stand-ins.nix).
const STAND_IN_PACKAGE: &str = "/nix/store/00000000000000000000000000000000-nixmesh-stand-in";
/// How long a Nix or nixmesh command may take.
const LIMIT: Duration = Duration::from_secs(120);

/// The nixpkgs lib to evaluate with, when Nix and the lib are here.
fn prerequisites() -> Option<PathBuf> {
    if !require_tool("nix-instantiate") {
        return None;
    }
    nixpkgs_lib()
}

fn strings(value: &Value) -> Vec<&str> {
    let list = value.as_array().unwrap_or_else(|| panic!("{value} is not a list"));
    list.iter().map(|v| v.as_str().expect("a string")).collect()
}

/// Every `.nix` file of the repository (not under `target/` or hidden directories).
fn nix_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("reading a directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if path.is_dir() && !name.starts_with('.') && name != "target" {
            nix_files(&path, found);
        } else if name.ends_with(".nix") {
            found.push(path);
        }
    }
}

#[test]
fn every_nix_file_parses() {
    if !require_tool("nix-instantiate") {
        return;
    }
    let root = workspace_dir();
    let mut files = Vec::new();
    nix_files(&root, &mut files);
    for expected in ["flake.nix", "nix/module.nix", "nix/package.nix", "nix/tests/eval.nix"] {
        assert!(files.contains(&root.join(expected)), "{expected} is among {files:?}");
    }
    for file in &files {
        Command::new("nix-instantiate").arg("--parse").arg(file).stdout_within(LIMIT);
    }
}

#[test]
fn the_module_renders_the_unit_the_socket_the_firewall_and_nix_settings() {
    let Some(lib) = prerequisites() else { return };
    let options = json!({
        "settings": { "priority": 17 },
        "peers": ["/ip4/192.0.2.7/tcp/7374/p2p/12D3KooWPjceQrSwdWXPyLLeABRXmuqt69Rg3sBYbU1Nft9HyQ6X"],
        "signingKeyFile": "/var/keys/nixmesh.secret",
        "meshKeyFile": "/var/keys/nixmesh-mesh.key",
        "openFirewall": true,
    });
    let eval = eval_module(&lib, &options, None);
    let machine = &eval["configured"];
    let service = &machine["service"]["serviceConfig"];

    let config_file = machine["configFile"].as_str().expect("/etc/nixmesh/config.toml is linked");
    assert!(config_file.starts_with("/nix/store/") && config_file.ends_with("-nixmesh.toml"));
    let exec_start = format!("{STAND_IN_PACKAGE}/bin/nixmesh serve --config {config_file}");
    assert_eq!(service["ExecStart"], exec_start);
    for (key, value) in [
        ("DynamicUser", json!(true)),
        ("StateDirectory", json!("nixmesh")),
        ("ProtectSystem", json!("strict")),
        ("ProtectHome", json!(true)),
        ("PrivateTmp", json!(true)),
        ("NoNewPrivileges", json!(true)),
        ("CapabilityBoundingSet", json!("")),
        ("RestrictAddressFamilies", json!(["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"])),
        ("SystemCallFilter", json!(["@system-service", "~@privileged"])),
        ("LimitNOFILE", json!(65536)),
        ("Restart", json!("always")),
        (
            "LoadCredential",
            json!(["signing-key:/var/keys/nixmesh.secret", "mesh-key:/var/keys/nixmesh-mesh.key"]),
        ),
    ] {
        assert_eq!(service[key], value, "serviceConfig.{key}");
    }
    assert_eq!(machine["service"]["requires"], json!(["nixmesh.socket"]));
    assert_eq!(machine["socket"]["listenStreams"], json!(["127.0.0.1:7373"]));

    // Ours first, then the user's own, then cache.nixos.org (NixOS's mkAfter), no mkForce.
    let nix = &machine["nix"];
    let ours = "http://127.0.0.1:7373?priority=17";
    let expected = [ours, "https://example.org/cache", "https://cache.nixos.org/"];
    assert_eq!(strings(&nix["substituters"]), expected);
    assert_eq!(strings(&nix["trusted-substituters"]), [ours]);
    assert_eq!(nix["narinfo-cache-negative-ttl"], 30);
    assert_eq!(
        machine["firewall"],
        json!({ "allowedTCPPorts": [7374], "allowedUDPPorts": [5353] })
    );

    let plain = &eval["plain"];
    assert_eq!(plain["firewall"], json!({ "allowedTCPPorts": [], "allowedUDPPorts": [] }));

    // The LAN substituter: its settings, and its port opened with openFirewall alone.
    let lan = json!({
        "lanSubstituter": { "enable": true, "port": 7380, "allow": ["192.0.2.0/24"] },
        "meshKeyFile": "/var/keys/nixmesh-mesh.key",
    });
    let closed = eval_module(&lib, &lan, None);
    assert_eq!(closed["configured"]["firewall"]["allowedTCPPorts"], json!([]));
    let mut lan = lan;
    lan["openFirewall"] = json!(true);
    let open = eval_module(&lib, &lan, None);
    assert_eq!(open["configured"]["firewall"]["allowedTCPPorts"], json!([7374, 7380]));
    assert_eq!(plain["service"]["serviceConfig"]["LoadCredential"], json!([]));
    let off = &eval["off"];
    assert_eq!((&off["service"], &off["socket"]), (&Value::Null, &Value::Null));
    assert_eq!(strings(&off["nix"]["substituters"]), ["https://cache.nixos.org/"]);
    assert_eq!(off["nix"]["narinfo-cache-negative-ttl"], 3600);

    // The package and the flake's module, which defaults the package to the flake's own.
    let package = &eval["package"];
    assert_eq!(package["cargoBuildFlags"], json!(["-p", "nixmesh-node"]));
    assert_eq!(package["lockFile"], workspace_dir().join("Cargo.lock").to_str().unwrap());
    assert_eq!(package["mainProgram"], "nixmesh");
    // The man page and completions come from the binary's own subcommands.
    let post_install = package["postInstall"].as_str().unwrap();
    for line in ["nixmesh man > nixmesh.1", "installManPage *.1", "nixmesh completions zsh"] {
        assert!(post_install.contains(line), "no {line:?} in {post_install}");
    }
    assert_eq!(package["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(eval["flake"]["packageFlags"], json!(["-p", "nixmesh-node"]));
    let flake_exec = eval["flake"]["moduleExecStart"].as_str().unwrap();
    assert!(flake_exec.contains("-nixmesh-flake/bin/nixmesh serve --config"), "{flake_exec}");
}

/// `nixmesh config show --json --config FILE`'s settings.
fn shown_settings(config_file: &Path) -> Value {
    let out = Command::new(nixmesh_bin())
        .args(["config", "show", "--json", "--config"])
        .arg(config_file)
        .stdout_within(LIMIT);
    let shown: Value = serde_json::from_slice(&out).expect("JSON");
    shown["settings"].clone()
}

/// Where a store path of `store` is on disk.
fn on_disk(store: &HostStore, store_path: &str) -> PathBuf {
    let base = store_path.strip_prefix("/nix/store/").expect("a store path");
    store.real_store_dir().join(base)
}

#[test]
fn the_node_runs_as_the_rendered_unit_says() {
    let Some(lib) = prerequisites() else { return };
    if !require_tool("nix-daemon") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = HostStore::start(&Host::local_in(dir.path(), "host"));
    let state_dir = dir.path().join("state");
    // The substituter's socket, bound as systemd binds the socket unit's ListenStream.
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_listen = socket.local_addr().unwrap().to_string();
    let settings = json!({
        "store": store.daemon_url(),
        "real_store_dir": store.real_store_dir(),
        "state_dir": state_dir,
        "http_listen": http_listen,
        "p2p_listen": ["/ip4/127.0.0.1/tcp/0"],
        "mdns": false,
        "serve_logs": true,
        "upstreams": [],
        "priority": 17,
    });
    let lan_port = free_loopback_port();
    let options = json!({
        "settings": settings,
        "lanSubstituter": { "enable": true, "port": lan_port, "allow": ["127.0.0.0/8"] },
    });
    let eval = eval_module(&lib, &options, Some(&store));
    let machine = &eval["configured"];
    assert_eq!(machine["socket"]["listenStreams"], json!([http_listen]));
    assert_eq!(machine["firewall"]["allowedUDPPorts"], json!([]));

    // The config file the module wrote reads back as the settings it was given.
    let config_file = machine["configFile"].as_str().unwrap();
    let shown = shown_settings(&on_disk(&store, config_file));
    for (key, value) in settings.as_object().unwrap() {
        assert_eq!(shown[key]["value"], *value, "{key} from the rendered file");
        assert_eq!(shown[key]["source"], "file", "{key}");
    }
    // The keys the module writes by default have the node's defaults: the module's
    // declarations and ServeConfig::default agree.
    let plain = shown_settings(&on_disk(&store, eval["plain"]["configFile"].as_str().unwrap()));
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let defaults = shown_settings(&empty);
    for key in ["http_listen", "p2p_listen", "priority", "mdns", "serve_logs", "state_dir", "peers"]
    {
        assert_eq!(plain[key]["source"], "file", "the module writes {key}");
        assert_eq!(plain[key]["value"], defaults[key]["value"], "the module's default {key}");
    }

    // ExecStart as written, but for the package path and where this store keeps its files.
    let exec_start = machine["service"]["serviceConfig"]["ExecStart"].as_str().unwrap();
    let argv: Vec<&str> = exec_start.split_whitespace().collect();
    assert_eq!(argv[0], format!("{STAND_IN_PACKAGE}/bin/nixmesh"));
    assert_eq!(argv[1..], ["serve", "--config", config_file]);
    let log = dir.path().join("nixmesh.log");
    let mut node = spawn_socket_activated(
        &socket,
        &nixmesh_bin(),
        &["serve".into(), "--config".into(), on_disk(&store, config_file)],
        &log,
    );
    drop(socket);
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_until(Duration::from_secs(30), "the node to answer /nix-cache-info", || {
            if let Some(exit) = node.child.try_wait().unwrap() {
                panic!("the node exited ({exit}) before answering");
            }
            cache_info(&http_listen).is_some_and(|body| body.contains("Priority: 17"))
        })
    }));
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    if let Err(panic) = answered {
        eprintln!("--- the node's log:\n{log_text}---");
        std::panic::resume_unwind(panic);
    }
    assert!(log_text.contains("from_systemd=true"), "the node took the socket:\n{log_text}");
    // The LAN substituter the module set up: on every address at its port, answering the
    // networks it allows.
    assert_eq!(shown["lan_listen"]["value"], format!("0.0.0.0:{lan_port}"));
    assert_eq!(shown["lan_allow"]["value"], json!(["127.0.0.0/8"]));
    let lan_address = format!("127.0.0.1:{lan_port}");
    assert!(cache_info(&lan_address).is_some_and(|body| body.contains("StoreDir: /nix/store")));
    node.stop();
}

/// A node started as systemd starts a socket-activated service: the listening socket as
/// descriptor 3, `LISTEN_FDS=1` and `LISTEN_PID` its own pid (set by a shell that then
/// `exec`s it, so the pid is the node's).
fn spawn_socket_activated(
    socket: &TcpListener,
    program: &Path,
    args: &[PathBuf],
    log: &Path,
) -> RunningNode {
    let log = std::fs::File::create(log).unwrap();
    let fd = socket.as_raw_fd();
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1; export LISTEN_PID LISTEN_FDS; exec \"$@\""])
        .arg("nixmesh")
        .arg(program)
        .args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    // SAFETY: dup2 and fcntl are async-signal-safe; they touch only the child's descriptors.
    unsafe {
        cmd.pre_exec(move || {
            let moved = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if moved < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
        });
    }
    RunningNode { child: cmd.spawn().expect("starting the node") }
}

/// The node started by [`spawn_socket_activated`]; killed on drop.
struct RunningNode {
    child: Child,
}

impl RunningNode {
    /// SIGTERM, and the node exits 0 within 15 s.
    fn stop(&mut self) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let mut status = None;
        wait_until(Duration::from_secs(15), "the node to exit on SIGTERM", || {
            status = self.child.try_wait().unwrap();
            status.is_some()
        });
        assert!(status.unwrap().success(), "the node exited with {status:?}");
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The body of `GET /nix-cache-info` from `address` if it answered 200 within 2 s.
fn cache_info(address: &str) -> Option<String> {
    let limit = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&address.parse().ok()?, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.set_write_timeout(Some(limit)).ok()?;
    stream.write_all(b"GET /nix-cache-info HTTP/1.0\r\nHost: nixmesh\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.take(1 << 16).read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?;
    (status == "200").then(|| body.to_owned())
}

/// The `KEY=VALUE` lines of `section` in the unit file `file`, repeated keys in order.
fn unit_section(file: &str, section: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(workspace_dir().join(file)).expect("reading the unit");
    let mut current = String::new();
    let mut keys = std::collections::BTreeMap::<String, Vec<String>>::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            current = line.to_owned();
        } else if current == format!("[{section}]") && !line.is_empty() && !line.starts_with('#') {
            let (key, value) = line.split_once('=').expect("KEY=VALUE");
            keys.entry(key.to_owned()).or_default().push(value.to_owned());
        }
    }
    keys
}

/// A module setting as systemd unit lines: one per list item, booleans as NixOS writes them.
fn unit_lines(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().flat_map(unit_lines).collect(),
        Value::String(s) => vec![s.clone()],
        other => vec![other.to_string()],
    }
}

#[test]
fn the_unit_for_other_distros_has_the_modules_settings() {
    let Some(lib) = prerequisites() else { return };
    let eval = eval_module(&lib, &json!({}), None);
    let plain = &eval["plain"];
    let mut module: std::collections::BTreeMap<String, Vec<String>> =
        plain["service"]["serviceConfig"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(key, value)| (key.clone(), unit_lines(value)))
            .collect();
    let mut unit = unit_section("nix/nixmesh.service", "Service");
    // What differs by design: the binary's and the config file's paths, and the signing key
    // (a commented-out LoadCredential= in the unit, none in the module without a key).
    let exec = unit.remove("ExecStart").expect("an ExecStart");
    assert_eq!(exec, ["/usr/local/bin/nixmesh serve --config /etc/nixmesh/config.toml"]);
    module.remove("ExecStart");
    assert_eq!(module.remove("LoadCredential"), Some(vec![]));
    assert_eq!(unit, module, "nix/nixmesh.service's [Service] and the module's serviceConfig");

    let unit = unit_section("nix/nixmesh.service", "Unit");
    let service = &plain["service"];
    assert_eq!(unit["Requires"], unit_lines(&service["requires"]));
    assert_eq!(unit["Wants"], unit_lines(&service["wants"]));
    assert_eq!(unit["After"], [strings(&service["after"]).join(" ")]);
    let socket = unit_section("nix/nixmesh.socket", "Socket");
    assert_eq!(socket["ListenStream"], unit_lines(&plain["socket"]["listenStreams"]));
    assert_eq!(socket["NoDelay"], ["true"]);
}
