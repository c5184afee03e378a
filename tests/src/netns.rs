//! A LAN of hosts made of Linux network namespaces.
//!
//! Each host is a network namespace with one interface, `eth0`, whose other end is a port of
//! a bridge in a namespace of its own (the switch). Nothing is created in the machine's own
//! namespace: multicast (mDNS) sent on the LAN reaches the other hosts and nothing else. All
//! LANs use the same subnet, [`SUBNET`]; they cannot clash because each is a separate
//! layer-2 segment that no route leads out of.
//!
//! Each host's Nix store is a chroot store of its own (see [`crate::nixstore`]).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::command::CommandExt;
use crate::wait::wait_until;

/// The first three octets of every host's address; host `n` (from 1) is `10.231.0.n/24`.
pub const SUBNET: [u8; 3] = [10, 231, 0];
/// The most hosts a LAN can have.
pub const MAX_HOSTS: usize = 200;

/// How long one `ip` command may take.
const IP_LIMIT: Duration = Duration::from_secs(10);
/// What every Nix command on a host is configured with, over the machine's nix.conf:
/// - no substituter from the internet;
/// - no cached "not there" answers, which would make one step of a test depend on what an
///   earlier one asked;
/// - builds as the daemon's user (root) rather than as `nixbld` users: those are shared by
///   every store on the machine, and Nix kills all processes of a build user before and
///   after each build, so parallel tests would kill each other's builds.
const NIX_CONFIG: &str = "substituters =\n\
                          experimental-features = nix-command\n\
                          narinfo-cache-negative-ttl = 0\n\
                          build-users-group =\n";

static NEXT_LAN: AtomicUsize = AtomicUsize::new(0);

/// One host of a [`Lan`].
#[derive(Clone, Debug)]
pub struct Host {
    number: usize,
    netns: String,
    address: Ipv4Addr,
    dir: PathBuf,
}

impl Host {
    /// This machine itself, outside any namespace, keeping its files in `dir`: for tests of a
    /// store or of nodes on loopback, where no LAN is needed. (No mDNS there: nodes on it
    /// must run with `--no-mdns`.)
    pub fn local(dir: &Path) -> Host {
        Host { number: 1, netns: String::new(), address: Ipv4Addr::LOCALHOST, dir: dir.into() }
    }

    /// [`Host::local`] in a new directory `name` under `parent`.
    pub fn local_in(parent: &Path, name: &str) -> Host {
        let dir = parent.join(name);
        std::fs::create_dir_all(&dir).expect("creating a host's directory");
        Host::local(&dir)
    }

    /// A host that is not on any LAN, to test what only formats commands.
    #[cfg(test)]
    pub(crate) fn for_tests(netns: &str, dir: &str) -> Host {
        Host { number: 1, netns: netns.into(), address: Ipv4Addr::LOCALHOST, dir: dir.into() }
    }

    /// The host's number on its LAN, from 1.
    pub fn number(&self) -> usize {
        self.number
    }

    /// A name for messages: "host 2".
    pub fn name(&self) -> String {
        format!("host {}", self.number)
    }

    /// The network namespace's name (for `ip netns exec`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The address of the host's `eth0`.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// A scratch directory for this host (logs, state, keys), as seen from anywhere.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The root of the host's chroot store (`nix-daemon --store` takes it): its paths are on
    /// disk under `store_root()/nix/store/`.
    pub fn store_root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// A command that runs `program` on this host: in its network namespace, with a Nix
    /// configuration and cache directory of its own.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = if self.netns.is_empty() {
            Command::new(program)
        } else {
            let mut ip = Command::new("ip");
            ip.args(["netns", "exec", &self.netns]).arg(program);
            ip
        };
        cmd.env_remove("NIX_REMOTE")
            .env("NIX_CONFIG", NIX_CONFIG)
            .env("XDG_CACHE_HOME", self.dir.join("cache"));
        cmd
    }
}

/// Hosts on one switch; dropping it kills every process left in its namespaces and deletes
/// them. Its scratch directory is removed too, unless the thread is panicking (a failed
/// test), in which case its path is printed and it is kept for a post-mortem.
pub struct Lan {
    id: String,
    switch: String,
    hosts: Vec<Host>,
    dir: Option<tempfile::TempDir>,
}

impl Lan {
    /// Makes a LAN of `hosts` hosts, numbered from 1. Needs root; panics if a step fails
    /// (after undoing what was done).
    pub fn new(hosts: usize) -> Lan {
        assert!((1..=MAX_HOSTS).contains(&hosts), "a LAN has 1 to {MAX_HOSTS} hosts");
        static SWEPT: std::sync::Once = std::sync::Once::new();
        SWEPT.call_once(sweep_dead_lans);
        let id = format!("nm{}x{}", std::process::id(), NEXT_LAN.fetch_add(1, Ordering::Relaxed));
        let dir = tempfile::Builder::new()
            .prefix(&format!("nixmesh-{id}-"))
            .tempdir()
            .expect("creating the LAN's scratch directory");
        eprintln!("LAN {id}: {hosts} hosts, scratch directory {}", dir.path().display());
        let mut lan = Lan { switch: format!("{id}-sw"), id, hosts: Vec::new(), dir: Some(dir) };
        lan.build_switch();
        for number in 1..=hosts {
            lan.add_host(number);
        }
        lan
    }

    /// The hosts, in order: `hosts()[0]` is host 1.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The LAN's unique id, which prefixes its namespaces' names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The LAN's scratch directory; each host's is a subdirectory.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("present until drop").path()
    }

    /// Limits what `host` sends onto the LAN to `mbit` Mbit/s (a token bucket on its link), so
    /// that a transfer takes long enough to act on in the middle of it.
    pub fn shape_egress(&self, host: &Host, mbit: u32) {
        let rate = format!("{mbit}mbit");
        Command::new("tc")
            .args(["-n", host.netns(), "qdisc", "replace", "dev", "eth0", "root", "tbf"])
            .args(["rate", &rate, "burst", "256kb", "latency", "100ms"])
            .stdout_within(IP_LIMIT);
    }

    /// The bytes `host` has sent onto the LAN so far.
    pub fn sent_bytes(&self, host: &Host) -> u64 {
        let text = host
            .command("cat")
            .arg("/sys/class/net/eth0/statistics/tx_bytes")
            .stdout_within(IP_LIMIT);
        String::from_utf8_lossy(&text).trim().parse().expect("a byte count")
    }

    fn build_switch(&mut self) {
        ip(&["netns", "add", &self.switch]);
        let sw = self.switch.as_str();
        ip(&["-n", sw, "link", "set", "lo", "up"]);
        // No IGMP snooping: the bridge floods multicast to every port, like a plain switch,
        // whether or not anyone sent a membership report yet.
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
    }

    fn add_host(&mut self, number: usize) {
        let netns = format!("{}-h{number}", self.id);
        ip(&["netns", "add", &netns]);
        let [a, b, c] = SUBNET;
        let address = Ipv4Addr::new(a, b, c, u8::try_from(number).expect("at most 200 hosts"));
        let dir = self.dir().join(format!("h{number}"));
        let host = Host { number, netns, address, dir };
        self.hosts.push(host.clone());
        std::fs::create_dir_all(host.store_root()).expect("creating a host's directory");

        let ns = host.netns.as_str();
        // Usable IPv6 link-local addresses at once rather than after duplicate detection, so
        // that nothing sending on them early (mDNS) sees "cannot assign address".
        let _ = Command::new("ip")
            .args(["netns", "exec", ns, "sh", "-c"])
            .arg("echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad")
            .output_within(IP_LIMIT);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
        let port = format!("p{number}");
        let switch = self.switch.as_str();
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", switch,
        ]);
        ip(&["-n", ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "multicast", "on", "up"]);
        ip(&["-n", switch, "link", "set", &port, "master", "br0", "up"]);
    }

    fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(|h| h.netns.as_str()).chain([self.switch.as_str()])
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.namespaces().collect::<Vec<_>>() {
            kill_all_in(ns);
            let deleted = Command::new("ip").args(["netns", "del", ns]).output();
            if !deleted.is_ok_and(|o| o.status.success()) {
                eprintln!("LAN {}: could not delete namespace {ns}", self.id);
            }
        }
        if let Some(dir) = self.dir.take()
            && std::thread::panicking()
        {
            eprintln!("LAN {}: kept its scratch directory {}", self.id, dir.keep().display());
        }
    }
}

/// Removes the namespaces of LANs whose test process is gone: a test killed from outside
/// (a time-out, Ctrl-C) never ran its drops. A LAN's namespaces are `nm<pid>x<n>-...`.
fn sweep_dead_lans() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else { return };
    let listed = String::from_utf8_lossy(&out.stdout);
    for ns in listed.lines().filter_map(|line| line.split_whitespace().next()) {
        let pid = ns.strip_prefix("nm").and_then(|rest| rest.split('x').next());
        let Some(pid) = pid.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if Path::new("/proc").join(pid).exists() {
            continue;
        }
        eprintln!("removing namespace {ns}, left by the ended test process {pid}");
        kill_all_in(ns);
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
    }
}

/// Kills what still runs in namespace `ns` and waits (bounded) until nothing does.
fn kill_all_in(ns: &str) {
    let pids = || {
        Command::new("ip")
            .args(["netns", "pids", ns])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout).split_whitespace().map(String::from).collect()
            })
            .unwrap_or_else(|_| Vec::<String>::new())
    };
    let left = pids();
    if left.is_empty() {
        return;
    }
    let _ = Command::new("kill").arg("-KILL").args(&left).output();
    // Never panic in drop: a failed test is already unwinding through here.
    let gone = std::panic::catch_unwind(|| {
        wait_until(Duration::from_secs(5), &format!("the processes in {ns} to die"), || {
            pids().is_empty()
        })
    });
    if gone.is_err() {
        eprintln!("namespace {ns}: processes {:?} survived SIGKILL", pids());
    }
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    Command::new("ip").args(args).stdout_within(IP_LIMIT);
}
