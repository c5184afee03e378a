//! Sends or receives one UDP multicast datagram, to check that a test LAN carries multicast
//! between its hosts the way mDNS uses it (224.0.0.251:5353, sent out of one interface).
//!
//! ```text
//! nixmesh-mcast-probe recv GROUP PORT LOCAL_ADDR TIMEOUT_MS
//!     joins GROUP on the interface with LOCAL_ADDR, prints "ready", then prints
//!     "SENDER MESSAGE" for the first datagram and exits 0 (1 if none came in time)
//! nixmesh-mcast-probe send GROUP PORT LOCAL_ADDR MESSAGE
//!     sends MESSAGE to GROUP:PORT from LOCAL_ADDR (which picks the interface, no route needed)
//! ```

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["recv", group, port, local, timeout_ms] => receive(group, port, local, timeout_ms),
        ["send", group, port, local, message] => send(group, port, local, message),
        _ => Err("usage: nixmesh-mcast-probe recv GROUP PORT LOCAL_ADDR TIMEOUT_MS | send GROUP PORT LOCAL_ADDR MESSAGE".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nixmesh-mcast-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn receive(group: &str, port: &str, local: &str, timeout_ms: &str) -> Result<()> {
    let group: Ipv4Addr = group.parse()?;
    let local: Ipv4Addr = local.parse()?;
    let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port.parse()?))?;
    socket.join_multicast_v4(&group, &local)?;
    socket.set_read_timeout(Some(Duration::from_millis(timeout_ms.parse()?)))?;
    println!("ready");
    std::io::stdout().flush()?;
    let mut buf = [0u8; 1500];
    let (len, sender) =
        socket.recv_from(&mut buf).map_err(|e| format!("nothing received on {group}: {e}"))?;
    println!("{} {}", sender.ip(), String::from_utf8_lossy(&buf[..len]));
    Ok(())
}

fn send(group: &str, port: &str, local: &str, message: &str) -> Result<()> {
    let group: Ipv4Addr = group.parse()?;
    let local: Ipv4Addr = local.parse()?;
    let socket = UdpSocket::bind(SocketAddrV4::new(local, 0))?;
    socket.set_multicast_ttl_v4(1)?;
    socket.send_to(message.as_bytes(), SocketAddrV4::new(group, port.parse()?))?;
    Ok(())
}
