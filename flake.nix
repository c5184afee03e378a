{
  description = "nixmesh: a peer-to-peer binary cache for Nix on a local network";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      forEachSystem = f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forEachSystem (pkgs: rec {
        nixmesh = pkgs.callPackage ./nix/package.nix { };
        default = nixmesh;
      });

      overlays.default = final: _prev: { nixmesh = final.callPackage ./nix/package.nix { }; };

      # services.nixmesh (nix/module.nix), its package this flake's unless set otherwise.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.nixmesh.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };
    };
}
