# nix/module.nix evaluated as a NixOS machine would evaluate it, with nixpkgs' `lib` and the
# stand-ins of ./stand-ins.nix, for tests/tests/nixos_module.rs:
#
#   nix-instantiate --eval --strict --json nix/tests/eval.nix \
#     --argstr nixpkgsLib ../shared/nixpkgs-lib/lib --argstr nixmeshJson '{"settings": {}}'
#
# Three machines: `configured` (the module on, with the options `nixmeshJson` gives, and a
# substituter of the user's own), `plain` (only `enable = true`) and `off`; for each, what the
# module set. Also the package and the flake, with stand-ins for nixpkgs.
{
  nixpkgsLib,
  nixmeshJson ? "{}",
}:
let
  lib = import nixpkgsLib;
  standIns = import ./stand-ins.nix { inherit lib; };

  machine =
    modules:
    (lib.evalModules {
      modules = [
        { _module.args.pkgs = standIns.pkgs; }
        standIns.nixos
        ../module.nix
      ]
      ++ modules;
    }).config;

  # What the module set, without what is only there to be set.
  shown = config: {
    service = config.systemd.services.nixmesh or null;
    socket = config.systemd.sockets.nixmesh or null;
    configFile = config.environment.etc."nixmesh/config.toml".source or null;
    firewall = config.networking.firewall;
    nix = config.nix.settings;
  };

  configured = machine [
    {
      services.nixmesh = builtins.fromJSON nixmeshJson // {
        enable = true;
      };
      nix.settings.substituters = [ "https://example.org/cache" ];
    }
  ];

  # The package and the flake, with stand-ins for rustPlatform and nixpkgs: what they would
  # hand to buildRustPackage, and what the flake's module sets.
  rustPlatform.buildRustPackage = args: args // { type = "derivation"; outPath = "/nix/store/00000000000000000000000000000000-nixmesh-flake"; };
  # The build can run what it builds, so the man page and completions are generated.
  stdenv = {
    buildPlatform.canExecute = _: true;
    hostPlatform = { };
  };
  installShellFiles = "installShellFiles";
  package = import ../package.nix { inherit lib stdenv rustPlatform installShellFiles; };
  flake = (import ../../flake.nix).outputs {
    self = flake;
    nixpkgs = {
      inherit lib;
      legacyPackages.x86_64-linux = standIns.pkgs // {
        callPackage = f: extra: import f ({ inherit lib stdenv rustPlatform installShellFiles; } // extra);
      };
    };
  };
  flakeMachine = machine [
    flake.nixosModules.default
    { services.nixmesh.enable = true; }
  ];
in
{
  configured = shown configured;
  plain = shown (machine [ { services.nixmesh.enable = true; } ]);
  off = shown (machine [ ]);
  package = {
    inherit (package) pname version cargoBuildFlags doCheck postInstall;
    lockFile = toString package.cargoLock.lockFile;
    mainProgram = package.meta.mainProgram;
  };
  flake = {
    packageFlags = flake.packages.x86_64-linux.default.cargoBuildFlags;
    moduleExecStart = flakeMachine.systemd.services.nixmesh.serviceConfig.ExecStart;
  };
}
