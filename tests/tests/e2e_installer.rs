//! Installing a new machine from the LAN (issue 20, the installer): the node in a live system
//! and on the stock NixOS installer, each run as that system would run it, in a mount
//! namespace of its own on a LAN of network namespaces with the real Nix.
//!
//! - The installer module (`nix/installer.nix`, the flake's `nixosModules.installer`),
//!   evaluated with nixpkgs' `lib` and the stand-ins, and the node run from what it renders:
//!   its `ExecStart` word for word, in a namespace where `/nix` is the host's chroot store
//!   (the config file is in it, the package path leads to the binary, the local daemon's
//!   socket is the host's daemon), `/run` a new tmpfs with `/run/nixmesh` as systemd's
//!   RuntimeDirectory makes it, and `/etc/nix/nix.conf` the one the module's Nix settings
//!   make. It finds the LAN's other node by mDNS and serves its paths.
//! - The static binary (`nix/build-static`; see [`static_nixmesh`] for the profile): `ldd`
//!   calls it not dynamic, and it runs with `/lib`, `/lib64` and `/usr/lib` hidden and
//!   NixOS's `nsswitch.conf`: alone on the LAN at first, it serves a path only the upstream
//!   holds, which it reaches by a name from `/etc/hosts`; then a path the LAN's other node
//!   holds (found by mDNS); and a new root's store realises both closures through it as
//!   `nixos-install` does, byte for byte.
//!
//! No mDNS leaves the LANs' namespaces; the one upstream is nginx on the LAN's own
//! "internet" host; the module's cache.nixos.org is unreachable from a LAN with no router.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use nixmesh_tests::mountns::MountNamespace;
use nixmesh_tests::nginx::Nginx;
use nixmesh_tests::nixos::{eval_installer, nixpkgs_lib};
use nixmesh_tests::node::workspace_dir;
use nixmesh_tests::{
    CacheKey, Closure, CommandExt, Host, HostStore, Lan, NODE_URL, Node, NodeOptions, nixmesh_bin,
    require_lan, require_tool, test_closure_expr, unique_marker, wait_until,
};
use serde_json::{Value, json};

/// How long the static build may take: a cold build of every dependency for the target, on
/// two busy cores.
const BUILD_LIMIT: Duration = Duration::from_secs(1500);
/// How long a node may take to find the other by mDNS and learn what it holds.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);
/// How long a Nix command may take.
const NIX_LIMIT: Duration = Duration::from_secs(120);
/// The package path of the stand-in `pkgs.nixmesh` (nix/tests/stand-ins.nix).
const STAND_IN_PACKAGE: &str = "/nix/store/00000000000000000000000000000000-nixmesh-stand-in";
/// The upstream's name, as the installer's `/etc/hosts` has it.
const UPSTREAM_NAME: &str = "cache.upstream.test";
/// Where the upstream's nginx listens on the internet host.
const UPSTREAM_PORT: u16 = 80;
/// NixOS's `/etc/nsswitch.conf` (nixos/modules/config/nsswitch.nix, with systemd-resolved
/// on): its `hosts` sources before `files` are modules a static binary cannot load.
const NIXOS_NSSWITCH: &str = "passwd: files systemd\ngroup: files [success=merge] systemd\n\
                              shadow: files systemd\n\
                              hosts: mymachines resolve [!UNAVAIL=return] files myhostname dns\n\
                              networks: files\nservices: files\nprotocols: files\n";

/// The static binary, built once per test process by `nix/build-static --dev`, in its own
/// target directory (nothing of the usual build is reused: crt-static changes every crate).
/// The dev profile: measured on this two-core machine while four other builds ran, the
/// release build was stopped unfinished after 24.7 minutes (354 CPU seconds, the node's own
/// crates still to come); the dev build took 9.5 minutes (224 CPU seconds, some 2 minutes
/// on two idle cores). docs/guide.md has the release build for users.
fn static_nixmesh() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let started = Instant::now();
        let out = Command::new(workspace_dir().join("nix/build-static"))
            .arg("--dev")
            .stdout_within(BUILD_LIMIT);
        let path = PathBuf::from(String::from_utf8(out).expect("a UTF-8 path").trim());
        eprintln!("nix/build-static --dev: {} in {:.1?}", path.display(), started.elapsed());
        path
    })
}

/// The directories a dynamically linked program loads its libraries from (on this machine
/// `/lib` and `/lib64` link into `/usr`): none of them exists on the stock NixOS installer.
const LIBRARY_DIRS: [&str; 5] = ["/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64"];

/// The stock installer's view, for the static binary: no libraries, NixOS's nsswitch.conf,
/// and `hosts` as its `/etc/hosts`.
fn no_lib_namespace(host: &Host, dir: &Path, hosts: &str) -> MountNamespace {
    let hosts_file = dir.join("hosts");
    std::fs::write(&hosts_file, hosts).unwrap();
    let nsswitch = dir.join("nsswitch.conf");
    std::fs::write(&nsswitch, NIXOS_NSSWITCH).unwrap();
    let mut ns = MountNamespace::on(host, dir);
    for lib in LIBRARY_DIRS {
        ns = ns.hide(Path::new(lib));
    }
    ns.bind(&hosts_file, Path::new("/etc/hosts")).bind(&nsswitch, Path::new("/etc/nsswitch.conf"))
}

/// Whether a dynamically linked program cannot start in `ns` (its loader is hidden, so its
/// `exec` fails), which shows that the libraries are gone there.
fn dynamic_programs_fail_in(ns: &MountNamespace) -> bool {
    let started = ns
        .command(Path::new("/usr/bin/true"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match started {
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
        Ok(status) => !status.success(),
    }
}

/// Whether the ELF file `bin` has a program interpreter (`PT_INTERP`): the loader a
/// dynamically linked program needs, `/lib64/ld-linux-x86-64.so.2` on this machine.
fn names_a_loader(bin: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let elf = std::fs::read(bin).expect("reading the binary");
    assert_eq!(&elf[..5], b"\x7fELF\x02", "a 64-bit ELF file");
    let word = |at: usize, len: usize| {
        let mut bytes = [0u8; 8];
        bytes[..len].copy_from_slice(&elf[at..at + len]);
        u64::from_le_bytes(bytes) as usize
    };
    let (table, entry_size, entries) = (word(0x20, 8), word(0x36, 2), word(0x38, 2));
    (0..entries).any(|i| word(table + i * entry_size, 4) as u32 == PT_INTERP)
}

/// A signed closure made on `host`'s store (a new one, by its marker).
fn signed_closure(store: &HostStore, key: &CacheKey) -> Closure {
    let closure = store.build_closure(&test_closure_expr(&unique_marker()));
    store.sign_closure(&key.secret_file, &closure.top);
    closure
}

/// `bin serve` on `host` in `ns`, on `store`, with `args` beyond the store and state
/// directory (in `dir`, with its log), once it answers.
fn serve_in(ns: &MountNamespace, bin: &Path, store: &HostStore, dir: &Path, args: &[&str]) -> Node {
    let state = dir.join("state");
    let log = dir.join("nixmesh.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut cmd = ns.command(bin);
    cmd.args(["serve", "--state-dir"])
        .arg(&state)
        .args(["--store", &store.daemon_url(), "--real-store-dir"])
        .arg(store.real_store_dir())
        .args(args)
        .env("RUST_LOG", "nixmesh=debug,info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    eprintln!("{}: {bin:?} serve {args:?}\n  log: {}", store.host().name(), log.display());
    Node::adopt(store.host(), cmd.spawn().expect("starting nixmesh serve"), log, state)
}

/// `bin` is linked statically: no loader from /lib is named in it. (ldd says "not a dynamic
/// executable" of a static binary, "statically linked" of a static PIE, rustc's default with
/// crt-static, which keeps address randomisation.)
fn assert_static(bin: &Path) {
    let ldd = Command::new("ldd").arg(bin).output_within(NIX_LIMIT);
    let said = String::from_utf8_lossy(&ldd.stdout) + String::from_utf8_lossy(&ldd.stderr);
    let not_dynamic = ["not a dynamic executable", "statically linked"];
    assert!(not_dynamic.iter().any(|s| said.contains(s)), "ldd {}: {said}", bin.display());
    assert!(!names_a_loader(bin), "{} has a PT_INTERP", bin.display());
}

/// The installer's new root realises `closures` with `node` as its only substituter, as
/// `nixos-install` does (`nix-store --store ROOT -r`), each path byte for byte what its
/// origin holds.
fn realise_into_new_root(node: &Node, keys: &[&str], closures: &[(&HostStore, &Closure)]) {
    let host = node.host();
    let root = host.dir().join("mnt");
    let tops: Vec<&str> = closures.iter().map(|(_, c)| c.top.as_str()).collect();
    let realised = host
        .command("nix-store")
        .arg("--store")
        .arg(&root)
        .arg("--realise")
        .args(&tops)
        .args(["--option", "substituters", NODE_URL])
        .args(["--option", "trusted-public-keys", &keys.join(" ")])
        .output_within(NIX_LIMIT);
    assert!(realised.status.success(), "{}", String::from_utf8_lossy(&realised.stderr));
    for (origin, closure) in closures {
        for path in &closure.paths {
            let base = path.strip_prefix("/nix/store/").unwrap();
            let copy = Command::new("nix-store")
                .arg("--dump")
                .arg(root.join("nix/store").join(base))
                .stdout_within(NIX_LIMIT);
            assert!(copy == origin.dump(path), "{path} differs from its origin's");
        }
    }
}

#[test]
fn the_static_binary_serves_with_no_lib_and_resolves_its_upstream_by_name() {
    if !require_lan(&["nginx", "ldd"]) {
        return;
    }
    let bin = static_nixmesh();
    assert_static(bin);
    let lan = Lan::with_internet(2);
    let (lan_host, installer) = (&lan.hosts()[0], &lan.hosts()[1]);
    // The upstream: a closure signed by its own key, in a binary cache beyond the router,
    // which every node names by a name from its /etc/hosts.
    let internet = lan.internet().host();
    let upstream_key = CacheKey::generate(lan.dir(), "upstream-1");
    let upstream_store = HostStore::start(internet);
    let upstream_only = signed_closure(&upstream_store, &upstream_key);
    let cache = internet.dir().join("cache");
    let cache_url = format!("file://{}?compression=none", cache.display());
    upstream_store.copy_to(&cache_url, &[&upstream_only.top]);
    let nginx = Nginx::start(internet, &cache, UPSTREAM_PORT);
    let upstream = format!("http://{UPSTREAM_NAME}:{UPSTREAM_PORT}");
    let hosts = format!("{} {UPSTREAM_NAME}\n", internet.address());
    let lan_key = CacheKey::generate(lan.dir(), "lan-1");
    let keys = [lan_key.public.as_str(), upstream_key.public.as_str()];
    let mut args = vec!["--upstream", &upstream];
    args.extend(keys.iter().flat_map(|k| ["--trusted-public-key", k]));

    // The installer's static node, alone on the LAN at first: it claims every narinfo itself
    // (the single flight's claimer among the nodes it sees), so it resolves the name itself.
    let store = HostStore::start(installer);
    let dir = installer.dir().join("static");
    std::fs::create_dir_all(&dir).unwrap();
    let ns = no_lib_namespace(installer, &dir, &hosts);
    assert!(dynamic_programs_fail_in(&ns), "a dynamic program ran with the libraries hidden");
    let node = serve_in(&ns, bin, &store, &dir, &args);
    let (status, body) = node.http_get("/nix-cache-info");
    assert_eq!(
        (status, String::from_utf8_lossy(&body).contains("StoreDir: /nix/store")),
        (200, true)
    );
    assert_eq!(node.narinfo_statuses(&upstream_only.paths), vec![200; upstream_only.paths.len()]);
    let asked: Vec<IpAddr> = nginx.requests().iter().map(|r| r.client).collect();
    assert!(asked.contains(&IpAddr::V4(installer.address())), "the upstream's clients: {asked:?}");

    // The LAN's node (the usual binary, with the same /etc/hosts), holding a closure signed
    // by the LAN's key, found by mDNS.
    let lan_store = HostStore::start(lan_host);
    let held = signed_closure(&lan_store, &lan_key);
    let lan_dir = lan_host.dir().join("node");
    std::fs::create_dir_all(&lan_dir).unwrap();
    let lan_ns = MountNamespace::on(lan_host, &lan_dir);
    let hosts_file = dir.join("hosts");
    let lan_ns = lan_ns.bind(&hosts_file, Path::new("/etc/hosts"));
    let _lan_node = serve_in(&lan_ns, &nixmesh_bin(), &lan_store, &lan_dir, &args);
    wait_until(DISCOVERY_LIMIT, "the static node to serve the LAN's paths", || {
        node.narinfo_statuses(&held.paths).iter().all(|s| *s == 200)
    });
    realise_into_new_root(&node, &keys, &[(&lan_store, &held), (&upstream_store, &upstream_only)]);
}

/// nix.conf as NixOS writes it from `nix.settings`: one line a setting, lists joined by
/// spaces.
fn nix_conf(settings: &Value) -> String {
    let line = |(key, value): (&String, &Value)| {
        let value = match value {
            Value::Array(items) => {
                items.iter().map(|i| i.as_str().expect("a string")).collect::<Vec<_>>().join(" ")
            }
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        format!("{key} = {value}\n")
    };
    settings.as_object().expect("settings").iter().map(line).collect()
}

/// What the installer module renders: the node's settings and unit for a live system, and the
/// flake's module and static package.
fn check_rendered(eval: &Value) {
    let machine = &eval["installer"];
    let settings = &machine["settings"];
    assert_eq!(settings["state_dir"], "/run/nixmesh");
    assert_eq!(settings["mdns"], true);
    assert_eq!(settings["spool_max_bytes"], 512 << 20);
    assert_eq!(machine["signingKeyFile"], Value::Null);
    let service = &machine["service"]["serviceConfig"];
    for (key, value) in [
        ("RuntimeDirectory", json!("nixmesh")),
        ("RuntimeDirectoryMode", json!("0700")),
        ("RuntimeDirectoryPreserve", json!("yes")),
        ("StateDirectory", json!([])),
        ("ReadWritePaths", json!(["/run/nixmesh"])),
        ("DynamicUser", json!(true)),
        ("ProtectSystem", json!("strict")),
        ("LoadCredential", json!([])),
    ] {
        assert_eq!(service[key], value, "serviceConfig.{key}");
    }
    assert_eq!(
        machine["firewall"],
        json!({ "allowedTCPPorts": [7374], "allowedUDPPorts": [5353] })
    );
    let substituters = &machine["nix"]["substituters"];
    assert_eq!(
        *substituters,
        json!(["http://127.0.0.1:7373?priority=10", "https://cache.nixos.org/"])
    );

    let flake = &eval["flake"];
    let exec_start = flake["execStart"].as_str().unwrap();
    assert!(exec_start.contains("-nixmesh-flake/bin/nixmesh serve --config"), "{exec_start}");
    assert_eq!(flake["runtimeDirectory"], "nixmesh");
    let package = &flake["static"];
    assert_eq!(package["packageSet"], "pkgsStatic");
    assert_eq!(package["cargoBuildFlags"], json!(["-p", "nixmesh-node"]));
    assert_eq!(package["mainProgram"], "nixmesh");
}

#[test]
fn the_installer_module_renders_a_node_that_runs_from_run_and_finds_the_lan() {
    if !require_lan(&["nginx", "ldd"]) || !require_tool("nix-instantiate") {
        return;
    }
    let Some(lib) = nixpkgs_lib() else { return };
    let lan = Lan::new(2);
    let (lan_host, installer) = (&lan.hosts()[0], &lan.hosts()[1]);
    // The LAN's node holds a content-addressed path: the installer needs no key of the LAN's.
    let lan_store = HostStore::start(lan_host);
    let held = lan_store.add_file("nixmesh-installer-test", unique_marker().as_bytes());
    let _lan_node = Node::start(lan_host, &lan_store, &NodeOptions::default());

    let store = HostStore::start(installer);
    let eval = eval_installer(&lib, Some(&store));
    check_rendered(&eval);
    let machine = &eval["installer"];
    let exec_start = machine["service"]["serviceConfig"]["ExecStart"].as_str().unwrap();
    let argv: Vec<&str> = exec_start.split_whitespace().collect();
    let config_file = machine["configFile"].as_str().unwrap();
    assert_eq!(
        argv,
        [&format!("{STAND_IN_PACKAGE}/bin/nixmesh"), "serve", "--config", config_file]
    );

    // The image's /nix, /etc/nix and /run as the module leaves them, in the host's store.
    let nix = installer.store_root().join("nix");
    let package_bin = nix.join(argv[0].trim_start_matches("/nix/"));
    let socket = nix.join("var/nix/daemon-socket/socket");
    for file in [&package_bin, &socket] {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::File::create(file).unwrap();
    }
    let dir = installer.dir().join("image");
    let etc_nix = dir.join("etc-nix");
    std::fs::create_dir_all(&etc_nix).unwrap();
    std::fs::write(etc_nix.join("nix.conf"), nix_conf(&machine["nix"])).unwrap();
    let run_dir = Path::new("/run/nixmesh");
    let ns = MountNamespace::on(installer, &dir)
        .bind(&nix, Path::new("/nix"))
        .bind(&store.socket(), Path::new("/nix/var/nix/daemon-socket/socket"))
        .bind(&nixmesh_bin(), Path::new(argv[0]))
        .bind(&etc_nix, Path::new("/etc/nix"))
        .tmpfs(Path::new("/run"))
        .mkdir(run_dir, 0o700);
    let log = dir.join("nixmesh.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut cmd = ns.command(Path::new(argv[0]));
    cmd.args(&argv[1..])
        .env_remove("NIX_DAEMON_SOCKET_PATH")
        .env_remove("NIX_CONF_DIR")
        .env("RUST_LOG", "nixmesh=debug,info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    let child = cmd.spawn().expect("starting the installer's node");
    // Its /run/nixmesh, seen from here through the node's own root.
    let state = PathBuf::from(format!("/proc/{}/root/run/nixmesh", child.id()));
    let mut node = Node::adopt(installer, child, log, state.clone());

    let (_, body) = node.http_get("/nix-cache-info");
    assert!(String::from_utf8_lossy(&body).contains("Priority: 10"));
    wait_until(DISCOVERY_LIMIT, "the installer's node to serve the LAN's path", || {
        node.narinfo_statuses(std::slice::from_ref(&held)) == [200]
    });
    let status = node.status();
    assert_eq!(status["signing_key"], Value::Null, "{status}");
    let upstreams: Vec<&str> = status["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["url"].as_str().unwrap())
        .collect();
    assert_eq!(upstreams, ["https://cache.nixos.org"], "nix.conf's substituters but itself");
    for file in ["identity.key", "index.redb"] {
        assert!(state.join(file).exists(), "{file} in the node's /run/nixmesh");
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&state).unwrap().permissions().mode() & 0o777, 0o700);
    assert!(!run_dir.exists(), "the node's /run/nixmesh is its own, not the machine's");
    node.stop();
}
