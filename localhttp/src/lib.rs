//! The localhost HTTP substituter: Nix's binary-cache protocol in front of the mesh. (STUB)
