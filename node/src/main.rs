//! `nixmesh`: flags, logging and exit codes. The work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use libp2p::Multiaddr;
use nixmesh_node::config::{DEFAULT_HTTP_LISTEN, ServeConfig};
use nixmesh_node::{cli, node};

#[derive(Parser)]
#[command(
    name = "nixmesh",
    version,
    about = "A peer-to-peer binary cache for Nix on a local network"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: the mesh, and the local substituter Nix talks to.
    Serve(ServeArgs),
    /// List the peers a running node knows.
    Peers {
        /// The node's HTTP address.
        #[arg(long, default_value_t = format!("http://{DEFAULT_HTTP_LISTEN}"))]
        node: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a running node's state.
    Status {
        #[arg(long, default_value_t = format!("http://{DEFAULT_HTTP_LISTEN}"))]
        node: String,
        #[arg(long)]
        json: bool,
    },
    /// Make a signing key pair in Nix's format: writes the secret key, prints the public key.
    Keygen {
        /// The key's name, e.g. `myhost-1`.
        name: String,
        /// Where to write the secret key (default: NAME.secret); never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The local store: `daemon` or `unix:///path/to/socket`.
    #[arg(long)]
    store: Option<String>,
    /// Where the node keeps its identity and index [default: /var/lib/nixmesh].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The substituter's address [default: 127.0.0.1:7373].
    #[arg(long)]
    http_listen: Option<std::net::SocketAddr>,
    /// The mesh's listen address (repeatable) [default: /ip4/0.0.0.0/tcp/7374].
    #[arg(long)]
    p2p_listen: Vec<Multiaddr>,
    /// A trusted public key, `name:base64` (repeatable); none means those nix.conf trusts.
    #[arg(long)]
    trusted_public_key: Vec<String>,
    /// A secret key file (Nix's format) to sign this node's paths with.
    #[arg(long)]
    sign_key_file: Option<PathBuf>,
    /// A peer to stay connected to, e.g. /ip4/192.0.2.7/tcp/7374/p2p/12D3Koo… (repeatable).
    #[arg(long)]
    peer: Vec<Multiaddr>,
    /// Do not announce or discover peers with mDNS.
    #[arg(long)]
    no_mdns: bool,
    /// Seconds between rescans of the local store where its database cannot be watched
    /// [default: 2].
    #[arg(long)]
    rescan_interval: Option<f64>,
    /// The Priority the substituter announces to Nix [default: 10].
    #[arg(long)]
    priority: Option<u32>,
    /// Where the store's files are, to make NARs from them instead of asking the daemon
    /// (Nix's `real` store setting) [default: /nix/store with `--store daemon`, else none].
    #[arg(long)]
    real_store_dir: Option<PathBuf>,
    /// Seconds after which a peer not seen is forgotten, its paths dropped from the index
    /// [default: 604800, a week].
    #[arg(long)]
    forget_peers_after: Option<u64>,
}

impl ServeArgs {
    /// Flags override the defaults.
    fn into_config(self) -> Result<ServeConfig, String> {
        let mut c = ServeConfig::default();
        if let Some(v) = self.store {
            c.store = v;
        }
        if let Some(v) = self.state_dir {
            c.state_dir = v;
        }
        if let Some(v) = self.http_listen {
            c.http_listen = v;
        }
        if !self.p2p_listen.is_empty() {
            c.p2p_listen = self.p2p_listen;
        }
        c.trusted_public_keys = self.trusted_public_key;
        c.sign_key_file = self.sign_key_file;
        c.peers = self.peer;
        c.mdns = !self.no_mdns;
        if let Some(secs) = self.rescan_interval {
            c.rescan_interval =
                Duration::try_from_secs_f64(secs).ok().filter(|d| !d.is_zero()).ok_or_else(
                    || format!("--rescan-interval {secs}: must be a positive number of seconds"),
                )?;
        }
        if let Some(v) = self.priority {
            c.priority = v;
        }
        c.real_store_dir = self.real_store_dir;
        if let Some(secs) = self.forget_peers_after {
            c.forget_peers_after = Duration::from_secs(secs);
        }
        Ok(c)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,libp2p_swarm=warn,mdns_sd=warn".into()),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not into files or the journal.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => {
                let config = args.into_config()?;
                raise_open_file_limit();
                node::serve(config, shutdown_signal())
                    .await
                    .map(|()| String::new())
                    .map_err(|e| e.to_string())
            }
            Command::Peers { node, json } => {
                cli::peers(&node, json).await.map_err(|e| e.to_string())
            }
            Command::Status { node, json } => {
                cli::status(&node, json).await.map_err(|e| e.to_string())
            }
            Command::Keygen { name, out } => {
                let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.secret")));
                cli::keygen(&name, &out)
                    .map(|public| format!("{public}\n"))
                    .map_err(|e| e.to_string())
            }
        }
    });
    match result {
        Ok(output) => {
            print!("{output}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("nixmesh: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Raises the soft limit on open files to the hard one: every client connection and every
/// peer is a descriptor, and the usual soft limit (1,024, systemd's default) is soon reached by
/// a busy node while the hard limit is far higher.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct handed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max
        {
            return;
        }
        let from = limit.rlim_cur;
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            tracing::info!(from, to = limit.rlim_cur, "raised the open-file limit");
        } else {
            let e = std::io::Error::last_os_error();
            tracing::warn!(from, "cannot raise the open-file limit: {e}");
        }
    }
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
