# Text paths (`text:sha256:...`), made by evaluation alone.
let
  a = builtins.toFile "nixmesh-ca-text-a" "first\n";
  b = builtins.toFile "nixmesh-ca-text-b" "second\n";
  c = builtins.toFile "nixmesh-ca-text-c" "third\n";
in {
  # No references.
  plain = a;
  # Three references, in the string's order c, a, b.
  refs = builtins.toFile "nixmesh-ca-text-refs" "${c} ${a} ${b}\n";
}
