//! Finding peers with no configuration: mDNS (DNS-SD) on the local link, with mdns-sd.
//!
//! Each node registers one instance of [`SERVICE_TYPE`], named by its peer id, with its TCP
//! port in the SRV record, its addresses in A/AAAA records and its peer id (`id=`) in TXT.
//! Every resolved instance becomes a dial target for the mesh. Loopback interfaces are left
//! out both ways: a node never announces or dials 127.0.0.1 for a peer.

use std::net::IpAddr;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::mesh::{DialTarget, Mesh};
use crate::shutdown::Shutdown;

/// nixmesh's DNS-SD service type.
pub const SERVICE_TYPE: &str = "_nixmesh._tcp.local.";

/// mDNS could not start.
#[derive(Debug, Error)]
pub enum DiscoveryError {
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("mDNS: the mesh has no TCP listen port to announce")]
    NoPort,
}

/// Announces this node and dials every node it hears of, until `shutdown`.
pub async fn run_mdns(mesh: Mesh, shutdown: Shutdown) -> Result<(), DiscoveryError> {
    let port = tcp_port(&mesh).await.ok_or(DiscoveryError::NoPort)?;
    let daemon = ServiceDaemon::new()?;
    daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
    let me = mesh.local_peer_id();
    let id = me.to_string();
    // Host names are per node so that two nodes' A records never merge.
    let host = format!("nixmesh-{}.local.", &id[id.len() - 12..]);
    let service = ServiceInfo::new(SERVICE_TYPE, &id, &host, "", port, &[("id", id.as_str())][..])?
        .enable_addr_auto();
    daemon.register(service)?;
    let events = daemon.browse(SERVICE_TYPE)?;
    info!(port, "mDNS: announcing {SERVICE_TYPE}");
    loop {
        let event = tokio::select! {
            () = shutdown.signalled() => break,
            event = events.recv_async() => match event {
                Ok(event) => event,
                Err(_) => break,
            },
        };
        match event {
            ServiceEvent::ServiceResolved(service) => {
                let Some(peer) =
                    service.get_property_val_str("id").and_then(|s| s.parse::<PeerId>().ok())
                else {
                    debug!(name = service.get_fullname(), "mDNS: instance without a valid id");
                    continue;
                };
                if peer == me {
                    continue;
                }
                let addresses: Vec<Multiaddr> = service
                    .get_addresses()
                    .iter()
                    .map(|ip| ip.to_ip_addr())
                    .filter(|ip| !ip.is_loopback() && !is_link_local_v6(ip))
                    .map(|ip| tcp_multiaddr(ip, service.get_port(), peer))
                    .collect();
                if addresses.is_empty() {
                    continue;
                }
                debug!(%peer, ?addresses, "mDNS: resolved");
                mesh.want(DialTarget { peer: Some(peer), addresses }).await;
            }
            ServiceEvent::ServiceRemoved(_, fullname) => {
                if let Some(peer) =
                    fullname.split('.').next().and_then(|s| s.parse::<PeerId>().ok())
                {
                    debug!(%peer, "mDNS: gone");
                    mesh.forget(peer).await;
                }
            }
            _ => {}
        }
    }
    // Say goodbye, so that peers stop dialling us at once.
    if let Ok(done) = daemon.shutdown() {
        let _ = tokio::time::timeout(Duration::from_secs(1), done.recv_async()).await;
    }
    Ok(())
}

/// The TCP port of the first listener, waiting (bounded) for listeners to come up.
async fn tcp_port(mesh: &Mesh) -> Option<u16> {
    let mut addresses = mesh.listen_addresses();
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let port = addresses.borrow_and_update().iter().find_map(|a| {
                a.iter().find_map(|p| match p {
                    Protocol::Tcp(port) => Some(port),
                    _ => None,
                })
            });
            if port.is_some() {
                return port;
            }
            if addresses.changed().await.is_err() {
                return None;
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        warn!("mDNS: no listener came up within 10 s");
        None
    })
}

fn tcp_multiaddr(ip: IpAddr, port: u16, peer: PeerId) -> Multiaddr {
    Multiaddr::from(ip).with(Protocol::Tcp(port)).with(Protocol::P2p(peer))
}

/// Link-local IPv6 needs a scope id a multiaddr cannot carry.
fn is_link_local_v6(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}
