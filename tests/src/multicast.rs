//! Multicast between the hosts of a LAN, with the `nixmesh-mcast-probe` binary of this crate
//! (an integration test passes its path, `env!("CARGO_BIN_EXE_nixmesh-mcast-probe")`): what the
//! harness's own tests use to show that mDNS's datagrams reach a segment's hosts and stop at a
//! router.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::command::CommandExt;
use crate::netns::Host;

/// mDNS's group and port.
pub const GROUP: &str = "224.0.0.251";
pub const PORT: &str = "5353";

/// How long a receiver may take to say it listens, and a send to return.
const START_LIMIT: Duration = Duration::from_secs(10);

/// A receiver on one host, listening on [`GROUP`]:[`PORT`]; killed on drop.
pub struct Receiver {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Receiver {
    /// Starts the probe on `host`, receiving for at most `for_ms` milliseconds, and waits
    /// until it listens.
    pub fn start(probe: &Path, host: &Host, for_ms: u64) -> Receiver {
        let address = host.address().to_string();
        let mut child = host
            .command(probe)
            .args(["recv", GROUP, PORT, &address, &for_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the multicast receiver");
        let (lines, lines_rx) = mpsc::channel();
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let ready = lines_rx.recv_timeout(START_LIMIT);
        assert_eq!(ready.as_deref(), Ok("ready"), "{}'s receiver did not start", host.name());
        Receiver { child, lines: lines_rx }
    }

    /// The next datagram received (`SENDER MESSAGE`), within `limit`.
    pub fn next(&self, limit: Duration) -> Result<String, mpsc::RecvTimeoutError> {
        self.lines.recv_timeout(limit)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `message` to [`GROUP`]:[`PORT`] from `host`.
pub fn send(probe: &Path, host: &Host, message: &str) {
    host.command(probe)
        .args(["send", GROUP, PORT, &host.address().to_string(), message])
        .stdout_within(START_LIMIT);
}
