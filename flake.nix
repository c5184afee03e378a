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
        # Linked statically (nixpkgs' pkgsStatic: musl), for machines with no /lib: the stock
        # NixOS installer. Without Nix: nix/build-static (glibc, static).
        nixmesh-static = pkgs.pkgsStatic.callPackage ./nix/package.nix { };
      });

      overlays.default = final: _prev: { nixmesh = final.callPackage ./nix/package.nix { }; };

      # services.nixmesh (nix/module.nix), its package this flake's unless set otherwise.
      nixosModules.default =
        { lib, pkgs, ... }:
        {
          imports = [ ./nix/module.nix ];
          services.nixmesh.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        };

      # A node in a live system, for a custom installer image (nix/installer.nix): state in
      # /run, no signing key, mDNS on and the firewall open for it, Nix's substituters naming it.
      nixosModules.installer = {
        imports = [
          self.nixosModules.default
          ./nix/installer.nix
        ];
      };
    };
}
