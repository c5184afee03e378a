//! Finding peers with no configuration: mDNS (DNS-SD) on the local link, with mdns-sd.
//!
//! Each node registers one instance of its mesh's service type, with its TCP port in the SRV
//! record, its addresses in A/AAAA records and its peer id (`id=`) in TXT. In an open mesh
//! these are `_nixmesh._tcp` and the peer id in the clear; in a private mesh, names derived
//! from the mesh key and the peer id sealed with it ([`records`]), so only nodes with the key
//! find each other. Every resolved instance of the mesh becomes a dial target for the mesh.
//! Loopback interfaces are left out both ways: a node never announces or dials 127.0.0.1 for a
//! peer. Past the router mDNS does not reach, nodes tell each other of their peers
//! ([`exchange`]).

pub mod exchange;
pub mod records;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use thiserror::Error;
use tracing::{debug, info, warn};

use crate::mesh::{DialTarget, Mesh};
use crate::node::shutdown::Shutdown;
use records::{ID_KEY, Records};

/// The most instances remembered (to forget their peers when they leave).
const MAX_INSTANCES: usize = 1024;

/// mDNS could not start.
#[derive(Debug, Error)]
pub enum DiscoveryError {
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
    #[error("mDNS: the mesh has no TCP listen port to announce")]
    NoPort,
}

/// Starts finding peers, until `shutdown`: mDNS on the local link when `mdns` is on (if it
/// cannot start, the node goes on without it, saying why), and peer exchange with every
/// connected peer, both asking and answering.
pub fn start(mesh: &Mesh, mdns: bool, shutdown: &Shutdown) {
    if mdns {
        let (mesh, stopping) = (mesh.clone(), shutdown.clone());
        shutdown.spawn(async move {
            if let Err(e) = run_mdns(mesh, stopping).await {
                warn!("peer discovery by mDNS is off: {e}");
            }
        });
    }
    shutdown.spawn(exchange::serve(mesh.clone(), shutdown.clone()));
    shutdown.spawn(exchange::run(mesh.clone(), shutdown.clone()));
}

/// Announces this node and dials every node it hears of, until `shutdown`.
pub async fn run_mdns(mesh: Mesh, shutdown: Shutdown) -> Result<(), DiscoveryError> {
    let port = tcp_port(&mesh).await.ok_or(DiscoveryError::NoPort)?;
    let daemon = ServiceDaemon::new()?;
    daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6])?;
    let me = mesh.local_peer_id();
    let records = Records::new(mesh.mesh_key());
    let service_type = records.service_type();
    let ours = records.announcement(&me);
    let txt = [(ID_KEY, ours.id.as_str())];
    let service = ServiceInfo::new(service_type, &ours.instance, &ours.host, "", port, &txt[..])?
        .enable_addr_auto();
    daemon.register(service)?;
    let events = daemon.browse(service_type)?;
    info!(port, "mDNS: announcing {service_type}");
    // Full names of resolved instances and their peers, to forget a peer when it leaves (a
    // private mesh's names do not show the peer id).
    let mut instances: HashMap<String, PeerId> = HashMap::new();
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
                let fullname = service.get_fullname();
                let instance = fullname.strip_suffix(service_type).unwrap_or(fullname);
                let instance = instance.strip_suffix('.').unwrap_or(instance);
                let id = service.get_property_val_str(ID_KEY).unwrap_or_default();
                let Some(peer) = records.peer_of(instance, id) else {
                    debug!(name = fullname, "mDNS: instance without a valid id");
                    continue;
                };
                if peer == me {
                    continue;
                }
                if instances.len() < MAX_INSTANCES || instances.contains_key(fullname) {
                    instances.insert(fullname.to_owned(), peer);
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
                if let Some(peer) = instances.remove(&fullname) {
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
