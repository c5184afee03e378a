# A nixmesh node in a live system: a custom NixOS installer image (or any image booted from
# read-only media) that installs new machines from what the LAN holds. The flake's
# `nixosModules.installer`; without flakes, import this file and set
# `services.nixmesh.package`.
#
# It is services.nixmesh (./module.nix) with the settings a live system needs, each a
# default the image may override:
# - the node runs at boot, and Nix's substituters name it first, ahead of cache.nixos.org
#   (the module's own doing), so a plain `nixos-install` takes what the LAN holds;
# - mDNS on and the firewall opened for it and the mesh port (the installer's firewall is
#   on), so the node finds the LAN's nodes with no address given;
# - no signing key: an installer holds no secret (the image is world-readable), and what it
#   holds is the image's own store, signed by cache.nixos.org or by whoever built the image;
# - its identity, index and download spool in /run/nixmesh (RuntimeDirectory), not
#   /var/lib/nixmesh (StateDirectory), because:
#   - nothing of a live system outlives the boot, and /run is where state for one boot
#     belongs: a tmpfs systemd mounts on every system, writable even where the root is not
#     (a squashfs root, a netboot image);
#   - a new identity at every boot, made on the machine booted, never one baked into an
#     image that many machines boot at once (peers would see one peer id on several hosts);
#   - RuntimeDirectoryPreserve keeps it across restarts of the service within the boot (a
#     restart keeps the node's identity and index; systemd would remove the directory at
#     each stop otherwise);
# - the spool bounded to 512 MiB (`spool_max_bytes`): it is memory on a live system, and
#   /run is a quarter of it by default; a NAR larger than the bound still downloads, it is
#   only not shared with other nodes as it arrives.
{ config, lib, ... }:
let
  stateDir = "/run/nixmesh";
in
{
  imports = [ ./module.nix ];

  services.nixmesh = {
    enable = lib.mkDefault true;
    openFirewall = lib.mkDefault true;
    settings = {
      state_dir = lib.mkDefault stateDir;
      mdns = lib.mkDefault true;
      spool_max_bytes = lib.mkDefault (512 * 1024 * 1024);
    };
  };

  # /run/nixmesh made by systemd for the service's dynamic user at each start, in place of
  # /var/lib/nixmesh (an image that sets another state_dir keeps the module's StateDirectory).
  systemd.services.nixmesh.serviceConfig = lib.mkIf (config.services.nixmesh.settings.state_dir == stateDir) {
    RuntimeDirectory = "nixmesh";
    RuntimeDirectoryMode = "0700";
    RuntimeDirectoryPreserve = "yes";
    StateDirectory = lib.mkForce [ ];
  };
}
