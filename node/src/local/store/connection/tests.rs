//! The client against a scripted daemon: what the daemon sends is written up front into an
//! in-memory pipe, and what the client sent is read back and checked afterwards.

use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use nixmesh_protocol::nix_daemon::worker_protocol::CLIENT_MAGIC;
use nixmesh_protocol::nix_daemon::{put_bytes, put_u64};

use super::*;

const TOP: &str = "/nix/store/z0zz5y570pdakbq0idj35kpi7kd8z3ny-nixmesh-top";
const DEP: &str = "/nix/store/gbzzz8d92vz1mrmwf2sh9hawvk8m29g4-nixmesh-dep";
const DRV: &str = "/nix/store/jwq00gs8sgsmlykl1mxw1pa403q6dxn0-nixmesh-top.drv";

/// Bytes a scripted daemon sends.
#[derive(Default)]
struct Script(Vec<u8>);

impl Script {
    fn u64(mut self, n: u64) -> Self {
        put_u64(&mut self.0, n);
        self
    }
    fn str(mut self, s: &str) -> Self {
        put_bytes(&mut self.0, s.as_bytes());
        self
    }
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    /// The daemon's half of a handshake at `daemon_minor`, as Nix's `daemon.cc` sends it.
    fn handshake(self, daemon_minor: u64) -> Self {
        let minor = daemon_minor.min(MAX_MINOR);
        let mut s = self.u64(DAEMON_MAGIC).u64(1 << 8 | daemon_minor);
        if minor >= 33 {
            s = s.str("2.8.0");
        }
        if minor >= 35 {
            s = s.u64(1);
        }
        s.u64(stderr::LAST)
    }
    /// A structured `STDERR_ERROR` (protocol 1.26 and later), as Nix 2.8 sent it for
    /// `QueryPathFromHashPart("abc")`.
    fn error(self, message: &str) -> Self {
        self.u64(stderr::ERROR).str("Error").u64(0).str("Error").str(message).u64(0).u64(0)
    }
}

/// A client connected to a daemon that will send `script`; also the daemon's end.
async fn connect(script: Script) -> (Result<Connection<DuplexStream>, StoreError>, DuplexStream) {
    let (client, mut daemon) = tokio::io::duplex(1 << 20);
    daemon.write_all(&script.0).await.unwrap();
    let conn = Connection::handshake(client, Arc::from(Path::new("/test/socket"))).await;
    (conn, daemon)
}

/// Everything the client has sent so far, as `u64` words.
async fn sent_words(daemon: &mut DuplexStream) -> Vec<u64> {
    let mut bytes = vec![0u8; 1 << 16];
    let n = daemon.read(&mut bytes).await.unwrap();
    bytes[..n].chunks(8).map(|w| u64::from_le_bytes(w.try_into().unwrap())).collect()
}

fn protocol_problem(err: StoreError) -> String {
    match err {
        StoreError::Protocol { problem, .. } => problem,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[tokio::test]
async fn negotiates_down_to_a_nix_2_8_daemon() {
    // Startup log messages and activities must be skipped on the way to STDERR_LAST.
    let script = Script::default()
        .u64(DAEMON_MAGIC)
        .u64(0x122)
        .str("2.8.0")
        .u64(stderr::NEXT)
        .str("warning: \x1b[35;1mignoring\x1b[0m something\n")
        .u64(stderr::START_ACTIVITY)
        .u64(7)
        .u64(3)
        .u64(100)
        .str("copying")
        .u64(2)
        .u64(0)
        .u64(5)
        .u64(1)
        .str("field")
        .u64(0)
        .u64(stderr::RESULT)
        .u64(7)
        .u64(105)
        .u64(0)
        .u64(stderr::STOP_ACTIVITY)
        .u64(7)
        .u64(stderr::LAST);
    let (conn, mut daemon) = connect(script).await;
    let conn = conn.unwrap();
    assert_eq!(conn.minor(), 34);
    assert_eq!(conn.daemon_version(), Some("2.8.0"));
    // Magic, our version, then CPU affinity and reserveSpace, both off.
    assert_eq!(sent_words(&mut daemon).await, [CLIENT_MAGIC, 1 << 8 | MAX_MINOR, 0, 0]);
}

#[tokio::test]
async fn newer_daemons_are_spoken_to_at_our_version() {
    let (conn, _daemon) = connect(Script::default().handshake(38)).await;
    let conn = conn.unwrap();
    assert_eq!(conn.minor(), MAX_MINOR);
    assert_eq!(conn.daemon_version(), Some("2.8.0"));
}

#[tokio::test]
async fn daemons_before_1_33_send_no_version() {
    let (conn, _daemon) = connect(Script::default().handshake(25)).await;
    let conn = conn.unwrap();
    assert_eq!(conn.minor(), 25);
    assert_eq!(conn.daemon_version(), None);
}

#[tokio::test]
async fn old_daemons_are_refused_with_a_clear_message() {
    let (conn, _daemon) = connect(Script::default().u64(DAEMON_MAGIC).u64(0x114)).await;
    let err = conn.err().unwrap();
    assert_eq!(
        err.to_string(),
        "nix-daemon at /test/socket speaks worker protocol 1.20; nixmesh needs 1.21 or newer \
         (Nix 2.0 or later)"
    );
    let (conn, _daemon) = connect(Script::default().u64(DAEMON_MAGIC).u64(0x200)).await;
    assert!(matches!(conn.err().unwrap(), StoreError::UnsupportedDaemon { major: 2, .. }));
}

#[tokio::test]
async fn something_else_on_the_socket_is_not_a_daemon() {
    let (conn, _daemon) = connect(Script::default().raw(b"HTTP/1.1 400 Bad Request\r\n")).await;
    let problem = protocol_problem(conn.err().unwrap());
    assert!(problem.starts_with("this is not a nix-daemon"), "{problem}");
}

#[tokio::test]
async fn a_daemon_that_hangs_up_is_an_io_error() {
    let (client, daemon) = tokio::io::duplex(64);
    drop(daemon);
    let err = Connection::handshake(client, Arc::from(Path::new("/s"))).await.err().unwrap();
    assert!(err.is_io(), "{err:?}");
}

#[tokio::test]
async fn structured_daemon_errors_carry_the_message() {
    let script = Script::default().handshake(34).error("invalid hash part");
    let (conn, mut daemon) = connect(script).await;
    let mut conn = conn.unwrap();
    sent_words(&mut daemon).await;
    let hash = StorePathHash::parse("z0zz5y570pdakbq0idj35kpi7kd8z3ny").unwrap();
    let err = conn.query_path_from_hash_part(&hash).await.unwrap_err();
    assert_eq!(err.to_string(), "nix-daemon at /test/socket reported an error: invalid hash part");
    // The request: the operation and the hash part as a padded string.
    let mut expected = Vec::new();
    put_u64(&mut expected, Op::QueryPathFromHashPart as u64);
    put_bytes(&mut expected, b"z0zz5y570pdakbq0idj35kpi7kd8z3ny");
    let mut sent = vec![0u8; expected.len()];
    daemon.read_exact(&mut sent).await.unwrap();
    assert_eq!(sent, expected);
}

#[tokio::test]
async fn error_traces_are_kept_and_colours_removed() {
    let script = Script::default()
        .handshake(34)
        .u64(stderr::ERROR)
        .str("Error")
        .u64(0)
        .str("Error")
        .str("path '\x1b[35;1m/nix/store/x\x1b[0m' is not valid")
        .u64(0)
        .u64(1)
        .u64(0)
        .str("while doing something");
    let (conn, _daemon) = connect(script).await;
    let err = conn.unwrap().query_all_valid_paths().await.unwrap_err();
    let StoreError::Daemon { message, .. } = err else { panic!("{err:?}") };
    assert_eq!(message, "path '/nix/store/x' is not valid; while doing something");
}

#[tokio::test]
async fn errors_before_1_26_are_a_message_and_a_status() {
    let script = Script::default().handshake(25).u64(stderr::ERROR).str("out of luck").u64(1);
    let (conn, _daemon) = connect(script).await;
    let err = conn.unwrap().query_all_valid_paths().await.unwrap_err();
    assert!(matches!(err, StoreError::Daemon { message, .. } if message == "out of luck"));
}

#[tokio::test]
async fn unknown_stderr_messages_are_protocol_errors() {
    let script = Script::default().handshake(34).u64(0x1234_5678);
    let (conn, _daemon) = connect(script).await;
    let problem = protocol_problem(conn.unwrap().query_all_valid_paths().await.unwrap_err());
    assert_eq!(problem, "daemon sent an unknown stderr message 0x12345678");
}

#[tokio::test]
async fn requests_for_data_are_protocol_errors() {
    for message in [stderr::READ, stderr::WRITE] {
        let script = Script::default().handshake(34).u64(message).u64(8);
        let (conn, _daemon) = connect(script).await;
        let problem = protocol_problem(conn.unwrap().query_all_valid_paths().await.unwrap_err());
        assert!(problem.contains("STDERR_READ/WRITE"), "{problem}");
    }
}

#[tokio::test]
async fn lists_all_valid_paths() {
    let script = Script::default().handshake(34).u64(stderr::LAST).u64(2).str(TOP).str(DEP);
    let (conn, _daemon) = connect(script).await;
    let paths = conn.unwrap().query_all_valid_paths().await.unwrap();
    let expected: Vec<_> = [TOP, DEP].iter().map(|p| StorePath::parse(p).unwrap().hash()).collect();
    assert_eq!(paths, expected);
}

#[tokio::test]
async fn refuses_oversized_lists_and_garbage_paths() {
    let script = Script::default().handshake(34).u64(stderr::LAST).u64(MAX_PATHS as u64 + 1);
    let (conn, _daemon) = connect(script).await;
    let problem = protocol_problem(conn.unwrap().query_all_valid_paths().await.unwrap_err());
    assert_eq!(problem, "list of 10000001 valid paths exceeds the limit of 10000000");

    let script = Script::default().handshake(34).u64(stderr::LAST).u64(1).str("/etc/passwd");
    let (conn, _daemon) = connect(script).await;
    let problem = protocol_problem(conn.unwrap().query_all_valid_paths().await.unwrap_err());
    assert!(problem.starts_with("one of the valid paths, \"/etc/passwd\""), "{problem}");
}

#[tokio::test]
async fn hash_part_lookups_hit_miss_and_check_the_answer() {
    let hash = StorePath::parse(TOP).unwrap().hash();
    let script = Script::default()
        .handshake(34)
        .u64(stderr::LAST)
        .str(TOP)
        .u64(stderr::LAST)
        .str("")
        .u64(stderr::LAST)
        .str(DEP);
    let (conn, _daemon) = connect(script).await;
    let mut conn = conn.unwrap();
    let hit = conn.query_path_from_hash_part(&hash).await.unwrap();
    assert_eq!(hit, Some(StorePath::parse(TOP).unwrap()));
    assert_eq!(conn.query_path_from_hash_part(&hash).await.unwrap(), None);
    let problem = protocol_problem(conn.query_path_from_hash_part(&hash).await.unwrap_err());
    assert!(problem.contains("it answered /nix/store/gbzzz"), "{problem}");
}

#[tokio::test]
async fn reads_path_info() {
    let hex = "ac70de1d16da4b18b0d6353109f727dcd40927aea8f13c808f6dbfa6b3c68255";
    let sig = "test-1:JDP9DUrtAPWMm8sw4c32a1/SEXs235OKLqHY6WfdvR0wo+49onUts0hfi+Bfpx4S3JKwNd5LSQSKRL7SF0hGAQ==";
    let script = Script::default()
        .handshake(34)
        .u64(stderr::LAST)
        .u64(1)
        .str(DRV)
        .str(hex)
        .u64(1)
        .str(DEP)
        .u64(1_795_586_766)
        .u64(928)
        .u64(1)
        .u64(1)
        .str(sig)
        .str("")
        // The next query: not valid.
        .u64(stderr::LAST)
        .u64(0);
    let (conn, _daemon) = connect(script).await;
    let mut conn = conn.unwrap();
    let top = StorePath::parse(TOP).unwrap();
    let info = conn.query_path_info(&top).await.unwrap().unwrap();
    assert_eq!(
        info,
        PathInfo {
            path: top.clone(),
            deriver: Some(StorePath::parse(DRV).unwrap()),
            nar_hash: Sha256::parse_digest(hex).unwrap(),
            references: vec![StorePath::parse(DEP).unwrap()],
            registration_time: 1_795_586_766,
            nar_size: 928,
            ultimate: true,
            signatures: vec![sig.to_owned()],
            ca: None,
        }
    );
    assert_eq!(conn.query_path_info(&top).await.unwrap(), None);
}

#[tokio::test]
async fn refuses_a_path_info_with_a_bad_hash() {
    let script = Script::default().handshake(34).u64(stderr::LAST).u64(1).str("").str("md5:abc");
    let (conn, _daemon) = connect(script).await;
    let top = StorePath::parse(TOP).unwrap();
    let problem = protocol_problem(conn.unwrap().query_path_info(&top).await.unwrap_err());
    assert!(problem.starts_with("narHash \"md5:abc\""), "{problem}");
}

#[tokio::test]
async fn nar_from_path_checks_the_header() {
    let top = StorePath::parse(TOP).unwrap();
    let script = Script::default().handshake(34).u64(stderr::LAST).raw(&NAR_HEADER).raw(b"rest");
    let (conn, _daemon) = connect(script).await;
    let mut conn = conn.unwrap();
    conn.start_nar_from_path(&top).await.unwrap();
    let mut rest = [0u8; 4];
    conn.read_raw(&mut rest).await.unwrap();
    assert_eq!(&rest, b"rest");

    let script = Script::default().handshake(34).u64(stderr::LAST).str("not-a-nar").u64(0);
    let (conn, _daemon) = connect(script).await;
    let problem = protocol_problem(conn.unwrap().start_nar_from_path(&top).await.unwrap_err());
    assert!(problem.ends_with("does not start like a NAR"), "{problem}");
}

#[tokio::test]
async fn nar_from_path_reports_an_error_sent_in_place_of_the_nar() {
    let top = StorePath::parse(TOP).unwrap();
    let message = "getting status of '/nix/store/z0zz…-nixmesh-top': No such file or directory";
    let script = Script::default().handshake(34).u64(stderr::LAST).error(message);
    let (conn, _daemon) = connect(script).await;
    let err = conn.unwrap().start_nar_from_path(&top).await.unwrap_err();
    let StoreError::Daemon { message: got, .. } = err else { panic!("{err:?}") };
    assert_eq!(got, format!("sending the NAR of {TOP}: {message}"));
}

#[test]
fn strips_colour_codes() {
    assert_eq!(strip_ansi("a \x1b[35;1mb\x1b[0m c"), "a b c");
    assert_eq!(strip_ansi("plain"), "plain");
    assert_eq!(strip_ansi("cut \x1b[3"), "cut ");
}
