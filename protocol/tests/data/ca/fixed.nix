# Fixed-output derivations: the output path comes from the declared hash alone
# (`fixed:sha1:...`, `fixed:md5:...`, `fixed:r:sha256:...`). Their .drv files, and the one
# of `nixmesh-ca-uses-fixed` (which names another .drv), are text paths with references.
let
  fod = name: mode: algo: hash: derivation {
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" (if mode == "flat"
      then "echo fixed > $out"
      else "/bin/mkdir $out; echo fixed > $out/f") ];
    outputHashMode = mode;
    outputHashAlgo = algo;
    outputHash = hash;
  };
  sha1 = fod "nixmesh-ca-fod-sha1" "flat" "sha1" "c06798cf02af363e9b65e98484ed4156b85fd5fc";
  md5 = fod "nixmesh-ca-fod-md5" "flat" "md5" "708837c1d238f0955c23a38051f5ebb7";
  nar = fod "nixmesh-ca-fod-nar" "recursive" "sha256" "135dmhgql2pbpqb9gldbbjjfzmm64nxdv20ap1d9l9nr7hdhy1hh";
in {
  inherit sha1 md5 nar;
  uses = derivation {
    name = "nixmesh-ca-uses-fixed";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${sha1} ${md5} > $out" ];
  };
}
