# A TOML renderer for flat tables (keys to strings, numbers, booleans and lists of them): all
# a nixmesh config needs, in pure Nix, for the stand-in of `pkgs.formats.toml` the module's
# tests evaluate with (the real one builds a derivation). A JSON scalar or array of scalars is
# written the same way in TOML, so each value is its JSON.
{ lib }:
let
  bareKey = key: builtins.match "[A-Za-z0-9_-]+" key != null;
  scalar = value: builtins.isString value || builtins.isInt value || builtins.isFloat value || builtins.isBool value;
  valid = value: scalar value || (builtins.isList value && builtins.all scalar value);
  line =
    key: value:
    if !bareKey key then
      throw "toml.nix: key ${builtins.toJSON key} is not a bare key"
    else if !valid value then
      throw "toml.nix: ${key}: only strings, numbers, booleans and lists of them"
    else
      "${key} = ${builtins.toJSON value}\n";
in
table: lib.concatStrings (lib.mapAttrsToList line table)
