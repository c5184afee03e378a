//! Live checks of our keys, signatures and narinfos against the real Nix:
//! - keys `nix-store --generate-binary-cache-key` makes parse, and sign as Nix signs;
//! - a key we make, written to a file, is one `nix store sign` uses, and its signatures
//!   verify with our code;
//! - a `file://` binary cache we write by hand (our narinfos, signed by us, and NARs from
//!   `nix-store --dump`) is one `nix copy --from` accepts when it trusts our key, and refuses
//!   when it trusts another.
//!
//! Each test runs its own nix-daemons (the harness's [`HostStore`]) on chroot stores in a
//! temporary directory, killed on drop; no network (`substituters =` is empty).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use nixmesh_protocol::narinfo::{self, NarInfo};
use nixmesh_protocol::signature::{Signature, SigningKey, TrustedKeys, VerifyingKey};
use nixmesh_protocol::{Sha256, StorePath};
use nixmesh_tests::{CommandExt, Host, HostStore, test_closure_expr, unique_marker};

/// How long one Nix command may take.
const NIX_LIMIT: Duration = Duration::from_secs(120);

/// A nix-daemon on a chroot store of its own in `dir`, on this machine's network.
fn start_store(dir: &Path) -> HostStore {
    HostStore::start(&Host::local(dir))
}

/// `nix-store --store STORE ARGS`, which must succeed; its stdout.
fn nix_store(store: &HostStore, args: &[&str]) -> String {
    let out = store.nix_store(args);
    assert!(out.status.success(), "nix-store {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Builds the test closure and returns every path of it, the top one last.
fn build_closure(store: &HostStore) -> Vec<String> {
    store.build_closure(&test_closure_expr(&unique_marker())).paths
}

/// What the store knows of `path`, as a narinfo without URL-related fields or signatures.
fn path_info(store: &HostStore, path: &str) -> NarInfo {
    let query = |what: &str| nix_store(store, &["--query", what, path]).trim().to_owned();
    let references = nix_store(store, &["--query", "--references", path]);
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
fn signatures(store: &HostStore, path: &str) -> Vec<Signature> {
    store.signatures(path).iter().map(|s| Signature::parse(s).unwrap()).collect()
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
    let store = start_store(&tmp.path().join("store"));
    let path = store.add_file("nixmesh-live-file", b"signed by Nix\n");
    store.nix(&["store", "sign", "--key-file", secret_file.to_str().unwrap(), &path]);
    let info = path_info(&store, &path);
    assert_eq!(signatures(&store, &path), [secret.sign(info.fingerprint().as_bytes())]);
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

    let store = start_store(&tmp.path().join("store"));
    let closure = build_closure(&store);
    let top = closure.last().unwrap();
    store.nix(&["store", "sign", "-r", "--key-file", key_file.to_str().unwrap(), top]);

    let trusted = TrustedKeys::new(vec![key.verifying_key()]);
    assert!(closure.len() > 1);
    for path in &closure {
        let mut info = path_info(&store, path);
        info.signatures = signatures(&store, path);
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

/// Writes a `file://` binary cache of `closure` from `store`, narinfos rendered and signed
/// by us. Returns the cache's URL.
fn write_cache(store: &HostStore, closure: &[String], key: &SigningKey, dir: &Path) -> String {
    std::fs::create_dir_all(dir.join("nar")).unwrap();
    std::fs::write(dir.join("nix-cache-info"), "StoreDir: /nix/store\n").unwrap();
    for path in closure {
        let nar = store.dump(path);
        let mut info = path_info(store, path);
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
    let source = start_store(&tmp.path().join("source"));
    let closure = build_closure(&source);
    let top = closure.last().unwrap();
    let cache = write_cache(&source, &closure, &key, &tmp.path().join("cache"));

    // Trusting another key (of the same name, even): refused, nothing copied.
    let impostor = our_key("nixmesh-live-ours-2").verifying_key().to_string();
    assert_ne!(impostor, key.verifying_key().to_string());
    let refusing = start_store(&tmp.path().join("refusing"));
    let out = refusing.copy_from(&cache, &[&impostor], top);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nix copy took paths signed by an untrusted key");
    assert!(stderr.contains("signature"), "refused for another reason: {stderr}");
    for path in &closure {
        assert!(!refusing.is_valid(path), "{path} was copied unverified");
    }

    // Trusting ours: the whole closure arrives.
    let accepting = start_store(&tmp.path().join("accepting"));
    let out = accepting.copy_from(&cache, &[&key.verifying_key().to_string()], top);
    assert!(out.status.success(), "nix copy: {}", String::from_utf8_lossy(&out.stderr));
    for path in &closure {
        assert!(accepting.is_valid(path), "{path} was not copied");
        assert_eq!(signatures(&accepting, path), source_signature(&key, &source, path));
    }
}

/// The one signature a path copied from our cache carries: ours.
fn source_signature(key: &SigningKey, source: &HostStore, path: &str) -> Vec<Signature> {
    vec![key.sign(path_info(source, path).fingerprint().as_bytes())]
}
