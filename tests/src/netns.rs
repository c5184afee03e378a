//! A LAN of hosts made of Linux network namespaces.
//!
//! Each host is a network namespace with one interface, `eth0`, whose other end is a port of
//! a bridge in a namespace of its own (the switch). Nothing is created in the machine's own
//! namespace: multicast (mDNS) sent on the LAN reaches the other hosts and nothing else. All
//! LANs use the same subnet, [`SUBNET`]; they cannot clash because each is a separate
//! layer-2 segment that no route leads out of (but to its own router and internet host, when
//! it has them).
//!
//! Each host's Nix store is a chroot store of its own (see [`crate::nixstore`]).
//!
//! A LAN made with [`Lan::with_internet`] also has a router, in a namespace of its own with a
//! port on the switch, and beyond it an "internet" of one host (the stand-in for an upstream
//! cache) on a subnet of its own, [`INTERNET_SUBNET`]. The LAN's hosts reach it only through
//! the router, by their default route, as behind a home router; the router forwards without
//! NAT (so the internet host sees each LAN host's own address), its link to the internet can
//! be shaped slow ([`Internet::shape`]) and cut off ([`Internet::cut_off`]: packets dropped,
//! not refused), and it counts what it sends out ([`Internet::packets_sent_out`]), which is
//! how a test sees that nothing on the LAN tried to reach the outside. The router and the
//! internet host have no IPv6, so the kernel sends nothing on that link by itself; the LAN's
//! hosts have IPv6 link-local addresses only, so IPv6 cannot leave the LAN at all.
//!
//! A LAN made with [`Lan::two_segments`] is two switches, each with its own hosts and subnet
//! ([`SUBNET`], [`SECOND_SUBNET`]), joined by a router that forwards between them both ways,
//! without NAT, as between two floors of an office: unicast crosses it, multicast (mDNS) does
//! not (a router never forwards link-local multicast).

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
/// The first three octets of the internet's subnet ([`Lan::with_internet`]): the router is
/// `10.232.0.1`, the internet host `10.232.0.2`.
pub const INTERNET_SUBNET: [u8; 3] = [10, 232, 0];
/// The first three octets of the second segment's subnet ([`Lan::two_segments`]).
pub const SECOND_SUBNET: [u8; 3] = [10, 233, 0];
/// The router's last octet on the LAN (above every host's).
const ROUTER_ON_LAN: u8 = 254;
/// The token bucket of a shaped link: a few TSO segments, so that the rate holds over
/// tens of milliseconds.
const LINK_BURST: &str = "256kb";

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

    /// The host's number on its LAN, from 1; 0 for the internet host, which is on no LAN.
    pub fn number(&self) -> usize {
        self.number
    }

    /// A name for messages: "host 2", or "the internet host".
    pub fn name(&self) -> String {
        match self.number {
            0 => "the internet host".to_owned(),
            n => format!("host {n}"),
        }
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
    internet: Option<Internet>,
    /// The second switch and the router of [`Lan::two_segments`].
    segments: Vec<String>,
    dir: Option<tempfile::TempDir>,
}

/// What lies beyond a LAN's router ([`Lan::with_internet`]): the router's namespace and the
/// internet host. The LAN owns it; its namespaces go with the LAN's.
pub struct Internet {
    router: String,
    host: Host,
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
        let mut lan = Lan {
            switch: format!("{id}-sw"),
            id,
            hosts: Vec::new(),
            internet: None,
            segments: Vec::new(),
            dir: Some(dir),
        };
        lan.build_switch();
        for number in 1..=hosts {
            lan.add_host(number);
        }
        lan
    }

    /// [`Lan::new`], and a router on the switch leading to an internet of one host (see the
    /// module docs): every host's default route goes through the router.
    pub fn with_internet(hosts: usize) -> Lan {
        let mut lan = Lan::new(hosts);
        let [a, b, c] = INTERNET_SUBNET;
        let host = Host {
            number: 0,
            netns: format!("{}-inet", lan.id),
            address: Ipv4Addr::new(a, b, c, 2),
            dir: lan.dir().join("internet"),
        };
        // Recorded first, so that a failing step still leaves the namespaces to the drop.
        lan.internet = Some(Internet { router: format!("{}-rt", lan.id), host });
        lan.build_internet();
        lan
    }

    /// Two segments, `first` hosts on the LAN's switch ([`SUBNET`]) and `second` hosts on a
    /// switch of their own ([`SECOND_SUBNET`]), joined by a router (see the module docs).
    /// [`Lan::hosts`] lists the first segment's hosts, then the second's; host `first + k`
    /// is `10.233.0.k`.
    pub fn two_segments(first: usize, second: usize) -> Lan {
        assert!((1..=MAX_HOSTS / 2).contains(&second), "a segment has 1 to 100 hosts");
        let mut lan = Lan::new(first);
        let (switch, router) = (format!("{}-sw2", lan.id), format!("{}-rt", lan.id));
        // Recorded first, so that a failing step still leaves the namespaces to the drop.
        lan.segments = vec![switch.clone(), router.clone()];
        build_switch(&switch);
        let [a, b, c] = SECOND_SUBNET;
        for k in 1..=second {
            let address = Ipv4Addr::new(a, b, c, u8::try_from(k).expect("at most 100 hosts"));
            lan.add_host_on(first + k, &switch, address);
        }
        ip(&["netns", "add", &router]);
        ip(&["-n", &router, "link", "set", "lo", "up"]);
        sysctl(&router, &["net.ipv4.ip_forward=1"]);
        let first_switch = lan.switch.clone();
        for (i, (switch, subnet)) in
            [(&first_switch, SUBNET), (&switch, SECOND_SUBNET)].into_iter().enumerate()
        {
            let [a, b, c] = subnet;
            let gateway = Ipv4Addr::new(a, b, c, ROUTER_ON_LAN).to_string();
            let port = format!("lan{i}");
            ip(&["-n", &router, "link", "add", &port, "type", "veth", "peer", "name", "prt"]);
            ip(&["-n", &router, "link", "set", "prt", "netns", switch]);
            ip(&["-n", &router, "addr", "add", &format!("{gateway}/24"), "dev", &port]);
            ip(&["-n", &router, "link", "set", &port, "up"]);
            ip(&["-n", switch, "link", "set", "prt", "master", "br0", "up"]);
            let segment = if i == 0 { &lan.hosts[..first] } else { &lan.hosts[first..] };
            for host in segment {
                ip(&["-n", &host.netns, "route", "add", "default", "via", &gateway]);
            }
        }
        lan
    }

    /// The internet beyond the router; panics unless the LAN was made
    /// [`with_internet`](Lan::with_internet).
    pub fn internet(&self) -> &Internet {
        self.internet.as_ref().expect("a LAN made with Lan::with_internet")
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
        build_switch(&self.switch);
    }

    fn add_host(&mut self, number: usize) {
        let [a, b, c] = SUBNET;
        let address = Ipv4Addr::new(a, b, c, u8::try_from(number).expect("at most 200 hosts"));
        let switch = self.switch.clone();
        self.add_host_on(number, &switch, address);
    }

    /// Host `number` at `address`, its `eth0` a port of `switch`.
    fn add_host_on(&mut self, number: usize, switch: &str, address: Ipv4Addr) {
        let netns = format!("{}-h{number}", self.id);
        ip(&["netns", "add", &netns]);
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
        ip(&[
            "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", &port, "netns", switch,
        ]);
        ip(&["-n", ns, "addr", "add", &format!("{address}/24"), "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "multicast", "on", "up"]);
        ip(&["-n", switch, "link", "set", &port, "master", "br0", "up"]);
    }

    /// The router (its `lan0` a port of the switch, its `wan0` a link to the internet host's
    /// `eth0`), forwarding between the two subnets; every host's default route via it.
    fn build_internet(&self) {
        let internet = self.internet.as_ref().expect("recorded before it is built");
        let (rt, inet) = (internet.router.as_str(), internet.host.netns.as_str());
        std::fs::create_dir_all(internet.host.store_root()).expect("creating a host's directory");
        for ns in [rt, inet] {
            ip(&["netns", "add", ns]);
            // No IPv6 on this side of the LAN: the kernel would send router solicitations and
            // multicast reports on the link by itself, which would blur the count of what
            // leaves the LAN.
            sysctl(
                ns,
                &["net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"],
            );
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let [a, b, c] = SUBNET;
        let on_lan = Ipv4Addr::new(a, b, c, ROUTER_ON_LAN);
        let [a, b, c] = INTERNET_SUBNET;
        let on_internet = Ipv4Addr::new(a, b, c, 1);
        let switch = self.switch.as_str();
        ip(&[
            "-n", rt, "link", "add", "lan0", "type", "veth", "peer", "name", "prt", "netns", switch,
        ]);
        ip(&["-n", rt, "addr", "add", &format!("{on_lan}/24"), "dev", "lan0"]);
        ip(&["-n", rt, "link", "set", "lan0", "up"]);
        ip(&["-n", switch, "link", "set", "prt", "master", "br0", "up"]);
        ip(&[
            "-n", rt, "link", "add", "wan0", "type", "veth", "peer", "name", "eth0", "netns", inet,
        ]);
        ip(&["-n", rt, "addr", "add", &format!("{on_internet}/24"), "dev", "wan0"]);
        ip(&["-n", rt, "link", "set", "wan0", "up"]);
        let inet_address = internet.host.address;
        ip(&["-n", inet, "addr", "add", &format!("{inet_address}/24"), "dev", "eth0"]);
        ip(&["-n", inet, "link", "set", "eth0", "up"]);
        sysctl(rt, &["net.ipv4.ip_forward=1"]);
        // Everything bound for neither subnet goes on to the internet host too (which drops
        // it): so it crosses `wan0` and is counted there.
        ip(&["-n", rt, "route", "add", "default", "via", &inet_address.to_string()]);
        let [a, b, c] = SUBNET;
        let lan_subnet = format!("{}/24", Ipv4Addr::new(a, b, c, 0));
        ip(&["-n", inet, "route", "add", &lan_subnet, "via", &on_internet.to_string()]);
        for host in &self.hosts {
            ip(&["-n", &host.netns, "route", "add", "default", "via", &on_lan.to_string()]);
        }
    }

    fn namespaces(&self) -> impl Iterator<Item = &str> {
        let internet =
            self.internet.iter().flat_map(|i| [i.router.as_str(), i.host.netns.as_str()]);
        let segments = self.segments.iter().map(String::as_str);
        let switch = [self.switch.as_str()];
        self.hosts.iter().map(|h| h.netns.as_str()).chain(internet).chain(segments).chain(switch)
    }
}

impl Internet {
    /// The internet host: its own namespace and directory, no LAN; a [`crate::HostStore`]
    /// and an nginx run on it as on any host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Limits the link between the router and the internet to `mbit` Mbit/s each way (a
    /// token bucket at both ends), the slow link of a LAN's internet connection.
    pub fn shape(&self, mbit: u32) {
        let rate = format!("{mbit}mbit");
        for (ns, dev) in [(self.host.netns.as_str(), "eth0"), (self.router.as_str(), "wan0")] {
            Command::new("tc")
                .args(["-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf"])
                .args(["rate", &rate, "burst", LINK_BURST, "latency", "100ms"])
                .stdout_within(IP_LIMIT);
        }
    }

    /// Cuts the internet off: the router drops whatever the LAN sends beyond it, silently (a
    /// blackhole route sends no ICMP error back, so a connection attempt hangs, as when a
    /// link is down somewhere upstream, rather than being refused at once). Connections
    /// already open stall. [`Internet::reconnect`] undoes it.
    pub fn cut_off(&self) {
        let inet = format!("{}/32", self.host.address);
        ip(&["-n", &self.router, "route", "add", "blackhole", &inet]);
        ip(&["-n", &self.router, "route", "replace", "blackhole", "default"]);
    }

    /// Undoes [`Internet::cut_off`].
    pub fn reconnect(&self) {
        let inet = format!("{}/32", self.host.address);
        ip(&["-n", &self.router, "route", "del", "blackhole", &inet]);
        let via = self.host.address.to_string();
        ip(&["-n", &self.router, "route", "replace", "default", "via", &via]);
    }

    /// The packets the router has sent towards the internet so far (forwarded from the LAN;
    /// the router itself sends nothing there unprompted but the ARP that forwarding needs).
    pub fn packets_sent_out(&self) -> u64 {
        let text = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.router,
                "cat",
                "/sys/class/net/wan0/statistics/tx_packets",
            ])
            .stdout_within(IP_LIMIT);
        String::from_utf8_lossy(&text).trim().parse().expect("a packet count")
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

/// Makes switch namespace `sw`, its bridge `br0` up.
fn build_switch(sw: &str) {
    ip(&["netns", "add", sw]);
    ip(&["-n", sw, "link", "set", "lo", "up"]);
    // No IGMP snooping: the bridge floods multicast to every port, like a plain switch,
    // whether or not anyone sent a membership report yet.
    ip(&["-n", sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"]);
    ip(&["-n", sw, "link", "set", "br0", "up"]);
}

/// Runs `ip ARGS`, panicking with its stderr if it fails.
fn ip(args: &[&str]) {
    Command::new("ip").args(args).stdout_within(IP_LIMIT);
}

/// Sets `settings` (`key=value`) in namespace `ns`'s own network settings.
fn sysctl(ns: &str, settings: &[&str]) {
    Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w"])
        .args(settings)
        .stdout_within(IP_LIMIT);
}
