//! `nixmesh serve`: starts every part of the node and stops them together.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use thiserror::Error;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::adverts::subscribe::Subscriptions;
use crate::adverts::{AdvertLog, publish};
use crate::config::ServeConfig;
use crate::fetch::Provider;
use crate::index::{Index, IndexError};
use crate::mesh::{DialTarget, Mesh, MeshError, MeshEvent};
use crate::source::{MeshSource, StaticStatus};
use crate::store::{Store, StoreAddress, StoreError};
use crate::trust::{self, TrustError};
use crate::{discovery, identity};

/// The file name of the index in the state dir.
pub const INDEX_FILE: &str = "index.redb";

/// Why the node could not start. Each says what to fix.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("state dir {path}: {source}")]
    StateDir { path: std::path::PathBuf, source: std::io::Error },
    #[error(transparent)]
    Identity(#[from] identity::IdentityError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("--store {store}: {source}")]
    Store { store: String, source: StoreError },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Mesh(#[from] MeshError),
    #[error("cannot listen for HTTP on {address}: {source}")]
    HttpListen { address: std::net::SocketAddr, source: std::io::Error },
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
}

/// Runs the node until `shutdown` completes.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeError> {
    let node = RunningNode::start(config).await?;
    shutdown.await;
    node.stop().await
}

/// A started node: every part runs in tasks of the current tokio runtime.
pub struct RunningNode {
    http_address: SocketAddr,
    mesh: Mesh,
    stop: watch::Sender<bool>,
    http: JoinHandle<std::io::Result<()>>,
}

impl RunningNode {
    /// Starts every part of the node; returns once the substituter listens.
    pub async fn start(config: ServeConfig) -> Result<RunningNode, NodeError> {
        let state_dir = &config.state_dir;
        let state_err = |source| NodeError::StateDir { path: state_dir.clone(), source };
        std::fs::create_dir_all(state_dir).map_err(state_err)?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(state_err)?;
        let keypair = identity::load_or_create(state_dir)?;

        let trusted = trust::trusted_keys(&config.trusted_public_keys, &trust::default_nix_conf())?;
        if trusted.is_empty() {
            warn!("no trusted public keys: every narinfo from peers will be refused");
        }
        let signing_key =
            config.sign_key_file.as_deref().map(trust::signing_key).transpose()?.map(Arc::new);

        let store_err = |source| NodeError::Store { store: config.store.clone(), source };
        let address = StoreAddress::parse(&config.store).map_err(store_err)?;
        let store = Store::connect(address).await.map_err(store_err)?;

        let index_path = state_dir.join(INDEX_FILE);
        let index = tokio::task::spawn_blocking(move || Index::open(&index_path))
            .await
            .expect("index open does not panic")?;
        let index = Arc::new(index);

        let (stop_tx, stop) = watch::channel(false);
        // From here on every task watches `stop`; dropping `stop_tx` on an early return below
        // stops them as well.
        let (events_tx, mut events) = mpsc::channel(256);
        let mesh = Mesh::start(keypair, &config.p2p_listen, events_tx, stop.clone())?;
        info!(peer_id = %mesh.local_peer_id(), "node identity");
        for peer in &config.peers {
            mesh.want(DialTarget::from_multiaddr(peer.clone())).await;
        }

        let log = Arc::new(AdvertLog::new(rand::random()));
        tokio::spawn(publish::rescan_loop(
            store.clone(),
            log.clone(),
            config.rescan_interval,
            stop.clone(),
        ));
        tokio::spawn(publish::serve(mesh.clone(), log.clone(), stop.clone()));
        tokio::spawn(
            Provider::new(store.clone(), signing_key.clone()).serve(mesh.clone(), stop.clone()),
        );

        let mut subscriptions = Subscriptions::new(mesh.clone(), index.clone());
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                match event {
                    MeshEvent::Connected(peer) => subscriptions.follow(peer),
                    MeshEvent::Disconnected(peer) => subscriptions.unfollow(&peer),
                }
            }
        });

        if config.mdns {
            let (mesh, stop) = (mesh.clone(), stop.clone());
            tokio::spawn(async move {
                if let Err(e) = discovery::run_mdns(mesh, stop).await {
                    warn!("peer discovery by mDNS is off: {e}");
                }
            });
        }

        let status = StaticStatus {
            trusted_keys: trusted.keys().iter().map(|k| k.to_string()).collect(),
            signing_key: signing_key.as_ref().map(|k| k.verifying_key().to_string()),
        };
        let source = Arc::new(MeshSource::new(mesh.clone(), index, log, status));
        let http_config = nixmesh_localhttp::Config {
            trusted_keys: trusted,
            priority: config.priority,
            ..Default::default()
        };
        let router = nixmesh_localhttp::router(source, http_config);
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|source| NodeError::HttpListen { address: config.http_listen, source })?;
        let http_address = listener.local_addr().map_err(NodeError::Http)?;
        info!(address = %http_address, "substituter listening");

        let mut stop_http = stop.clone();
        let http = tokio::spawn(nixmesh_localhttp::serve(listener, router, async move {
            let _ = stop_http.changed().await;
        }));
        Ok(RunningNode { http_address, mesh, stop: stop_tx, http })
    }

    /// Where the substituter listens.
    pub fn http_address(&self) -> SocketAddr {
        self.http_address
    }

    /// The node's libp2p identity.
    pub fn peer_id(&self) -> PeerId {
        self.mesh.local_peer_id()
    }

    /// The mesh's listen addresses, each ending in `/p2p/<peer id>`, once there are some.
    pub async fn p2p_addresses(&self) -> Vec<Multiaddr> {
        let mut addresses = self.mesh.listen_addresses();
        let peer = Protocol::P2p(self.peer_id());
        match addresses.wait_for(|a| !a.is_empty()).await {
            Ok(a) => a.iter().map(|a| a.clone().with(peer.clone())).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Stops every part and waits for the substituter to finish its requests.
    pub async fn stop(self) -> Result<(), NodeError> {
        info!("shutting down");
        let _ = self.stop.send(true);
        match self.http.await {
            Ok(result) => result.map_err(NodeError::Http),
            Err(e) => Err(NodeError::Http(std::io::Error::other(e))),
        }
    }
}
