# A floating content-addressed derivation (experimental `ca-derivations`): its output is
# `fixed:r:sha256:...` with references, one of them itself (`source:<refs>:self`).
let
  dep = builtins.toFile "nixmesh-ca-dep" "a dependency\n";
in derivation {
  name = "nixmesh-ca-floating";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" ''
    /bin/mkdir $out
    echo "${dep}" > $out/dep
    echo "$out" > $out/self
  '' ];
  __contentAddressed = true;
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
}
