//! NixOS modules evaluated by the real Nix (`nix-instantiate --eval --strict --json`) with
//! nixpkgs' `lib`: `nix/tests/eval.nix` evaluates `nix/module.nix`, and
//! `nix/tests/eval-installer.nix` `nix/installer.nix`, with stand-ins for the rest of NixOS.
//! There is no nixpkgs checkout here, only its `lib`, found at `$NIXMESH_NIXPKGS_LIB` or next
//! to the repository (`../shared/nixpkgs-lib/lib`).

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
    eval_file("nix/tests/eval.nix", lib, &[("nixmeshJson", &nixmesh.to_string())], store)
}

/// `nix/tests/eval-installer.nix` evaluated with `lib`: the installer module
/// (`nix/installer.nix`) on a machine of its own, and the flake's. `store` as for
/// [`eval_module`].
pub fn eval_installer(lib: &std::path::Path, store: Option<&HostStore>) -> serde_json::Value {
    eval_file("nix/tests/eval-installer.nix", lib, &[], store)
}

/// `file` (from the workspace's root) evaluated strictly to JSON with `nixpkgsLib` and
/// `args` as `--argstr`s.
fn eval_file(
    file: &str,
    lib: &std::path::Path,
    args: &[(&str, &str)],
    store: Option<&HostStore>,
) -> serde_json::Value {
    let mut eval = Command::new("nix-instantiate");
    eval.args(["--eval", "--strict", "--json"]);
    if let Some(store) = store {
        eval.args(["--read-write-mode", "--store", &store.url()]);
    }
    eval.arg(workspace_dir().join(file)).arg("--argstr").arg("nixpkgsLib").arg(lib);
    for (name, value) in args {
        eval.args(["--argstr", name, value]);
    }
    let out = eval.stdout_within(NIX_LIMIT);
    serde_json::from_slice(&out).expect("nix-instantiate --json printed JSON")
}
