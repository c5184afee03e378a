//! NixOS modules evaluated by the real Nix (`nix-instantiate --eval --strict --json`) with
//! nixpkgs' `lib`: `nix/tests/eval.nix` evaluates `nix/module.nix` with stand-ins for the rest
//! of NixOS. There is no nixpkgs checkout here, only its `lib`, found at
//! `$NIXMESH_NIXPKGS_LIB` or next to the repository (`../shared/nixpkgs-lib/lib`).

use std::path::PathBuf;
use std::process::Command;

use crate::command::CommandExt;
use crate::nixstore::{HostStore, NIX_LIMIT};
use crate::node::workspace_dir;

/// The variable naming nixpkgs' `lib` directory.
pub const NIXPKGS_LIB_VAR: &str = "NIXMESH_NIXPKGS_LIB";

/// nixpkgs' `lib` directory, if it is there (see [`crate::require_path`] for what happens
/// when it is not).
pub fn nixpkgs_lib() -> Option<PathBuf> {
    let lib = std::env::var_os(NIXPKGS_LIB_VAR)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("../shared/nixpkgs-lib/lib"));
    let what = format!("nixpkgs' lib (${NIXPKGS_LIB_VAR})");
    crate::require_path(&lib.join("default.nix"), &what).then_some(lib)
}

/// `nix/tests/eval.nix` evaluated with `lib` and `nixmesh` as the options of its
/// `configured` machine. With a `store`, files the evaluation makes (the config file) are
/// written to that store; without, only their paths are computed.
pub fn eval_module(
    lib: &std::path::Path,
    nixmesh: &serde_json::Value,
    store: Option<&HostStore>,
) -> serde_json::Value {
    let mut eval = Command::new("nix-instantiate");
    eval.args(["--eval", "--strict", "--json"]);
    if let Some(store) = store {
        eval.args(["--read-write-mode", "--store", &store.url()]);
    }
    eval.arg(workspace_dir().join("nix/tests/eval.nix"))
        .arg("--argstr")
        .arg("nixpkgsLib")
        .arg(lib)
        .args(["--argstr", "nixmeshJson", &nixmesh.to_string()]);
    let out = eval.stdout_within(NIX_LIMIT);
    serde_json::from_slice(&out).expect("nix-instantiate --json printed JSON")
}
