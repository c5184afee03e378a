//! `nixmesh serve`: starts every part of the node and stops them together.
//!
//! [`RunningNode::start`] is the list of the node's subsystems in start order; each starts
//! itself (the mesh, adverts, store rescans, discovery: the same calls the in-process tests
//! make), and the parts only a whole node has (the provider, upstreams, the substituters)
//! are started by the functions below it.

pub mod shutdown;
pub mod socket_activation;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, identity as p2p_identity};

use nixmesh_protocol::signature::{SigningKey, TrustedKeys};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::shutdown::Shutdown;
use crate::adverts::{self, AdvertLog, forget, publish};
use crate::config::ServeConfig;
use crate::discovery;
use crate::fetch::policy::{NamePattern, Refusals, ServingPolicy};
use crate::fetch::traffic::Traffic;
use crate::fetch::{FetchClient, Provider};
use crate::index::{Index, IndexError};
use crate::local::identity;
use crate::local::store::{Store, StoreAddress, StoreError};
use crate::local::trust::{self, TrustError};
use crate::mesh::key::{MeshKey, MeshKeyError};
use crate::mesh::{Access, DialTarget, Mesh, MeshError, MeshEvent};
use crate::substituter::lan::{LanListener, LanSource};
use crate::substituter::mesh_source::MeshSource;
use crate::substituter::status_view::MeshView;
use crate::upstream::Holder;
use crate::upstream::flight::{Flights, FlightsConfig};
use crate::upstream::spool::{Spool, SpoolError};
use crate::upstream::{UpstreamConfigError, Upstreams};
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

/// A substituter's task: its accept loop, ending once its requests have drained.
type HttpTask = JoinHandle<std::io::Result<()>>;

/// A started node: every part runs in tasks of the current tokio runtime.
pub struct RunningNode {
    http_address: SocketAddr,
    lan_address: Option<SocketAddr>,
    mesh: Mesh,
    /// Stops the substituters first, so that NARs in flight drain while the mesh still runs.
    stop_http: CancellationToken,
    http: HttpTask,
    /// The LAN substituter, if there is one.
    lan: Option<HttpTask>,
    /// Everything else.
    shutdown: Shutdown,
}

impl RunningNode {
    /// Starts every part of the node; returns once the substituter listens.
    pub async fn start(config: ServeConfig) -> Result<RunningNode, NodeError> {
        config.check().map_err(|(key, reason)| NodeError::Config { key, reason })?;
        let keypair = open_state_dir(&config.state_dir)?;
        let keys = Keys::load(&config)?;
        let access = Access {
            key: config.mesh_key_file.as_deref().map(MeshKey::load).transpose()?,
            allow_peers: config.allow_peers.iter().copied().collect(),
            security: config.mesh_security.clone(),
        };
        // The port listens before anything slow (the daemon's handshake, building the index
        // table from its file: seconds at 1,000 peers): Nix's requests wait in the backlog
        // and are answered once the node serves, where a closed port is a refused connection
        // that Nix retries and then fails on. A socket passed by systemd keeps the port open
        // across restarts too (see the module).
        let listeners = Listeners::bind(&config)?;
        let store_err = |source| NodeError::Store { store: config.store.clone(), source };
        let address = StoreAddress::parse(&config.store).map_err(store_err)?;
        let store = Store::connect(address).await.map_err(store_err)?;
        let index = open_index(&config).await?;

        // From here on every task watches `shutdown`; on an early return below, the guard
        // gives the signal.
        let shutdown = Shutdown::new();
        let guard = StopOnDrop(Some(shutdown.clone()));
        let (mesh, events) = start_mesh(&config, keypair, access, &shutdown).await?;
        let log = adverts::start(&mesh, index.clone(), events, &shutdown);
        let dir = config.real_store_dir();
        publish::start_rescans(&store, &log, dir.as_deref(), config.rescan_interval, &shutdown);
        forget::start(index.clone(), &mesh, config.forget_peers_after, &shutdown);
        let parts = Parts {
            fetch: FetchClient::compressing(mesh.clone(), config.mesh_compression),
            mesh,
            index,
            log,
            keys,
            traffic: Arc::new(Traffic::default()),
            // Faults of peers: the substituter's, and the claimers' that passed on bad
            // narinfos.
            health: Arc::new(PeerHealth::default()),
            shutdown,
        };
        let flights = parts.upstream_flights(&config)?;
        let served = parts.start_provider(&config, store, flights.as_ref());
        discovery::start(&parts.mesh, config.mdns, &parts.shutdown);
        // The substituters serve last, once every part they ask is running.
        let (http_address, lan_address) = (listeners.http_address, listeners.lan_address);
        let mesh = parts.mesh.clone();
        let (stop_http, http, lan) = parts.serve_substituters(&config, listeners, served, flights);
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

/// Makes the state dir (only the node's user may read it) and loads the node's identity from
/// it, made on the first start.
fn open_state_dir(state_dir: &Path) -> Result<p2p_identity::Keypair, NodeError> {
    let state_err = |source| NodeError::StateDir { path: state_dir.to_owned(), source };
    std::fs::create_dir_all(state_dir).map_err(state_err)?;
    std::fs::set_permissions(state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(state_err)?;
    Ok(identity::load_or_create(state_dir)?)
}

/// The keys the node trusts narinfos signed by, and the one it signs with, if any.
struct Keys {
    trusted: TrustedKeys,
    signing: Option<Arc<SigningKey>>,
}

impl Keys {
    fn load(config: &ServeConfig) -> Result<Keys, NodeError> {
        let trusted = trust::trusted_keys(
            &config.trusted_public_keys,
            &crate::local::nix_settings::default_path(),
        )?;
        if trusted.is_empty() {
            warn!("no trusted public keys: every narinfo from peers will be refused");
        }
        let signing =
            config.sign_key_file.as_deref().map(trust::signing_key).transpose()?.map(Arc::new);
        Ok(Keys { trusted, signing })
    }
}

/// The substituters' sockets, listening (requests wait in the backlog until they are served).
struct Listeners {
    http: TcpListener,
    http_address: SocketAddr,
    /// The LAN substituter's, with `lan_listen`.
    lan: Option<TcpListener>,
    lan_address: Option<SocketAddr>,
}

impl Listeners {
    /// The localhost substituter's socket from systemd, or bound to `http_listen`; the LAN
    /// substituter's bound to `lan_listen`.
    fn bind(config: &ServeConfig) -> Result<Listeners, NodeError> {
        let inherited = socket_activation::inherited_listener()?;
        let from_systemd = inherited.is_some();
        let http = match inherited {
            Some(socket) => TcpListener::from_std(socket).map_err(NodeError::Http)?,
            None => bind_http(config.http_listen)
                .map_err(|source| NodeError::HttpListen { address: config.http_listen, source })?,
        };
        let http_address = http.local_addr().map_err(NodeError::Http)?;
        info!(address = %http_address, from_systemd, "substituter listening; serving once started");
        let lan = match config.lan_listen {
            Some(address) => Some(
                bind_http(address).map_err(|source| NodeError::HttpListen { address, source })?,
            ),
            None => None,
        };
        let lan_address = lan.as_ref().map(|l| l.local_addr()).transpose();
        let lan_address = lan_address.map_err(NodeError::Http)?;
        if let Some(address) = lan_address {
            info!(%address, allow = ?config.lan_allow, "LAN substituter listening");
        }
        Ok(Listeners { http, http_address, lan, lan_address })
    }
}

/// The index in the state dir (set aside and made anew if damaged), with its size bound.
async fn open_index(config: &ServeConfig) -> Result<Arc<Index>, NodeError> {
    let index_path = config.state_dir.join(INDEX_FILE);
    let (index, _set_aside) =
        tokio::task::spawn_blocking(move || Index::open_or_set_aside(&index_path))
            .await
            .expect("opening the index catches redb's panics")?;
    index.set_max_paths(config.index_max_paths);
    Ok(Arc::new(index))
}

/// The mesh, listening on `p2p_listen` and dialling every `--peer`; its peer events are for
/// the adverts' subscriptions.
async fn start_mesh(
    config: &ServeConfig,
    keypair: p2p_identity::Keypair,
    access: Access,
    shutdown: &Shutdown,
) -> Result<(Mesh, mpsc::Receiver<MeshEvent>), NodeError> {
    let (events_tx, events) = mpsc::channel(256);
    let mesh = Mesh::start_with(keypair, &config.p2p_listen, access, events_tx, shutdown.clone())?;
    info!(peer_id = %mesh.local_peer_id(), "node identity");
    for peer in &config.peers {
        mesh.want(DialTarget::from_multiaddr(peer.clone())).await;
    }
    Ok((mesh, events))
}

/// What the node's subsystems share once the mesh runs: the parts the provider, the
/// upstreams and the substituters are started from.
struct Parts {
    mesh: Mesh,
    fetch: FetchClient,
    index: Arc<Index>,
    /// This node's advertised set.
    log: Arc<AdvertLog>,
    keys: Keys,
    traffic: Arc<Traffic>,
    health: Arc<PeerHealth<Holder>>,
    shutdown: Shutdown,
}

/// What the provider's start leaves for the LAN substituter and the status pages.
struct Served {
    /// The provider as the LAN substituter asks it about this machine's store.
    provider: Provider,
    /// `serve_exclude`'s names, never served on the LAN either.
    exclude: Vec<NamePattern>,
    /// The paths the provider refused peers, for the status pages.
    refusals: Arc<Refusals>,
}

impl Parts {
    /// LAN-wide single flight over the upstream caches, if there are any (the configured
    /// ones, else nix.conf's substituters), with the spool in the state dir.
    fn upstream_flights(&self, config: &ServeConfig) -> Result<Option<Arc<Flights>>, NodeError> {
        let upstream_urls =
            crate::upstream::resolve(config.upstreams.as_deref(), config.http_listen)?;
        if upstream_urls.is_empty() {
            info!("no upstream caches: serving what peers hold");
            return Ok(None);
        }
        info!(upstreams = ?upstream_urls, "fetching what no peer holds from upstream");
        let downloaded = self.traffic.upstream.clone();
        let upstreams =
            Arc::new(Upstreams::new(upstream_urls, config.upstream_timeout, downloaded));
        let spool_dir = config.state_dir.join(SPOOL_DIR);
        let spool = Spool::new(&spool_dir, config.spool_max_bytes, self.shutdown.clone())?;
        Ok(Some(Arc::new(Flights::new(FlightsConfig {
            mesh: self.mesh.clone(),
            fetch: self.fetch.clone(),
            upstreams,
            spool,
            traffic: self.traffic.clone(),
            trusted: self.keys.trusted.clone(),
            health: self.health.clone(),
        }))))
    }

    /// Answers peers' fetch requests from `store` under the serving policy, relaying what
    /// `flights` claims, and build logs with `serve_logs`.
    fn start_provider(
        &self,
        config: &ServeConfig,
        store: Store,
        flights: Option<&Arc<Flights>>,
    ) -> Served {
        let policy = ServingPolicy {
            trusted: self.keys.trusted.clone(),
            signs: self.keys.signing.is_some(),
            serve_unsigned: config.serve_unsigned,
            exclude: config.serve_exclude.iter().map(NamePattern::new).collect(),
        };
        let exclude = policy.exclude.clone();
        let refusals = Arc::new(Refusals::default());
        let real_store_dir = config.real_store_dir();
        let mut provider = Provider::new(store, self.keys.signing.clone(), real_store_dir.clone())
            .counting(self.traffic.clone())
            .serving(policy, refusals.clone())
            .compressing(config.mesh_compression);
        if let Some(flights) = flights {
            provider = provider.relaying(flights.clone());
        }
        if config.serve_logs {
            match &real_store_dir {
                Some(dir) => {
                    let logs = crate::local::store::build_log::log_dir_beside(dir);
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
        self.shutdown.spawn(provider.serve(self.mesh.clone(), self.shutdown.clone()));
        Served { provider: lan_provider, exclude, refusals }
    }

    /// Serves the substituters on `listeners` until the token returned is cancelled: the
    /// localhost one's task, and the LAN one's if it listens.
    fn serve_substituters(
        self,
        config: &ServeConfig,
        listeners: Listeners,
        served: Served,
        flights: Option<Arc<Flights>>,
    ) -> (CancellationToken, HttpTask, Option<HttpTask>) {
        let metrics = Arc::new(nixmesh_localhttp::Metrics::new());
        self.traffic.register(metrics.registry());
        self.fetch.links().register(metrics.registry());
        let view = Arc::new(MeshView {
            health: self.health.clone(),
            refusals: served.refusals,
            mesh: self.mesh.clone(),
            index: self.index.clone(),
            log: self.log.clone(),
            traffic: self.traffic.clone(),
            name: crate::mesh::peer_name::local(),
            trusted_keys: self.keys.trusted.keys().iter().map(|k| k.to_string()).collect(),
            signing_key: self.keys.signing.as_ref().map(|k| k.verifying_key().to_string()),
            flights: flights.clone(),
            lan_address: listeners.lan_address,
        });
        let source =
            Arc::new(MeshSource::new(self.mesh, self.fetch, self.index, self.traffic, flights));
        let http_config = nixmesh_localhttp::Config {
            trusted_keys: self.keys.trusted,
            priority: config.priority,
            prefetch: config.prefetch,
            prefetch_memory: config.prefetch_memory,
            ..Default::default()
        };
        let client_stall = http_config.client_stall_timeout;
        let lan_router = listeners.lan.map(|listener| {
            let lan_source =
                LanSource::new(source.clone(), served.provider, self.log, served.exclude);
            let gate = LanListener { allow: config.lan_allow.clone() };
            let router = gate.router(lan_source, view.clone(), &http_config, &metrics);
            (listener, router)
        });
        let router = nixmesh_localhttp::router(source, view, self.health, http_config, metrics);

        info!(address = %listeners.http_address, "substituter serving");
        let stop_http = CancellationToken::new();
        let http = tokio::spawn(nixmesh_localhttp::serve(
            listeners.http,
            router,
            client_stall,
            stop_http.clone().cancelled_owned(),
        ));
        let lan = lan_router.map(|(listener, router)| {
            let stopped = stop_http.clone().cancelled_owned();
            tokio::spawn(nixmesh_localhttp::serve(listener, router, client_stall, stopped))
        });
        (stop_http, http, lan)
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
