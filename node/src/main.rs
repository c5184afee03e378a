//! `nixmesh`: flags, logging and exit codes. The work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nixmesh_node::config::{ServeConfig, ServeFlags};
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

/// `http://` and the substituter's default address.
fn default_node_url() -> String {
    format!("http://{}", ServeConfig::default().http_listen)
}

#[derive(Subcommand)]
enum Command {
    /// Run the node: the mesh, and the local substituter Nix talks to.
    Serve(ServeFlags),
    /// The settings `nixmesh serve` would run with.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the peers a running node knows.
    Peers {
        /// The node's HTTP address.
        #[arg(long, default_value_t = default_node_url())]
        node: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a running node's state.
    Status {
        #[arg(long, default_value_t = default_node_url())]
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
    /// Make a mesh key for a private mesh (libp2p's pnet key file): only nodes given the same
    /// key with --mesh-key-file can connect to each other.
    MeshKey {
        /// Where to write the key; never overwritten.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the settings `nixmesh serve` would run with, given the same config file and
    /// flags, and where each came from (`default`, `file PATH` or `flag`).
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        flags: ServeFlags,
    },
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
            Command::Serve(flags) => {
                let settings = flags.resolve().map_err(|e| e.to_string())?;
                let file = &settings.file.path;
                if settings.file_read {
                    tracing::info!(file = %file.display(), "read the config file");
                } else {
                    tracing::info!(file = %file.display(), "no config file, defaults and flags");
                }
                let stop = shutdown_signal();
                raise_open_file_limit();
                node::serve(settings.config, stop)
                    .await
                    .map(|()| String::new())
                    .map_err(|e| e.to_string())
            }
            Command::Config(ConfigCommand::Show { json, flags }) => {
                let settings = flags.resolve().map_err(|e| e.to_string())?;
                Ok(if json { settings.show_json() } else { settings.show() })
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
            Command::MeshKey { out } => {
                cli::mesh_key(&out).map(|line| format!("{line}\n")).map_err(|e| e.to_string())
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

/// Completes on SIGINT or SIGTERM. The handlers are in place when this returns, before the
/// node starts: a stop signal that comes while it starts (systemd stopping it, say) stops it
/// in order once started, instead of killing it.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    let mut interrupt = signal(SignalKind::interrupt()).expect("a SIGINT handler");
    async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = term.recv() => {}
        }
    }
}
