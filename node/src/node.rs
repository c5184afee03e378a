//! `nixmesh serve`: starts every part of the node and stops them together.

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use thiserror::Error;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::adverts::store_watch::StoreWatch;
use crate::adverts::subscribe::Subscriptions;
use crate::adverts::{AdvertLog, forget, publish};
use crate::config::ServeConfig;
use crate::fetch::policy::{NamePattern, Refusals, ServingPolicy};
use crate::fetch::{FetchClient, Provider};
use crate::index::{Index, IndexError};
use crate::lan::{LanListener, LanSource};
use crate::mesh::key::{MeshKey, MeshKeyError};
use crate::mesh::{Access, DialTarget, Mesh, MeshError, MeshEvent};
use crate::shutdown::Shutdown;
use crate::source::MeshSource;
use crate::store::{Store, StoreAddress, StoreError};
use crate::traffic::Traffic;
use crate::trust::{self, TrustError};
use crate::upstream::flight::{Flights, FlightsConfig};
use crate::upstream::spool::{Spool, SpoolError};
use crate::upstream::{UpstreamConfigError, Upstreams};
use crate::view::MeshView;
use crate::{discovery, identity, socket_activation};
use nixmesh_localhttp::health::PeerHealth;

/// The file name of the index in the state dir.
pub const INDEX_FILE: &str = "index.redb";
/// Connections the kernel queues for the substituter's accept loop (capped by the system's
/// `net.core.somaxconn`, 4096 by default).
const HTTP_BACKLOG: u32 = 4096;
/// The directory of NARs downloaded from upstream, in the state dir.
pub const SPOOL_DIR: &str = "spool";
/// How long the node's tasks may take to end once the substituter has drained.
const TASKS_STOP_LIMIT: Duration = Duration::from_secs(5);

/// Why the node could not start. Each says what to fix.
#[derive(Debug, Error)]
pub enum NodeError {
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: &'static str },
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
    #[error(transparent)]
    MeshKey(#[from] MeshKeyError),
    #[error("cannot listen for HTTP on {address}: {source}")]
    HttpListen { address: std::net::SocketAddr, source: std::io::Error },
    #[error(transparent)]
    SocketActivation(#[from] socket_activation::ActivationError),
    #[error(transparent)]
    Upstream(#[from] UpstreamConfigError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the HTTP server failed: {0}")]
    Http(std::io::Error),
    #[error("{0} tasks still running {TASKS_STOP_LIMIT:?} after the stop signal")]
    TasksOutlived(usize),
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
    lan_address: Option<SocketAddr>,
    mesh: Mesh,
    /// Stops the substituters first, so that NARs in flight drain while the mesh still runs.
    stop_http: CancellationToken,
    http: JoinHandle<std::io::Result<()>>,
    /// The LAN substituter, if there is one.
    lan: Option<JoinHandle<std::io::Result<()>>>,
    /// Everything else.
    shutdown: Shutdown,
}

impl RunningNode {
    /// Starts every part of the node; returns once the substituter listens.
    pub async fn start(config: ServeConfig) -> Result<RunningNode, NodeError> {
        config.check().map_err(|(key, reason)| NodeError::Config { key, reason })?;
        let state_dir = &config.state_dir;
        let state_err = |source| NodeError::StateDir { path: state_dir.clone(), source };
        std::fs::create_dir_all(state_dir).map_err(state_err)?;
        std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
            .map_err(state_err)?;
        let keypair = identity::load_or_create(state_dir)?;

        let trusted =
            trust::trusted_keys(&config.trusted_public_keys, &crate::nix_conf::default_path())?;
        if trusted.is_empty() {
            warn!("no trusted public keys: every narinfo from peers will be refused");
        }
        let signing_key =
            config.sign_key_file.as_deref().map(trust::signing_key).transpose()?.map(Arc::new);

        let access = Access {
            key: config.mesh_key_file.as_deref().map(MeshKey::load).transpose()?,
            allow_peers: config.allow_peers.iter().copied().collect(),
        };

        // The port listens before anything slow (the daemon's handshake, building the index
        // table from its file: seconds at 1,000 peers): Nix's requests wait in the backlog
        // and are answered once the node serves, where a closed port is a refused connection
        // that Nix retries and then fails on. A socket passed by systemd keeps the port open
        // across restarts too (see the module).
        let inherited = socket_activation::inherited_listener()?;
        let from_systemd = inherited.is_some();
        let listener = match inherited {
            Some(socket) => tokio::net::TcpListener::from_std(socket).map_err(NodeError::Http)?,
            None => bind_http(config.http_listen)
                .map_err(|source| NodeError::HttpListen { address: config.http_listen, source })?,
        };
        let http_address = listener.local_addr().map_err(NodeError::Http)?;
        info!(address = %http_address, from_systemd, "substituter listening; serving once started");
        let lan_listener = match config.lan_listen {
            Some(address) => Some(
                bind_http(address).map_err(|source| NodeError::HttpListen { address, source })?,
            ),
            None => None,
        };
        let lan_address = lan_listener.as_ref().map(|l| l.local_addr()).transpose();
        let lan_address = lan_address.map_err(NodeError::Http)?;
        if let Some(address) = lan_address {
            info!(%address, allow = ?config.lan_allow, "LAN substituter listening");
        }

        let store_err = |source| NodeError::Store { store: config.store.clone(), source };
        let address = StoreAddress::parse(&config.store).map_err(store_err)?;
        let store = Store::connect(address).await.map_err(store_err)?;

        let index_path = state_dir.join(INDEX_FILE);
        let (index, _set_aside) =
            tokio::task::spawn_blocking(move || Index::open_or_set_aside(&index_path))
                .await
                .expect("opening the index catches redb's panics")?;
        index.set_max_paths(config.index_max_paths);
        let index = Arc::new(index);

        // From here on every task watches `shutdown`; on an early return below, the guard
        // gives the signal.
        let shutdown = Shutdown::new();
        let guard = StopOnDrop(Some(shutdown.clone()));
        let (events_tx, mut events) = mpsc::channel(256);
        let mesh =
            Mesh::start_with(keypair, &config.p2p_listen, access, events_tx, shutdown.clone())?;
        info!(peer_id = %mesh.local_peer_id(), "node identity");
        for peer in &config.peers {
            mesh.want(DialTarget::from_multiaddr(peer.clone())).await;
        }

        let log = Arc::new(AdvertLog::new(rand::random()));
        let real_store_dir = config.real_store_dir();
        let watch = real_store_dir.as_deref().and_then(|dir| match StoreWatch::for_store(dir) {
            Ok(watch) => {
                info!(dir = %watch.dir().display(), "watching the store's database for changes");
                Some(watch)
            }
            Err(e) => {
                let every = config.rescan_interval;
                info!("cannot watch the store's database ({e}); listing the store every {every:?}");
                None
            }
        });
        shutdown.spawn(publish::rescan_loop(
            store.clone(),
            log.clone(),
            config.rescan_interval,
            watch,
            shutdown.clone(),
        ));
        shutdown.spawn(publish::serve(mesh.clone(), log.clone(), shutdown.clone()));
        let traffic = Arc::new(Traffic::default());
        let metrics = Arc::new(nixmesh_localhttp::Metrics::new());
        traffic.register(&metrics);
        let policy = ServingPolicy {
            trusted: trusted.clone(),
            signs: signing_key.is_some(),
            serve_unsigned: config.serve_unsigned,
            exclude: config.serve_exclude.iter().map(NamePattern::new).collect(),
        };
        let refusals = Arc::new(Refusals::default());
        let fetch = FetchClient::new(mesh.clone());
        // Faults of peers: the substituter's, and the claimers' that passed on bad narinfos.
        let health = Arc::new(PeerHealth::default());
        let upstream_urls =
            crate::upstream::resolve(config.upstreams.as_deref(), config.http_listen)?;
        let flights = if upstream_urls.is_empty() {
            info!("no upstream caches: serving what peers hold");
            None
        } else {
            info!(upstreams = ?upstream_urls, "fetching what no peer holds from upstream");
            let downloaded = traffic.upstream.clone();
            let upstreams =
                Arc::new(Upstreams::new(upstream_urls, config.upstream_timeout, downloaded));
            let spool_dir = state_dir.join(SPOOL_DIR);
            let spool = Spool::new(&spool_dir, config.spool_max_bytes, shutdown.clone())?;
            Some(Arc::new(Flights::new(FlightsConfig {
                mesh: mesh.clone(),
                fetch: fetch.clone(),
                upstreams,
                spool,
                traffic: traffic.clone(),
                trusted: trusted.clone(),
                health: health.clone(),
            })))
        };
        let exclude = policy.exclude.clone();
        let mut provider =
            Provider::new(store.clone(), signing_key.clone(), real_store_dir.clone())
                .counting(traffic.clone())
                .serving(policy, refusals.clone());
        if let Some(flights) = &flights {
            provider = provider.relaying(flights.clone());
        }
        if config.serve_logs {
            match &real_store_dir {
                Some(dir) => {
                    let logs = crate::store::build_log::log_dir_beside(dir);
                    info!(dir = %logs.display(), "giving peers the build logs there (serve_logs)");
                    provider = provider.serving_logs(logs);
                }
                None => warn!(
                    "serve_logs is set, but this store's files (real_store_dir) are \
                    not on this machine: there are no build logs to give"
                ),
            }
        }
        let lan_provider = provider.clone();
        shutdown.spawn(provider.serve(mesh.clone(), shutdown.clone()));

        shutdown.spawn(forget::forget_departed(
            index.clone(),
            mesh.peers().clone(),
            config.forget_peers_after,
            shutdown.clone(),
        ));
        let mut subscriptions = Subscriptions::new(mesh.clone(), index.clone(), shutdown.clone());
        shutdown.spawn_until_stopped(async move {
            while let Some(event) = events.recv().await {
                match event {
                    MeshEvent::Connected(peer) => subscriptions.follow(peer),
                    MeshEvent::Disconnected(peer) => subscriptions.unfollow(&peer),
                }
            }
        });

        if config.mdns {
            let (mesh, stopping) = (mesh.clone(), shutdown.clone());
            shutdown.spawn(async move {
                if let Err(e) = discovery::run_mdns(mesh, stopping).await {
                    warn!("peer discovery by mDNS is off: {e}");
                }
            });
        }

        shutdown.spawn(discovery::exchange::serve(mesh.clone(), shutdown.clone()));
        shutdown.spawn(discovery::exchange::run(mesh.clone(), shutdown.clone()));

        let view = Arc::new(MeshView {
            health: health.clone(),
            refusals,
            mesh: mesh.clone(),
            index: index.clone(),
            log: log.clone(),
            traffic: traffic.clone(),
            name: crate::peer_name::local(),
            trusted_keys: trusted.keys().iter().map(|k| k.to_string()).collect(),
            signing_key: signing_key.as_ref().map(|k| k.verifying_key().to_string()),
            flights: flights.clone(),
            lan_address,
        });
        let source = Arc::new(MeshSource::new(mesh.clone(), fetch, index, traffic, flights));
        let http_config = nixmesh_localhttp::Config {
            trusted_keys: trusted,
            priority: config.priority,
            ..Default::default()
        };
        let client_stall = http_config.client_stall_timeout;
        let lan_router = lan_listener.map(|listener| {
            let lan_source = LanSource::new(source.clone(), lan_provider, log.clone(), exclude);
            let gate = LanListener { allow: config.lan_allow.clone() };
            let router = gate.router(lan_source, view.clone(), &http_config, &metrics);
            (listener, router)
        });
        let router = nixmesh_localhttp::router(source, view, health, http_config, metrics);

        info!(address = %http_address, "substituter serving");
        let stop_http = CancellationToken::new();
        let http = tokio::spawn(nixmesh_localhttp::serve(
            listener,
            router,
            client_stall,
            stop_http.clone().cancelled_owned(),
        ));
        let lan = lan_router.map(|(listener, router)| {
            let stopped = stop_http.clone().cancelled_owned();
            tokio::spawn(nixmesh_localhttp::serve(listener, router, client_stall, stopped))
        });
        let shutdown = guard.disarm();
        Ok(RunningNode { http_address, lan_address, mesh, stop_http, http, lan, shutdown })
    }

    /// Where the LAN substituter listens, if it does.
    pub fn lan_address(&self) -> Option<SocketAddr> {
        self.lan_address
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

    /// Stops the node: the substituter stops accepting and finishes the requests in flight
    /// (NARs included, within its grace time) while the mesh still serves them; then every
    /// other part stops, and this returns once all of their tasks have ended (an error says
    /// how many did not within [`TASKS_STOP_LIMIT`]).
    pub async fn stop(self) -> Result<(), NodeError> {
        info!("shutting down");
        self.stop_http.cancel();
        let joined = |result: Result<std::io::Result<()>, tokio::task::JoinError>| match result {
            Ok(result) => result.map_err(NodeError::Http),
            Err(e) => Err(NodeError::Http(std::io::Error::other(e))),
        };
        let mut http = joined(self.http.await);
        if let Some(lan) = self.lan {
            http = http.and(joined(lan.await));
        }
        if !self.shutdown.stop(TASKS_STOP_LIMIT).await {
            let running = self.shutdown.running();
            warn!(running, "tasks still running {TASKS_STOP_LIMIT:?} after the stop signal");
            http?;
            return Err(NodeError::TasksOutlived(running));
        }
        http
    }
}

/// The substituter's socket, with a backlog of [`HTTP_BACKLOG`]: a burst of connections (Nix's
/// 25, or a local program's thousands) waits there for the accept loop instead of being
/// dropped and retried by the kernel seconds later.
fn bind_http(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(HTTP_BACKLOG)
}

/// Gives the stop signal when dropped while armed: a start that fails half-way stops what
/// it had started.
struct StopOnDrop(Option<Shutdown>);

impl StopOnDrop {
    fn disarm(mut self) -> Shutdown {
        self.0.take().expect("armed until disarmed")
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(shutdown) = self.0.take() {
            shutdown.signal();
        }
    }
}
