//! `nixmesh`: flags, logging and exit codes. The work lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use nixmesh_node::args::{Cli, Command, ConfigCommand, NodeFlags};
use nixmesh_node::config::LogFormat;
use nixmesh_node::{args, cli, node};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` logs as its settings say; they are read before the first log line.
    let settings = match &cli.command {
        Command::Serve(flags) => match flags.resolve() {
            Ok(settings) => Some(settings),
            Err(e) => {
                eprintln!("nixmesh: {e}");
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    init_logging(settings.as_ref().map_or(LogFormat::Plain, |s| s.config.log_format));
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(_) => {
                let settings = settings.expect("resolved above");
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
            Command::Peers(NodeFlags { node, json }) => {
                cli::peers(&node, json).await.map_err(|e| e.to_string())
            }
            Command::Status(NodeFlags { node, json }) => {
                cli::status(&node, json).await.map_err(|e| e.to_string())
            }
            Command::Why { path, node: NodeFlags { node, json } } => {
                cli::why(&node, &path, json).await.map_err(|e| e.to_string())
            }
            Command::Completions { shell } => Ok(cli::completions(args::command(), shell)),
            Command::Man { subcommand } => {
                cli::man(args::command(), subcommand.as_deref()).map_err(|e| e.to_string())
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

/// Logs to stderr: plain text (coloured only for a person at a terminal, not into files or
/// the journal), or one JSON object a line.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,libp2p_swarm=warn,mdns_sd=warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init()
        }
        LogFormat::Json => logs.json().with_current_span(true).init(),
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
