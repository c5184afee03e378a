//! What a node serves to its peers. Any host on the LAN can join an open mesh and ask, so by
//! default a node serves only paths anyone could get elsewhere or check for themselves:
//!
//! - paths with a signature from a key this node trusts (everything from cache.nixos.org);
//! - every path when the node has a signing key (`--sign-key-file`): it signs what it serves,
//!   which says that its owner means to share them;
//! - content-addressed paths whose store path recomputes from their `CA:` field (fetched
//!   sources, `builtins.toFile`), which give nothing away that their name and hash do not.
//!
//! Anything else (a local build, unsigned: a generated config with a secret in it, a
//! company's unreleased build) only with `--serve-unsigned`. The exclude list
//! (`--serve-exclude`, store-path name patterns with `*` and `?`) keeps chosen outputs off the
//! LAN even when they would be served. A path not served is answered as not held, logged with
//! the reason, and listed (the latest few) on the status page.

use std::collections::VecDeque;
use std::fmt;

use nixmesh_protocol::NarInfo;
use nixmesh_protocol::content_address;
use nixmesh_protocol::signature::TrustedKeys;
use parking_lot::Mutex;

/// The rules; see the module docs.
#[derive(Clone, Default)]
pub struct ServingPolicy {
    /// Keys whose signatures make a path servable.
    pub trusted: TrustedKeys,
    /// The node signs what it serves.
    pub signs: bool,
    /// Serve paths no rule above allows.
    pub serve_unsigned: bool,
    /// Names never served.
    pub exclude: Vec<NamePattern>,
}

/// Why a path is not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotServed {
    Excluded(String),
    Unsigned,
}

impl fmt::Display for NotServed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NotServed::Excluded(pattern) => write!(f, "its name matches --serve-exclude {pattern}"),
            NotServed::Unsigned => f.write_str(
                "it has no signature from a key this node trusts and is not content-addressed \
                 (give the node a --sign-key-file, or --serve-unsigned, to share such paths)",
            ),
        }
    }
}

impl ServingPolicy {
    /// Whether `narinfo` (as this node would send it, its own signature not yet added) may go
    /// to a peer.
    pub fn decide(&self, narinfo: &NarInfo) -> Result<(), NotServed> {
        let name = narinfo.store_path.name();
        if let Some(pattern) = self.exclude.iter().find(|p| p.matches(name)) {
            return Err(NotServed::Excluded(pattern.0.clone()));
        }
        let self_certifying = || {
            matches!(narinfo.content_address(), Ok(Some(ca))
                if content_address::verify(&narinfo.store_path, &ca, &narinfo.references).is_ok())
        };
        if self.serve_unsigned
            || self.signs
            || narinfo.verify(&self.trusted).is_some()
            || self_certifying()
        {
            Ok(())
        } else {
            Err(NotServed::Unsigned)
        }
    }
}

/// A store-path name pattern: `*` matches any run of characters, `?` any one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

impl NamePattern {
    pub fn new(pattern: impl Into<String>) -> Self {
        NamePattern(pattern.into())
    }

    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

/// Iterative wildcard matching with one backtracking point: linear in practice, never
/// exponential, whatever the pattern.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The latest paths not served, with why, for the status page.
#[derive(Default)]
pub struct Refusals(Mutex<VecDeque<String>>);

/// How many refusals the status page lists.
const REFUSALS_KEPT: usize = 16;

impl Refusals {
    pub fn record(&self, line: String) {
        let mut lines = self.0.lock();
        if lines.len() == REFUSALS_KEPT {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// Newest last.
    pub fn latest(&self) -> Vec<String> {
        self.0.lock().iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nixmesh_protocol::signature::SigningKey;
    use nixmesh_protocol::{Sha256, StorePath};

    #[test]
    fn patterns() {
        let p = |s: &str| NamePattern::new(s);
        assert!(p("*-secrets*").matches("nixos-secrets-2"));
        assert!(p("hello-?.12").matches("hello-2.12"));
        assert!(p("*").matches(""));
        assert!(!p("hello").matches("hello-2"));
        assert!(!p("a*b*c").matches("aXbY"));
        assert!(p("a*b*c").matches("aXbYc"));
        assert!(!p(&"*a".repeat(30)).matches(&"a".repeat(29)), "and quickly");
    }

    fn narinfo(name: &str) -> NarInfo {
        NarInfo {
            store_path: StorePath::parse(&format!(
                "/nix/store/0c7xm5qh4dvzd6k7ncqgzrz1ybs2vzqj-{name}"
            ))
            .unwrap(),
            url: "nar/x.nar".to_owned(),
            compression: Some("none".to_owned()),
            file_hash: None,
            file_size: None,
            nar_hash: Sha256([2; 32]),
            nar_size: 5678,
            references: vec![],
            deriver: None,
            system: None,
            signatures: vec![],
            ca: None,
            extra: vec![],
        }
    }

    #[test]
    fn the_default_serves_trusted_signed_paths_only() {
        let key = SigningKey::from_seed("cache-1", [1; 32]);
        let policy = ServingPolicy {
            trusted: TrustedKeys::new(vec![key.verifying_key()]),
            ..Default::default()
        };
        let unsigned = narinfo("private-build");
        assert_eq!(policy.decide(&unsigned), Err(NotServed::Unsigned));
        let mut signed = narinfo("hello-2.12");
        signed.sign(&key);
        assert_eq!(policy.decide(&signed), Ok(()));
        let mut by_stranger = narinfo("hello-2.12");
        by_stranger.sign(&SigningKey::from_seed("stranger-1", [2; 32]));
        assert_eq!(policy.decide(&by_stranger), Err(NotServed::Unsigned));

        let open = ServingPolicy { serve_unsigned: true, ..policy.clone() };
        assert_eq!(open.decide(&unsigned), Ok(()));
        let signing = ServingPolicy { signs: true, ..policy.clone() };
        assert_eq!(signing.decide(&unsigned), Ok(()));
        let excluding =
            ServingPolicy { exclude: vec![NamePattern::new("hello-*")], ..open.clone() };
        let refused = excluding.decide(&signed);
        assert_eq!(refused, Err(NotServed::Excluded("hello-*".to_owned())));
        assert!(refused.unwrap_err().to_string().contains("--serve-exclude hello-*"));
    }

    #[test]
    fn refusals_keep_the_latest() {
        let refusals = Refusals::default();
        for i in 0..20 {
            refusals.record(format!("{i}"));
        }
        let latest = refusals.latest();
        assert_eq!((latest.len(), latest[0].as_str(), latest[15].as_str()), (16, "4", "19"));
    }
}
