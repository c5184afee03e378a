//! The flags of `nixmesh serve` (and `nixmesh config show`): one per key of the config file.
//! Their help shows the defaults of [`ServeConfig::default`], the one place defaults are
//! written; and only the flags given on the command line override the file, which clap's
//! value sources tell apart from the defaults it fills in.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches};
use libp2p::Multiaddr;
use serde::Serialize;
use serde_json::{Map, Value};

use super::file::ConfigPath;

use super::{
    ConfigError, DEFAULT_CONFIG_PATH, EffectiveConfig, LogFormat, SecurityProtocol, ServeConfig,
};

/// For clap's `default_value_t`, read when the command's help is built.
fn defaults() -> ServeConfig {
    ServeConfig::default()
}

/// Every flag's value, the defaults filled in. The field names are the config file's keys.
#[derive(Debug, Clone, clap::Args, Serialize)]
struct FlagValues {
    /// The config file (TOML, keys as the flags below in snake_case: `http_listen = "…"`);
    /// the flags override it. Missing is fine at the default path, an error at one named here.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    #[serde(skip)]
    config: PathBuf,
    /// The local store: `daemon` (the local nix-daemon) or `unix:///path/to/socket`.
    #[arg(long, default_value_t = defaults().store)]
    store: String,
    /// Where the node keeps its identity and index.
    #[arg(long, value_name = "DIR", default_value_os_t = defaults().state_dir)]
    state_dir: PathBuf,
    /// The substituter's address (loopback unless you mean to share it).
    #[arg(long, value_name = "ADDRESS", default_value_t = defaults().http_listen)]
    http_listen: SocketAddr,
    /// The mesh's listen address (repeatable).
    #[arg(long, value_name = "MULTIADDR", default_values_t = defaults().p2p_listen)]
    p2p_listen: Vec<Multiaddr>,
    /// A trusted public key, `name:base64` (repeatable); none means those nix.conf trusts.
    #[arg(long = "trusted-public-key", value_name = "NAME:BASE64")]
    trusted_public_keys: Vec<String>,
    /// A secret key file (Nix's format) to sign this node's paths with.
    #[arg(long, value_name = "FILE")]
    sign_key_file: Option<PathBuf>,
    /// A peer to stay connected to, e.g. /ip4/192.0.2.7/tcp/7374/p2p/12D3Koo… (repeatable).
    #[arg(long = "peer", value_name = "MULTIADDR")]
    peers: Vec<Multiaddr>,
    /// Do not announce or discover peers with mDNS (the key `mdns = false`).
    #[arg(long = "no-mdns", action = ArgAction::SetFalse)]
    mdns: bool,
    /// Serve peers paths no trusted key signed and that are not content-addressed (local
    /// builds): off by default, since any host of an open mesh may ask.
    #[arg(long)]
    serve_unsigned: bool,
    /// A store-path name pattern (`*` and `?`) never served to peers, e.g. `*-secrets*`
    /// (repeatable).
    #[arg(long = "serve-exclude", value_name = "PATTERN")]
    serve_exclude: Vec<String>,
    /// Give peers this store's build logs (`nix log`), failed builds' included: off by
    /// default, since a log can hold what a private build printed.
    #[arg(long)]
    serve_logs: bool,
    /// A mesh key file (made by `nixmesh mesh-key`): only nodes with the same key connect.
    #[arg(long, value_name = "FILE")]
    mesh_key_file: Option<PathBuf>,
    /// The only peer to connect with and serve (repeatable); none given means any.
    #[arg(long = "allow-peer", value_name = "PEER_ID")]
    #[serde(serialize_with = "super::peer_ids::serialize")]
    allow_peers: Vec<libp2p::PeerId>,
    /// The mesh's security protocols, most preferred first (comma-separated); keep noise for
    /// nodes from before TLS.
    #[arg(
        long,
        value_name = "PROTOCOLS",
        value_delimiter = ',',
        default_values_t = defaults().mesh_security
    )]
    mesh_security: Vec<SecurityProtocol>,
    /// Seconds between rescans of the local store where its database cannot be watched.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = defaults().rescan_interval.as_secs_f64()
    )]
    rescan_interval: f64,
    /// The Priority the substituter announces to Nix (lower is preferred; cache.nixos.org
    /// is 40).
    #[arg(long, default_value_t = defaults().priority)]
    priority: u32,
    /// Where the store's files are, to make NARs from them instead of asking the daemon
    /// (Nix's `real` store setting). Unset: /nix/store with `--store daemon`, else none.
    #[arg(long, value_name = "DIR")]
    real_store_dir: Option<PathBuf>,
    /// Seconds after which a peer not seen is forgotten, its paths dropped from the index.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = defaults().forget_peers_after.as_secs_f64()
    )]
    forget_peers_after: f64,
    /// The most paths the index holds, counted once per peer holding them; at the bound,
    /// peers over their fair share get no more.
    #[arg(long, value_name = "PATHS", default_value_t = defaults().index_max_paths)]
    index_max_paths: u64,
    /// How to write logs: plain text, or one JSON object a line.
    #[arg(long, value_name = "FORMAT", default_value_t = defaults().log_format)]
    log_format: LogFormat,
    /// A binary cache to fetch what no peer holds from, once for the whole mesh (repeatable,
    /// in order). None given: nix.conf's `substituters` but this node, else cache.nixos.org.
    #[arg(long = "upstream", value_name = "URL", conflicts_with = "no_upstream")]
    upstreams: Vec<String>,
    /// Fetch from no upstream cache, only from peers (the key `upstreams = []`).
    #[arg(long = "no-upstream")]
    #[serde(skip)]
    no_upstream: bool,
    /// Seconds that asking the upstreams for a narinfo may take in all.
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = defaults().upstream_timeout.as_secs_f64()
    )]
    upstream_timeout: f64,
    /// The most disk, in bytes, the NARs downloaded from upstream take while shared.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().spool_max_bytes)]
    spool_max_bytes: u64,
    /// Also serve the substituter to the LAN at this address (e.g. 0.0.0.0:7375), for
    /// machines that run no node: read-only, what this node would serve its peers.
    #[arg(long, value_name = "ADDRESS")]
    lan_listen: Option<SocketAddr>,
    /// A network the LAN substituter answers, e.g. 192.0.2.0/24 (repeatable); none means
    /// every host, which a private mesh refuses.
    #[arg(long = "lan-allow", value_name = "CIDR")]
    lan_allow: Vec<super::Cidr>,
    /// Do not fetch NARs ahead of Nix's requests (the key `prefetch = false`).
    #[arg(long = "no-prefetch", action = ArgAction::SetFalse)]
    prefetch: bool,
    /// The most memory, in bytes, NARs fetched ahead of Nix take, per substituter.
    #[arg(long, value_name = "BYTES", default_value_t = defaults().prefetch_memory)]
    prefetch_memory: u64,
    /// NARs between nodes: `auto` compresses them with zstd where the link is slower than
    /// compressing; `always` asks for it of every peer; `off` never.
    #[arg(long, value_name = "MODE", default_value_t = defaults().mesh_compression)]
    mesh_compression: super::MeshCompression,
}

/// The flags as given: their values, and which of them were on the command line.
#[derive(Debug, Clone)]
pub struct ServeFlags {
    values: FlagValues,
    given: BTreeSet<String>,
}

impl ServeFlags {
    /// The config file the flags name, or the default one.
    pub fn config_path(&self) -> ConfigPath {
        ConfigPath { path: self.values.config.clone(), explicit: self.given.contains("config") }
    }

    /// The settings given on the command line, as the config file would write them.
    pub fn given_settings(&self) -> Map<String, Value> {
        let Ok(Value::Object(mut all)) = serde_json::to_value(&self.values) else {
            unreachable!("the flags serialise to an object");
        };
        all.retain(|key, _| self.given.contains(key));
        if self.values.no_upstream {
            all.insert("upstreams".to_owned(), Value::Array(Vec::new()));
        }
        all
    }

    /// The settings these flags make: defaults, then the config file, then the flags.
    pub fn resolve(&self) -> Result<EffectiveConfig, ConfigError> {
        EffectiveConfig::resolve(&self.config_path(), self.given_settings())
    }
}

impl clap::Args for ServeFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        FlagValues::augment_args(cmd)
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        FlagValues::augment_args_for_update(cmd)
    }
}

impl clap::FromArgMatches for ServeFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let values = FlagValues::from_arg_matches(matches)?;
        let given = matches
            .ids()
            .filter(|id| matches.value_source(id.as_str()) == Some(ValueSource::CommandLine))
            .map(|id| id.as_str().to_owned())
            .collect();
        Ok(ServeFlags { values, given })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = ServeFlags::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        flags: ServeFlags,
    }

    fn given(args: &[&str]) -> Map<String, Value> {
        let argv = std::iter::once("serve").chain(args.iter().copied());
        Serve::try_parse_from(argv).unwrap().flags.given_settings()
    }

    #[test]
    fn flags_not_given_are_not_settings() {
        assert!(given(&[]).is_empty());
        let config = Serve::try_parse_from(["serve"]).unwrap().flags.config_path();
        assert_eq!(config.path, PathBuf::from(DEFAULT_CONFIG_PATH));
        assert!(!config.explicit);
    }

    #[test]
    fn flags_given_are_settings_under_their_keys() {
        let settings = given(&[
            "--config",
            "/tmp/x.toml",
            "--priority",
            "3",
            "--no-mdns",
            "--peer",
            "/ip4/192.0.2.7/tcp/7374",
            "--trusted-public-key",
            "k-1:AAAA",
            "--rescan-interval",
            "0.5",
        ]);
        let keys: Vec<&str> = settings.keys().map(String::as_str).collect();
        assert_eq!(keys, ["mdns", "peers", "priority", "rescan_interval", "trusted_public_keys"]);
        assert_eq!(settings["priority"], 3);
        assert_eq!(settings["mdns"], false);
        assert_eq!(settings["peers"], serde_json::json!(["/ip4/192.0.2.7/tcp/7374"]));
        assert_eq!(settings["rescan_interval"], 0.5);
    }

    #[test]
    fn every_flag_is_a_key_of_the_config() {
        let every = [
            "--store=unix:///s",
            "--state-dir=/s",
            "--http-listen=127.0.0.1:1",
            "--p2p-listen=/ip4/127.0.0.1/tcp/0",
            "--trusted-public-key=k-1:AAAA",
            "--sign-key-file=/k",
            "--peer=/ip4/127.0.0.1/tcp/1",
            "--no-mdns",
            "--mesh-key-file=/m",
            "--allow-peer=12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA",
            "--mesh-security=noise,tls",
            "--rescan-interval=1",
            "--priority=1",
            "--real-store-dir=/r",
            "--forget-peers-after=1",
            "--index-max-paths=1000",
            "--log-format=json",
            "--serve-unsigned",
            "--serve-exclude=*-secret*",
            "--serve-logs",
            "--upstream=http://192.0.2.1:8080",
            "--upstream-timeout=1.5",
            "--spool-max-bytes=1000",
            "--lan-listen=0.0.0.0:7375",
            "--lan-allow=192.0.2.0/24",
            "--no-prefetch",
            "--prefetch-memory=1000",
            "--mesh-compression=off",
        ];
        let settings = given(&every);
        let default_keys = match serde_json::to_value(ServeConfig::default()).unwrap() {
            Value::Object(keys) => keys.keys().cloned().collect::<Vec<_>>(),
            _ => unreachable!(),
        };
        assert_eq!(settings.keys().cloned().collect::<Vec<_>>(), default_keys);
        let config: ServeConfig = serde_json::from_value(Value::Object(settings)).unwrap();
        assert_eq!(config.priority, 1);
        assert_eq!(config.index_max_paths, 1000);
        assert_eq!(config.mesh_compression, super::super::MeshCompression::Off);
        assert_eq!(config.sign_key_file, Some(PathBuf::from("/k")));
        assert_eq!(config.mesh_key_file, Some(PathBuf::from("/m")));
        assert_eq!(
            config.allow_peers[0].to_string(),
            "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
        );
        assert_eq!(config.mesh_security, [SecurityProtocol::Noise, SecurityProtocol::Tls]);
    }

    #[test]
    fn no_upstream_is_the_empty_list_and_excludes_upstream() {
        assert_eq!(given(&["--no-upstream"])["upstreams"], serde_json::json!([]));
        let both = ["serve", "--no-upstream", "--upstream", "http://192.0.2.1"];
        assert!(Serve::try_parse_from(both).is_err());
    }

    #[test]
    fn the_help_shows_the_defaults_of_the_config() {
        let help = Serve::command().render_help().to_string();
        let d = ServeConfig::default();
        for shown in [
            format!("[default: {}]", d.http_listen),
            format!("[default: {}]", d.p2p_listen[0]),
            format!("[default: {}]", d.state_dir.display()),
            format!("[default: {}]", d.priority),
            format!("[default: {}]", d.forget_peers_after.as_secs()),
            format!("[default: {}]", d.index_max_paths),
            format!("[default: {}]", d.rescan_interval.as_secs()),
            format!("[default: {DEFAULT_CONFIG_PATH}]"),
        ] {
            assert!(help.contains(&shown), "no {shown:?} in:\n{help}");
        }
    }
}
