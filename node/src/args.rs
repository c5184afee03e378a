//! The command line of `nixmesh`: its subcommands and their flags (clap). In the library, so
//! that the man page, the completions and the tests read the same definition as the binary.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{ServeConfig, ServeFlags};

/// `nixmesh`.
#[derive(Debug, Parser)]
#[command(
    name = "nixmesh",
    version,
    about = "A peer-to-peer binary cache for Nix on a local network"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// `http://` and the substituter's default address.
fn default_node_url() -> String {
    format!("http://{}", ServeConfig::default().http_listen)
}

/// Where the commands that ask a running node find it.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeFlags {
    /// The node's HTTP address.
    #[arg(long, default_value_t = default_node_url())]
    pub node: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node: the mesh, and the local substituter Nix talks to.
    Serve(ServeFlags),
    /// The settings `nixmesh serve` would run with.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the peers a running node knows: name, state, paths, RTT, bytes each way.
    Peers(NodeFlags),
    /// Show a running node's state: peers, hit rate, bytes served and received.
    Status(NodeFlags),
    /// Say whether a running node would serve a store path to Nix, and if not, why.
    Why {
        /// The store path (`/nix/store/HASH-NAME`), its base name, or its hash.
        path: String,
        #[command(flatten)]
        node: NodeFlags,
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
    /// Print a shell completion script, e.g. `nixmesh completions bash >
    /// /etc/bash_completion.d/nixmesh`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff): nixmesh(1), or a subcommand's, e.g. `nixmesh man why >
    /// nixmesh-why.1`.
    Man {
        /// The subcommand whose page to print.
        subcommand: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
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

/// The whole command, for the man page and completions.
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }
}
