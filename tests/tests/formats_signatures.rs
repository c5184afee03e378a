//! Live checks of our keys, signatures and narinfos against the real Nix:
//! - keys `nix-store --generate-binary-cache-key` makes parse, and sign as Nix signs;
//! - a key we make, written to a file, is one `nix store sign` uses, and its signatures
//!   verify with our code;
//! - a `file://` binary cache we write by hand (our narinfos, signed by us, and NARs from
//!   `nix-store --dump`) is one `nix copy --from` accepts when it trusts our key, and refuses
//!   when it trusts another.
//!
//! Each test runs its own nix-daemons on chroot stores in a temporary directory, killed on
//! drop; no network (`substituters =` is empty).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use nixmesh_protocol::narinfo::{self, NarInfo};
use nixmesh_protocol::signature::{Signature, SigningKey, TrustedKeys, VerifyingKey};
use nixmesh_protocol::{Sha256, StorePath};
use nixmesh_tests::{CommandExt, test_closure_expr, unique_marker, wait_until};

/// How long one Nix command may take.
const NIX_LIMIT: Duration = Duration::from_secs(120);
/// How long a daemon may take to answer.
const DAEMON_START_LIMIT: Duration = Duration::from_secs(20);
/// Settings for every Nix process here: no substituters (no network), `nix` commands on,
/// builds as the daemon's own user.
const NIX_CONFIG: &str = "substituters =\n\
                          experimental-features = nix-command\n\
                          narinfo-cache-negative-ttl = 0\n\
                          build-users-group =\n";

/// A nix-daemon on a chroot store of its own, killed on drop.
struct Daemon {
    root: PathBuf,
    socket: PathBuf,
    cache_home: PathBuf,
    child: Child,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        let root = dir.join("root");
        let socket = dir.join("daemon.sock");
        let log = std::fs::File::create(dir.join("nix-daemon.log")).unwrap();
        let child = Command::new("nix-daemon")
            .arg("--store")
            .arg(&root)
            .args(["--option", "sandbox-paths", "/bin /lib /lib64 /usr"])
            .env("NIX_DAEMON_SOCKET_PATH", &socket)
            .env("NIX_CONFIG", NIX_CONFIG)
            .env_remove("NIX_REMOTE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting nix-daemon");
        let daemon = Daemon { root, socket, cache_home: dir.join("xdg-cache"), child };
        wait_until(DAEMON_START_LIMIT, &format!("nix-daemon on {}", dir.display()), || {
            daemon.socket.exists() && daemon.nix(&["store", "ping"]).status.success()
        });
        daemon
    }

    fn url(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// A Nix client command, with this test's settings, not yet pointed at a store.
    fn client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("NIX_CONFIG", NIX_CONFIG)
            .env("XDG_CACHE_HOME", &self.cache_home)
            .env_remove("NIX_REMOTE");
        cmd
    }

    /// `nix ARGS --store <this daemon>`.
    fn nix(&self, args: &[&str]) -> Output {
        self.client("nix").args(args).args(["--store", &self.url()]).output_within(NIX_LIMIT)
    }

    /// `nix-store --store <this daemon> ARGS`, which must succeed; its stdout.
    fn nix_store(&self, args: &[&str]) -> String {
        let mut cmd = self.client("nix-store");
        cmd.args(["--store", &self.url()]).args(args);
        String::from_utf8(cmd.stdout_within(NIX_LIMIT)).unwrap()
    }

    /// Builds the test closure and returns its top path.
    fn build_closure(&self) -> String {
        let expr = test_closure_expr(&unique_marker());
        let mut build = self.client("nix-build");
        build.args(["--store", &self.url(), "--no-out-link", "--expr", &expr]);
        String::from_utf8(build.stdout_within(NIX_LIMIT)).unwrap().trim().to_owned()
    }

    fn closure(&self, top: &str) -> Vec<String> {
        self.nix_store(&["--query", "--requisites", top]).lines().map(String::from).collect()
    }

    /// What the store knows of `path`, as a narinfo without URL-related fields or signatures.
    fn path_info(&self, path: &str) -> NarInfo {
        let query = |what: &str| self.nix_store(&["--query", what, path]).trim().to_owned();
        let references = self.nix_store(&["--query", "--references", path]);
        let deriver = query("--deriver");
        NarInfo {
            store_path: StorePath::parse(path).unwrap(),
            url: "unset".into(),
            compression: None,
            file_hash: None,
            file_size: None,
            nar_hash: Sha256::parse(&query("--hash")).unwrap(),
            nar_size: query("--size").parse().unwrap(),
            references: references.lines().map(|r| StorePath::parse(r).unwrap()).collect(),
            deriver: (deriver != "unknown-deriver").then(|| StorePath::parse(&deriver).unwrap()),
            system: None,
            signatures: Vec::new(),
            ca: None,
            extra: Vec::new(),
        }
    }

    /// The signatures the store holds for `path`.
    fn signatures(&self, path: &str) -> Vec<Signature> {
        let out = self.nix(&["path-info", "--json", path]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        info[0]["signatures"]
            .as_array()
            .map(|sigs| sigs.iter().map(|s| Signature::parse(s.as_str().unwrap()).unwrap()))
            .into_iter()
            .flatten()
            .collect()
    }

    /// The NAR of `path`, dumped from the file on disk (Nix 2.8's client cannot dump a chroot
    /// store's path through the daemon).
    fn dump(&self, path: &str) -> Vec<u8> {
        let on_disk = self.root.join(path.trim_start_matches('/'));
        Command::new("nix-store").arg("--dump").arg(on_disk).stdout_within(NIX_LIMIT)
    }

    fn is_valid(&self, path: &str) -> bool {
        let out = self
            .client("nix-store")
            .args(["--store", &self.url(), "--check-validity", path])
            .output_within(NIX_LIMIT);
        out.status.success()
    }

    /// `nix copy --from CACHE --to <this daemon> PATH`, trusting only `trusted`.
    fn copy_from(&self, cache: &str, trusted: &VerifyingKey, path: &str) -> Output {
        self.client("nix")
            .args(["copy", "--from", cache, "--to", &self.url()])
            .args(["--option", "trusted-public-keys", &trusted.to_string()])
            .arg(path)
            .output_within(NIX_LIMIT)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A key of ours for this run, named `name`; the seed comes from the run's unique marker.
fn our_key(name: &str) -> SigningKey {
    let seed = Sha256::digest(format!("{name} {}", unique_marker()).as_bytes());
    SigningKey::from_seed(name, seed.0)
}

#[test]
fn keys_nix_generates_parse_and_sign_as_nix_does() {
    if !nixmesh_tests::require_tool("nix-store") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (secret_file, public_file) = (tmp.path().join("sec"), tmp.path().join("pub"));
    Command::new("nix-store")
        .arg("--generate-binary-cache-key")
        .arg("nixmesh-live-1")
        .args([&secret_file, &public_file])
        .stdout_within(NIX_LIMIT);
    let secret_text = std::fs::read_to_string(&secret_file).unwrap();
    let public_text = std::fs::read_to_string(&public_file).unwrap();

    let secret = SigningKey::parse(&secret_text).expect("Nix's secret key parses");
    let public = VerifyingKey::parse(&public_text).expect("Nix's public key parses");
    assert_eq!(secret.name(), "nixmesh-live-1");
    assert_eq!(secret.verifying_key(), public);
    assert_eq!(secret.to_secret_string(), secret_text);
    assert_eq!(public.to_string(), public_text);

    // The key signs a path in a store as `nix store sign` does with the same file.
    let daemon = Daemon::start(&tmp.path().join("store"));
    let file = tmp.path().join("nixmesh-live-file");
    std::fs::write(&file, "signed by Nix\n").unwrap();
    let path = daemon.nix_store(&["--add", file.to_str().unwrap()]).trim().to_owned();
    let out = daemon.nix(&["store", "sign", "--key-file", secret_file.to_str().unwrap(), &path]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info = daemon.path_info(&path);
    assert_eq!(daemon.signatures(&path), [secret.sign(info.fingerprint().as_bytes())]);
}

#[test]
fn nix_signs_with_a_key_we_made() {
    if !nixmesh_tests::require_tool("nix-store") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let key = our_key("nixmesh-live-ours-1");
    let key_file = tmp.path().join("ours.secret");
    std::fs::write(&key_file, key.to_secret_string()).unwrap();

    let daemon = Daemon::start(&tmp.path().join("store"));
    let top = daemon.build_closure();
    let out = daemon.nix(&["store", "sign", "-r", "--key-file", key_file.to_str().unwrap(), &top]);
    assert!(out.status.success(), "nix store sign: {}", String::from_utf8_lossy(&out.stderr));

    let trusted = TrustedKeys::new(vec![key.verifying_key()]);
    let closure = daemon.closure(&top);
    assert!(closure.len() > 1);
    for path in closure {
        let mut info = daemon.path_info(&path);
        info.signatures = daemon.signatures(&path);
        assert_eq!(info.signatures.len(), 1, "{path}");
        assert_eq!(info.verify(&trusted).map(VerifyingKey::name), Some(key.name()), "{path}");
        // Deterministic: we would have made the very same signature.
        assert_eq!(info.signatures[0], key.sign(info.fingerprint().as_bytes()), "{path}");
        // And the free function agrees with the method.
        let free =
            narinfo::fingerprint(&info.store_path, &info.nar_hash, info.nar_size, &info.references);
        assert_eq!(free, info.fingerprint());
    }
}

/// Writes a `file://` binary cache of `top`'s closure from `daemon`'s store, narinfos
/// rendered and signed by us. Returns the cache's URL.
fn write_cache(daemon: &Daemon, top: &str, key: &SigningKey, dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("nar")).unwrap();
    std::fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    for path in daemon.closure(top) {
        let nar = daemon.dump(&path);
        let mut info = daemon.path_info(&path);
        assert_eq!(Sha256::digest(&nar), info.nar_hash, "{path}: our dump is not the store's");
        let nar_name = format!("nar/{}.nar", info.nar_hash.to_nixbase32());
        std::fs::write(dir.join(&nar_name), &nar).unwrap();
        info.url = nar_name;
        info.compression = Some("none".into());
        info.file_hash = Some(info.nar_hash);
        info.file_size = Some(info.nar_size);
        info.sign(key);
        let text = info.to_string();
        assert_eq!(NarInfo::parse(&text).unwrap(), info);
        let name = format!("{}.narinfo", info.store_path.hash());
        std::fs::write(dir.join(name), text).unwrap();
    }
    format!("file://{}", dir.display())
}

#[test]
fn nix_accepts_narinfos_we_signed_and_only_with_our_key() {
    if !nixmesh_tests::require_tool("nix-store") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let key = our_key("nixmesh-live-ours-2");
    let source = Daemon::start(&tmp.path().join("source"));
    let top = source.build_closure();
    let cache = write_cache(&source, &top, &key, &tmp.path().join("cache"));

    // Trusting another key (of the same name, even): refused, nothing copied.
    let impostor = our_key("nixmesh-live-ours-2").verifying_key();
    assert_ne!(impostor, key.verifying_key());
    let refusing = Daemon::start(&tmp.path().join("refusing"));
    let out = refusing.copy_from(&cache, &impostor, &top);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nix copy took paths signed by an untrusted key");
    assert!(stderr.contains("signature"), "refused for another reason: {stderr}");
    assert!(!refusing.is_valid(&top));

    // Trusting ours: the whole closure arrives.
    let accepting = Daemon::start(&tmp.path().join("accepting"));
    let out = accepting.copy_from(&cache, &key.verifying_key(), &top);
    assert!(out.status.success(), "nix copy: {}", String::from_utf8_lossy(&out.stderr));
    for path in source.closure(&top) {
        assert!(accepting.is_valid(&path), "{path} was not copied");
        assert_eq!(accepting.signatures(&path), source_signature(&key, &source, &path));
    }
}

/// The one signature a path copied from our cache carries: ours.
fn source_signature(key: &SigningKey, source: &Daemon, path: &str) -> Vec<Signature> {
    vec![key.sign(source.path_info(path).fingerprint().as_bytes())]
}
