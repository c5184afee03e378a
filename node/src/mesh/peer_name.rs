//! The name a node gives itself to its peers, so that `nixmesh peers` shows machines by their
//! hostnames: carried in libp2p identify's `agent_version`, as `nixmesh/<version> (<name>)`.
//!
//! A peer's name is whatever it says, so it is only a label next to its peer id, never an
//! identity; it is kept to [`MAX_NAME_LEN`] characters a terminal shows as they are (letters,
//! digits, `-`, `.`, `_`): no control characters, escapes or spaces reach a person's screen.

/// The longest name kept (a DNS label is 63; a full name may be longer, and is cut).
pub const MAX_NAME_LEN: usize = 64;

/// What every node's `agent_version` starts with.
const AGENT: &str = "nixmesh/";

/// This machine's hostname, sanitised; `None` when it has none worth showing.
pub fn local() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into the buffer it is handed.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    if !ok {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    sanitise(&String::from_utf8_lossy(&buf[..end]))
}

/// This node's `agent_version`: `nixmesh/<version> (<hostname>)`, or without the name.
pub fn agent_version() -> String {
    let version = env!("CARGO_PKG_VERSION");
    match local() {
        Some(name) => format!("{AGENT}{version} ({name})"),
        None => format!("{AGENT}{version}"),
    }
}

/// The name in a peer's `agent_version`, sanitised, if it is a nixmesh node that gives one.
pub fn from_agent_version(agent: &str) -> Option<String> {
    let rest = agent.strip_prefix(AGENT)?;
    let (_version, name) = rest.split_once(" (")?;
    sanitise(name.strip_suffix(')')?)
}

/// `name` with every character but ASCII letters, digits, `-`, `.` and `_` dropped, cut to
/// [`MAX_NAME_LEN`]; `None` if nothing is left.
pub fn sanitise(name: &str) -> Option<String> {
    let kept: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(MAX_NAME_LEN)
        .collect();
    (!kept.is_empty()).then_some(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_round_trips_through_the_agent_version() {
        let agent = agent_version();
        assert!(agent.starts_with("nixmesh/"), "{agent}");
        assert_eq!(from_agent_version(&agent), local());
        assert_eq!(from_agent_version("nixmesh/0.1.0 (laptop.lan)").as_deref(), Some("laptop.lan"));
    }

    #[test]
    fn what_peers_say_is_bounded_and_printable() {
        assert_eq!(from_agent_version("rust-libp2p/0.56 (x)"), None);
        assert_eq!(from_agent_version("nixmesh/0.1.0"), None);
        assert_eq!(from_agent_version("nixmesh/0.1.0 ()"), None);
        let hostile = "nixmesh/9 (\u{1b}[31mred\u{7} evil\nhost)";
        assert_eq!(from_agent_version(hostile).as_deref(), Some("31mredevilhost"));
        let long = format!("nixmesh/1 ({})", "a".repeat(10_000));
        assert_eq!(from_agent_version(&long).map(|n| n.len()), Some(MAX_NAME_LEN));
    }
}
