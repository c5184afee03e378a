# Stand-ins for the parts of NixOS and nixpkgs that nix/module.nix touches, so that the module
# can be evaluated with nixpkgs' `lib` alone (tests/tests/nixos_module.rs). Each option is
# declared as loosely as NixOS declares it or more so; the definitions NixOS itself makes that
# the module relies on (cache.nixos.org after everything, its key trusted) are made here too,
# as nixos/modules/config/nix.nix makes them.
{ lib }:
let
  inherit (lib) mkOption types;
  toTOML = import ./toml.nix { inherit lib; };
  scalar = types.oneOf [
    types.bool
    types.int
    types.float
    types.str
  ];
  anything = mkOption {
    type = types.attrsOf types.anything;
    default = { };
  };
in
{
  pkgs = {
    stdenv.hostPlatform.system = "x86_64-linux";
    formats.toml =
      { }:
      {
        type = types.attrsOf (types.either scalar (types.listOf scalar));
        generate = name: value: builtins.toFile name (toTOML value);
      };
    # A package as the module sees one: its store path. The test puts the freshly built
    # binary where `${nixmesh}/bin/nixmesh` would be.
    nixmesh = {
      type = "derivation";
      name = "nixmesh-stand-in";
      outPath = "/nix/store/00000000000000000000000000000000-nixmesh-stand-in";
    };
  };

  nixos = {
    options = {
      systemd.services = anything;
      systemd.sockets = anything;
      environment.etc = anything;
      environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
      };
      networking.firewall = {
        allowedTCPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
        allowedUDPPorts = mkOption {
          type = types.listOf types.port;
          default = [ ];
        };
      };
      nix.settings = mkOption {
        default = { };
        type = types.submodule {
          freeformType = types.attrsOf types.anything;
          options = {
            substituters = mkOption { type = types.listOf types.str; };
            trusted-substituters = mkOption {
              type = types.listOf types.str;
              default = [ ];
            };
            trusted-public-keys = mkOption { type = types.listOf types.str; };
            narinfo-cache-negative-ttl = mkOption {
              type = types.int;
              default = 3600;
            };
          };
        };
      };
    };
    config.nix.settings = {
      substituters = lib.mkAfter [ "https://cache.nixos.org/" ];
      trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
    };
  };
}
