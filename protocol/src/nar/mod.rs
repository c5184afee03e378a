//! NAR, Nix's archive format: a streaming writer and a streaming reader/validator. (STUB)
