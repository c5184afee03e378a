//! Byte ranges and `HEAD` through a node whose peer holds the path (issue 23): hosts on a LAN
//! of network namespaces, real nix-daemons and real nodes, `curl` as the client (it sends
//! `Range` the way Nix's resume does, `bytes=N-`).
//!
//! Host 1 holds a signed path of one 3 MiB file, large enough that its NAR is streamed rather
//! than verified whole before the response starts (the node's default, 1 MiB), so a part of it
//! goes out as it passes and only its last bytes wait for the hash.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use nixmesh_tests::{
    CacheKey, CommandExt, HostStore, Lan, NODE_URL, Node, NodeOptions, narinfo_url_path,
    require_lan, unique_marker, wait_until,
};

/// How long nodes may take to find each other and learn what the others hold.
const DISCOVERY_LIMIT: Duration = Duration::from_secs(30);
/// The longest one `curl` may take (a 3 MiB NAR on a LAN takes milliseconds).
const CURL_LIMIT: Duration = Duration::from_secs(30);
/// The size of the one file in the path served.
const FILE_LEN: usize = 3 << 20;

/// Two hosts: host 1 holds `path` (a directory with one file, `data`), signed with a key both
/// nodes trust; host 2 holds nothing, and its node already offers `path`. (Bound in this
/// order, they drop nodes first, then stores, then the LAN.)
struct HeldPath {
    _lan: Lan,
    stores: Vec<HostStore>,
    nodes: Vec<Node>,
    path: String,
}

impl HeldPath {
    /// With host 1's copy of the file damaged behind Nix's back (one byte flipped midway),
    /// when `damaged`.
    fn new(damaged: bool) -> HeldPath {
        let lan = Lan::new(2);
        let stores: Vec<HostStore> = lan.hosts().iter().map(HostStore::start).collect();
        let key = CacheKey::generate(lan.dir(), "test-1");
        let path = add_signed_dir(&stores[0], &key);
        if damaged {
            stores[0].damage(&path, "data");
        }
        let options = NodeOptions { trusted_keys: vec![key.public.clone()], ..Default::default() };
        let nodes: Vec<Node> = stores.iter().map(|s| Node::start(s.host(), s, &options)).collect();
        wait_until(DISCOVERY_LIMIT, "host 2's node to offer host 1's path", || {
            nodes[1].narinfo_statuses(std::slice::from_ref(&path)) == [200]
        });
        HeldPath { _lan: lan, stores, nodes, path }
    }

    /// The NAR's URL path on the nodes, from the narinfo host 2's node serves.
    fn nar_url(&self) -> String {
        let (status, narinfo) = self.nodes[1].http_get(&narinfo_url_path(&self.path));
        assert_eq!(status, 200);
        let narinfo = String::from_utf8(narinfo).expect("a narinfo is text");
        let url = narinfo.lines().find_map(|l| l.strip_prefix("URL: ")).expect("a URL line");
        format!("/{url}")
    }

    /// `curl` on host 2 against its node: `args`, then the URL of `url_path`.
    fn curl(&self, args: &[&str], url_path: &str) -> Curl {
        let host = self.nodes[1].host();
        let (headers, body) = (host.dir().join("curl.headers"), host.dir().join("curl.body"));
        let _ = std::fs::remove_file(&body);
        let out = host
            .command("curl")
            .args(["--silent", "--path-as-is", "--max-time", "20"])
            .arg("--dump-header")
            .arg(&headers)
            .arg("--output")
            .arg(&body)
            .args(["--write-out", "%{http_code}"])
            .args(args)
            .arg(format!("{NODE_URL}{url_path}"))
            .output_within(CURL_LIMIT);
        Curl::read(out, &headers, &body)
    }
}

/// Adds a directory holding `data`, FILE_LEN bytes unlike any other test's, to `store`, and
/// signs it with `key`; its store path.
fn add_signed_dir(store: &HostStore, key: &CacheKey) -> String {
    let dir = store.host().dir().join("ranged");
    std::fs::create_dir_all(&dir).unwrap();
    let marker = unique_marker();
    let data: Vec<u8> = (0..FILE_LEN)
        .map(|i| {
            (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3]
                ^ marker.as_bytes()[i % marker.len()]
        })
        .collect();
    std::fs::write(dir.join("data"), data).unwrap();
    let out = store.nix_store(&["--add", dir.to_str().expect("a UTF-8 path")]);
    assert!(out.status.success(), "nix-store --add: {}", String::from_utf8_lossy(&out.stderr));
    let path = String::from_utf8(out.stdout).expect("UTF-8 output").trim().to_owned();
    let key_file = key.secret_file.to_str().expect("a UTF-8 path");
    store.nix(&["store", "sign", "--key-file", key_file, &path]);
    path
}

/// What `curl` got: its exit code, the status, the headers (names in lower case) and the body.
struct Curl {
    exit: Option<i32>,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Curl {
    fn read(out: Output, headers: &Path, body: &Path) -> Curl {
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        let headers = std::fs::read_to_string(headers).unwrap_or_default();
        let headers = headers
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let body = std::fs::read(body).unwrap_or_default();
        Curl { exit: out.status.code(), status, headers, body }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[test]
fn ranges_of_a_peers_nar_are_exact_and_curl_resumes_a_half_written_file() {
    if !require_lan(&[]) {
        return;
    }
    let held = HeldPath::new(false);
    let nar = held.stores[0].dump(&held.path);
    let (url, size) = (held.nar_url(), nar.len());

    let whole = held.curl(&[], &url);
    assert_eq!((whole.exit, whole.status), (Some(0), 200));
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    assert_eq!(whole.header("content-encoding"), None);
    assert!(whole.body == nar, "the whole NAR differs");

    let parts = [
        ("1000-1999", 1000..2000),
        ("2000000-", 2_000_000..size),
        ("-100", size - 100..size),
        ("500000-1500000", 500_000..1_500_001),
    ];
    for (asked, want) in parts {
        let part = held.curl(&["--range", asked], &url);
        assert_eq!((part.exit, part.status), (Some(0), 206), "{asked}");
        let range = format!("bytes {}-{}/{size}", want.start, want.end - 1);
        assert_eq!(part.header("content-range"), Some(range.as_str()), "{asked}");
        assert!(
            part.body == nar[want.clone()],
            "{asked}: {} bytes, not those asked",
            part.body.len()
        );
    }

    let past = held.curl(&["--range", &format!("{size}-")], &url);
    assert_eq!(past.status, 416);
    assert_eq!(past.header("content-range"), Some(format!("bytes */{size}").as_str()));

    // A download cut off halfway, resumed as `curl -C -` does: from the file's length on.
    let file: PathBuf = held.nodes[1].host().dir().join("resumed.nar");
    std::fs::write(&file, &nar[..size / 2]).unwrap();
    let out = held.nodes[1]
        .host()
        .command("curl")
        .args(["--silent", "--show-error", "--fail", "--continue-at", "-", "--output"])
        .arg(&file)
        .arg(format!("{NODE_URL}{url}"))
        .output_within(CURL_LIMIT);
    assert!(out.status.success(), "curl -C -: {}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read(&file).unwrap() == nar, "the resumed file is not the NAR");
}

#[test]
fn a_range_of_a_nar_whose_holder_sends_wrong_bytes_never_gets_its_last_bytes() {
    if !require_lan(&[]) {
        return;
    }
    let held = HeldPath::new(true);
    // What host 1 sends: its damaged file's NAR, of the signed size but not the signed hash.
    let sent = held.stores[0].dump(&held.path);
    let (url, size) = (held.nar_url(), sent.len());
    for asked in ["2000000-", "-100", "0-"] {
        let part = held.curl(&["--range", asked], &url);
        assert_ne!(part.exit, Some(0), "{asked}: curl got the whole part");
        let first = match asked.split_once('-') {
            Some(("", n)) => size - n.parse::<usize>().unwrap(),
            Some((a, _)) => a.parse().unwrap(),
            None => unreachable!(),
        };
        assert!(part.body.len() < size - first, "{asked}: {} bytes arrived", part.body.len());
        // A 206 once some of the part has passed; nothing at all (no status line) when the
        // whole part lies in the NAR's last chunk, which is never handed out.
        assert!(matches!(part.status, 206 | 0), "{asked}: status {}", part.status);
        eprintln!("{asked}: {} of {} bytes arrived, then the cut", part.body.len(), size - first);
    }
    // A part ending before the NAR's end goes out only once the NAR has verified: never.
    let part = held.curl(&["--range", "0-999"], &url);
    assert_ne!(part.exit, Some(0));
    assert!(part.body.is_empty(), "{} bytes of a part of a wrong NAR arrived", part.body.len());
}

#[test]
fn head_answers_like_get_without_a_nar_transfer_between_nodes() {
    if !require_lan(&[]) {
        return;
    }
    let held = HeldPath::new(false);
    let nar_url = held.nar_url();
    let miss = "/0000000000000000000000000000000z.narinfo".to_owned();
    let urls = [narinfo_url_path(&held.path), miss, nar_url.clone(), "/nix-cache-info".to_owned()];
    let heads: Vec<Curl> = urls.iter().map(|u| held.curl(&["--head"], u)).collect();
    // Nothing of the NAR crossed the mesh: not served by host 1, not received by host 2.
    let (holder, asker) = (held.nodes[0].status(), held.nodes[1].status());
    assert_eq!(holder["bytes_served"], 0, "host 1 served NAR bytes for HEAD: {holder}");
    assert_eq!(asker["bytes_received"], 0, "host 2 received NAR bytes for HEAD: {asker}");

    for (url, head) in urls.iter().zip(&heads) {
        let get = held.curl(&[], url);
        // (`curl --head` writes the headers as its output and reads no body; that none is
        // sent is checked on the raw socket in localhttp's tests/substituter/ranges.rs.)
        assert_eq!(head.status, get.status, "{url}");
        for name in ["content-type", "content-length", "accept-ranges"] {
            assert_eq!(head.header(name), get.header(name), "{url}: {name}");
        }
        assert_eq!(head.header("content-length"), Some(get.body.len().to_string().as_str()));
    }
    // The GET of the NAR did cross it, so the counters above count what they should.
    wait_until(Duration::from_secs(5), "host 1's node to count the NAR served", || {
        held.nodes[0].status()["bytes_served"].as_u64() > Some(0)
    });
}
