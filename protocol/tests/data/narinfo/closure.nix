# The golden closure: deterministic outputs (no randomness), so rebuilding gives the same NARs.
let
  mk = name: attrs: script: derivation ({
    inherit name;
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" script ];
    PATH = "/usr/bin:/bin";
  } // attrs);
  leaf = mk "nixmesh-golden-leaf" {} ''
    mkdir -p $out/share/deep
    echo leaf > $out/share/deep/file
    printf '#!/bin/sh\necho hello\n' > $out/run
    chmod +x $out/run
    ln -s share/deep $out/link
    : > $out/empty
  '';
  # Two outputs that refer to each other's paths: `out` names `lib`, and `lib` names `leaf`.
  split = mk "nixmesh-golden-split" { outputs = [ "out" "lib" ]; } ''
    mkdir -p $lib $out
    echo ${leaf} > $lib/ref-leaf
    echo $lib > $out/ref-lib
  '';
  text = builtins.toFile "nixmesh-golden-text" "a text file in the store\n";
in
  mk "nixmesh-golden-top" {} "mkdir $out; echo ${split} ${split.lib} ${text} > $out/refs; echo $out > $out/self"
