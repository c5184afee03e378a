# The nixmesh binary, built from this repository with Cargo.lock (no network at build time).
# Used by flake.nix (packages.<system>.default, the overlay) and callable as
# `pkgs.callPackage ./nix/package.nix { }` without flakes.
{ lib, rustPlatform }:
let
  workspace = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "nixmesh";
  inherit (workspace.workspace.package) version;

  # Only what Cargo reads, so that editing docs or Nix files does not rebuild the binary.
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../protocol
      ../localhttp
      ../node
      ../tests
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;
  cargoBuildFlags = [
    "-p"
    "nixmesh-node"
  ];

  # The tests need root, network namespaces and a nix-daemon of their own; `.ci/run` runs
  # them (`cargo test --workspace`), a build sandbox cannot.
  doCheck = false;

  meta = {
    description = "A peer-to-peer binary cache for Nix on a local network";
    license = with lib.licenses; [
      mit
      asl20
    ];
    mainProgram = "nixmesh";
    platforms = lib.platforms.linux;
  };
}
