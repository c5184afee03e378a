# services.nixmesh: a nixmesh node on a NixOS machine, and Nix told to use it.
#
# What enabling it does:
# - writes `settings` to a TOML config file (the keys of `nixmesh serve`, see
#   `nixmesh serve --help` and `nixmesh config show`), also linked at /etc/nixmesh/config.toml
#   so that `nixmesh config show` on the machine shows what the service runs with;
# - runs `nixmesh serve --config FILE` as a hardened systemd service under a dynamic user,
#   its identity and index in /var/lib/nixmesh (StateDirectory);
# - has systemd hold the substituter's socket (nixmesh.socket, `http_listen`) and pass it to
#   the node, so the port stays open while the node restarts: Nix's requests wait in the
#   backlog instead of being refused;
# - puts `http://127.0.0.1:7373?priority=10` (from `http_listen` and `priority`) first in
#   `nix.settings.substituters`, ahead of cache.nixos.org (which NixOS adds with mkAfter), with
#   no mkForce needed; and in `trusted-substituters`;
# - lowers `nix.settings.narinfo-cache-negative-ttl` to 30 s (mkDefault; see below).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types;
  cfg = config.services.nixmesh;
  settingsFormat = pkgs.formats.toml { };

  # Where systemd puts the credentials of LoadCredential= (the dynamic user cannot read a
  # root-owned key file; systemd copies it for the service).
  credentialsDir = "/run/credentials/nixmesh.service";

  # What the node is given: `settings`, with the options below folded in. TOML has no null,
  # so unset keys are left out (the node's default applies).
  finalSettings = lib.filterAttrs (_: value: value != null) (
    cfg.settings
    // {
      trusted_public_keys = lib.unique (cfg.trustedPublicKeys ++ cfg.settings.trusted_public_keys or [ ]);
      peers = lib.unique (cfg.peers ++ cfg.settings.peers or [ ]);
    }
    // lib.optionalAttrs (cfg.signingKeyFile != null) {
      sign_key_file = "${credentialsDir}/signing-key";
    }
    // lib.optionalAttrs (cfg.meshKeyFile != null) {
      mesh_key_file = "${credentialsDir}/mesh-key";
    }
    // lib.optionalAttrs cfg.lanSubstituter.enable {
      lan_listen = "0.0.0.0:${toString cfg.lanSubstituter.port}";
      lan_allow = lib.unique (cfg.lanSubstituter.allow ++ cfg.settings.lan_allow or [ ]);
    }
  );
  configFile = settingsFormat.generate "nixmesh.toml" finalSettings;

  # "127.0.0.1:7373" -> "7373"; "[::1]:7373" -> "7373".
  portOf = address: lib.last (lib.splitString ":" address);
  # The substituter as Nix reaches it: an unspecified listen address means this machine.
  substituterUrl =
    let
      address = lib.replaceStrings [ "0.0.0.0:" "[::]:" ] [ "127.0.0.1:" "[::1]:" ] cfg.settings.http_listen;
    in
    "http://${address}?priority=${toString cfg.settings.priority}";
  # The mesh's TCP ports, from its listen multiaddrs (/ip4/0.0.0.0/tcp/7374).
  meshPorts = lib.unique (
    lib.concatMap (
      address:
      let
        port = builtins.match ".*/tcp/([0-9]+)(/.*)?" address;
      in
      lib.optional (port != null) (lib.toInt (builtins.head port))
    ) cfg.settings.p2p_listen
  );
in
{
  options.services.nixmesh = {
    enable = lib.mkEnableOption "nixmesh, a peer-to-peer binary cache for Nix on the LAN";

    package = lib.mkPackageOption pkgs "nixmesh" {
      extraDescription = "With the nixmesh flake's `nixosModules.default`, the flake's own package.";
    };

    settings = mkOption {
      description = ''
        The node's config file, rendered to TOML: any key of `nixmesh serve`'s config
        (`nixmesh config show` lists them; an unknown key stops the service with an error
        naming it). The keys the module itself needs are declared here, with the node's
        defaults. Prefer `peers`, `trustedPublicKeys` and `signingKeyFile` to the keys they
        become.
      '';
      default = { };
      example = {
        p2p_listen = [ "/ip4/0.0.0.0/tcp/7374" ];
        mdns = false;
        priority = 20;
      };
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          http_listen = mkOption {
            type = types.str;
            default = "127.0.0.1:7373";
            description = "The substituter's address (`ADDRESS:PORT`); loopback unless you mean to share it.";
          };
          p2p_listen = mkOption {
            type = types.listOf types.str;
            default = [ "/ip4/0.0.0.0/tcp/7374" ];
            description = "The mesh's listen multiaddrs; `openFirewall` opens their TCP ports.";
          };
          priority = mkOption {
            type = types.ints.unsigned;
            default = 10;
            description = "The priority Nix gives the substituter (lower first; cache.nixos.org is 40).";
          };
          mdns = mkOption {
            type = types.bool;
            default = true;
            description = "Find peers on the local link with mDNS (UDP 5353).";
          };
          prefetch = mkOption {
            type = types.bool;
            default = true;
            description = ''
              Fetch the NARs of small paths of a closure Nix has walked ahead of its requests
              for them, verified as any NAR, so most are answered from memory.
            '';
          };
          prefetch_memory = mkOption {
            type = types.ints.unsigned;
            default = 64 * 1024 * 1024;
            description = "The most memory, in bytes, the NARs fetched ahead of Nix take, per substituter.";
          };
          serve_logs = mkOption {
            type = types.bool;
            default = false;
            description = ''
              Give peers this machine's build logs (`nix log`), failed builds' included. Off
              by default, since a log can hold what a private build printed.
            '';
          };
          state_dir = mkOption {
            type = types.str;
            default = "/var/lib/nixmesh";
            description = ''
              The node's identity and index. The service may write only there: keep the
              default (systemd's StateDirectory) unless you also give the service the path.
            '';
          };
        };
      };
    };

    signingKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/var/keys/nixmesh-1.secret";
      description = ''
        A secret key in Nix's format (`nixmesh keygen` or `nix-store
        --generate-binary-cache-key`) to sign this machine's paths with, for the peers that
        trust its public key. Read by systemd (LoadCredential), so it may stay readable by
        root only; never copied to the Nix store.
      '';
    };

    meshKeyFile = mkOption {
      type = types.nullOr types.path;
      default = null;
      example = "/var/keys/nixmesh-mesh.key";
      description = ''
        A mesh key (`nixmesh mesh-key --out FILE`), the same on every machine of the mesh:
        only nodes with it can connect, and mDNS announces this node only to them. Read by
        systemd (LoadCredential), so it may stay readable by root only; never copied to the
        Nix store.
      '';
    };

    trustedPublicKeys = mkOption {
      type = types.listOf types.str;
      default = config.nix.settings.trusted-public-keys;
      defaultText = lib.literalExpression "config.nix.settings.trusted-public-keys";
      description = "The keys whose signatures make a narinfo from a peer acceptable (`name:base64`).";
    };

    peers = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "/ip4/192.0.2.7/tcp/7374/p2p/12D3KooW..." ];
      description = "Peers to stay connected to without discovery (`nixmesh status` shows a node's address).";
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = ''
        Open the mesh's TCP ports (from `settings.p2p_listen`), with mDNS on UDP 5353, and
        with `lanSubstituter.enable` the LAN substituter's port.
      '';
    };

    lanSubstituter = {
      enable = lib.mkEnableOption ''
        the substituter for the LAN: the node's substituter on a second port of every
        address, read-only, for machines of the LAN that run no node (a new machine's
        installer: `nixos-install --option substituters http://THIS-MACHINE:7375`). It serves
        what the node would serve its peers, with limits of its own and a share per client
        host, so the machine's own Nix keeps precedence. `nixmesh status` shows its URL
      '';
      port = mkOption {
        type = types.port;
        default = 7375;
        description = "The LAN substituter's TCP port (on 0.0.0.0).";
      };
      allow = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "192.168.1.0/24" ];
        description = ''
          The networks (CIDR, or an address) the LAN substituter answers; others get 403.
          Empty: every host. Required with `meshKeyFile`: a host that cannot join a private
          mesh must not get its paths over HTTP either (the node refuses to start without).
        '';
      };
    };
  };

  config = lib.mkIf cfg.enable {
    environment.etc."nixmesh/config.toml".source = configFile;
    environment.systemPackages = [ cfg.package ];

    # The substituter's socket, held by systemd across restarts of the node.
    systemd.sockets.nixmesh = {
      description = "nixmesh substituter socket";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ cfg.settings.http_listen ];
      socketConfig.NoDelay = true;
    };

    systemd.services.nixmesh = {
      description = "nixmesh, a peer-to-peer binary cache for Nix on the LAN";
      wantedBy = [ "multi-user.target" ];
      requires = [ "nixmesh.socket" ];
      wants = [ "nix-daemon.socket" ];
      after = [
        "network.target"
        "nix-daemon.socket"
        "nixmesh.socket"
      ];
      restartTriggers = [ configFile ];
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/nixmesh serve --config ${configFile}";
        Restart = "always";
        RestartSec = "2s";
        LimitNOFILE = 65536;
        LoadCredential =
          lib.optional (cfg.signingKeyFile != null) "signing-key:${cfg.signingKeyFile}"
          ++ lib.optional (cfg.meshKeyFile != null) "mesh-key:${cfg.meshKeyFile}";

        # Its own dynamic user: it reaches the store only as any user may, through the
        # daemon's socket (world-connectable on NixOS) and by reading /nix/store, for
        # the inotify watch /nix/var/nix/db, and with serve_logs the build logs under
        # /nix/var/log/nix (all world-readable; ProtectSystem=strict leaves them readable,
        # and a socket is connectable on a read-only mount).
        DynamicUser = true;
        StateDirectory = "nixmesh";
        StateDirectoryMode = "0700";
        UMask = "0077";

        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        DevicePolicy = "closed";
        NoNewPrivileges = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        # Unix for the daemon, IP for peers and mDNS, netlink to follow the machine's
        # addresses.
        RestrictAddressFamilies = [
          "AF_UNIX"
          "AF_INET"
          "AF_INET6"
          "AF_NETLINK"
        ];
        SystemCallFilter = [
          "@system-service"
          "~@privileged"
        ];
        SystemCallArchitectures = "native";
        SystemCallErrorNumber = "EPERM";
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        RemoveIPC = true;
        ProtectClock = true;
        ProtectControlGroups = true;
        ProtectHostname = true;
        ProtectKernelLogs = true;
        ProtectKernelModules = true;
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        ProcSubset = "pid";
      }
      // lib.optionalAttrs (cfg.settings.state_dir != "/var/lib/nixmesh") {
        ReadWritePaths = [ cfg.settings.state_dir ];
      };
    };

    networking.firewall = lib.mkIf cfg.openFirewall {
      allowedTCPPorts = meshPorts ++ lib.optional cfg.lanSubstituter.enable cfg.lanSubstituter.port;
      allowedUDPPorts = lib.optional cfg.settings.mdns 5353;
    };

    nix.settings = {
      # mkBefore: ahead of every plain definition and of cache.nixos.org, which NixOS adds
      # with mkAfter. (Nix asks substituters in order of their priority, then of this list.)
      substituters = lib.mkBefore [ substituterUrl ];
      # So that users who are not trusted may name it with `--option substituters` too.
      trusted-substituters = [ substituterUrl ];
      # Nix remembers a narinfo 404 for each substituter, 3600 s by default, and asks that
      # substituter again only after it. From a LAN cache a miss often turns into a hit soon
      # after: a peer finishes building the path, and the node knows within a second or two.
      # With the default, a machine that asked too early goes to cache.nixos.org or builds
      # itself for the next hour. 30 s keeps the repeat of a command within a session from
      # asking again while letting the next run see the peer's path. It also applies to
      # cache.nixos.org (Nix has no per-substituter setting), where a miss costs one small
      # request more every 30 s at most.
      narinfo-cache-negative-ttl = lib.mkDefault 30;
    };
  };
}
