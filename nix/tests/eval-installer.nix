# nix/installer.nix (the flake's nixosModules.installer) evaluated as an installer image would
# evaluate it, with nixpkgs' `lib` and the stand-ins of ./stand-ins.nix, for
# tests/tests/e2e_installer.rs:
#
#   nix-instantiate --eval --strict --json nix/tests/eval-installer.nix \
#     --argstr nixpkgsLib ../shared/nixpkgs-lib/lib
#
# `installer`: the module imported and nothing else set; `flake`: the flake's module (its
# package the flake's own) and its static package, with stand-ins for nixpkgs.
{ nixpkgsLib }:
let
  lib = import nixpkgsLib;
  standIns = import ./stand-ins.nix { inherit lib; };

  machine =
    modules:
    (lib.evalModules {
      modules = [
        { _module.args.pkgs = standIns.pkgs; }
        standIns.nixos
      ]
      ++ modules;
    }).config;

  # What the modules set, as ./eval.nix shows it, and the settings the config file holds.
  shown = config: {
    service = config.systemd.services.nixmesh or null;
    socket = config.systemd.sockets.nixmesh or null;
    configFile = config.environment.etc."nixmesh/config.toml".source or null;
    firewall = config.networking.firewall;
    nix = config.nix.settings;
    inherit (config.services.nixmesh) settings signingKeyFile;
  };

  # rustPlatform and stdenv as ./eval.nix stands them in; pkgsStatic's callPackage marks
  # what it built, so the test sees which package set the static package came from.
  rustPlatform.buildRustPackage = args: args // { type = "derivation"; outPath = "/nix/store/00000000000000000000000000000000-nixmesh-flake"; };
  stdenv = {
    buildPlatform.canExecute = _: true;
    hostPlatform = { };
  };
  installShellFiles = "installShellFiles";
  callPackage = f: extra: import f ({ inherit lib stdenv rustPlatform installShellFiles; } // extra);
  flake = (import ../../flake.nix).outputs {
    self = flake;
    nixpkgs = {
      inherit lib;
      legacyPackages.x86_64-linux = standIns.pkgs // {
        inherit callPackage;
        pkgsStatic.callPackage = f: extra: callPackage f extra // { packageSet = "pkgsStatic"; };
      };
    };
  };
  flakeInstaller = machine [ flake.nixosModules.installer ];
in
{
  installer = shown (machine [ ../installer.nix ]);
  flake = {
    execStart = flakeInstaller.systemd.services.nixmesh.serviceConfig.ExecStart;
    runtimeDirectory = flakeInstaller.systemd.services.nixmesh.serviceConfig.RuntimeDirectory;
    static = {
      inherit (flake.packages.x86_64-linux.nixmesh-static) packageSet cargoBuildFlags;
      mainProgram = flake.packages.x86_64-linux.nixmesh-static.meta.mainProgram;
    };
  };
}
