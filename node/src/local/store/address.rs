//! Where the nix-daemon listens: `daemon` (Nix's default socket) or `unix:///path`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use super::StoreError;

/// The socket Nix itself uses when nothing else is configured.
pub const DEFAULT_SOCKET: &str = "/nix/var/nix/daemon-socket/socket";

/// The environment variable Nix reads to override [`DEFAULT_SOCKET`].
pub const SOCKET_ENV: &str = "NIX_DAEMON_SOCKET_PATH";

/// The address of a nix-daemon, as given to `--store`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum StoreAddress {
    /// `daemon`: the socket in `$NIX_DAEMON_SOCKET_PATH`, else [`DEFAULT_SOCKET`], looked up
    /// each time a connection is opened, as Nix does.
    Daemon,
    /// `unix:///path/to/socket`.
    Unix(PathBuf),
}

impl StoreAddress {
    /// Parses `daemon` or `unix://` followed by an absolute socket path.
    pub fn parse(text: &str) -> Result<Self, StoreError> {
        if text == "daemon" {
            return Ok(StoreAddress::Daemon);
        }
        match text.strip_prefix("unix://") {
            Some(path) if path.starts_with('/') && !path.contains('?') => {
                Ok(StoreAddress::Unix(PathBuf::from(path)))
            }
            _ => Err(StoreError::InvalidAddress(text.to_owned())),
        }
    }

    /// The socket to connect to now.
    pub fn socket_path(&self) -> PathBuf {
        self.socket_path_with(|name| std::env::var_os(name))
    }

    fn socket_path_with(&self, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
        match self {
            StoreAddress::Daemon => env(SOCKET_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)),
            StoreAddress::Unix(path) => path.clone(),
        }
    }
}

/// The form [`StoreAddress::parse`] reads back.
impl fmt::Display for StoreAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreAddress::Daemon => f.write_str("daemon"),
            StoreAddress::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl FromStr for StoreAddress {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    #[test]
    fn parses_and_displays_both_forms() {
        for text in ["daemon", "unix:///tmp/x/sock"] {
            assert_eq!(StoreAddress::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(
            StoreAddress::parse("unix:///run/nix.sock").unwrap(),
            StoreAddress::Unix(PathBuf::from("/run/nix.sock"))
        );
    }

    #[test]
    fn refuses_other_stores() {
        for text in ["", "auto", "local", "unix://", "unix://relative", "ssh://host", "/nix"] {
            let err = StoreAddress::parse(text).unwrap_err();
            assert!(err.to_string().contains("expected \"daemon\""), "{text}: {err}");
        }
    }

    #[test]
    fn daemon_honours_the_socket_environment_variable() {
        let none = |_: &str| None;
        let set = |name: &str| (name == SOCKET_ENV).then(|| OsString::from("/tmp/other"));
        let empty = |_: &str| Some(OsString::new());
        assert_eq!(StoreAddress::Daemon.socket_path_with(none), PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(StoreAddress::Daemon.socket_path_with(set), PathBuf::from("/tmp/other"));
        assert_eq!(StoreAddress::Daemon.socket_path_with(empty), PathBuf::from(DEFAULT_SOCKET));
        let unix = StoreAddress::Unix(PathBuf::from("/s"));
        assert_eq!(unix.socket_path_with(set), PathBuf::from("/s"));
    }
}
