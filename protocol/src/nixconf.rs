//! The few `nix.conf` settings nixmesh reads: the trusted public keys.
//!
//! Nix's rules (`applyConfig` in Nix's `config.cc`), which this module follows:
//! - a `#` starts a comment, to the end of the line; blank lines are skipped;
//! - a setting is `name = value`, with whitespace around the `=`; the value is the
//!   whitespace-separated words after it;
//! - `trusted-public-keys` (or its old name, `binary-cache-public-keys`) replaces the list;
//!   `extra-trusted-public-keys` (or `extra-binary-cache-public-keys`) appends to it;
//! - `include PATH` reads another file at that point and fails if it is missing;
//!   `!include PATH` skips a missing file; a relative PATH is relative to the including
//!   file's directory;
//! - a setting never assigned keeps its default, [`DEFAULT_TRUSTED_PUBLIC_KEYS`]; `extra-`
//!   appends to that default.
//!
//! Lines Nix would reject (no `=`, `include` with other than one path) are skipped here: this
//! module reads, it does not validate nix.conf. It does no I/O; the caller reads included
//! files.

/// What `trusted-public-keys` is when no nix.conf sets it.
pub const DEFAULT_TRUSTED_PUBLIC_KEYS: &[&str] =
    &["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="];

/// The names that replace the list of keys.
const SET_NAMES: [&str; 2] = ["trusted-public-keys", "binary-cache-public-keys"];
/// The names that append to it.
const APPEND_NAMES: [&str; 2] = ["extra-trusted-public-keys", "extra-binary-cache-public-keys"];

/// The public keys `trusted-public-keys` and `extra-trusted-public-keys` name in a nix.conf
/// text, in order, with `include`/`!include` lines returned separately for the caller to
/// read (this crate does no I/O).
///
/// `keys` is what the text's lines make of an empty list; when `replaces` is false, they add
/// to what came before (the default, or earlier files). For the exact order of includes
/// among the settings, use [`key_lines`].
pub fn trusted_public_keys(text: &str) -> NixConfKeys {
    let mut found = NixConfKeys::default();
    for line in key_lines(text) {
        match line {
            KeysLine::Set(keys) => {
                found.replaces = true;
                found.keys = keys;
            }
            KeysLine::Append(keys) => found.keys.extend(keys),
            KeysLine::Include { path, required } => found.includes.push((path, required)),
        }
    }
    found
}

/// What [`trusted_public_keys`] found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NixConfKeys {
    pub keys: Vec<String>,
    /// `(path, required)`: `include` is required, `!include` is not.
    pub includes: Vec<(String, bool)>,
    /// True when the text assigns `trusted-public-keys` itself, so that `keys` replaces the
    /// keys set before it (the default included) instead of adding to them.
    pub replaces: bool,
}

/// One line of a nix.conf that bears on the trusted keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysLine {
    /// `trusted-public-keys = ...`: the list becomes these keys.
    Set(Vec<String>),
    /// `extra-trusted-public-keys = ...`: these keys are added to the list.
    Append(Vec<String>),
    /// `include PATH` (`required`) or `!include PATH`: that file's lines go here.
    Include { path: String, required: bool },
}

impl KeysLine {
    /// Applies a `Set` or `Append` to `keys`, as Nix does; an `Include` is the caller's to
    /// read, and changes nothing here.
    pub fn apply(&self, keys: &mut Vec<String>) {
        match self {
            KeysLine::Set(new) => *keys = new.clone(),
            KeysLine::Append(new) => keys.extend(new.iter().cloned()),
            KeysLine::Include { .. } => {}
        }
    }
}

/// The lines of `text` that set the trusted keys or include other files, in order.
pub fn key_lines(text: &str) -> Vec<KeysLine> {
    let mut lines = Vec::new();
    for line in text.split('\n') {
        let line = line.split_once('#').map_or(line, |(before, _)| before);
        let words: Vec<&str> = line.split([' ', '\t', '\r']).filter(|w| !w.is_empty()).collect();
        match words.as_slice() {
            [include @ ("include" | "!include"), path] => lines.push(KeysLine::Include {
                path: (*path).to_owned(),
                required: *include == "include",
            }),
            [name, "=", values @ ..] => {
                let values = values.iter().map(|v| (*v).to_owned()).collect();
                if SET_NAMES.contains(name) {
                    lines.push(KeysLine::Set(values));
                } else if APPEND_NAMES.contains(name) {
                    lines.push(KeysLine::Append(values));
                }
            }
            _ => {}
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn reads_keys_comments_and_includes() {
        let conf = "\
# a comment
substituters = https://cache.nixos.org
trusted-public-keys = a:AAAA  b:BBBB # trailing comment
\textra-trusted-public-keys\t=\tc:CCCC
include /etc/nix/more.conf
!include  local.conf
extra-binary-cache-public-keys = d:DDDD

";
        let found = trusted_public_keys(conf);
        assert_eq!(found.keys, keys(&["a:AAAA", "b:BBBB", "c:CCCC", "d:DDDD"]));
        assert!(found.replaces);
        assert_eq!(
            found.includes,
            [("/etc/nix/more.conf".to_owned(), true), ("local.conf".to_owned(), false)]
        );
    }

    #[test]
    fn later_assignments_replace_and_extra_appends() {
        let conf = "extra-trusted-public-keys = x:X\n\
                    binary-cache-public-keys = a:A\n\
                    trusted-public-keys = b:B\n\
                    extra-trusted-public-keys = c:C\n";
        assert_eq!(trusted_public_keys(conf).keys, keys(&["b:B", "c:C"]));

        let only_extra = trusted_public_keys("extra-trusted-public-keys = c:C");
        assert_eq!(only_extra.keys, keys(&["c:C"]));
        assert!(!only_extra.replaces, "adds to the default");

        let emptied = trusted_public_keys("trusted-public-keys =\n");
        assert!(emptied.keys.is_empty() && emptied.replaces);
    }

    #[test]
    fn key_lines_keep_includes_in_place() {
        let lines =
            key_lines("trusted-public-keys = a:A\ninclude x\nextra-trusted-public-keys = c:C");
        assert_eq!(
            lines,
            [
                KeysLine::Set(keys(&["a:A"])),
                KeysLine::Include { path: "x".into(), required: true },
                KeysLine::Append(keys(&["c:C"])),
            ]
        );
        let mut list = keys(DEFAULT_TRUSTED_PUBLIC_KEYS);
        KeysLine::Append(keys(&["z:Z"])).apply(&mut list);
        assert_eq!(list.len(), 2);
        lines[0].apply(&mut list);
        assert_eq!(list, keys(&["a:A"]));
    }

    #[test]
    fn skips_what_nix_would_reject() {
        let conf = "trusted-public-keys=a:A\ntrusted-public-keys\ninclude a b\n# = x:X\n";
        assert_eq!(trusted_public_keys(conf), NixConfKeys::default());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = trusted_public_keys(&s);
        }
    }
}
