#!/bin/bash
# Asks the real Nix whether it takes a mutated narinfo unsigned.
# usage: mutate.sh <narinfo hash> <sed expression>
set -u
h=$1; expr=$2
m=$(mktemp -d /tmp/ca/mut.XXXX)
cp -r cache/nix-cache-info cache/*.narinfo $m/ && ln -s /tmp/ca/cache/nar $m/nar
sed -i "$expr" $m/$h.narinfo
p=$(sed -n 's/^StorePath: //p' $m/$h.narinfo)
if nix copy --extra-experimental-features 'nix-command ca-derivations' --option trusted-public-keys "" \
    --option substituters "" --from file://$m --to $m/store $p > $m/out 2>&1; then
  echo "ACCEPTED  $h  $expr"
else
  echo "REFUSED   $h  $expr  -- $(grep -o 'lacks a valid signature\|claims to be content-addressed but isn.t\|ca hash mismatch\|corrupt' $m/out | head -1)"
fi
rm -rf $m
