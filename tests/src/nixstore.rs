//! A host's Nix store with its nix-daemon, the test closure, and binary-cache keys: all
//! through the real Nix tools.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::command::{CommandExt, describe};
use crate::netns::Host;
use crate::wait::wait_until;

/// How long a Nix command may take (building the test closure takes about a second).
pub const NIX_LIMIT: Duration = Duration::from_secs(120);
/// How long the daemon may take to listen.
const DAEMON_START_LIMIT: Duration = Duration::from_secs(20);
/// What the sandbox of a chroot-store build sees of the machine: enough for `/bin/sh` and the
/// coreutils the test derivations use. (A chroot store always builds in a sandbox.)
const SANDBOX_PATHS: &str = "/bin /lib /lib64 /usr";

static NEXT_MARKER: AtomicUsize = AtomicUsize::new(0);

/// A nix-daemon serving a host's own chroot store (`nix-daemon --store DIR`) on a socket of
/// its own (`NIX_DAEMON_SOCKET_PATH`); killed on drop. Every Nix command on the host reaches
/// the store through that socket, as `--store unix://SOCKET`.
pub struct HostStore {
    host: Host,
    daemon: Child,
}

/// The store paths of a closure built by [`HostStore::build_closure`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Closure {
    /// The path that was built, whose closure this is.
    pub top: String,
    /// Every path of the closure, `top` included, dependencies before what refers to them.
    pub paths: Vec<String>,
}

impl HostStore {
    /// Starts the host's nix-daemon (log in the host's directory) and waits until it
    /// answers.
    pub fn start(host: &Host) -> HostStore {
        std::fs::create_dir_all(host.store_root()).expect("creating the store's directory");
        let daemon = spawn_daemon(host);
        let store = HostStore { host: host.clone(), daemon };
        store.wait_until_it_answers();
        store
    }

    /// Kills the daemon (and the workers it forked) and starts a new one on the same socket
    /// and store, as a host's daemon restarting under a running node.
    pub fn restart(&mut self) {
        self.kill();
        self.daemon = spawn_daemon(&self.host);
        self.wait_until_it_answers();
    }

    fn wait_until_it_answers(&self) {
        let host = &self.host;
        wait_until(DAEMON_START_LIMIT, &format!("{}'s nix-daemon to answer", host.name()), || {
            self.socket().exists()
                && host
                    .command("nix")
                    .args(["store", "ping", "--store", &self.url()])
                    .output_within(NIX_LIMIT)
                    .status
                    .success()
        });
    }

    /// Kills the daemon's process group: the daemon and the per-connection workers it forked.
    fn kill(&mut self) {
        let group = format!("-{}", self.daemon.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.daemon.wait();
        let _ = std::fs::remove_file(self.socket());
    }

    /// The host this store belongs to.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        socket_of(&self.host)
    }

    /// The store as Nix's clients name it: `unix://SOCKET?real=DIR`. Nix 2.8's client reads
    /// a daemon store's files directly for some operations (`nix copy --from`, `--export`),
    /// and `real` tells it where a chroot store keeps them.
    pub fn url(&self) -> String {
        let real = self.host.store_root().join("nix/store");
        format!("unix://{}?real={}", self.socket().display(), real.display())
    }

    /// The store as `nixmesh serve --store` names it: the daemon's socket, nothing else (the
    /// node reaches everything through the worker protocol).
    pub fn daemon_url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// Runs `nix ARGS --store daemon` on the host and returns what it printed; panics if
    /// it fails.
    pub fn nix(&self, args: &[&str]) -> String {
        let mut cmd = self.host.command("nix");
        cmd.args(args).args(["--store", &self.url()]);
        stdout_text(&mut cmd)
    }

    /// Runs `nix-store --store daemon ARGS` on the host and returns how it went.
    pub fn nix_store(&self, args: &[&str]) -> Output {
        self.host
            .command("nix-store")
            .args(["--store", &self.url()])
            .args(args)
            .output_within(NIX_LIMIT)
    }

    /// Builds `expr` (a Nix expression for one derivation) and returns its closure.
    pub fn build_closure(&self, expr: &str) -> Closure {
        let mut build = self.host.command("nix-build");
        build.args(["--store", &self.url(), "--no-out-link", "--expr", expr]);
        let top = stdout_text(&mut build).trim().to_owned();
        assert!(top.starts_with("/nix/store/"), "nix-build printed {top:?}, not a store path");
        let mut query = self.host.command("nix-store");
        query.args(["--store", &self.url(), "--query", "--requisites", &top]);
        let paths: Vec<String> = stdout_text(&mut query).lines().map(String::from).collect();
        assert_eq!(paths.last(), Some(&top), "nix-store -qR lists the path itself last");
        Closure { top, paths }
    }

    /// Adds the closure of [`many_paths_expr`] to the store in one evaluation (no builds,
    /// so a thousand paths take seconds) and returns it. The same `count` and `marker` give
    /// the same store paths, with the same NARs, in every store.
    pub fn add_many_paths(&self, count: usize, marker: &str) -> Closure {
        let mut eval = self.host.command("nix-instantiate");
        eval.args(["--store", &self.url(), "--eval", "--read-write-mode", "--json"])
            .args(["--expr", &many_paths_expr(count, marker)]);
        let printed = stdout_text(&mut eval);
        let top: String = serde_json::from_str(printed.trim()).expect("a JSON string");
        assert!(top.starts_with("/nix/store/"), "nix-instantiate printed {top:?}");
        let mut query = self.host.command("nix-store");
        query.args(["--store", &self.url(), "--query", "--requisites", &top]);
        let paths: Vec<String> = stdout_text(&mut query).lines().map(String::from).collect();
        assert_eq!(paths.len(), count + 1, "the closure is the files and the top");
        Closure { top, paths }
    }

    /// What the nix-daemon does when `nixos-rebuild` needs paths: `nix-store -r path` with
    /// `substituter` as the only substituter, trusting only `trusted_keys`, so the daemon
    /// itself substitutes the closure (with its own concurrency). Returns how it went.
    pub fn realise_from(&self, substituter: &str, trusted_keys: &[&str], path: &str) -> Output {
        let mut cmd = self.host.command("nix-store");
        cmd.args(["--store", &self.url(), "--realise", path])
            .args(["--option", "substituters", substituter])
            .args(["--option", "trusted-public-keys", &trusted_keys.join(" ")]);
        eprintln!("{}: {}", self.host.name(), describe(&cmd));
        cmd.output_within(NIX_LIMIT)
    }

    /// Signs `top` and everything it refers to with the secret key in `key_file`.
    pub fn sign_closure(&self, key_file: &Path, top: &str) {
        let key = key_file.to_str().expect("a UTF-8 key path");
        self.nix(&["store", "sign", "--key-file", key, "--recursive", top]);
    }

    /// Whether `path` is a valid path of this store.
    pub fn is_valid(&self, path: &str) -> bool {
        let out = self.nix_store(&["--check-validity", path]);
        match out.status.code() {
            Some(0) => true,
            Some(1) => false,
            _ => panic!("nix-store --check-validity: {}", String::from_utf8_lossy(&out.stderr)),
        }
    }

    /// Where the store keeps its paths' files (Nix's `real` setting; `nixmesh serve
    /// --real-store-dir`).
    pub fn real_store_dir(&self) -> PathBuf {
        self.host.store_root().join("nix/store")
    }

    /// Damages the store's copy of `path` behind Nix's back, as a failing disk would: flips
    /// one byte of `file` inside it (its size unchanged), so its NAR no longer has the NarHash
    /// its narinfo was signed with.
    pub fn damage(&self, path: &str, file: &str) {
        use std::os::unix::fs::PermissionsExt;
        let on_disk = self.real_path(path).join(file);
        let mut bytes = std::fs::read(&on_disk).expect("reading the file to damage");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&on_disk, bytes).expect("writing the damaged file");
        std::fs::set_permissions(&on_disk, std::fs::Permissions::from_mode(0o444)).unwrap();
    }

    /// Where the store keeps `path` (`/nix/store/...`) on disk.
    fn real_path(&self, path: &str) -> PathBuf {
        let base = path.strip_prefix("/nix/store/").expect("a path in /nix/store");
        self.real_store_dir().join(base)
    }

    /// The NAR serialisation of `path`, as `nix-store --dump` makes it of the file on disk.
    /// (`nix store dump-path` cannot be used: Nix 2.8's client looks for a chroot store's
    /// paths under `/nix/store`.)
    pub fn dump(&self, path: &str) -> Vec<u8> {
        Command::new("nix-store").arg("--dump").arg(self.real_path(path)).stdout_within(NIX_LIMIT)
    }

    /// Adds a file named `name` holding `contents` to the store, as `nix-store --add` does
    /// (content-addressed), and returns its store path.
    pub fn add_file(&self, name: &str, contents: &[u8]) -> String {
        let file = self.host.dir().join(name);
        std::fs::write(&file, contents).expect("writing a file to add");
        let file = file.to_str().expect("a UTF-8 path");
        let out = self.nix_store(&["--add", file]);
        assert!(out.status.success(), "nix-store --add: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8 output").trim().to_owned()
    }

    /// How many valid paths the store holds (built outputs and their `.drv` files alike).
    pub fn path_count(&self) -> usize {
        self.nix(&["path-info", "--all"]).lines().count()
    }

    /// The signatures the store has for `path`.
    pub fn signatures(&self, path: &str) -> Vec<String> {
        let info = self.nix(&["path-info", "--json", path]);
        let info: serde_json::Value = serde_json::from_str(&info).expect("nix path-info --json");
        info[0]["signatures"]
            .as_array()
            .map(|sigs| sigs.iter().filter_map(|s| s.as_str().map(String::from)).collect())
            .unwrap_or_default()
    }

    /// What Nix's own client does to substitute from a binary cache: `nix copy --from URL
    /// --to unix://SOCKET` trusting only `trusted_keys`, run on this host. Returns how it went.
    pub fn copy_from(&self, url: &str, trusted_keys: &[&str], path: &str) -> Output {
        let mut cmd = self.host.command("nix");
        cmd.args(["copy", "--from", url, "--to", &self.url()])
            .args(["--option", "trusted-public-keys", &trusted_keys.join(" ")])
            .arg(path);
        eprintln!("{}: {}", self.host.name(), describe(&cmd));
        cmd.output_within(NIX_LIMIT)
    }

    /// [`HostStore::copy_from`] started, not waited for: the running `nix copy`, its output
    /// piped.
    pub fn spawn_copy_from(&self, url: &str, trusted_keys: &[&str], path: &str) -> Child {
        let mut cmd = self.host.command("nix");
        cmd.args(["copy", "--from", url, "--to", &self.url()])
            .args(["--option", "trusted-public-keys", &trusted_keys.join(" ")])
            .arg(path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        eprintln!("{}: {}", self.host.name(), describe(&cmd));
        cmd.spawn().expect("starting nix copy")
    }

    /// Copies `paths` (with their closures) from this store to `url` (say, a `file://`
    /// binary cache); panics if it fails.
    pub fn copy_to(&self, url: &str, paths: &[&str]) {
        let mut cmd = self.host.command("nix");
        cmd.args(["copy", "--from", &self.url(), "--to", url]).args(paths);
        stdout_text(&mut cmd);
    }
}

impl Drop for HostStore {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the host's nix-daemon listens.
fn socket_of(host: &Host) -> PathBuf {
    host.dir().join("daemon.sock")
}

/// Starts `nix-daemon` for the host's chroot store, in a process group of its own so that
/// its workers can be killed with it.
fn spawn_daemon(host: &Host) -> Child {
    let log_path = host.dir().join("nix-daemon.log");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("opening the daemon's log");
    host.command("nix-daemon")
        // Always an explicit store: the default, `auto`, would connect to this very socket
        // once it exists and fork without end.
        .arg("--store")
        .arg(host.store_root())
        .args(["--option", "sandbox-paths", SANDBOX_PATHS])
        // Builds run as the daemon's user, not as the machine's shared `nixbld` users: Nix
        // kills every process of a build user around each build, so parallel tests on shared
        // build users kill each other's builds.
        .args(["--option", "build-users-group", ""])
        .env("NIX_DAEMON_SOCKET_PATH", socket_of(host))
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("duplicating a file handle"))
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("starting nix-daemon")
}

/// A Nix expression for the test closure: seven paths with references, `top -> a -> b -> c`
/// and a diamond `top -> {left, right} -> base`; `c` holds nested directories, an
/// executable, a symbolic link, an empty file and 300 kB of random bytes. `marker` goes into
/// every derivation, so each marker gives new store paths.
pub fn test_closure_expr(marker: &str) -> String {
    assert!(marker.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "marker {marker:?}");
    format!(
        r#"
let
  mk = name: script: derivation {{
    name = "nixmesh-test-${{name}}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
    marker = "{marker}";
  }};
  c = mk "c" ''
    mkdir -p $out/share/deep/er
    echo c > $out/share/deep/er/file
    printf '#!/bin/sh\necho hello\n' > $out/run
    chmod +x $out/run
    ln -s share/deep $out/link
    : > $out/empty
    head -c 300000 /dev/urandom > $out/blob
  '';
  b = mk "b" "mkdir $out; echo ${{c}} > $out/ref-c";
  a = mk "a" "mkdir $out; echo ${{b}} > $out/ref-b";
  base = mk "base" "echo base > $out";
  left = mk "left" "echo ${{base}} > $out";
  right = mk "right" "echo ${{base}} > $out";
in
  mk "top" "mkdir $out; echo ${{a}} ${{left}} ${{right}} > $out/refs"
"#
    )
}

/// A Nix expression whose value is a store path referring to `count` small files (1 to
/// 40 KiB each, made by `builtins.toFile`, so text-hashed, content-addressed paths): the
/// shape of a NixOS system closure, many paths and most of them small. `marker` goes into
/// every file.
pub fn many_paths_expr(count: usize, marker: &str) -> String {
    assert!(marker.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "marker {marker:?}");
    format!(
        r#"
let
  # 40,960 bytes to cut each file from.
  block = builtins.concatStringsSep "" (builtins.genList
    (j: builtins.hashString "sha256" "{marker}-${{toString j}}") 640);
  size = i: 1024 + (i * 7919 - (i * 7919 / 39936) * 39936);
  file = i: builtins.toFile "nixmesh-small-${{toString i}}"
    "{marker} ${{toString i}}
${{builtins.substring 0 (size i) block}}";
  files = builtins.genList file {count};
in
  builtins.toFile "nixmesh-many-top" (builtins.concatStringsSep "
" files)
"#
    )
}

/// How many paths the closure of [`test_closure_expr`] has.
pub const TEST_CLOSURE_LEN: usize = 7;

/// A marker no other test run uses: process id, clock and a counter.
pub fn unique_marker() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).expect("a clock after 1970");
    let n = NEXT_MARKER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{n}", std::process::id(), nanos.as_nanos())
}

/// A store path hash (32 nixbase32 characters) no store holds: random, so no run asks what
/// another run put in a node's memory.
pub fn random_hash() -> String {
    use std::hash::{BuildHasher, RandomState};
    const NIXBASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let state = RandomState::new();
    (0..32u64).map(|i| NIXBASE32[(state.hash_one(i) % 32) as usize] as char).collect()
}

/// A binary-cache signing key pair made by `nix-store --generate-binary-cache-key`.
#[derive(Clone, Debug)]
pub struct CacheKey {
    /// The file holding the secret key (`NAME:BASE64`).
    pub secret_file: PathBuf,
    /// The public key, `NAME:BASE64`, as `trusted-public-keys` takes it.
    pub public: String,
}

impl CacheKey {
    /// Makes a key pair named `name`, with its files in `dir`.
    pub fn generate(dir: &Path, name: &str) -> CacheKey {
        let secret_file = dir.join(format!("{name}.secret"));
        let public_file = dir.join(format!("{name}.public"));
        Command::new("nix-store")
            .arg("--generate-binary-cache-key")
            .arg(name)
            .arg(&secret_file)
            .arg(&public_file)
            .stdout_within(NIX_LIMIT);
        let public = std::fs::read_to_string(&public_file).expect("reading the public key");
        CacheKey { secret_file, public: public.trim().to_owned() }
    }
}

fn stdout_text(cmd: &mut Command) -> String {
    String::from_utf8(cmd.stdout_within(NIX_LIMIT)).expect("UTF-8 output")
}
