//! The few `nix.conf` settings nixmesh reads: the trusted public keys, and the substituters
//! (the default upstreams). Both are lists, and follow the same rules.
//!
//! Nix's rules (`applyConfig` in Nix's `config.cc`), which this module follows:
//! - a `#` starts a comment, to the end of the line; blank lines are skipped;
//! - a setting is `name = value`, with whitespace around the `=`; the value is the
//!   whitespace-separated words after it;
//! - a list's name (or its old name, such as `binary-cache-public-keys`) replaces the list;
//!   its `extra-` name appends to it;
//! - `include PATH` reads another file at that point and fails if it is missing;
//!   `!include PATH` skips a missing file; a relative PATH is relative to the including
//!   file's directory;
//! - a setting never assigned keeps its default; `extra-` appends to that default.
//!
//! Lines Nix would reject (no `=`, `include` with other than one path) are skipped here: this
//! module reads, it does not validate nix.conf. It does no I/O; the caller reads included
//! files.

/// A nix.conf setting whose value is a list: the names that replace it, the names that
/// append to it, and its value when nothing sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListSetting {
    pub set_names: &'static [&'static str],
    pub append_names: &'static [&'static str],
    pub default: &'static [&'static str],
}

/// `trusted-public-keys`: whose signatures Nix accepts.
pub const TRUSTED_PUBLIC_KEYS: ListSetting = ListSetting {
    set_names: &["trusted-public-keys", "binary-cache-public-keys"],
    append_names: &["extra-trusted-public-keys", "extra-binary-cache-public-keys"],
    default: DEFAULT_TRUSTED_PUBLIC_KEYS,
};

/// `substituters`: the binary caches Nix asks, in order.
pub const SUBSTITUTERS: ListSetting = ListSetting {
    set_names: &["substituters", "binary-caches"],
    append_names: &["extra-substituters", "extra-binary-caches"],
    default: &["https://cache.nixos.org/"],
};

/// What `trusted-public-keys` is when no nix.conf sets it.
pub const DEFAULT_TRUSTED_PUBLIC_KEYS: &[&str] =
    &["cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="];

/// One line of a nix.conf that bears on a list setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListLine {
    /// `name = ...`: the list becomes these values.
    Set(Vec<String>),
    /// `extra-name = ...`: these values are added to the list.
    Append(Vec<String>),
    /// `include PATH` (`required`) or `!include PATH`: that file's lines go here.
    Include { path: String, required: bool },
}

impl ListLine {
    /// Applies a `Set` or `Append` to `list`, as Nix does; an `Include` is the caller's to
    /// read, and changes nothing here.
    pub fn apply(&self, list: &mut Vec<String>) {
        match self {
            ListLine::Set(new) => *list = new.clone(),
            ListLine::Append(new) => list.extend(new.iter().cloned()),
            ListLine::Include { .. } => {}
        }
    }
}

/// The lines of `text` that set `setting` or include other files, in order.
pub fn list_lines(text: &str, setting: &ListSetting) -> Vec<ListLine> {
    let mut lines = Vec::new();
    for line in text.split('\n') {
        let line = line.split_once('#').map_or(line, |(before, _)| before);
        let words: Vec<&str> = line.split([' ', '\t', '\r']).filter(|w| !w.is_empty()).collect();
        match words.as_slice() {
            [include @ ("include" | "!include"), path] => lines.push(ListLine::Include {
                path: (*path).to_owned(),
                required: *include == "include",
            }),
            [name, "=", values @ ..] => {
                let values = values.iter().map(|v| (*v).to_owned()).collect();
                if setting.set_names.contains(name) {
                    lines.push(ListLine::Set(values));
                } else if setting.append_names.contains(name) {
                    lines.push(ListLine::Append(values));
                }
            }
            _ => {}
        }
    }
    lines
}

/// `setting` as `text` alone makes it from its default, includes not followed: for tests
/// and for texts with none.
pub fn list_in(text: &str, setting: &ListSetting) -> Vec<String> {
    let mut list = setting.default.iter().map(|v| (*v).to_owned()).collect();
    for line in list_lines(text, setting) {
        line.apply(&mut list);
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(values: &[&str]) -> Vec<String> {
        values.iter().map(|k| (*k).to_owned()).collect()
    }

    #[test]
    fn reads_values_comments_and_includes() {
        let conf = "\
# a comment
substituters = https://cache.nixos.org
trusted-public-keys = a:AAAA  b:BBBB # trailing comment
\textra-trusted-public-keys\t=\tc:CCCC
include /etc/nix/more.conf
!include  local.conf
extra-binary-cache-public-keys = d:DDDD

";
        let lines = list_lines(conf, &TRUSTED_PUBLIC_KEYS);
        assert_eq!(
            lines,
            [
                ListLine::Set(list(&["a:AAAA", "b:BBBB"])),
                ListLine::Append(list(&["c:CCCC"])),
                ListLine::Include { path: "/etc/nix/more.conf".into(), required: true },
                ListLine::Include { path: "local.conf".into(), required: false },
                ListLine::Append(list(&["d:DDDD"])),
            ]
        );
        assert_eq!(
            list_in(conf, &TRUSTED_PUBLIC_KEYS),
            list(&["a:AAAA", "b:BBBB", "c:CCCC", "d:DDDD"])
        );
        assert_eq!(list_in(conf, &SUBSTITUTERS), list(&["https://cache.nixos.org"]));
    }

    #[test]
    fn later_assignments_replace_and_extra_appends() {
        let conf = "extra-trusted-public-keys = x:X\n\
                    binary-cache-public-keys = a:A\n\
                    trusted-public-keys = b:B\n\
                    extra-trusted-public-keys = c:C\n";
        assert_eq!(list_in(conf, &TRUSTED_PUBLIC_KEYS), list(&["b:B", "c:C"]));
        let only_extra = list_in("extra-trusted-public-keys = c:C", &TRUSTED_PUBLIC_KEYS);
        assert_eq!(only_extra, [DEFAULT_TRUSTED_PUBLIC_KEYS[0], "c:C"], "adds to the default");
        assert!(list_in("trusted-public-keys =\n", &TRUSTED_PUBLIC_KEYS).is_empty());
        let caches = "extra-substituters = http://a\nbinary-caches = http://b\n";
        assert_eq!(list_in(caches, &SUBSTITUTERS), list(&["http://b"]));
        let extra = list_in("extra-binary-caches = http://c", &SUBSTITUTERS);
        assert_eq!(extra, list(&["https://cache.nixos.org/", "http://c"]));
    }

    #[test]
    fn skips_what_nix_would_reject() {
        let conf = "trusted-public-keys=a:A\ntrusted-public-keys\ninclude a b\n# = x:X\n";
        assert!(list_lines(conf, &TRUSTED_PUBLIC_KEYS).is_empty());
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = list_lines(&s, &SUBSTITUTERS);
        }
    }
}
